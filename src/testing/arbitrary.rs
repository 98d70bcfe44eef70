//! Wide proptest strategies, shared by every kind's no-panic tests.
//!
//! The planners' own property tests use narrow, meaningful inputs to check
//! decisions. These are for robustness: any JSON, any string (unicode,
//! empty, 100 KB), any integer (MIN, MAX, negative), any time across
//! chrono's whole range, empty and large vectors, arbitrary bytes. An
//! object reaches a planner from the cluster, where anything that passes
//! the API server's schema (and, with an older schema or a hand-edited
//! status, much that does not) can be stored.
//!
//! - [`json_value`]: any JSON value, bounded in depth and size.
//! - [`mutated_sample`] / [`object`]: a full, valid object of a kind with
//!   1 to 6 random edits at random paths, as JSON or as the typed object
//!   (only those that still deserialize).
//! - [`any_datetime`], [`any_std_duration`], [`any_system_time`],
//!   [`any_jitter`], [`any_string`], [`any_i32`], [`any_i64`].
//! - One strategy for every observation type a planner takes, and for a
//!   receiver's answer (status, headers).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::api::{
    CommandMark, CommandPhase, Disabled, HistoryEntry, LastDelivery, Placement, SnapshotPhase,
};
use crate::delivery::AttemptResult;
use crate::delivery::backoff::Policy;
use crate::plan::capacity::Request;
use crate::plan::command::{CommandObservation, Run, RunEnd, SandboxView, SecretValues};
use crate::plan::instance::InstanceObservation;
use crate::plan::sandbox::{CommandView, SandboxObservation, SourceView};
use crate::plan::snapshot::{SnapshotObservation, SnapshotSource};
use crate::plan::webhook::{AttemptEnd, DeliveryTally, WebhookObservation};
use crate::provider::{
    ClaimObserved, Cleanup, ExecOutcome, Host, PodObserved, SANDBOX_HOST_TAINT, SandboxObserved,
    SnapshotObserved, Tail, UnknownProvider, WorkloadStatus,
};

/// The time the samples are written around.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
}

// ------------------------------------------------------------------ scalars

/// Strings that mean something somewhere: phases, names, quantities,
/// numbers and dates at and past their edges, odd characters.
const NOTABLE: &[&str] = &[
    "",
    " ",
    "Running",
    "Pending",
    "Failed",
    "Succeeded",
    "Stopped",
    "Error",
    "Destroyed",
    "Ready",
    "TimedOut",
    "True",
    "Unknown",
    "kubernetes",
    "pod",
    "nginx:1.27",
    "http",
    "https-web",
    "grpc",
    "ctrlplane.dev/cleanup",
    SANDBOX_HOST_TAINT,
    "0",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "500m",
    "1Gi",
    "1e3",
    "0.000001m",
    "9999999999999999999999Ei",
    "-1Gi",
    "NaN",
    "1E+308",
    "1e400",
    ".5",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "0000-01-01T00:00:00+23:59",
    "+262143-12-31T23:59:59Z",
    "-262143-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "2026-11-01T12:00:00Z",
    "2026-11-01T12:00:60Z",
    "2026-02-30T00:00:00Z",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "é",
    "😀",
    "\u{0}",
    "\u{FFFD}",
    "a\u{301}",
    "\r\n",
    "https://example.com/x",
    "instance.*",
    "*",
    "health.healthy",
    "sandbox.command.*",
];

/// Any string: arbitrary unicode, notable values, name-like ones, and now
/// and then a long one (up to 100 KB).
pub fn any_string() -> BoxedStrategy<String> {
    prop_oneof![
        10 => short_string(),
        1 => long_string(),
    ]
    .boxed()
}

/// Any string but a long one: for the elements of long vectors, where a
/// 100 KB string in every tenth element would only make the test slow.
pub fn short_string() -> BoxedStrategy<String> {
    // Built from chars rather than a regex: several times faster, and as
    // wide (any::<char>() favours the awkward ones).
    const NAME: &[char] = &[
        'a', 'b', 'c', 'k', 'x', 'z', '0', '1', '9', '-', '.', '-', 'w', 'e',
    ];
    prop_oneof![
        5 => prop::collection::vec(any::<char>(), 0..32).prop_map(String::from_iter),
        3 => prop::sample::select(NOTABLE).prop_map(str::to_string),
        2 => prop::collection::vec(prop::sample::select(NAME), 1..=71).prop_map(String::from_iter),
    ]
    .boxed()
}

/// [`any_string`] when `rich`, else [`short_string`].
fn text(rich: bool) -> BoxedStrategy<String> {
    if rich { any_string() } else { short_string() }
}

/// A string of up to 100 KB: a few ASCII bytes, then one character over
/// and over, so that a byte offset often falls inside a character.
pub fn long_string() -> BoxedStrategy<String> {
    (
        0usize..4,
        prop::sample::select(&['a', 'é', '€', '😀', '\u{0}', '-'][..]),
        0usize..=100 * 1024,
    )
        .prop_map(|(ascii, c, bytes)| {
            let mut s = "a".repeat(ascii);
            s.push_str(&c.to_string().repeat(bytes / c.len_utf8()));
            s
        })
        .boxed()
}

/// Any i32, with its edges and the small values that decisions turn on.
pub fn any_i32() -> BoxedStrategy<i32> {
    prop_oneof![
        3 => any::<i32>(),
        2 => prop::sample::select(&[i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX][..]),
        3 => -2i32..12,
    ]
    .boxed()
}

/// Any i64, with its edges and the small values that decisions turn on.
pub fn any_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => any::<i64>(),
        2 => prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            i64::from(i32::MIN),
            -1,
            0,
            1,
            i64::from(i32::MAX),
            i64::MAX - 1,
            i64::MAX,
        ]),
        3 => -2i64..60,
    ]
    .boxed()
}

/// Any instant chrono can hold: its very ends, the epoch, anywhere in
/// between, close to either end, and around [`t0`].
pub fn any_datetime() -> BoxedStrategy<DateTime<Utc>> {
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    prop_oneof![
        1 => Just(min),
        1 => Just(max),
        1 => Just(DateTime::UNIX_EPOCH),
        3 => (min.timestamp()..=max.timestamp(), 0u32..1_000_000_000)
            .prop_map(move |(s, n)| DateTime::from_timestamp(s, n).unwrap_or(max)),
        2 => (0i64..=1_000_000_000, any::<bool>()).prop_map(move |(ms, top)| {
            if top {
                max - TimeDelta::milliseconds(ms)
            } else {
                min + TimeDelta::milliseconds(ms)
            }
        }),
        4 => (-10_000_000_000i64..=10_000_000_000).prop_map(|ms| t0() + TimeDelta::milliseconds(ms)),
    ]
    .boxed()
}

