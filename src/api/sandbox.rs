//! The Sandbox kind: a disposable environment made from a base image.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DesiredState, EnvVar, HistoryEntry, PortSpec, PositiveQuantity, ProviderRef,
    conditions_schema, env_schema, history_schema, ports_schema, positive_quantity_schema,
};

/// Longest TTL a Sandbox may ask for: 30 days.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
/// Shortest TTL a Sandbox may ask for.
pub const MIN_TTL_SECONDS: i64 = 60;

/// A disposable environment: a base image with cpu, memory and storage that
/// lives until its TTL or expiry time, can be stopped (keeping its data) and
/// started again, and is placed on a host.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "Sandbox",
    namespaced,
    status = "SandboxStatus",
    derive = "PartialEq",
    shortname = "sbx",
    category = "ctrlplane",
    doc = "A Sandbox is a disposable environment made from a base image, with a TTL, that can be stopped and started again without losing its data.",
    selectable = ".spec.image",
    selectable = ".spec.agentId",
    selectable = ".spec.jobId",
    selectable = ".spec.state",
    selectable = ".status.phase",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the Sandbox is in its lifecycle"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the sandbox is running and ready"
    ),
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".status.host",
        description = "The node it runs on"
    ),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.podIP",
        priority = 1,
        description = "The sandbox's IP address"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the sandbox expires"
    ),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".spec.agentId",
        priority = 1,
        description = "The agent that asked for it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.ttlSeconds) && has(self.expiresAt))").message("set at most one of spec.ttlSeconds and spec.expiresAt").field_path(".expiresAt"))]
#[x_kube(validation = Rule::new("has(oldSelf.source) == has(self.source) && (!has(self.source) || self.source == oldSelf.source)").message("spec.source is set when the sandbox is created and cannot change").field_path(".source"))]
pub struct SandboxSpec {
    /// The base image the sandbox runs, e.g. `ghcr.io/acme/devbox:2024.10`.
    #[x_kube(validation = Rule::new(super::common::IMAGE_REFERENCE_RULE).message(super::common::IMAGE_REFERENCE_MESSAGE))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// CPU, memory and storage for the sandbox.
    pub resources: SandboxResources,

    /// Seconds the sandbox lives after it was created, from 60 to 2592000
    /// (30 days). Extending it before the deadline postpones expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: Option<i64>,

    /// An absolute expiry time, instead of ttlSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,

    /// What happens at expiry: Delete (the default) removes the sandbox and
    /// its data; Stop stops it and keeps its data.
    #[serde(default)]
    pub expiry_policy: ExpiryPolicy,

    /// Running (the default) or Stopped. Stopping keeps the data.
    #[serde(default)]
    pub state: DesiredState,

    /// Where the sandbox runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// The agent that asked for the sandbox. Also set as the label
    /// ctrlplane.dev/agent-id, so `kubectl get sbx -l ctrlplane.dev/agent-id=...` works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')").message("must be usable as a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub agent_id: Option<String>,

    /// The job the sandbox was made for. Also set as the label ctrlplane.dev/job-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')").message("must be usable as a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub job_id: Option<String>,

    /// Environment variables, as plain values or references to Secret keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_schema")]
    pub env: Vec<EnvVar>,

    /// Ports to expose through a Service. No ports, no Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports_schema")]
    pub ports: Vec<PortSpec>,

    /// Name of the provider that runs the sandbox. Empty means `pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("must be a provider name: lowercase letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 63))]
    pub provider: Option<String>,

    /// A timestamp that asks for a restart when it changes; it also moves a
    /// sandbox out of Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<DateTime<Utc>>,

    /// What the sandbox's data starts from. Empty: an empty volume. Set when
    /// the sandbox is created; it cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SandboxSource>,
}

/// What a sandbox's data starts from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSource {
    /// A SandboxSnapshot in the same namespace: the sandbox's volume starts
    /// as a copy of it. The snapshot must be Ready.
    pub snapshot_ref: SnapshotReference,
}

/// A SandboxSnapshot in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotReference {
    /// The SandboxSnapshot's name.
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a SandboxSnapshot name: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A command of a Sandbox, as its history remembers it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandMark {
    pub name: String,
    pub uid: String,
    /// When it was created: commands run in that order.
    pub created: DateTime<Utc>,
}

/// How far a Sandbox's history has recorded its commands, which run one at
/// a time in the order they were created.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandCursor {
    /// Every command up to this one, in creation order, has had its start
    /// and its end recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<CommandMark>,
    /// Commands after `finished` with something recorded: recent ones, and
    /// the one that runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded: Vec<RecordedCommand>,
}

/// What a Sandbox's history has recorded of one command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedCommand {
    pub name: String,
    pub uid: String,
    /// Whether its end is recorded too (its start always is).
    #[serde(default)]
    pub finished: bool,
}

/// CPU, memory and storage for a sandbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxResources {
    /// CPU, e.g. `500m` or `2`. Must be greater than zero.
    #[schemars(schema_with = "positive_quantity_schema")]
    pub cpu: PositiveQuantity,
    /// Memory, e.g. `1Gi`. Must be greater than zero.
    #[schemars(schema_with = "positive_quantity_schema")]
    pub memory: PositiveQuantity,
    /// Size of the volume that keeps the sandbox's data across stops, e.g.
    /// `10Gi`. Must be greater than zero and cannot shrink.
    #[schemars(schema_with = "positive_quantity_schema")]
    #[x_kube(validation = Rule::new("quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0").message("cannot shrink: a volume can only grow"))]
    pub storage: PositiveQuantity,
    /// StorageClass of the volume. Empty means the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// What happens when a sandbox expires.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ExpiryPolicy {
    /// Delete the sandbox and its data.
    #[default]
    Delete,
    /// Stop the sandbox and keep its data.
    Stop,
}

/// Where a sandbox runs: a named host, or any host whose labels match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.host) && has(self.nodeSelector))").message("set at most one of host and nodeSelector"))]
pub struct Placement {
    /// The name of the node to run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a node name"))]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// Labels a node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// Where a Sandbox is in its lifecycle. The allowed moves between these are
/// the Sandbox transition table (see docs/api-reference.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SandboxPhase {
    Created,
    Starting,
    Running,
    Stopped,
    Error,
    Destroyed,
}

impl std::fmt::Display for SandboxPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// Where the Sandbox is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SandboxPhase>,
    /// The metadata.generation that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Synced, Scheduled and Expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The sandbox's IP address while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podIP")]
    pub pod_ip: Option<String>,
    /// The node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it last started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The objects that realise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<ProviderRef>,
    /// Name of the PersistentVolumeClaim that holds its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
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
    /// How far the history has recorded its commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<CommandCursor>,
}
