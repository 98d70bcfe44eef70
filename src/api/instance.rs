//! The Instance kind: a long-running application.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Text;

use super::common::{
    Condition, DesiredState, EnvVar, HistoryEntry, PortSpec, PositiveQuantity, ProviderRef,
    conditions_schema, env_schema, history_schema, ports_schema, positive_quantity_schema,
};

/// A long-running application: an image run as a number of replicas, with
/// resources, environment, ports, a health check and a region. The operator
/// realises it through a provider (by default a Deployment and a Service) and
/// reports its phase, endpoints and releases in status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "Instance",
    namespaced,
    status = "InstanceStatus",
    derive = "PartialEq",
    shortname = "inst",
    category = "ctrlplane",
    doc = "An Instance is a long-running application that the operator runs through a provider and reports on.",
    selectable = ".spec.provider",
    selectable = ".spec.image",
    selectable = ".spec.region",
    selectable = ".spec.state",
    selectable = ".status.phase",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the Instance is in its lifecycle"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every desired replica is ready"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired replicas"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas that are ready"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoints[0].url",
        description = "The first port's in-cluster URL"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        priority = 1,
        description = "The image the Instance runs"
    ),
    printcolumn(
        name = "Release",
        type_ = "integer",
        json_path = ".status.currentRelease.version",
        priority = 1,
        description = "The current release"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.healthCheck) || !has(self.healthCheck.httpGet) || (has(self.ports) && self.ports.exists(p, p.name == self.healthCheck.httpGet.port))").message("must name one of spec.ports").field_path(".healthCheck.httpGet.port"))]
#[x_kube(validation = Rule::new("!has(self.healthCheck) || !has(self.healthCheck.tcpSocket) || (has(self.ports) && self.ports.exists(p, p.name == self.healthCheck.tcpSocket.port))").message("must name one of spec.ports").field_path(".healthCheck.tcpSocket.port"))]
pub struct InstanceSpec {
    /// The container image to run, e.g. `registry.example.com/team/app:1.4.2`.
    /// Changing it starts a new release.
    #[x_kube(validation = Rule::new(super::common::IMAGE_REFERENCE_RULE).message(super::common::IMAGE_REFERENCE_MESSAGE))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// How many copies to run while the Instance is running. Also set by
    /// `kubectl scale`. Defaults to 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Running (the default) or Stopped. A stopped Instance keeps its Service
    /// and runs no replicas.
    #[serde(default)]
    pub state: DesiredState,

    /// CPU and memory for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<InstanceResources>,

    /// Environment variables, as plain values or references to Secret keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_schema")]
    pub env: Vec<EnvVar>,

    /// The ports the application listens on. Each becomes a port of the
    /// Instance's Service and an entry of status.endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports_schema")]
    pub ports: Vec<PortSpec>,

    /// How to tell that a replica is alive and ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// The region to run in. Replicas are placed on nodes whose
    /// `topology.kubernetes.io/region` label has this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("must be a region name such as eu-west-1: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,

    /// Name of the provider that runs the Instance. Empty means the
    /// operator's default (normally `kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("must be a provider name: lowercase letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 63))]
    pub provider: Option<String>,

    /// Set to suspend the Instance: it is stopped, and stays stopped whatever
    /// spec.state says, until this is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<Suspension>,

    /// A timestamp that asks for a rolling restart when it changes, like
    /// `kubectl rollout restart`. Setting the same value again does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<DateTime<Utc>>,

    /// What to do when a new release fails to roll out within
    /// progressDeadlineSeconds: Manual (the default) leaves the Instance
    /// Failed until the spec is fixed; Auto returns to the last good release.
    #[serde(default)]
    pub rollback: RollbackPolicy,

    /// How long a rollout may take to make progress before it counts as
    /// failed. Defaults to 600 seconds.
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 5, max = 86400))]
    pub progress_deadline_seconds: i32,
}

fn default_replicas() -> i32 {
    1
}

fn default_progress_deadline_seconds() -> i32 {
    600
}

