//! The tenancy source's flags, checked when the operator starts: a bad
//! template fails the start, not every project event after it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::naming::{GroupTemplate, TemplateError};
use super::objects::{BindingTemplate, Templates};

/// The quota every project namespace gets unless `--tenant-quota` says
/// otherwise: object counts and storage. CPU and memory are not in it by
/// default because a quota on them makes the API server refuse every pod
/// without requests for them, and an Instance need not declare resources.
pub const DEFAULT_QUOTA: [&str; 4] = [
    "count/instances.ctrlplane.dev=50",
    "count/sandboxes.ctrlplane.dev=50",
    "count/webhooks.ctrlplane.dev=20",
    "requests.storage=500Gi",
];

/// The chart's aggregated roles (release `ctrlplane-operator`), each bound to
/// a group per project.
pub const DEFAULT_ROLE_BINDINGS: [&str; 3] = [
    "ctrlplane-operator-admin={org}-{project}-admins",
    "ctrlplane-operator-edit={org}-{project}-editors",
    "ctrlplane-operator-view={org}-{project}-viewers",
];

/// Events asked for per poll, as the Go poller asks.
pub const POLL_LIMIT: u32 = 100;
/// Every request to the Tenant Manager gives up after this long.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of the tenancy source. Off unless `--tenant-manager-url` is set.
#[derive(clap::Args, Debug, Clone)]
pub struct TenancyArgs {
    /// Base URL of the Tenant Manager (e.g. http://tenancy-manager.orch-iam:8080).
    /// When set, organisations' projects become namespaces. Off when unset.
    #[arg(long, env = "CTRLPLANE_TENANT_MANAGER_URL")]
    pub tenant_manager_url: Option<String>,

    /// This controller's canonical name in the Tenant Manager's registered
    /// controllers; status is reported under it.
    #[arg(
        long,
        env = "CTRLPLANE_TENANT_CONTROLLER_NAME",
        default_value = "ctrlplane-operator"
    )]
    pub tenant_controller_name: String,

    /// Seconds between polls for new events, after the replay.
    #[arg(
        long,
        env = "CTRLPLANE_TENANT_POLL_INTERVAL_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub tenant_poll_interval_seconds: u64,

    /// The ResourceQuota of every project namespace, as RESOURCE=QUANTITY,
    /// repeated or comma-separated (e.g. count/instances.ctrlplane.dev=20,
    /// requests.cpu=16). Given at all, it replaces the default; empty: no quota.
    #[arg(
        long,
        env = "CTRLPLANE_TENANT_QUOTA",
        value_delimiter = ',',
        default_values = DEFAULT_QUOTA
    )]
    pub tenant_quota: Vec<String>,

    /// A RoleBinding in every project namespace, as CLUSTERROLE=GROUP-TEMPLATE,
    /// repeated or comma-separated. Placeholders in the template: {org},
    /// {project}, {orgId}, {projectId}. Given at all, it replaces the
    /// default; empty: no RoleBindings.
    #[arg(
        long = "tenant-role-binding",
        env = "CTRLPLANE_TENANT_ROLE_BINDINGS",
        value_delimiter = ',',
        default_values = DEFAULT_ROLE_BINDINGS
    )]
    pub tenant_role_bindings: Vec<String>,

    /// Seconds one deletion may take (the project's objects released, their
    /// last webhook deliveries made, the namespace gone) before it is
    /// reported as an error and tried again.
    #[arg(
        long,
        env = "CTRLPLANE_TENANT_DELETION_TIMEOUT_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    pub tenant_deletion_timeout_seconds: u64,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TenancyConfig {
    /// The base URL, without a trailing slash; paths are appended to it.
    pub url: String,
    pub controller: String,
    pub poll_interval: Duration,
    pub templates: Templates,
    pub deletion_timeout: Duration,
}

/// A flag that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--tenant-manager-url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("--tenant-controller-name must not be empty")]
    ControllerName,
    #[error("--tenant-quota {entry:?}: {reason}")]
    Quota { entry: String, reason: String },
    #[error("--tenant-role-binding {entry:?}: {reason}")]
    RoleBinding { entry: String, reason: String },
    #[error("--tenant-role-binding: {0}")]
    Template(#[from] TemplateError),
}

impl TenancyArgs {
    /// The configuration, or `None` when tenancy is off.
    pub fn config(&self) -> Result<Option<TenancyConfig>, ConfigError> {
        let Some(url) = self.tenant_manager_url.as_deref() else {
            return Ok(None);
        };
        let url = check_url(url)?;
        let controller = self.tenant_controller_name.trim();
        if controller.is_empty() {
            return Err(ConfigError::ControllerName);
        }
        Ok(Some(TenancyConfig {
            url,
            controller: controller.to_string(),
            poll_interval: Duration::from_secs(self.tenant_poll_interval_seconds),
            templates: Templates {
                quota: parse_quota(&self.tenant_quota)?,
                bindings: parse_bindings(&self.tenant_role_bindings)?,
            },
            deletion_timeout: Duration::from_secs(self.tenant_deletion_timeout_seconds),
        }))
    }
}