/// Any std Duration: zero, MAX, any seconds and nanoseconds, short ones.
pub fn any_std_duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        1 => Just(Duration::MAX),
        2 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        3 => (0u64..10_000_000).prop_map(Duration::from_millis),
    ]
    .boxed()
}

/// Any SystemTime this platform holds, from far before the epoch to far after.
pub fn any_system_time() -> BoxedStrategy<SystemTime> {
    prop_oneof![
        1 => Just(SystemTime::UNIX_EPOCH),
        2 => (0u64..=i64::MAX as u64, any::<bool>()).prop_map(|(secs, after)| {
            let d = Duration::from_secs(secs);
            let t = if after {
                SystemTime::UNIX_EPOCH.checked_add(d)
            } else {
                SystemTime::UNIX_EPOCH.checked_sub(d)
            };
            t.unwrap_or(SystemTime::UNIX_EPOCH)
        }),
        3 => (0u64..=4_000_000_000).prop_map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
    ]
    .boxed()
}

/// Any jitter: the [0, 1) it should be, and NaN, infinities, negatives,
/// and values past 1.
pub fn any_jitter() -> BoxedStrategy<f64> {
    prop_oneof![
        3 => any::<f64>(),
        3 => 0.0f64..1.0,
        1 => prop::sample::select(&[
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            -1.0,
            1.0,
            2.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
        ][..]),
    ]
    .boxed()
}

/// Vectors: usually short, sometimes empty, now and then up to `long`
/// elements. An element is made by `element(rich)`: rich (any string,
/// 100 KB ones too) in short vectors, plain in long ones, where up to 8 of
/// them repeat (making hundreds of elements each would make the tests slow,
/// and repeats, such as two hosts of one name, are worth having).
pub fn wide_vec<T: std::fmt::Debug + Clone + 'static>(
    element: impl Fn(bool) -> BoxedStrategy<T>,
    long: usize,
) -> BoxedStrategy<Vec<T>> {
    prop_oneof![
        8 => prop::collection::vec(element(true), 0..4),
        1 => (prop::collection::vec(element(false), 1..=8), 0..=long)
            .prop_map(|(seed, len)| seed.iter().cycle().take(len).cloned().collect()),
    ]
    .boxed()
}

pub fn string_map(rich: bool) -> BoxedStrategy<BTreeMap<String, String>> {
    prop::collection::btree_map(text(rich), text(rich), 0..4).boxed()
}

// --------------------------------------------------------------------- JSON

/// Values at the edges of what fields hold, by JSON type, made once.
struct Extremes {
    /// Integer and float limits.
    numbers: Vec<Value>,
    /// The empty string, 100 KB ones, and [`Extremes::times`].
    strings: Vec<Value>,
    /// Times at the ends of RFC 3339's four-digit years, past them with an
    /// offset, and at and near the ends of chrono's range (six-digit years).
    times: Vec<Value>,
    /// The integers that overflow arithmetic.
    limits: Vec<Value>,
    /// All of them, and null, true, [] and {}.
    all: Vec<Value>,
}

fn extremes() -> &'static Extremes {
    static EXTREMES: std::sync::OnceLock<Extremes> = std::sync::OnceLock::new();
    EXTREMES.get_or_init(|| {
        use chrono::SecondsFormat::AutoSi;
        let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        let numbers = vec![
            json!(i64::MAX),
            json!(i64::MIN),
            json!(i32::MAX),
            json!(i32::MIN),
            json!(i64::from(i32::MAX) + 1),
            json!(u64::MAX),
            json!(-1),
            json!(0),
            json!(1),
            json!(1e308),
            json!(-1e308),
            json!(0.5),
        ];
        let times = vec![
            json!("9999-12-31T23:59:59Z"),
            json!("0001-01-01T00:00:00Z"),
            json!("9999-12-31T23:59:59-23:59"),
            json!("0000-01-01T00:00:00+23:59"),
            json!(max.to_rfc3339_opts(AutoSi, true)),
            json!(min.to_rfc3339_opts(AutoSi, true)),
            json!((max - TimeDelta::seconds(1)).to_rfc3339_opts(AutoSi, true)),
            json!((min + TimeDelta::seconds(1)).to_rfc3339_opts(AutoSi, true)),
        ];
        let mut strings = vec![
            json!(""),
            json!("a".repeat(100 * 1024)),
            json!(format!("a{}", "é".repeat(50 * 1024))),
        ];
        strings.extend(times.iter().cloned());
        let limits = vec![
            json!(i64::MAX),
            json!(i64::MIN),
            json!(i32::MAX),
            json!(i32::MIN),
            json!(-1),
            json!(0),
        ];
        let mut all = numbers.clone();
        all.extend(strings.iter().cloned());
        all.extend([json!(null), json!(true), json!([]), json!({})]);
        Extremes {
            numbers,
            strings,
            times,
            limits,
            all,
        }
    })
}

fn extreme_value() -> BoxedStrategy<Value> {
    prop::sample::select(extremes().all.clone()).boxed()
}

/// Every object key the samples use, so that arbitrary JSON now and then
/// looks like the real thing.
fn known_keys() -> Vec<String> {
    fn collect(value: &Value, keys: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                    collect(value, keys);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, keys)),
            _ => {}
        }
    }
    let mut keys = Vec::new();
    for kind in Kind::ALL {
        collect(&sample(*kind, u32::MAX), &mut keys);
    }
    keys
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        2 => any_string(),
        3 => prop::sample::select(known_keys()),
    ]
    .boxed()
}

/// Any JSON value: nested up to 4 deep, about 64 nodes at most.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any_i64().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any_string().prop_map(Value::String),
        extreme_value(),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

// ------------------------------------------------------------------ samples

/// The kinds, for samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance,
    Sandbox,
    Webhook,
    WebhookDelivery,
    SandboxCommand,
    SandboxSnapshot,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Instance,
        Kind::Sandbox,
        Kind::Webhook,
        Kind::WebhookDelivery,
        Kind::SandboxCommand,
        Kind::SandboxSnapshot,
    ];
}

