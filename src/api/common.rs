//! Types shared by several kinds: conditions, Secret references, environment
//! variables, ports, quantities, and the lifecycle history that feeds webhooks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::Text;

/// The shape of a container image reference: an optional registry host (with
/// an optional port), one or more lowercase path components, then a tag, a
/// digest, or both. Shared by the CEL rules of Instance and Sandbox.
pub const IMAGE_REFERENCE_RULE: &str = r"self.matches('^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')";
pub const IMAGE_REFERENCE_MESSAGE: &str = "must be a container image reference such as 'nginx:1.27', 'registry.example.com:5000/team/app:v2' or 'app@sha256:<64 hex digits>'";

/// Status of a condition, as in the Kubernetes API conventions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One aspect of an object's state, following the Kubernetes API conventions
/// (the same shape as metav1.Condition).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect this condition describes, e.g. Ready, Synced, Suspended, Progressing.
    #[serde(rename = "type")]
    pub type_: Text,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase word that says why the condition has this status.
    pub reason: Text,
    /// A sentence for people, saying what happened and what to do about it.
    #[serde(default)]
    pub message: Text,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The schema of a `conditions` list: a map keyed by type, so that server-side
/// apply and strategic merges treat each condition on its own.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// A reference to one key of a Secret in the object's own namespace. The value
/// is read by the operator at the moment it is needed and never copied into
/// the object's spec or status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret, in the same namespace. A DNS subdomain name.
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// An environment variable: a plain value, or a reference to a Secret key.
/// Exactly one of `value` and `secretKeyRef` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secretKeyRef)").message("exactly one of value and secretKeyRef must be set"))]
pub struct EnvVar {
    /// Name of the variable, as a C identifier-like string.
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$')").message("must be a valid environment variable name: letters, digits, '_', '-' and '.', not starting with a digit"))]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// A plain value. Never put a secret here: use secretKeyRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A key of a Secret in the same namespace; the container sees its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// The network protocol of a port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A named port that the workload listens on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Name of the port, unique within the object: at most 15 lowercase
    /// letters, digits and '-', with at least one letter (an IANA service name).
    /// Health checks and endpoints refer to ports by this name.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$') && self.matches('[a-z]') && !self.contains('--')").message("must be an IANA service name: lowercase letters, digits and '-', at least one letter, no '--'"))]
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
    /// Port number, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (the default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// The schema of a `ports` list: keyed by name (so names are unique and
/// server-side apply merges by name), at most 32 entries, and port numbers
/// unique too.
pub fn ports_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<PortSpec>();
    json_schema!({
        "type": "array",
        "items": item,
        "maxItems": 32,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "x-kubernetes-validations": [{
            "rule": "self.all(p, self.exists_one(q, q.port == p.port && q.protocol == p.protocol))",
            "message": "port numbers must be unique per protocol",
        }],
    })
}

/// The schema of an `env` list: keyed by name, at most 128 entries.
pub fn env_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<EnvVar>();
    json_schema!({
        "type": "array",
        "items": item,
        "maxItems": 128,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    })
}

/// The schema of a quantity that must be greater than zero, such as `500m`,
/// `2`, or `1Gi`. Integers and strings are both accepted, as in a Pod.
pub fn positive_quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
            "message": "must be a quantity greater than zero, such as 500m, 2, 512Mi or 10Gi",
        }],
    })
}

/// A positive quantity, as Kubernetes writes it.
pub type PositiveQuantity = Quantity;