fn check_url(text: &str) -> Result<String, ConfigError> {
    let refuse = |reason: &str| ConfigError::Url {
        url: text.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(text).map_err(|e| refuse(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse("must be http:// or https://"));
    }
    if parsed.host().is_none() {
        return Err(refuse("has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(refuse(
            "must not have a query or fragment; /v1/events and /v1/status are appended to it",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Resource names as a quota takes them: `requests.cpu`,
/// `count/instances.ctrlplane.dev`, `requests.nvidia.com/gpu`.
fn is_resource_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_quota(entries: &[String]) -> Result<BTreeMap<String, Quantity>, ConfigError> {
    let mut hard = BTreeMap::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let refuse = |reason: String| ConfigError::Quota {
            entry: entry.to_string(),
            reason,
        };
        let (name, quantity) = entry
            .split_once('=')
            .ok_or_else(|| refuse("must be RESOURCE=QUANTITY".into()))?;
        let (name, quantity) = (name.trim(), quantity.trim());
        if !is_resource_name(name) {
            return Err(refuse(format!("{name:?} is not a resource name")));
        }
        let parsed = kube_quantity::ParsedQuantity::try_from(quantity)
            .map_err(|e| refuse(format!("{quantity:?} is not a quantity: {e}")))?;
        if parsed < kube_quantity::ParsedQuantity::default() {
            return Err(refuse(format!("{quantity:?} is negative")));
        }
        if hard
            .insert(name.to_string(), Quantity(quantity.to_string()))
            .is_some()
        {
            return Err(refuse(format!("{name} is given twice")));
        }
    }
    Ok(hard)
}

/// ClusterRole names: path segments the API server accepts (`system:` roles
/// have colons).
fn is_cluster_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn parse_bindings(entries: &[String]) -> Result<Vec<BindingTemplate>, ConfigError> {
    let mut bindings: Vec<BindingTemplate> = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let refuse = |reason: String| ConfigError::RoleBinding {
            entry: entry.to_string(),
            reason,
        };
        let (role, template) = entry
            .split_once('=')
            .ok_or_else(|| refuse("must be CLUSTERROLE=GROUP-TEMPLATE".into()))?;
        let role = role.trim();
        if !is_cluster_role_name(role) {
            return Err(refuse(format!("{role:?} is not a ClusterRole name")));
        }
        if bindings.iter().any(|b| b.cluster_role == role) {
            return Err(refuse(format!("{role} is bound twice")));
        }
        bindings.push(BindingTemplate {
            cluster_role: role.to_string(),
            group: GroupTemplate::parse(template.trim())?,
        });
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tenancy: TenancyArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<TenancyConfig>, ConfigError> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .expect("the flags parse")
            .tenancy
            .config()
    }

    #[test]
    fn tenancy_is_off_without_a_url() {
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let config = parse(&["--tenant-manager-url", "http://127.0.0.1:9000/"])
            .unwrap()
            .unwrap();
        assert_eq!(config.url, "http://127.0.0.1:9000");
        assert_eq!(config.controller, "ctrlplane-operator");
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert_eq!(config.deletion_timeout, Duration::from_secs(300));
        assert_eq!(
            config.templates.quota.keys().collect::<Vec<_>>(),
            [
                "count/instances.ctrlplane.dev",
                "count/sandboxes.ctrlplane.dev",
                "count/webhooks.ctrlplane.dev",
                "requests.storage"
            ]
        );
        let roles: Vec<(&str, &str)> = config
            .templates
            .bindings
            .iter()
            .map(|b| (b.cluster_role.as_str(), b.group.as_str()))
            .collect();
        assert_eq!(
            roles,
            [
                ("ctrlplane-operator-admin", "{org}-{project}-admins"),
                ("ctrlplane-operator-edit", "{org}-{project}-editors"),
                ("ctrlplane-operator-view", "{org}-{project}-viewers"),
            ]
        );
    }

    #[test]
    fn given_templates_replace_the_defaults_and_empty_means_none() {
        let config = parse(&[
            "--tenant-manager-url=https://tm.example:8443/api",
            "--tenant-quota=requests.cpu=4,requests.memory=8Gi",
            "--tenant-quota",
            "count/instances.ctrlplane.dev=3",
            "--tenant-role-binding=",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.url, "https://tm.example:8443/api");
        assert_eq!(config.templates.quota.len(), 3);
        assert_eq!(
            config.templates.quota["requests.memory"],
            Quantity("8Gi".into())
        );
        assert!(config.templates.bindings.is_empty());
        let config = parse(&["--tenant-manager-url=http://tm", "--tenant-quota="])
            .unwrap()
            .unwrap();
        assert!(config.templates.quota.is_empty());
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        for (args, flag) in [
            (
                vec!["--tenant-manager-url=ftp://tm"],
                "--tenant-manager-url",
            ),
            (vec!["--tenant-manager-url=tm:8080"], "--tenant-manager-url"),
            (
                vec!["--tenant-manager-url=http://tm/?x=1"],
                "--tenant-manager-url",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-controller-name= ",
                ],
                "--tenant-controller-name",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-quota=requests.cpu",
                ],
                "--tenant-quota",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-quota=requests.cpu=lots",
                ],
                "--tenant-quota",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-quota=requests.cpu=-1",
                ],
                "--tenant-quota",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-quota=cpu =1,cpu=2",
                ],
                "--tenant-quota",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-quota=bad name=1",
                ],
                "--tenant-quota",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-role-binding=edit",
                ],
                "--tenant-role-binding",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-role-binding=edit={team}",
                ],
                "--tenant-role-binding",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-role-binding=a/b={org}",
                ],
                "--tenant-role-binding",
            ),
            (
                vec![
                    "--tenant-manager-url=http://tm",
                    "--tenant-role-binding=edit={org},edit={project}",
                ],
                "--tenant-role-binding",
            ),
        ] {
            let error = parse(&args).unwrap_err().to_string();
            assert!(error.starts_with(flag), "{args:?}: {error}");
        }
    }
}