fn metadata(kind: Kind, variant: u32) -> Value {
    let mut meta = json!({
        "name": "web",
        "namespace": "team-a",
        "uid": "0a1b2c3d-0000-4000-8000-000000000000",
        "generation": 3,
        "resourceVersion": "12345",
        "creationTimestamp": "2026-11-01T11:59:30Z",
        "labels": {"app": "web", "ctrlplane.dev/agent-id": "agent-1"},
        "annotations": {
            "ctrlplane.dev/redeliver-requested-at": "2026-11-01T12:00:05Z",
            "ctrlplane.dev/first-attempt-at": "2026-11-01T11:59:58Z",
            "note": "é 😀"
        },
        "finalizers": ["ctrlplane.dev/cleanup", "example.com/other"],
        "ownerReferences": [{
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "Webhook",
            "name": "hooks",
            "uid": "0a1b2c3d-0000-4000-8000-000000000001",
            "controller": true
        }]
    });
    // Being deleted, one time in four.
    if variant & 1 != 0 && variant & (1 << 15) != 0 {
        meta["deletionTimestamp"] = json!("2026-11-01T12:00:10Z");
        meta["deletionGracePeriodSeconds"] = json!(0);
    }
    if kind == Kind::WebhookDelivery && variant & 2 != 0 {
        meta["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("ctrlplane.dev/redeliver-requested-at");
    }
    meta
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": format!("{type_} is {status}"),
        "lastTransitionTime": "2026-11-01T11:59:40Z",
        "observedGeneration": 2
    })
}

fn history(entries: &[(&str, Option<&str>, Option<&str>)]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(i, (type_, from, to))| {
            let mut entry = json!({
                "sequence": i + 1,
                "type": type_,
                "reason": "Test",
                "message": "something happened",
                "details": {"replicas": "2", "command": "build"},
                "time": format!("2026-11-01T11:59:{:02}Z", 40 + i),
            });
            if let Some(from) = from {
                entry["from"] = json!(from);
            }
            if let Some(to) = to {
                entry["to"] = json!(to);
            }
            entry
        })
        .collect();
    Value::Array(entries)
}

const PHASES_INSTANCE: &[&str] = &[
    "Provisioning",
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Failed",
    "Destroying",
    "Destroyed",
];
const PHASES_SANDBOX: &[&str] = &[
    "Created",
    "Starting",
    "Running",
    "Stopped",
    "Error",
    "Destroyed",
];
const PHASES_COMMAND: &[&str] = &["Pending", "Running", "Succeeded", "Failed", "TimedOut"];
const PHASES_SNAPSHOT: &[&str] = &["Pending", "Ready", "Failed"];
const PHASES_DELIVERY: &[&str] = &["Pending", "Succeeded", "Failed"];

/// Picks one of `choices` by some bits of `variant`.
fn pick<'a>(choices: &[&'a str], variant: u32, shift: u32) -> &'a str {
    choices[(variant >> shift) as usize % choices.len()]
}

