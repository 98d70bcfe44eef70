//! Names derived from a tenant: the project's namespace and the groups its
//! RoleBindings name. Pure.

use sha2::{Digest, Sha256};

use super::protocol::Uuid;

/// The longest a namespace name may be (a DNS-1123 label).
pub const MAX_NAMESPACE_LENGTH: usize = 63;
/// Hex digits of the (org id, project id) hash in a namespace name: 40 bits,
/// so two projects whose names give the same readable part still get
/// different namespaces.
const HASH_DIGITS: usize = 10;

/// One project, as the namespace, quota and RoleBindings are built for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub org_id: Uuid,
    pub org_name: String,
    pub project_id: Uuid,
    pub project_name: String,
}

/// The namespace a project gets when it has none yet:
/// `<org>-<project>-<hash>`, where the readable part is the org and project
/// names made DNS-safe (and shortened to fit), and the hash is of the org
/// and project ids.
///
/// Stable: the same ids and names always give the same name. Collision-safe:
/// the hash covers the ids, so a project created again after a deletion, or
/// two projects whose names read alike, get different namespaces; and the
/// caller never takes over a namespace that carries another project's id
/// (see `objects::choose_namespace`). Always a valid DNS-1123 label, and
/// never one of the well-known names (`default`, `kube-system`): the hash
/// suffix sees to that.
pub fn namespace_name(tenant: &Tenant) -> String {
    let hash = id_hash(&tenant.org_id, &tenant.project_id);
    // Room for the readable part: the whole label minus "-<hash>".
    let budget = MAX_NAMESPACE_LENGTH - HASH_DIGITS - 1;
    let org = slug(&tenant.org_name);
    let project = slug(&tenant.project_name);
    let readable = match (org.is_empty(), project.is_empty()) {
        (true, true) => "tenant".to_string(),
        (false, true) => truncate(&org, budget),
        (true, false) => truncate(&project, budget),
        (false, false) => {
            // Both get what they need when it fits; otherwise the longer
            // one gives way first, and neither drops below half.
            let room = budget - 1;
            let (org_len, project_len) = share(org.len(), project.len(), room);
            format!(
                "{}-{}",
                truncate(&org, org_len),
                truncate(&project, project_len)
            )
        }
    };
    format!("{readable}-{hash}")
}

/// The first [`HASH_DIGITS`] hex digits of SHA-256 over "org/project".
fn id_hash(org_id: &Uuid, project_id: &Uuid) -> String {
    let digest = Sha256::digest(format!("{org_id}/{project_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..HASH_DIGITS].to_string()
}

/// Splits `room` between two parts of lengths `a` and `b`.
fn share(a: usize, b: usize, room: usize) -> (usize, usize) {
    if a + b <= room {
        return (a, b);
    }
    let half = room / 2;
    if a <= half {
        (a, room - a)
    } else if b <= half {
        (room - b, b)
    } else {
        (half, room - half)
    }
}

/// Lowercase ASCII letters and digits; every run of anything else becomes
/// one hyphen; no hyphen at either end.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// At most `max` characters of a slug, with no hyphen left at its end.
fn truncate(slug: &str, max: usize) -> String {
    slug[..slug.len().min(max)]
        .trim_end_matches('-')
        .to_string()
}

/// A group name with placeholders for the tenant, e.g.
/// `{org}-{project}-admins`. Placeholders: `{org}`, `{project}` (the names),
/// `{orgId}`, `{projectId}` (the UUIDs); `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTemplate {
    text: String,
}

/// Errors in a group template, found when the operator starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "group template {template:?}: unknown placeholder {{{name}}}; use {{org}}, {{project}}, {{orgId}} or {{projectId}}"
    )]
    UnknownPlaceholder { template: String, name: String },
    #[error("group template {template:?}: a '{{' is not closed (write {{{{ for a literal brace)")]
    Unclosed { template: String },
    #[error("group template {template:?}: a lone '}}' (write }}}} for a literal brace)")]
    LoneClose { template: String },
    #[error("group template is empty")]
    Empty,
}

enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

impl GroupTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        let template = Self {
            text: text.to_string(),
        };
        for piece in template.pieces()? {
            if let Piece::Placeholder(name) = piece
                && !matches!(name, "org" | "project" | "orgId" | "projectId")
            {
                return Err(TemplateError::UnknownPlaceholder {
                    template: text.to_string(),
                    name: name.to_string(),
                });
            }
        }
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn pieces(&self) -> Result<Vec<Piece<'_>>, TemplateError> {
        let text = self.text.as_str();
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{{") {
                pieces.push(Piece::Text("{"));
                rest = after;
            } else if let Some(after) = rest.strip_prefix("}}") {
                pieces.push(Piece::Text("}"));
                rest = after;
            } else if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                    template: text.to_string(),
                })?;
                pieces.push(Piece::Placeholder(&after[..end]));
                rest = &after[end + 1..];
            } else if rest.starts_with('}') {
                return Err(TemplateError::LoneClose {
                    template: text.to_string(),
                });
            } else {
                let end = rest.find(['{', '}']).unwrap_or(rest.len());
                pieces.push(Piece::Text(&rest[..end]));
                rest = &rest[end..];
            }
        }
        Ok(pieces)
    }

    /// The group name for a tenant. Names are used as they are: a group is
    /// whatever the identity provider calls it.
    pub fn expand(&self, tenant: &Tenant) -> String {
        // Parsed in `parse`, so the pieces are known to be well-formed.
        let Ok(pieces) = self.pieces() else {
            return self.text.clone();
        };
        pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => text,
                Piece::Placeholder("org") => tenant.org_name.as_str(),
                Piece::Placeholder("project") => tenant.project_name.as_str(),
                Piece::Placeholder("orgId") => tenant.org_id.as_str(),
                Piece::Placeholder("projectId") => tenant.project_id.as_str(),
                Piece::Placeholder(other) => other,
            })
            .collect()
    }
}

