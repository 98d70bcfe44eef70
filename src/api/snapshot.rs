//! The SandboxSnapshot kind: a point-in-time copy of a Sandbox's data, that
//! a new Sandbox can start from.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::command::SandboxReference;
use super::common::{Condition, HistoryEntry, conditions_schema, history_schema};

/// A snapshot of a Sandbox's data (its volume). A Sandbox whose
/// `spec.source.snapshotRef` names it starts with a copy of that data.
/// Deleting it deletes the volume snapshot behind it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "SandboxSnapshot",
    namespaced,
    status = "SandboxSnapshotStatus",
    derive = "PartialEq",
    shortname = "sbxsnap",
    category = "ctrlplane",
    doc = "A SandboxSnapshot is a point-in-time copy of a Sandbox's data that new Sandboxes can start from.",
    selectable = ".spec.sandboxRef.name",
    printcolumn(
        name = "Sandbox",
        type_ = "string",
        json_path = ".spec.sandboxRef.name",
        description = "The Sandbox whose data it copies"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Ready or Failed"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.restoreSize",
        description = "The size a restore needs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a snapshot copies one Sandbox once; create another"))]
pub struct SandboxSnapshotSpec {
    /// The Sandbox whose data to copy, in the same namespace.
    pub sandbox_ref: SandboxReference,
    /// The VolumeSnapshotClass to use. Empty means the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a VolumeSnapshotClass name"))]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,
}

/// Where a snapshot is in its life. The allowed moves between these are the
/// SandboxSnapshot transition table (see docs/api-reference.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SnapshotPhase {
    /// Being taken.
    Pending,
    /// Ready to use: a Sandbox can start from it.
    Ready,
    /// It could not be taken, or is no longer usable.
    Failed,
}

impl std::fmt::Display for SnapshotPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotStatus {
    /// Where the snapshot is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// The metadata.generation that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Stalled and Synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Whether a Sandbox can start from it.
    #[serde(default)]
    pub ready_to_use: bool,
    /// The size a volume restored from it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// When the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<DateTime<Utc>>,
    /// Why it could not be taken, as the snapshot controller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The VolumeSnapshot behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_name: Option<String>,
    /// The claim it copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_claim: Option<String>,
    /// Recent lifecycle events, oldest first. Webhooks are sent from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "history_schema")]
    pub history: Vec<HistoryEntry>,
    /// The highest history sequence that is dispatched to webhooks.
    #[serde(default)]
    pub dispatched_seq: i64,
}