/// A full, valid object of `kind`: metadata with every field the operator
/// reads, every spec field, and a status with history, conditions and the
/// rest. `variant`'s bits choose among phases and optional parts (bits 0
/// and 15: being deleted; 9 to 11: no status).
pub fn sample(kind: Kind, variant: u32) -> Value {
    let (kind_name, spec, status) = match kind {
        Kind::Instance => (
            "Instance",
            json!({
                // A new image being asked for, now and then.
                "image": if variant & (1 << 16) != 0 {
                    "registry.example.com:5000/team/web:v4"
                } else {
                    "registry.example.com:5000/team/web:v3"
                },
                "replicas": 2,
                "state": if variant & 4 != 0 && variant & (1 << 18) != 0 { "Stopped" } else { "Running" },
                "resources": {"cpu": "500m", "memory": "256Mi"},
                "env": [
                    {"name": "MODE", "value": "production"},
                    {"name": "TOKEN", "secretKeyRef": {"name": "web-secrets", "key": "token"}}
                ],
                "ports": [
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"name": "metrics", "port": 9090}
                ],
                "healthCheck": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "initialDelaySeconds": 5,
                    "periodSeconds": 10,
                    "timeoutSeconds": 2,
                    "failureThreshold": 3
                },
                "region": "eu-west-1",
                "provider": "kubernetes",
                "suspend": if variant & (1 << 17) != 0 {
                    json!({"reason": "maintenance window"})
                } else {
                    json!(null)
                },
                "restartedAt": "2026-11-01T11:59:50Z",
                "rollback": if variant & 8 != 0 { "Auto" } else { "Manual" },
                "progressDeadlineSeconds": 60
            }),
            json!({
                "phase": pick(PHASES_INSTANCE, variant, 24),
                "observedGeneration": 2,
                "conditions": [
                    condition("Ready", "False", "ReplicasNotReady"),
                    condition("Progressing", "True", "RollingOut"),
                    condition("Synced", "True", "Reconciled"),
                    condition("Suspended", "False", "NotSuspended"),
                    condition("Stalled", "False", "NotStalled")
                ],
                "replicas": 2,
                "readyReplicas": 1,
                "selector": "ctrlplane.dev/instance=web",
                "endpoints": [{"name": "http", "url": "http://web.team-a.svc.cluster.local:8080"}],
                "providerRef": {"provider": "kubernetes", "kind": "Deployment", "name": "web"},
                "currentRelease": {
                    "version": 3,
                    "image": "registry.example.com:5000/team/web:v3",
                    "createdAt": "2026-11-01T11:59:45Z",
                    "outcome": "Pending"
                },
                "releases": [
                    {"version": 1, "image": "registry.example.com:5000/team/web:v1", "createdAt": "2026-11-01T11:00:00Z", "outcome": "Succeeded"},
                    {"version": 2, "image": "registry.example.com:5000/team/web:v2", "createdAt": "2026-11-01T11:30:00Z", "outcome": "RolledBack"},
                    {"version": 3, "image": "registry.example.com:5000/team/web:v3", "createdAt": "2026-11-01T11:59:45Z", "outcome": "Pending"}
                ],
                // Suspended since before when spec.suspend is set, and
                // now and then when it no longer is.
                "suspendedAt": if variant & (3 << 17) != 0 {
                    json!("2026-11-01T11:59:00Z")
                } else {
                    json!(null)
                },
                "suspendReason": "maintenance window",
                // A restart asked for, one time in four.
                "restartedAt": if variant & (3 << 21) == 0 {
                    "2026-11-01T11:00:00Z"
                } else {
                    "2026-11-01T11:59:50Z"
                },
                "history": history(&[
                    ("instance.created", None, Some("Provisioning")),
                    ("instance.starting", Some("Provisioning"), Some("Starting")),
                    ("instance.started", Some("Starting"), Some("Running")),
                    ("deploy.started", None, None),
                    ("health.degraded", None, None)
                ]),
                "dispatchedSeq": 3,
                "appliedScale": {"replicas": 2, "cpu": "500m", "memory": "256Mi"},
                "failedGeneration": 1
            }),
        ),
        Kind::Sandbox => (
            "Sandbox",
            json!({
                "image": "ghcr.io/example/sandbox:1",
                "resources": {"cpu": "1", "memory": "1Gi", "storage": "10Gi", "storageClassName": "fast"},
                "ttlSeconds": 3600,
                "expiryPolicy": if variant & 8 != 0 { "Delete" } else { "Stop" },
                "state": if variant & 4 != 0 && variant & (1 << 18) != 0 { "Stopped" } else { "Running" },
                "placement": if variant & 16 != 0 {
                    json!({"host": "node-a"})
                } else {
                    json!({"nodeSelector": {"zone": "a"}})
                },
                "agentId": "agent-1",
                "jobId": "job-7",
                "env": [{"name": "MODE", "value": "test"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "provider": "pod",
                "restartedAt": "2026-11-01T11:59:50Z",
                "source": {"snapshotRef": {"name": "base"}}
            }),
            json!({
                "phase": pick(PHASES_SANDBOX, variant, 24),
                "observedGeneration": 2,
                "conditions": [
                    condition("Ready", "False", "Error"),
                    condition("Scheduled", "True", "Scheduled"),
                    condition("Expired", "False", "NotExpired"),
                    condition("Synced", "True", "Reconciled"),
                    condition("Stalled", "False", "NotStalled")
                ],
                "podIP": "10.0.0.7",
                "host": "node-a",
                "expiresAt": "2026-11-01T12:59:30Z",
                "startedAt": "2026-11-01T11:59:45Z",
                "providerRef": {"provider": "pod", "kind": "Pod", "name": "web"},
                "claimName": "web-data",
                // A restart asked for, one time in four.
                "restartedAt": if variant & (3 << 21) == 0 {
                    "2026-11-01T11:00:00Z"
                } else {
                    "2026-11-01T11:59:50Z"
                },
                "history": history(&[
                    ("sandbox.created", None, Some("Created")),
                    ("sandbox.starting", Some("Created"), Some("Starting")),
                    ("sandbox.started", Some("Starting"), Some("Running")),
                    ("sandbox.command.started", None, None)
                ]),
                "dispatchedSeq": 2,
                "commands": {
                    "started": {"name": "build", "uid": "c-2", "created": "2026-11-01T11:59:41Z"},
                    "finished": {"name": "setup", "uid": "c-1", "created": "2026-11-01T11:59:40Z"}
                }
            }),
        ),
        Kind::Webhook => (
            "Webhook",
            json!({
                "url": "https://hooks.example.com/ctrlplane",
                "allowInsecureHttp": false,
                "secretRef": {"name": "signing", "key": "secret", "previousKey": "previous-secret"},
                "events": ["instance.*", "deploy.failed", "health.unhealthy"],
                "active": variant & 4 == 0,
                "timeoutSeconds": 10,
                "retryPolicy": {"maxAttempts": 8, "backoffBaseSeconds": 1, "backoffCapSeconds": 600},
                "deliveryRecords": if variant & 8 != 0 { "All" } else { "Failures" },
                "caBundle": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                "headers": {"X-Team": "a", "X-Trace": "é"}
            }),
            json!({
                "observedGeneration": 2,
                "conditions": [
                    condition("Ready", "True", "Ready"),
                    condition("Stalled", "False", "NotStalled")
                ],
                "succeeded": 41,
                "failed": 2,
                "pending": 1,
                "consecutiveFailures": 1,
                "lastDelivery": {
                    "name": "hooks-uid-7",
                    "time": "2026-11-01T11:59:59Z",
                    "statusCode": 503,
                    "succeeded": false
                },
                "disabled": {
                    "reason": "EndpointGone",
                    "message": "the endpoint answered 410 Gone",
                    "time": "2026-11-01T11:59:00Z",
                    "url": if variant & 16 != 0 { "https://hooks.example.com/ctrlplane" } else { "https://old.example.com/" }
                }
            }),
        ),
        Kind::WebhookDelivery => (
            "WebhookDelivery",
            json!({
                "webhookName": "hooks",
                "event": {
                    "id": "evt_0a1b2c3d_7",
                    "type": "instance.started",
                    "timestamp": "2026-11-01T11:59:45Z",
                    "subject": {"kind": "Instance", "name": "web", "uid": "0a1b2c3d-0000-4000-8000-000000000000"},
                    "sequence": 7,
                    "from": "Starting",
                    "to": "Running",
                    "reason": "ReplicasReady",
                    "message": "2 of 2 replicas ready",
                    "details": {"replicas": "2"}
                }
            }),
            json!({
                "phase": pick(PHASES_DELIVERY, variant, 24),
                "attempts": 2,
                "lastStatusCode": 503,
                "lastError": "the endpoint answered 503",
                "nextAttemptAt": "2026-11-01T12:00:04Z",
                "completedAt": "2026-11-01T12:00:01Z",
                "attemptLog": [
                    {"time": "2026-11-01T11:59:50Z", "statusCode": 500, "error": "the endpoint answered 500", "durationMs": 12},
                    {"time": "2026-11-01T12:00:00Z", "statusCode": 503, "error": "the endpoint answered 503", "durationMs": 30},
                    {"time": "2026-11-01T12:00:01Z", "error": "timed out", "durationMs": 10000}
                ],
                "conditions": [
                    condition("Ready", "False", "Pending"),
                    condition("Stalled", "False", "NotStalled")
                ]
            }),
        ),
        Kind::SandboxCommand => (
            "SandboxCommand",
            json!({
                "sandboxRef": {"name": "box"},
                "command": ["sh", "-c", "echo $TOKEN; make"],
                "env": [
                    {"name": "MODE", "value": "test"},
                    {"name": "TOKEN", "secretKeyRef": {"name": "box-secrets", "key": "token"}}
                ],
                "workingDir": "/work",
                "timeoutSeconds": 600,
                "ttlSecondsAfterFinished": 3600
            }),
            json!({
                "phase": pick(PHASES_COMMAND, variant, 24),
                "observedGeneration": 1,
                "conditions": [
                    condition("Complete", "False", "Running"),
                    condition("Failed", "False", "Running"),
                    condition("Synced", "True", "Reconciled")
                ],
                "pod": "box",
                "exitCode": 2,
                "stdout": {"text": "building\n[REDACTED:TOKEN]\n", "truncated": false, "bytes": 25},
                "stderr": {"text": "make: *** error 2", "truncated": true, "bytes": 40000},
                "redacted": ["TOKEN"],
                "startedAt": "2026-11-01T11:59:45Z",
                "finishedAt": "2026-11-01T11:59:55Z",
                "history": history(&[("sandbox.command.started", None, None)]),
                "dispatchedSeq": 1
            }),
        ),
        Kind::SandboxSnapshot => (
            "SandboxSnapshot",
            json!({
                "sandboxRef": {"name": "box"},
                "volumeSnapshotClassName": "csi-snapclass"
            }),
            json!({
                "phase": pick(PHASES_SNAPSHOT, variant, 24),
                "observedGeneration": 1,
                "conditions": [
                    condition("Ready", "False", "Pending"),
                    condition("Stalled", "False", "NotStalled"),
                    condition("Synced", "True", "Reconciled")
                ],
                "readyToUse": false,
                "restoreSize": "10Gi",
                "creationTime": "2026-11-01T11:59:50Z",
                "error": "snapshot controller: quota exceeded",
                "volumeSnapshotName": "box-snap",
                "sourceClaim": "box-data",
                "history": history(&[
                    ("sandbox.snapshot.created", None, Some("Pending")),
                    ("sandbox.snapshot.ready", Some("Pending"), Some("Ready"))
                ]),
                "dispatchedSeq": 1
            }),
        ),
    };
    let mut object = json!({
        "apiVersion": "ctrlplane.dev/v1alpha1",
        "kind": kind_name,
        "metadata": metadata(kind, variant),
        "spec": spec,
        "status": status,
    });
    // One time in eight no status at all: a new object.
    if variant & (0b111 << 9) == 0 {
        object.as_object_mut().unwrap().remove("status");
    }
    object
}

