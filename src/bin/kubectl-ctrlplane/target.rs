//! Which object a command is about: kubectl's `TYPE/NAME` and `TYPE NAME`
//! forms, with the kinds' short names, or a bare `NAME` when the command
//! leaves only one kind it could be (or the cluster has only one object of
//! that name). Pure.

use crate::error::CliError;

/// The kinds the plugin works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Instance,
    Sandbox,
    Webhook,
    WebhookDelivery,
}

impl Kind {
    /// The kind as the API names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Instance => "Instance",
            Kind::Sandbox => "Sandbox",
            Kind::Webhook => "Webhook",
            Kind::WebhookDelivery => "WebhookDelivery",
        }
    }

    /// The short name kubectl knows it by.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Instance => "inst",
            Kind::Sandbox => "sbx",
            Kind::Webhook => "wh",
            Kind::WebhookDelivery => "whd",
        }
    }

    /// How an object of this kind is written in kubectl's output:
    /// `instance.ctrlplane.dev/web`.
    pub fn object(self, name: &str) -> String {
        format!("{}.ctrlplane.dev/{name}", self.name().to_lowercase())
    }

    /// The kind a kubectl resource type names: the kind, its plural, its
    /// short name, each alone or followed by `.ctrlplane.dev`; any case.
    pub fn from_type(word: &str) -> Option<Kind> {
        let word = word.to_lowercase();
        let word = word
            .strip_suffix(".v1alpha1.ctrlplane.dev")
            .or_else(|| word.strip_suffix(".ctrlplane.dev"))
            .unwrap_or(&word);
        match word {
            "instance" | "instances" | "inst" => Some(Kind::Instance),
            "sandbox" | "sandboxes" | "sbx" => Some(Kind::Sandbox),
            "webhook" | "webhooks" | "wh" => Some(Kind::Webhook),
            "webhookdelivery" | "webhookdeliveries" | "whd" => Some(Kind::WebhookDelivery),
            _ => None,
        }
    }
}

/// An object named on the command line; `kind` is None for a bare name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Option<Kind>,
    pub name: String,
}

/// Reads `TYPE/NAME`, `TYPE NAME` or `NAME` for a command that works on
/// the `allowed` kinds. A bare name is of the only allowed kind when there
/// is one; otherwise it is left to be looked up.
pub fn parse(command: &str, words: &[String], allowed: &[Kind]) -> Result<Target, CliError> {
    let (kind, name) = match words {
        [one] => match one.split_once('/') {
            Some((kind, name)) => (Some(kind_for(command, kind, allowed)?), name),
            None => (None, one.as_str()),
        },
        [kind, name] => {
            if kind.contains('/') {
                return Err(CliError::Usage(format!(
                    "there is a TYPE/NAME and another argument {name:?}: {command} takes one object"
                )));
            }
            (Some(kind_for(command, kind, allowed)?), name.as_str())
        }
        [] => {
            return Err(CliError::Usage(format!(
                "{command} needs an object: TYPE/NAME, TYPE NAME or NAME"
            )));
        }
        _ => {
            return Err(CliError::Usage(format!(
                "{command} takes one object: TYPE/NAME, TYPE NAME or NAME"
            )));
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err(CliError::Usage(format!(
            "{name:?} is not a name: write TYPE/NAME, TYPE NAME or NAME"
        )));
    }
    let kind = kind.or(match allowed {
        [only] => Some(*only),
        _ => None,
    });
    Ok(Target {
        kind,
        name: name.to_string(),
    })
}

fn kind_for(command: &str, word: &str, allowed: &[Kind]) -> Result<Kind, CliError> {
    let known = || {
        allowed
            .iter()
            .map(|k| format!("{} ({})", k.short(), k.name()))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let kind = Kind::from_type(word).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown resource type {word:?} for {command}: use {}",
            known()
        ))
    })?;
    if !allowed.contains(&kind) {
        return Err(CliError::Usage(format!(
            "{command} does not apply to {}: use {}",
            plural(kind),
            known()
        )));
    }
    Ok(kind)
}

/// The kind's plural for sentences: "Instances".
pub fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Instance => "Instances",
        Kind::Sandbox => "Sandboxes",
        Kind::Webhook => "Webhooks",
        Kind::WebhookDelivery => "WebhookDeliveries",
    }
}

/// The error for a bare name that names objects of more than one kind.
pub fn ambiguous(name: &str, namespace: &str, kinds: &[Kind]) -> CliError {
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let forms: Vec<String> = kinds
        .iter()
        .map(|k| format!("{}/{name}", k.short()))
        .collect();
    CliError::Message(format!(
        "{name:?} is both an {} in namespace {namespace:?}: say which, as {}",
        names.join(" and a "),
        forms.join(" or ")
    ))
}