/// The lifecycle event types that the operator records and webhooks receive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum EventType {
    #[serde(rename = "instance.created")]
    InstanceCreated,
    #[serde(rename = "instance.starting")]
    InstanceStarting,
    #[serde(rename = "instance.started")]
    InstanceStarted,
    #[serde(rename = "instance.stopping")]
    InstanceStopping,
    #[serde(rename = "instance.stopped")]
    InstanceStopped,
    #[serde(rename = "instance.restarted")]
    InstanceRestarted,
    #[serde(rename = "instance.failed")]
    InstanceFailed,
    #[serde(rename = "instance.scaled")]
    InstanceScaled,
    #[serde(rename = "instance.suspended")]
    InstanceSuspended,
    #[serde(rename = "instance.unsuspended")]
    InstanceUnsuspended,
    #[serde(rename = "instance.deleting")]
    InstanceDeleting,
    #[serde(rename = "instance.deleted")]
    InstanceDeleted,
    #[serde(rename = "deploy.started")]
    DeployStarted,
    #[serde(rename = "deploy.succeeded")]
    DeploySucceeded,
    #[serde(rename = "deploy.failed")]
    DeployFailed,
    #[serde(rename = "deploy.rolled_back")]
    DeployRolledBack,
    // Every replica passed its health check for the first time since the
    // Instance started.
    #[serde(rename = "health.passed")]
    HealthPassed,
    // No replica of a Running Instance is ready, with no spec change to explain it.
    #[serde(rename = "health.failed")]
    HealthFailed,
    // Some but not all replicas of a Running Instance are ready, with no
    // spec change to explain it.
    #[serde(rename = "health.degraded")]
    HealthDegraded,
    // Every replica is ready again after health.degraded or health.failed.
    #[serde(rename = "health.recovered")]
    HealthRecovered,
    // The earlier name of health.recovered. No longer recorded; kept so
    // that history entries and deliveries recorded before still read.
    #[serde(rename = "health.healthy")]
    HealthHealthy,
    // The earlier name of health.degraded and health.failed together. No
    // longer recorded; kept so that history entries and deliveries recorded
    // before still read.
    #[serde(rename = "health.unhealthy")]
    HealthUnhealthy,
    #[serde(rename = "sandbox.created")]
    SandboxCreated,
    #[serde(rename = "sandbox.starting")]
    SandboxStarting,
    #[serde(rename = "sandbox.started")]
    SandboxStarted,
    #[serde(rename = "sandbox.stopped")]
    SandboxStopped,
    #[serde(rename = "sandbox.expired")]
    SandboxExpired,
    #[serde(rename = "sandbox.failed")]
    SandboxFailed,
    #[serde(rename = "sandbox.destroyed")]
    SandboxDestroyed,
    #[serde(rename = "sandbox.command.started")]
    SandboxCommandStarted,
    #[serde(rename = "sandbox.command.succeeded")]
    SandboxCommandSucceeded,
    #[serde(rename = "sandbox.command.failed")]
    SandboxCommandFailed,
    #[serde(rename = "sandbox.snapshot.created")]
    SandboxSnapshotCreated,
    #[serde(rename = "sandbox.snapshot.ready")]
    SandboxSnapshotReady,
    #[serde(rename = "sandbox.snapshot.failed")]
    SandboxSnapshotFailed,
    #[serde(rename = "sandbox.snapshot.deleted")]
    SandboxSnapshotDeleted,
}