// ---------------------------------------------------------------- mutations

/// One change at one place of a JSON document.
#[derive(Debug, Clone)]
enum Edit {
    /// Any JSON in its place.
    Replace(Value),
    /// Gone (a key of an object, an element of an array).
    Remove,
    /// An extreme value in its place: of the same JSON type, unless
    /// `any_type`.
    Extreme { pick: Index, any_type: bool },
    /// Another value of the same JSON type.
    SameType {
        string: String,
        number: Value,
        boolean: bool,
    },
    /// An array made this long by repeating its elements.
    Grow(usize),
    /// An integer or a time, chosen among all of them, set to a limit.
    Limit { path: Index, pick: Index },
}

fn edit() -> BoxedStrategy<Edit> {
    let number = prop_oneof![
        any_i32().prop_map(Value::from),
        any_i64().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ];
    let same_type = (any_string(), number, any::<bool>()).prop_map(|(string, number, boolean)| {
        Edit::SameType {
            string,
            number,
            boolean,
        }
    });
    prop_oneof![
        5 => same_type,
        3 => (any::<Index>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, any_type)| Edit::Extreme { pick, any_type }),
        1 => Just(Edit::Remove),
        1 => json_value().prop_map(Edit::Replace),
        1 => prop_oneof![0usize..16, 0usize..=1200].prop_map(Edit::Grow),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(path, pick)| Edit::Limit { path, pick }),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    At(usize),
}

