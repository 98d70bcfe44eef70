//! The plugin's one error type, and how any failure becomes the single line
//! kubectl users expect: `error: instances.ctrlplane.dev "nope" not found`.

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig could not be read or used.
    #[error("{0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error("{}", describe_kube(.0))]
    Kube(#[from] kube::Error),
    /// Anything else, said for people.
    #[error("{0}")]
    Message(String),
    /// Printing the result failed.
    #[error("cannot print the result: {0}")]
    Output(String),
}

impl From<serde_json::Error> for CliError {
    fn from(err: serde_json::Error) -> Self {
        CliError::Output(err.to_string())
    }
}

impl CliError {
    /// Whether the API server refused a write because the object changed
    /// since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CliError::Kube(kube::Error::Api(status)) if status.is_conflict())
    }
}

/// The API server's own message when it sent one (it names the resource
/// and the object, as kubectl shows it); otherwise the error and its causes.
fn describe_kube(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text.push_str(": ");
                    text.push_str(&cause);
                }
                source = cause_of(source);
            }
            text
        }
    }
}

fn cause_of<'a>(
    err: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    err.and_then(std::error::Error::source)
}

/// Any text as one line: line breaks and runs of spaces become one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// clap's usage errors span several lines (the error, a tip, the usage);
/// kubectl's are one. Keeps what comes before the usage, on one line,
/// without clap's own `error: ` prefix.
pub fn clap_one_line(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    one_line(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_the_servers_message() {
        let status =
            kube::core::Status::failure("instances.ctrlplane.dev \"nope\" not found", "NotFound")
                .with_code(404);
        let err = CliError::from(kube::Error::Api(status.boxed()));
        assert_eq!(
            err.to_string(),
            "instances.ctrlplane.dev \"nope\" not found"
        );
        assert!(!err.is_conflict());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --reason <REASON>\n\nUsage: kubectl ctrlplane suspend --reason <REASON> <TYPE/NAME> [NAME]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(rendered),
            "the following required arguments were not provided: --reason <REASON>"
        );
        let rendered = "error: unrecognized subcommand 'stp'\n\n  tip: a similar subcommand exists: 'stop'\n\nUsage: kubectl ctrlplane [OPTIONS] <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(rendered),
            "unrecognized subcommand 'stp'; tip: a similar subcommand exists: 'stop'"
        );
    }

    #[test]
    fn text_is_folded_onto_one_line() {
        assert_eq!(one_line("a\n  b\tc\n"), "a b c");
    }
}