impl EventType {
    /// Every type the operator records.
    pub const ALL: &'static [EventType] = &[
        Self::InstanceCreated,
        Self::InstanceStarting,
        Self::InstanceStarted,
        Self::InstanceStopping,
        Self::InstanceStopped,
        Self::InstanceRestarted,
        Self::InstanceFailed,
        Self::InstanceScaled,
        Self::InstanceSuspended,
        Self::InstanceUnsuspended,
        Self::InstanceDeleting,
        Self::InstanceDeleted,
        Self::DeployStarted,
        Self::DeploySucceeded,
        Self::DeployFailed,
        Self::DeployRolledBack,
        Self::HealthPassed,
        Self::HealthFailed,
        Self::HealthDegraded,
        Self::HealthRecovered,
        Self::SandboxCreated,
        Self::SandboxStarting,
        Self::SandboxStarted,
        Self::SandboxStopped,
        Self::SandboxExpired,
        Self::SandboxFailed,
        Self::SandboxDestroyed,
        Self::SandboxCommandStarted,
        Self::SandboxCommandSucceeded,
        Self::SandboxCommandFailed,
        Self::SandboxSnapshotCreated,
        Self::SandboxSnapshotReady,
        Self::SandboxSnapshotFailed,
        Self::SandboxSnapshotDeleted,
    ];

    /// Types an earlier release recorded and this one only reads: its
    /// objects' history and its deliveries keep them. Their names are
    /// accepted in Webhook filters as aliases (see [`EventType::filter_aliases`]).
    pub const LEGACY: &'static [EventType] = &[Self::HealthHealthy, Self::HealthUnhealthy];

    /// The wire name, e.g. `instance.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InstanceCreated => "instance.created",
            Self::InstanceStarting => "instance.starting",
            Self::InstanceStarted => "instance.started",
            Self::InstanceStopping => "instance.stopping",
            Self::InstanceStopped => "instance.stopped",
            Self::InstanceRestarted => "instance.restarted",
            Self::InstanceFailed => "instance.failed",
            Self::InstanceScaled => "instance.scaled",
            Self::InstanceSuspended => "instance.suspended",
            Self::InstanceUnsuspended => "instance.unsuspended",
            Self::InstanceDeleting => "instance.deleting",
            Self::InstanceDeleted => "instance.deleted",
            Self::DeployStarted => "deploy.started",
            Self::DeploySucceeded => "deploy.succeeded",
            Self::DeployFailed => "deploy.failed",
            Self::DeployRolledBack => "deploy.rolled_back",
            Self::HealthPassed => "health.passed",
            Self::HealthFailed => "health.failed",
            Self::HealthDegraded => "health.degraded",
            Self::HealthRecovered => "health.recovered",
            Self::HealthHealthy => "health.healthy",
            Self::HealthUnhealthy => "health.unhealthy",
            Self::SandboxCreated => "sandbox.created",
            Self::SandboxStarting => "sandbox.starting",
            Self::SandboxStarted => "sandbox.started",
            Self::SandboxStopped => "sandbox.stopped",
            Self::SandboxExpired => "sandbox.expired",
            Self::SandboxFailed => "sandbox.failed",
            Self::SandboxDestroyed => "sandbox.destroyed",
            Self::SandboxCommandStarted => "sandbox.command.started",
            Self::SandboxCommandSucceeded => "sandbox.command.succeeded",
            Self::SandboxCommandFailed => "sandbox.command.failed",
            Self::SandboxSnapshotCreated => "sandbox.snapshot.created",
            Self::SandboxSnapshotReady => "sandbox.snapshot.ready",
            Self::SandboxSnapshotFailed => "sandbox.snapshot.failed",
            Self::SandboxSnapshotDeleted => "sandbox.snapshot.deleted",
        }
    }

    /// The family before the dot: `instance`, `deploy`, `health` or `sandbox`.
    pub fn family(self) -> &'static str {
        self.as_str().split('.').next().unwrap_or_default()
    }

    /// Names besides its own that select this type in a Webhook's event
    /// filter: the earlier health names, deprecated and accepted for one
    /// more release. `health.healthy` meant replicas coming back, now
    /// health.recovered; `health.unhealthy` meant replicas going unready,
    /// now health.degraded (some) or health.failed (all).
    pub fn filter_aliases(self) -> &'static [&'static str] {
        match self {
            Self::HealthRecovered => &["health.healthy"],
            Self::HealthDegraded | Self::HealthFailed => &["health.unhealthy"],
            _ => &[],
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wildcards a Webhook may subscribe to besides the exact event types.
pub const EVENT_WILDCARDS: &[&str] = &[
    "*",
    "instance.*",
    "deploy.*",
    "health.*",
    "sandbox.*",
    "sandbox.command.*",
    "sandbox.snapshot.*",
];

/// The schema of one entry of a Webhook's event filter: a known event type,
/// one of the wildcards, or a deprecated alias (`health.healthy`,
/// `health.unhealthy`), listed so that `kubectl explain` shows every choice
/// and a typo is refused with the list of supported values.
pub fn event_selector_schema(_: &mut SchemaGenerator) -> Schema {
    let mut values: Vec<&str> = EVENT_WILDCARDS.to_vec();
    values.extend(EventType::ALL.iter().map(|t| t.as_str()));
    values.extend(EventType::LEGACY.iter().map(|t| t.as_str()));
    json_schema!({
        "type": "string",
        "enum": values,
    })
}

/// One lifecycle event in an object's bounded history. Webhook deliveries are
/// made from these entries, in sequence order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Position of this event in the object's life, starting at 1 and never reused.
    pub sequence: i64,
    /// The event type, e.g. instance.started.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// The phase before the event, when the event is a state change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Text>,
    /// The phase after the event, when the event is a state change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Text>,
    /// A CamelCase word that says why it happened.
    pub reason: Text,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Text::is_empty")]
    pub message: Text,
    /// Event-specific values, e.g. the old and new replica counts of instance.scaled.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// When it happened.
    pub time: DateTime<Utc>,
}

/// The schema of a `history` list: atomic. The operator keeps 50 dispatched
/// entries; the hard limit is far above that because entries not yet
/// dispatched to webhooks are never dropped.
pub fn history_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<HistoryEntry>();
    json_schema!({
        "type": "array",
        "items": item,
        "maxItems": 1000,
        "x-kubernetes-list-type": "atomic",
    })
}

/// Whether a user wants the workload running or stopped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// A reference to the provider's object that realises this one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// Name of the provider that manages it, e.g. kubernetes or pod.
    pub provider: Text,
    /// Kind of the object, e.g. Deployment or Pod.
    pub kind: Text,
    /// Name of the object, in the same namespace.
    pub name: String,
}

/// A Kubernetes time (jiff) in our own clock type (chrono); `None` when
/// chrono cannot hold it.
pub fn utc_of(
    time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(time.0.as_second(), time.0.subsec_nanosecond().max(0) as u32)
}