/// Whether `name` is a DNS-1123 label, as a namespace name must be.
pub fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAMESPACE_LENGTH
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(org: &str, project: &str) -> Tenant {
        Tenant {
            org_id: Uuid::parse("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").unwrap(),
            org_name: org.into(),
            project_id: Uuid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            project_name: project.into(),
        }
    }

    #[test]
    fn a_namespace_name_reads_as_org_and_project() {
        let name = namespace_name(&tenant("Acme Corp", "Web_Shop"));
        assert!(name.starts_with("acme-corp-web-shop-"), "{name}");
        assert_eq!(name.len(), "acme-corp-web-shop-".len() + HASH_DIGITS);
        // Pinned: a change here would move every tenant to a new namespace.
        assert_eq!(name, "acme-corp-web-shop-58902a1baa");
    }

    #[test]
    fn names_without_anything_readable_still_make_a_namespace() {
        let name = namespace_name(&tenant("ÄÖÜ", "---"));
        assert!(name.starts_with("tenant-"), "{name}");
        assert!(is_dns1123_label(&name));
        assert!(namespace_name(&tenant("", "web")).starts_with("web-"));
        assert!(namespace_name(&tenant("acme", "")).starts_with("acme-"));
    }

    #[test]
    fn long_names_are_shortened_fairly() {
        let long = "x".repeat(100);
        let name = namespace_name(&tenant(&long, "web"));
        assert_eq!(name.len(), MAX_NAMESPACE_LENGTH);
        assert!(
            name.contains("-web-"),
            "the short part is kept whole: {name}"
        );
        let name = namespace_name(&tenant(&long, &"y".repeat(100)));
        assert_eq!(name.len(), MAX_NAMESPACE_LENGTH);
        assert!(name.contains("xxxxxxxxxxxxxxxxxxxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyyy"));
    }

    #[test]
    fn another_project_id_gets_another_namespace() {
        let first = tenant("acme", "web");
        let mut again = first.clone();
        again.project_id = Uuid::parse("11111111-2222-3333-4444-555555555556").unwrap();
        assert_ne!(namespace_name(&first), namespace_name(&again));
        let mut other_org = first.clone();
        other_org.org_id = Uuid::parse("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeef").unwrap();
        assert_ne!(namespace_name(&first), namespace_name(&other_org));
    }

    #[test]
    fn templates_expand_every_placeholder() {
        let t = tenant("acme", "web");
        let expand = |text: &str| GroupTemplate::parse(text).unwrap().expand(&t);
        assert_eq!(expand("{org}-{project}-admins"), "acme-web-admins");
        assert_eq!(
            expand("oidc:{orgId}/{projectId}"),
            "oidc:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(expand("{{literal}}-{project}"), "{literal}-web");
        assert_eq!(expand("platform-admins"), "platform-admins");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (text, wanted) in [
            ("{tenant}-admins", "unknown placeholder {tenant}"),
            ("{org-admins", "not closed"),
            ("org}-admins", "lone"),
            ("  ", "empty"),
        ] {
            let error = GroupTemplate::parse(text).unwrap_err().to_string();
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
    }

    proptest! {
        /// Whatever the names, the namespace name is a DNS-1123 label of at
        /// most 63 characters, the same every time, ending in the id hash.
        #[test]
        fn every_namespace_name_is_a_stable_dns_label(
            org in "\\PC{0,80}",
            project in "\\PC{0,80}",
            org_id in proptest::array::uniform16(any::<u8>()),
            project_id in proptest::array::uniform16(any::<u8>()),
        ) {
            let hex = |b: [u8; 16]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let t = Tenant {
                org_id: Uuid::parse(&hex(org_id)).unwrap(),
                org_name: org,
                project_id: Uuid::parse(&hex(project_id)).unwrap(),
                project_name: project,
            };
            let name = namespace_name(&t);
            prop_assert!(is_dns1123_label(&name), "{:?}", name);
            prop_assert_eq!(&name, &namespace_name(&t));
            let hash = id_hash(&t.org_id, &t.project_id);
            let suffix = format!("-{hash}");
            prop_assert!(name.ends_with(&suffix));
        }

        /// The readable part is kept whole whenever it fits.
        #[test]
        fn short_names_are_kept_whole(org in "[a-z][a-z0-9]{0,20}", project in "[a-z][a-z0-9]{0,20}") {
            let name = namespace_name(&tenant(&org, &project));
            prop_assert!(name.starts_with(&format!("{org}-{project}-")), "{}", name);
        }
    }
}