/// The path of every node under `value`, the root excepted.
fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(Step::Key(key.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Step::At(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(root: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(root, |value, step| match step {
        Step::Key(key) => value.get_mut(key.as_str()),
        Step::At(i) => value.get_mut(*i),
    })
}

fn is_time(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
}

fn apply(root: &mut Value, at: Index, edit: Edit) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    if let Edit::Limit { path, pick } = edit {
        let limits: Vec<&Vec<Step>> = all
            .iter()
            .filter(|p| node(root, p).is_some_and(|v| v.is_i64() || v.is_u64() || is_time(v)))
            .collect();
        if limits.is_empty() {
            return;
        }
        let path = path.get(&limits).to_vec();
        if let Some(target) = node(root, &path) {
            let limits = if target.is_string() {
                &extremes().times
            } else {
                &extremes().limits
            };
            *target = pick.get(limits).clone();
        }
        return;
    }
    if all.is_empty() {
        return;
    }
    let path = &all[at.index(all.len())];
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    if let Edit::Remove = edit {
        match (node(root, parent_path), last) {
            (Some(Value::Object(map)), Step::Key(key)) => {
                map.remove(key);
            }
            (Some(Value::Array(items)), Step::At(i)) if *i < items.len() => {
                items.remove(*i);
            }
            _ => {}
        }
        return;
    }
    let Some(target) = node(root, path) else {
        return;
    };
    match edit {
        Edit::Replace(value) => *target = value,
        Edit::Extreme { pick, any_type } => {
            let choices = match target {
                Value::Number(_) if !any_type => &extremes().numbers,
                Value::String(_) if !any_type => &extremes().strings,
                _ => &extremes().all,
            };
            *target = pick.get(choices).clone();
        }
        Edit::SameType {
            string,
            number,
            boolean,
        } => match target {
            Value::String(s) => *s = string,
            Value::Number(_) => *target = number,
            Value::Bool(b) => *b = boolean,
            Value::Array(items) => items.clear(),
            Value::Object(map) if boolean => map.clear(),
            Value::Object(_) => {}
            Value::Null => {}
        },
        Edit::Grow(len) => {
            if let Value::Array(items) = target
                && !items.is_empty()
            {
                let original = items.clone();
                items.clear();
                items.extend(original.iter().cycle().take(len).cloned());
            }
        }
        Edit::Remove | Edit::Limit { .. } => {}
    }
}

/// A sample of `kind` with 1 to 6 random edits at random paths.
pub fn mutated_sample(kind: Kind) -> BoxedStrategy<Value> {
    (
        any::<u32>(),
        prop_oneof![
            3 => prop::collection::vec((any::<Index>(), edit()), 1..=2),
            2 => prop::collection::vec((any::<Index>(), edit()), 3..=4),
            1 => prop::collection::vec((any::<Index>(), edit()), 5..=6),
        ],
    )
        .prop_map(move |(variant, edits)| {
            let mut value = sample(kind, variant);
            for (at, edit) in edits {
                apply(&mut value, at, edit);
            }
            value
        })
        .boxed()
}

/// A typed object of `kind` from a mutated sample, among those that still
/// deserialize; the unedited samples are in the mix too.
pub fn object<T: DeserializeOwned + std::fmt::Debug + 'static>(kind: Kind) -> BoxedStrategy<T> {
    prop_oneof![
        6 => mutated_sample(kind),
        1 => any::<u32>().prop_map(move |variant| sample(kind, variant)),
    ]
    .prop_filter_map("deserializes", |value| serde_json::from_value(value).ok())
    .boxed()
}

// ------------------------------------------------------------- observations

pub fn unknown_provider() -> BoxedStrategy<UnknownProvider> {
    (any_string(), any_string())
        .prop_map(|(name, known)| UnknownProvider { name, known })
        .boxed()
}

/// The provider a planner is told of: mostly one, sometimes none.
pub fn provider() -> BoxedStrategy<Result<String, UnknownProvider>> {
    prop_oneof![
        3 => prop::sample::select(&["kubernetes", "pod"][..]).prop_map(|p| Ok(p.to_string())),
        2 => any_string().prop_map(Ok),
        1 => unknown_provider().prop_map(Err),
    ]
    .boxed()
}

pub fn cleanup() -> BoxedStrategy<Cleanup> {
    prop::sample::select(&[Cleanup::GarbageCollected, Cleanup::Deprovision][..]).boxed()
}

pub fn provider_ref() -> BoxedStrategy<crate::api::ProviderRef> {
    (any_string(), any_string(), any_string())
        .prop_map(|(provider, kind, name)| crate::api::ProviderRef {
            provider: provider.into(),
            kind: kind.into(),
            name,
        })
        .boxed()
}

pub fn workload_status() -> BoxedStrategy<WorkloadStatus> {
    (
        (provider_ref(), any::<bool>(), any_string()),
        (any_i32(), any_i32(), any_i32()),
        (
            prop::option::of(any_string()),
            any::<bool>(),
            prop::option::of(any_datetime()),
        ),
        (wide_vec(text, 200), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (provider_ref, current, image),
                (desired_replicas, replicas, ready_replicas),
                (restart_token, rollout_complete, progress_deadline_exceeded),
                (problems, endpoint_ready, terminating),
            )| WorkloadStatus {
                provider_ref,
                current,
                image,
                desired_replicas,
                replicas,
                ready_replicas,
                restart_token,
                rollout_complete,
                progress_deadline_exceeded,
                problems,
                endpoint_ready,
                terminating,
            },
        )
        .boxed()
}

pub fn instance_observation() -> BoxedStrategy<InstanceObservation> {
    (
        provider(),
        cleanup(),
        prop::option::of(workload_status()),
        any::<bool>(),
    )
        .prop_map(
            |(provider, cleanup, workload, webhooks_listen)| InstanceObservation {
                provider,
                cleanup,
                workload,
                webhooks_listen,
            },
        )
        .boxed()
}

/// A host; its strings as [`text`] says.
pub fn host(rich: bool) -> BoxedStrategy<Host> {
    (
        (text(rich), string_map(rich)),
        (any_i64(), any_i64(), any_i64(), any_i64()),
        any::<bool>(),
        wide_vec(
            |rich| prop_oneof![Just(SANDBOX_HOST_TAINT.to_string()), text(rich)].boxed(),
            100,
        ),
    )
        .prop_map(
            |(
                (name, labels),
                (allocatable_cpu, allocatable_memory, requested_cpu, requested_memory),
                schedulable,
                blocking_taints,
            )| Host {
                name,
                labels,
                allocatable_cpu,
                allocatable_memory,
                requested_cpu,
                requested_memory,
                schedulable,
                blocking_taints,
            },
        )
        .boxed()
}

pub fn request() -> BoxedStrategy<Request> {
    (any_i64(), any_i64())
        .prop_map(|(cpu, memory)| Request { cpu, memory })
        .boxed()
}

pub fn placement() -> BoxedStrategy<Option<Placement>> {
    prop::option::of((prop::option::of(any_string()), string_map(true)).prop_map(
        |(host, node_selector)| Placement {
            host,
            node_selector,
        },
    ))
    .boxed()
}

pub fn claim_observed() -> BoxedStrategy<ClaimObserved> {
    (
        any_string(),
        any::<bool>(),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(name, bound, seconds)| ClaimObserved {
            name,
            bound,
            created_at: seconds.and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
        })
        .boxed()
}

pub fn pod_observed() -> BoxedStrategy<PodObserved> {
    (
        (any_string(), prop::option::of(any_string()), any::<bool>()),
        (
            prop::option::of(any_string()),
            prop::option::of(any_string()),
            prop::option::of(any_string()),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            wide_vec(text, 200),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, revision, ready),
                (ip, host, placed_on),
                (failed, waiting_for_data, problems, terminating),
            )| PodObserved {
                name,
                revision,
                ready,
                ip,
                host,
                placed_on,
                failed,
                waiting_for_data,
                problems,
                terminating,
            },
        )
        .boxed()
}

pub fn sandbox_observed() -> BoxedStrategy<SandboxObserved> {
    (
        prop::option::of(any_string()),
        prop::option::of(claim_observed()),
        prop::option::of(pod_observed()),
        any::<bool>(),
    )
        .prop_map(|(claim_name, claim, pod, service)| SandboxObserved {
            claim_name,
            claim,
            pod,
            service,
        })
        .boxed()
}

pub fn command_phase() -> BoxedStrategy<Option<CommandPhase>> {
    prop::option::of(prop::sample::select(
        &[
            CommandPhase::Pending,
            CommandPhase::Running,
            CommandPhase::Succeeded,
            CommandPhase::Failed,
            CommandPhase::TimedOut,
        ][..],
    ))
    .boxed()
}

pub fn command_mark() -> BoxedStrategy<CommandMark> {
    (
        prop_oneof![
            prop::sample::select(&["build", "setup", "test"][..]).prop_map(str::to_string),
            any_string()
        ],
        prop_oneof![
            prop::sample::select(&["c-1", "c-2", "c-3"][..]).prop_map(str::to_string),
            any_string()
        ],
        any_datetime(),
    )
        .prop_map(|(name, uid, created)| CommandMark { name, uid, created })
        .boxed()
}

/// A command of a sandbox; its strings as [`text`] says.
pub fn command_view(rich: bool) -> BoxedStrategy<CommandView> {
    (
        command_mark(),
        command_phase(),
        any::<bool>(),
        prop::option::of(any_i32()),
        text(rich),
        text(rich),
    )
        .prop_map(
            |(mark, phase, started, exit_code, reason, message)| CommandView {
                mark,
                phase,
                started,
                exit_code,
                reason,
                message,
            },
        )
        .boxed()
}

