//! The SandboxCommand kind: one command run in a Sandbox, with what it
//! printed and how it ended, recorded once.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, EnvVar, HistoryEntry, conditions_schema, env_schema};

/// How much of each output stream a command's status keeps: the last 32 KiB.
pub const OUTPUT_LIMIT: usize = 32 * 1024;

/// A command run once in a Sandbox's running environment (its pod), when
/// the Sandbox is Running. Commands of one Sandbox run one at a time, in the
/// order they were created. What it printed (the last 32 KiB of each
/// stream) and its exit code are recorded in its status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "SandboxCommand",
    namespaced,
    status = "SandboxCommandStatus",
    derive = "PartialEq",
    shortname = "sbxcmd",
    category = "ctrlplane",
    doc = "A SandboxCommand runs one command in a Sandbox, once, and records its output and exit code.",
    selectable = ".spec.sandboxRef.name",
    printcolumn(
        name = "Sandbox",
        type_ = "string",
        json_path = ".spec.sandboxRef.name",
        description = "The Sandbox it runs in"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded, Failed or TimedOut"
    ),
    printcolumn(
        name = "Exit",
        type_ = "integer",
        json_path = ".status.exitCode",
        description = "The exit code"
    ),
    printcolumn(
        name = "Command",
        type_ = "string",
        json_path = ".spec.command",
        priority = 1,
        description = "What it runs"
    ),
    printcolumn(
        name = "Started",
        type_ = "date",
        json_path = ".status.startedAt",
        priority = 1,
        description = "When it started"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a command runs once as it was written; create another"))]
pub struct SandboxCommandSpec {
    /// The Sandbox to run in, in the same namespace.
    pub sandbox_ref: SandboxReference,

    /// The command and its arguments (argv), run directly, not through a
    /// shell: `["sh", "-c", "make test"]` for shell syntax.
    #[schemars(schema_with = "argv_schema")]
    pub command: Vec<String>,

    /// Environment variables for the command, as plain values or references
    /// to Secret keys. Values from Secrets are replaced with
    /// `[REDACTED:<NAME>]` wherever they appear in the recorded output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_schema")]
    pub env: Vec<EnvVar>,

    /// The directory to run in. Empty means the environment's own working
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub working_dir: Option<String>,

    /// Seconds the command may run before it is stopped and recorded as
    /// TimedOut. Defaults to 600.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,

    /// Seconds after it finished that the command is deleted. Empty means
    /// it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2592000))]
    pub ttl_seconds_after_finished: Option<i32>,
}

fn default_timeout_seconds() -> i32 {
    600
}

fn argv_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 256,
        "items": {"type": "string", "maxLength": 32768},
        "x-kubernetes-list-type": "atomic",
        "x-kubernetes-validations": [{
            "rule": "size(self[0]) > 0",
            "message": "the first element is the program to run and cannot be empty",
        }],
    })
}

/// A Sandbox in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxReference {
    /// The Sandbox's name.
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a Sandbox name: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a command is in its life. The allowed moves between these are the
/// SandboxCommand transition table (see docs/api-reference.md).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CommandPhase {
    /// Waiting for its Sandbox to run, or for the commands before it.
    Pending,
    /// Recorded as started; it runs.
    Running,
    /// It exited with code 0.
    Succeeded,
    /// It exited with another code, could not start, or was interrupted.
    Failed,
    /// It ran past its timeoutSeconds and was stopped.
    TimedOut,
}

impl CommandPhase {
    /// Whether the command has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::TimedOut)
    }
}

impl std::fmt::Display for CommandPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One output stream of a command, as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutput {
    /// The last 32 KiB of what it printed, with Secret values replaced by
    /// `[REDACTED:<NAME>]`.
    #[serde(default)]
    pub text: String,
    /// Whether earlier output was dropped to keep the last 32 KiB.
    #[serde(default)]
    pub truncated: bool,
    /// How many bytes it printed in all.
    #[serde(default)]
    pub bytes: i64,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCommandStatus {
    /// Where the command is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CommandPhase>,
    /// The metadata.generation that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Complete and Failed (as for a Job, so `kubectl wait
    /// --for=condition=Complete` works), and Synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The pod it ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Its exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What it printed on standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<CommandOutput>,
    /// What it printed on standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<CommandOutput>,
    /// The environment variables whose Secret values were replaced in the
    /// recorded output (names only, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    /// When it was recorded as started, just before it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// A command's own events go into its Sandbox's history; this one stays
    /// empty, and only exists so the lifecycle engine treats every kind
    /// alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(skip)]
    pub history: Vec<HistoryEntry>,
    /// See `history`.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(skip)]
    pub dispatched_seq: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}