/// The error for a bare name that names nothing.
pub fn not_found(name: &str, namespace: &str, kinds: &[Kind]) -> CliError {
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    CliError::Message(format!(
        "no {} named {name:?} in namespace {namespace:?}",
        names.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[Kind] = &[Kind::Instance, Kind::Sandbox];

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    fn target(kind: Option<Kind>, name: &str) -> Target {
        Target {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn every_kubectl_spelling_of_a_type_is_understood() {
        for word in [
            "inst",
            "instance",
            "instances",
            "Instance",
            "instances.ctrlplane.dev",
            "instance.ctrlplane.dev",
            "instances.v1alpha1.ctrlplane.dev",
        ] {
            assert_eq!(Kind::from_type(word), Some(Kind::Instance), "{word}");
        }
        for word in ["sbx", "sandbox", "sandboxes", "sandboxes.ctrlplane.dev"] {
            assert_eq!(Kind::from_type(word), Some(Kind::Sandbox), "{word}");
        }
        assert_eq!(Kind::from_type("whd"), Some(Kind::WebhookDelivery));
        assert_eq!(
            Kind::from_type("webhookdelivery.ctrlplane.dev"),
            Some(Kind::WebhookDelivery)
        );
        assert_eq!(Kind::from_type("wh"), Some(Kind::Webhook));
        assert_eq!(Kind::from_type("deploy"), None);
        assert_eq!(Kind::from_type("instances.apps"), None);
    }

    #[test]
    fn type_slash_name_type_name_and_bare_names() {
        assert_eq!(
            parse("stop", &words("inst/web"), BOTH).unwrap(),
            target(Some(Kind::Instance), "web")
        );
        assert_eq!(
            parse("stop", &words("sandbox box"), BOTH).unwrap(),
            target(Some(Kind::Sandbox), "box")
        );
        assert_eq!(
            parse("stop", &words("web"), BOTH).unwrap(),
            target(None, "web")
        );
        // kubectl prints objects as instance.ctrlplane.dev/web: that works too.
        assert_eq!(
            parse("stop", &words("instance.ctrlplane.dev/web"), BOTH).unwrap(),
            target(Some(Kind::Instance), "web")
        );
    }

    #[test]
    fn a_bare_name_is_of_the_only_kind_a_command_allows() {
        assert_eq!(
            parse("suspend", &words("web"), &[Kind::Instance]).unwrap(),
            target(Some(Kind::Instance), "web")
        );
        assert_eq!(
            parse("extend", &words("box"), &[Kind::Sandbox]).unwrap(),
            target(Some(Kind::Sandbox), "box")
        );
    }

    #[test]
    fn wrong_or_unknown_types_and_bad_shapes_are_refused() {
        let err = |command: &str, text: &str, allowed: &[Kind]| {
            parse(command, &words(text), allowed)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("suspend", "sbx/box", &[Kind::Instance]),
            "suspend does not apply to Sandboxes: use inst (Instance)"
        );
        assert_eq!(
            err("stop", "deploy/web", BOTH),
            "unknown resource type \"deploy\" for stop: use inst (Instance) or sbx (Sandbox)"
        );
        assert!(err("stop", "inst/", BOTH).contains("is not a name"));
        assert!(err("stop", "inst/a/b", BOTH).contains("is not a name"));
        assert!(err("stop", "inst/web other", BOTH).contains("takes one object"));
        assert!(err("stop", "inst web extra", BOTH).contains("takes one object"));
        assert!(err("stop", "", BOTH).contains("needs an object"));
    }

    #[test]
    fn ambiguity_and_absence_name_the_kinds() {
        assert_eq!(
            ambiguous("twin", "ns", BOTH).to_string(),
            "\"twin\" is both an Instance and a Sandbox in namespace \"ns\": say which, as inst/twin or sbx/twin"
        );
        assert_eq!(
            not_found("nope", "ns", BOTH).to_string(),
            "no Instance or Sandbox named \"nope\" in namespace \"ns\""
        );
    }

    #[test]
    fn objects_print_as_kubectl_prints_them() {
        assert_eq!(Kind::Instance.object("web"), "instance.ctrlplane.dev/web");
        assert_eq!(
            Kind::WebhookDelivery.object("d"),
            "webhookdelivery.ctrlplane.dev/d"
        );
    }
}