pub fn source_view() -> BoxedStrategy<SourceView> {
    (
        prop::option::of(prop::sample::select(
            &[
                SnapshotPhase::Pending,
                SnapshotPhase::Ready,
                SnapshotPhase::Failed,
            ][..],
        )),
        prop::option::of(any_string()),
        prop::option::of(any_string()),
        any_string(),
    )
        .prop_map(
            |(phase, volume_snapshot, restore_size, message)| SourceView {
                phase,
                volume_snapshot,
                restore_size,
                message,
            },
        )
        .boxed()
}

pub fn sandbox_observation() -> BoxedStrategy<SandboxObservation> {
    (
        provider(),
        cleanup(),
        sandbox_observed(),
        wide_vec(host, 300),
        wide_vec(command_view, 300),
        prop::option::of(source_view()),
        any::<bool>(),
    )
        .prop_map(
            |(provider, cleanup, observed, hosts, commands, source, webhooks_listen)| {
                SandboxObservation {
                    provider,
                    cleanup,
                    webhooks_listen,
                    observed,
                    hosts,
                    commands,
                    source,
                }
            },
        )
        .boxed()
}

/// Any bytes, sometimes many (64 KiB and more).
pub fn any_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..64),
        2 => any_string().prop_map(String::into_bytes),
        1 => long_bytes(any::<u8>().boxed(), 70 * 1024),
    ]
    .boxed()
}

/// Up to `max` bytes: a random run of up to 64 of them, repeated (a
/// strategy per byte would make each case slow).
pub fn long_bytes(byte: BoxedStrategy<u8>, max: usize) -> BoxedStrategy<Vec<u8>> {
    (prop::collection::vec(byte, 1..64), 0..=max)
        .prop_map(|(run, len)| run.iter().cycle().take(len).copied().collect())
        .boxed()
}

/// An output tail: made by pushing chunks through a tail that keeps any
/// number of bytes, or with arbitrary bytes and an arbitrary total.
pub fn tail() -> BoxedStrategy<Tail> {
    prop_oneof![
        (
            prop_oneof![
                0usize..64,
                Just(crate::api::OUTPUT_LIMIT),
                0usize..=70 * 1024
            ],
            prop::collection::vec(any_bytes(), 0..4),
        )
            .prop_map(|(keep, chunks)| {
                let mut tail = Tail::new(keep);
                for chunk in &chunks {
                    tail.push(chunk);
                }
                tail
            }),
        (any_bytes(), any::<u64>()).prop_map(|(bytes, total)| {
            let mut tail = Tail::new(bytes.len());
            tail.bytes = VecDeque::from(bytes);
            tail.total = total;
            tail
        }),
    ]
    .boxed()
}

pub fn exec_outcome() -> BoxedStrategy<ExecOutcome> {
    (any_i32(), tail(), tail())
        .prop_map(|(exit_code, stdout, stderr)| ExecOutcome {
            exit_code,
            stdout,
            stderr,
        })
        .boxed()
}

pub fn run() -> BoxedStrategy<Run> {
    let end = prop_oneof![
        3 => exec_outcome().prop_map(RunEnd::Exited),
        1 => Just(RunEnd::TimedOut),
        1 => any_string().prop_map(RunEnd::Broken),
        1 => (any_string(), any_string()).prop_map(|(r, m)| RunEnd::Cancelled(r, m)),
    ];
    prop_oneof![
        1 => Just(Run::Unknown),
        1 => Just(Run::Running),
        3 => (end, any_datetime()).prop_map(|(end, at)| Run::Ended(end, at)),
    ]
    .boxed()
}

pub fn sandbox_view() -> BoxedStrategy<SandboxView> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(any_string()),
    )
        .prop_map(|(running, not_running, deleting, pod)| SandboxView {
            running,
            not_running,
            deleting,
            pod,
        })
        .boxed()
}

/// Secret values by name: any names and values, the empty value included.
pub fn secrets() -> BoxedStrategy<Vec<(String, String)>> {
    wide_vec(|rich| (text(rich), text(rich)).boxed(), 40)
}

pub fn command_observation() -> BoxedStrategy<CommandObservation> {
    (
        prop::option::of(sandbox_view()),
        any::<bool>(),
        run(),
        secrets(),
    )
        .prop_map(
            |(sandbox, earlier_unfinished, run, secrets)| CommandObservation {
                sandbox,
                earlier_unfinished,
                run,
                secrets: SecretValues(secrets),
            },
        )
        .boxed()
}

pub fn snapshot_observed() -> BoxedStrategy<SnapshotObserved> {
    (
        (any_string(), any::<bool>(), prop::option::of(any_string())),
        (
            prop::option::of(any_datetime()),
            prop::option::of(any_string()),
            prop::option::of(any_string()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, ready_to_use, restore_size),
                (creation_time, error, source_claim, terminating),
            )| SnapshotObserved {
                name,
                ready_to_use,
                restore_size,
                creation_time,
                error,
                source_claim,
                terminating,
            },
        )
        .boxed()
}

pub fn snapshot_observation() -> BoxedStrategy<SnapshotObservation> {
    (
        prop::option::of(
            (prop::option::of(any_string()), any::<bool>())
                .prop_map(|(claim, deleting)| SnapshotSource { claim, deleting }),
        ),
        prop::option::of(snapshot_observed()),
    )
        .prop_map(|(sandbox, observed)| SnapshotObservation { sandbox, observed })
        .boxed()
}

fn check() -> BoxedStrategy<Result<(), String>> {
    prop_oneof![Just(Ok(())), any_string().prop_map(Err)].boxed()
}

pub fn webhook_observation() -> BoxedStrategy<WebhookObservation> {
    (check(), check(), check())
        .prop_map(|(secret, address, ca_bundle)| WebhookObservation {
            secret,
            address,
            ca_bundle,
        })
        .boxed()
}

pub fn last_delivery() -> BoxedStrategy<LastDelivery> {
    (
        any_string(),
        any_datetime(),
        prop::option::of(any_i32()),
        any::<bool>(),
    )
        .prop_map(|(name, time, status_code, succeeded)| LastDelivery {
            name,
            time,
            status_code,
            succeeded,
        })
        .boxed()
}

pub fn disabled() -> BoxedStrategy<Disabled> {
    (any_string(), any_string(), any_datetime(), any_string())
        .prop_map(|(reason, message, time, url)| Disabled {
            reason,
            message,
            time,
            url,
        })
        .boxed()
}

