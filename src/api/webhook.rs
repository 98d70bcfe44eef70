//! The Webhook and WebhookDelivery kinds: signed lifecycle events sent to an
//! external HTTPS endpoint, and the durable record of each one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, EventType, conditions_schema, event_selector_schema};

/// An external endpoint that receives signed lifecycle events (Standard
/// Webhooks) for the Instances and Sandboxes in its own namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "Webhook",
    namespaced,
    status = "WebhookStatus",
    derive = "PartialEq",
    shortname = "wh",
    category = "ctrlplane",
    doc = "A Webhook is an HTTPS endpoint that receives signed lifecycle events for the objects in its namespace.",
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".spec.url",
        description = "Where events are sent"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether events can be sent"
    ),
    printcolumn(
        name = "Active",
        type_ = "boolean",
        json_path = ".spec.active",
        description = "Whether the webhook is switched on"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.succeeded",
        description = "Deliveries that succeeded"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Deliveries that failed for good"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pending",
        description = "Deliveries not yet done"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.url.startsWith('https://') || (self.allowInsecureHttp && self.url.startsWith('http://'))").message("spec.url must use https:// (http:// only with spec.allowInsecureHttp: true)").field_path(".url"))]
pub struct WebhookSpec {
    /// The endpoint that receives events, e.g. https://hooks.example.com/ctrlplane.
    /// Must be https unless allowInsecureHttp is true.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getHostname() != ''").message("must be an absolute URL with a host, such as https://hooks.example.com/path"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("must not carry credentials (user:password@host): they would show in status, Events and logs; the signing Secret authenticates the operator"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// Allow a plain http:// URL. Only for endpoints inside a trusted network.
    #[serde(default)]
    pub allow_insecure_http: bool,

    /// The Secret key that holds the signing secret, in the Standard Webhooks
    /// `whsec_<base64>` form or raw. The secret never appears in spec, status,
    /// logs or events.
    pub secret_ref: WebhookSecretRef,

    /// Event types to send; `instance.*`-style wildcards and `*` are allowed.
    /// Empty means every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "events_schema")]
    pub events: Vec<String>,

    /// Whether events are sent. Defaults to true. A 410 Gone answer switches
    /// the webhook off in status (status.disabled) without touching this field.
    #[serde(default = "default_true")]
    pub active: bool,

    /// Seconds to wait for the endpoint to answer. Defaults to 10.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,

    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry_policy: RetryPolicy,

    /// Which deliveries leave a WebhookDelivery record. `Failures` (the
    /// default): only those that needed a retry or failed, so `kubectl get
    /// whd` shows what needs attention and a healthy endpoint costs no
    /// writes. `All`: every delivery, for an audit trail.
    #[serde(default)]
    pub delivery_records: DeliveryRecords,

    /// PEM certificates of private certificate authorities that the endpoint's
    /// certificate may chain to, in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')").message("must hold PEM certificates"))]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,

    /// Extra HTTP headers sent with every event. Not for secrets: they are
    /// stored in plain text. The webhook-* and content-type headers are set
    /// by the operator and cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "headers_schema")]
    pub headers: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn default_timeout_seconds() -> i32 {
    10
}

fn events_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = event_selector_schema(generator);
    json_schema!({
        "type": "array",
        "items": item,
        "maxItems": 64,
        "x-kubernetes-list-type": "set",
    })
}

fn headers_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 1024},
        "maxProperties": 32,
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k.matches('^[A-Za-z0-9!#$%&\\'*+.^_`|~-]+$'))",
                "message": "header names must be HTTP tokens",
            },
            {
                "rule": "self.all(k, !(k.lowerAscii().startsWith('webhook-') || k.lowerAscii() in ['content-type', 'content-length', 'host', 'authorization', 'user-agent']))",
                "message": "webhook-*, content-type, content-length, host, authorization and user-agent are set by the operator or carry secrets, and cannot be set here",
            },
            {
                "rule": "self.all(k, !self[k].matches('[[:cntrl:]]'))",
                "message": "header values must not contain control characters such as CR or LF: they would let a value add headers of its own",
            },
        ],
    })
}

/// Which deliveries leave a WebhookDelivery record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeliveryRecords {
    /// Only deliveries that needed a retry or failed.
    #[default]
    Failures,
    /// Every delivery.
    All,
}

/// Where the signing secret lives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretRef {
    /// Name of the Secret, in the Webhook's namespace.
    #[x_kube(validation = Rule::new("!format.dns1123Subdomain().validate(self).hasValue()").message("must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key that holds the current secret. Defaults to `secret`.
    #[serde(default = "default_secret_key")]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Key that holds the previous secret while it rotates. When that key
    /// exists, events are signed with both. Defaults to `previous-secret`.
    #[serde(default = "default_previous_secret_key")]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub previous_key: String,
}

fn default_secret_key() -> String {
    "secret".into()
}

fn default_previous_secret_key() -> String {
    "previous-secret".into()
}

/// How failed deliveries are retried: capped exponential backoff with jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.backoffBaseSeconds <= self.backoffCapSeconds").message("spec.retryPolicy.backoffBaseSeconds must not exceed backoffCapSeconds").field_path(".backoffBaseSeconds"))]
pub struct RetryPolicy {
    /// Attempts in all, the first included, before a delivery is Failed.
    /// Defaults to 8.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 50))]
    pub max_attempts: i32,
    /// Seconds before the first retry; each later retry waits twice as long.
    /// Defaults to 1.
    #[serde(default = "default_backoff_base_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub backoff_base_seconds: i32,
    /// The longest wait between two attempts, in seconds. Defaults to 600.
    #[serde(default = "default_backoff_cap_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub backoff_cap_seconds: i32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_base_seconds: default_backoff_base_seconds(),
            backoff_cap_seconds: default_backoff_cap_seconds(),
        }
    }
}

fn default_max_attempts() -> i32 {
    8
}

fn default_backoff_base_seconds() -> i32 {
    1
}

fn default_backoff_cap_seconds() -> i32 {
    600
}

/// What the operator observed about a Webhook and its deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The metadata.generation that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (URL valid, Secret found and non-empty, address allowed, not disabled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Events delivered (answered 2xx) since the Webhook was created. Counted
    /// by the operator and written at most about once a second, so a crash
    /// of the operator may lose the last moment's counts.
    #[serde(default)]
    pub succeeded: i64,
    /// Events that failed for good (every attempt failed, or 410 Gone) since
    /// the Webhook was created.
    #[serde(default)]
    pub failed: i64,
    /// Deliveries waiting for a retry now (their WebhookDelivery records).
    #[serde(default)]
    pub pending: i64,
    /// Failed attempts in a row, across deliveries.
    #[serde(default)]
    pub consecutive_failures: i64,
    /// The most recent delivery attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<LastDelivery>,
    /// Set when the operator switched the webhook off, e.g. after 410 Gone.
    /// Remove the Webhook and create it again, or change its URL, to switch it back on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

/// The most recent delivery attempt of a Webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDelivery {
    /// The delivery's name: its WebhookDelivery record's, when it has one
    /// (`<webhook>-<object uid>-<sequence>` either way).
    pub name: String,
    /// When the attempt was made.
    pub time: DateTime<Utc>,
    /// The HTTP status code, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// Whether the attempt succeeded.
    pub succeeded: bool,
}

/// Why and when a Webhook was switched off.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disabled {
    /// A CamelCase reason, e.g. EndpointGone.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The spec.url that was switched off; a new URL switches it back on.
    pub url: String,
}

/// One lifecycle event on its way to one Webhook: a durable record of every
/// attempt. The operator creates these and lets them expire.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ctrlplane.dev",
    version = "v1alpha1",
    kind = "WebhookDelivery",
    namespaced,
    status = "WebhookDeliveryStatus",
    derive = "PartialEq",
    shortname = "whd",
    category = "ctrlplane",
    doc = "A WebhookDelivery is one lifecycle event sent to one Webhook, with a record of every attempt.",
    selectable = ".spec.webhookName",
    printcolumn(
        name = "Webhook",
        type_ = "string",
        json_path = ".spec.webhookName",
        description = "The Webhook it goes to"
    ),
    printcolumn(
        name = "Event",
        type_ = "string",
        json_path = ".spec.event.type",
        description = "The event type"
    ),
    printcolumn(
        name = "Object",
        type_ = "string",
        json_path = ".spec.event.subject.name",
        description = "The object the event is about"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Succeeded or Failed"
    ),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attempts",
        description = "Attempts made"
    ),
    printcolumn(
        name = "Code",
        type_ = "integer",
        json_path = ".status.lastStatusCode",
        description = "The last HTTP status code"
    ),
    printcolumn(
        name = "Next-Retry",
        type_ = "string",
        json_path = ".status.nextAttemptAt",
        priority = 1,
        description = "When the next attempt is due"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a delivery records one event"))]
pub struct WebhookDeliverySpec {
    /// The Webhook, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub webhook_name: String,
    /// The event, exactly as it is sent.
    pub event: DeliveryEvent,
}

/// A lifecycle event as a delivery carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryEvent {
    /// The webhook-id header: the same on every attempt, so receivers can
    /// drop duplicates.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The object the event is about.
    pub subject: EventSubject,
    /// The event's position in the object's life.
    pub sequence: i64,
    /// The phase before, for state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The phase after, for state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why it happened.
    pub reason: String,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Event-specific values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// The object an event is about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSubject {
    /// Instance or Sandbox.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its UID, which tells apart two objects of the same name.
    pub uid: String,
}

/// Where a delivery stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeliveryPhase {
    /// Not yet delivered; another attempt will be made.
    #[default]
    Pending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// Every attempt failed, or the endpoint is gone.
    Failed,
}

/// Every attempt of a delivery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveryStatus {
    /// Pending, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeliveryPhase>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: i32,
    /// The HTTP status code of the last attempt, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i32>,
    /// What went wrong in the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due, while Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The most recent attempts, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub attempt_log: Vec<DeliveryAttempt>,
    /// Ready (delivered) and Stalled (failed for good), for tools that read
    /// conditions, such as Flux's kstatus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One attempt of a delivery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    /// When it was made.
    pub time: DateTime<Utc>,
    /// The HTTP status code, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: i64,
}