/// CPU and memory requested for each replica. Limits default to the requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceResources {
    /// CPU per replica, e.g. `250m` or `2`. Must be greater than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_quantity_schema")]
    pub cpu: Option<PositiveQuantity>,
    /// Memory per replica, e.g. `256Mi` or `2Gi`. Must be greater than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_quantity_schema")]
    pub memory: Option<PositiveQuantity>,
}

/// A health check, used for both readiness and liveness. Exactly one of
/// httpGet, tcpSocket and exec is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.httpGet) ? 1 : 0) + (has(self.tcpSocket) ? 1 : 0) + (has(self.exec) ? 1 : 0) == 1").message("exactly one of httpGet, tcpSocket and exec must be set"))]
pub struct HealthCheck {
    /// An HTTP GET that must answer 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheck>,
    /// A TCP connection that must open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheck>,
    /// A command run in the container that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheck>,
    /// Seconds after start before the first check. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between checks. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds before a check times out. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Failed checks in a row before a replica counts as unhealthy. Defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
}

/// An HTTP health check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// The path to request, starting with '/'.
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must start with '/'"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// The name of one of spec.ports.
    #[schemars(length(min = 1, max = 15))]
    pub port: String,
}

/// A TCP health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpHealthCheck {
    /// The name of one of spec.ports.
    #[schemars(length(min = 1, max = 15))]
    pub port: String,
}

/// A command health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecHealthCheck {
    /// The command and its arguments, run without a shell.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
}

/// Why an Instance is suspended.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    /// Why it is suspended, for people, e.g. "invoice 1042 unpaid".
    #[x_kube(validation = Rule::new("self.trim() != ''").message("must say why the Instance is suspended"))]
    #[schemars(length(min = 1, max = 256))]
    pub reason: String,
}

/// What to do when a release fails to roll out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RollbackPolicy {
    /// Leave the Instance Failed until the spec is fixed.
    #[default]
    Manual,
    /// Return to the last release that rolled out.
    Auto,
}

/// Where an Instance is in its lifecycle. The allowed moves between these are
/// the Instance transition table (see docs/api-reference.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum InstancePhase {
    Provisioning,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Destroying,
    Destroyed,
}

impl std::fmt::Display for InstancePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Where the Instance is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,
    /// The metadata.generation that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Synced, Suspended and Progressing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Replicas that exist now (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The label selector of the Instance's replicas, as a string (for the
    /// scale subresource and HorizontalPodAutoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The in-cluster URL of each port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The object that realises the Instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<ProviderRef>,
    /// The release now running or rolling out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_release: Option<Release>,
    /// Recent releases, newest last (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub releases: Vec<Release>,
    /// When the Instance was suspended, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<DateTime<Utc>>,
    /// Why the Instance is suspended, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_reason: Option<String>,
    /// The spec.restartedAt value that was last carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<DateTime<Utc>>,
    /// Recent lifecycle events, oldest first. Webhooks are sent from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "history_schema")]
    pub history: Vec<HistoryEntry>,
    /// The highest history sequence for which webhook deliveries exist.
    #[serde(default)]
    pub dispatched_seq: i64,
    /// The replicas and resources last acted on, so that a scale can be told
    /// apart from a re-apply of the same values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_scale: Option<AppliedScale>,
    /// The metadata.generation at which the Instance last failed. A newer
    /// generation (a changed spec) starts it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
}

/// Replicas and resources as last acted on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedScale {
    /// Replicas while running.
    pub replicas: i32,
    /// CPU per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// One port's in-cluster address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The port's name.
    pub name: Text,
    /// The URL, e.g. http://web.team-a.svc.cluster.local:8080.
    pub url: String,
}

/// One image rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// Increases by one with every image change, starting at 1.
    pub version: i64,
    /// The image of this release.
    pub image: Text,
    /// When the release began.
    pub created_at: DateTime<Utc>,
    /// Pending, Succeeded, Failed or RolledBack.
    pub outcome: ReleaseOutcome,
}

/// How a release ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReleaseOutcome {
    Pending,
    Succeeded,
    Failed,
    RolledBack,
}