pub fn delivery_tally() -> BoxedStrategy<DeliveryTally> {
    (
        (any_i64(), any_i64(), any_i64()),
        prop::option::of(last_delivery()),
        prop::option::of(disabled()),
    )
        .prop_map(
            |((succeeded, failed, consecutive_failures), last_delivery, disabled)| DeliveryTally {
                succeeded,
                failed,
                consecutive_failures,
                last_delivery,
                disabled,
            },
        )
        .boxed()
}

pub fn attempt_end() -> BoxedStrategy<AttemptEnd> {
    prop::sample::select(
        &[
            AttemptEnd::Delivered,
            AttemptEnd::Retrying,
            AttemptEnd::Failed,
        ][..],
    )
    .boxed()
}

/// A history entry; its strings as [`text`] says.
pub fn history_entry(rich: bool) -> BoxedStrategy<HistoryEntry> {
    (
        any_i64(),
        prop::sample::select(crate::api::EventType::ALL),
        prop::option::of(text(rich)),
        prop::option::of(text(rich)),
        (text(rich), text(rich), string_map(rich), any_datetime()),
    )
        .prop_map(
            |(sequence, type_, from, to, (reason, message, details, time))| HistoryEntry {
                sequence,
                type_,
                from: from.map(Into::into),
                to: to.map(Into::into),
                reason: reason.into(),
                message: message.into(),
                details,
                time,
            },
        )
        .boxed()
}

// ----------------------------------------------------------------- delivery

/// Any retry policy: any attempts, any durations up to Duration::MAX.
pub fn policy() -> BoxedStrategy<Policy> {
    (
        prop_oneof![any::<u32>(), 0u32..10, Just(u32::MAX)],
        any_std_duration(),
        any_std_duration(),
    )
        .prop_map(|(max_attempts, base, cap)| Policy {
            max_attempts,
            base,
            cap,
        })
        .boxed()
}

/// Any attempt result, as the client could report it.
pub fn attempt_result() -> BoxedStrategy<AttemptResult> {
    prop_oneof![
        3 => (any::<u16>(), prop::option::of(any_std_duration()))
            .prop_map(|(status, retry_after)| AttemptResult::Answered { status, retry_after }),
        1 => any_string().prop_map(|error| AttemptResult::Failed { error }),
    ]
    .boxed()
}

/// A Retry-After value: seconds (small, huge, negative, padded), an HTTP
/// date anywhere from 1970 to 9999 in any of its three formats, or junk.
pub fn retry_after_value() -> BoxedStrategy<Vec<u8>> {
    let date = (0u64..253_402_300_800).prop_map(|secs| {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    });
    let text = prop_oneof![
        3 => any::<u64>().prop_map(|n| n.to_string()),
        2 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => "[0-9]{20,400}",
        1 => "-[0-9]{1,20}",
        1 => " {0,3}[0-9]{1,5} {0,3}",
        1 => "[+][0-9]{1,5}|[0-9]{1,5}[.][0-9]{1,3}|0x[0-9a-f]{1,4}",
        3 => date,
        1 => prop::sample::select(&[
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sat, 29 Feb 2100 00:00:00 GMT",
            "Thu, 31 Dec 9999 23:59:60 GMT",
        ][..])
        .prop_map(str::to_string),
        2 => any_string(),
    ];
    prop_oneof![
        6 => text.prop_map(String::into_bytes),
        1 => header_value_bytes(),
    ]
    .boxed()
}

/// Bytes a header value may hold: visible ASCII, spaces, tabs and bytes
/// 0x80 to 0xFF (not UTF-8 on their own).
pub fn header_value_bytes() -> BoxedStrategy<Vec<u8>> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff].boxed();
    prop_oneof![
        4 => prop::collection::vec(byte.clone(), 0..64),
        1 => long_bytes(byte, 8 * 1024),
    ]
    .boxed()
}

/// A header name: Retry-After in any case, a common one, or any token.
pub fn header_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(&["retry-after", "Retry-After", "RETRY-AFTER"][..]).prop_map(str::to_string),
        1 => prop::sample::select(&[
            "content-type", "location", "date", "server", "x-request-id", "set-cookie",
            "cache-control", "www-authenticate", "link",
        ][..])
        .prop_map(str::to_string),
        2 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}",
    ]
    .boxed()
}

/// Headers: none, one, several (several Retry-After among them), as
/// `(name, value)` pairs in order.
pub fn headers() -> BoxedStrategy<Vec<(String, Vec<u8>)>> {
    let value = prop_oneof![
        3 => retry_after_value(),
        2 => header_value_bytes(),
    ]
    .boxed();
    wide_vec(move |_| (header_name(), value.clone()).boxed(), 60)
}

/// The pairs as an http::HeaderMap, every value kept (appended).
pub fn header_map(pairs: &[(String, Vec<u8>)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Instance, Sandbox, SandboxCommand, SandboxSnapshot, Webhook, WebhookDelivery,
    };

    fn parses(kind: Kind, value: Value) -> Result<(), String> {
        let result = match kind {
            Kind::Instance => serde_json::from_value::<Instance>(value).map(drop),
            Kind::Sandbox => serde_json::from_value::<Sandbox>(value).map(drop),
            Kind::Webhook => serde_json::from_value::<Webhook>(value).map(drop),
            Kind::WebhookDelivery => serde_json::from_value::<WebhookDelivery>(value).map(drop),
            Kind::SandboxCommand => serde_json::from_value::<SandboxCommand>(value).map(drop),
            Kind::SandboxSnapshot => serde_json::from_value::<SandboxSnapshot>(value).map(drop),
        };
        result.map_err(|e| format!("{kind:?}: {e}"))
    }

    /// Every sample, in every variant, is a valid object of its kind: the
    /// mutations start from something real.
    #[test]
    fn every_sample_deserializes() {
        for kind in Kind::ALL {
            for variant in [0, 1, u32::MAX, 0b1_0101_0101, 0b10_1010_1010, 1 << 15 | 1] {
                parses(*kind, sample(*kind, variant)).unwrap();
            }
        }
    }

    /// Most mutated samples still deserialize, so planners see many of them.
    #[test]
    fn most_mutated_samples_still_deserialize() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        for kind in Kind::ALL {
            let strategy = mutated_sample(*kind);
            let ok = (0..200)
                .filter(|_| {
                    let value = strategy.new_tree(&mut runner).unwrap().current();
                    parses(*kind, value).is_ok()
                })
                .count();
            assert!(ok >= 50, "{kind:?}: only {ok} of 200 deserialize");
        }
    }
}
