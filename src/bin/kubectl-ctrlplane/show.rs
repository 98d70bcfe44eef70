//! What the read commands print for people: `status`, `history` and
//! `deliveries`. Pure: objects in, text out; `now` is passed in so that
//! ages and deadlines can be tested.

use chrono::{DateTime, Utc};
use ctrlplane_operator::api::{
    Condition, ConditionStatus, HistoryEntry, Instance, Sandbox, WebhookDelivery,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::duration::human;
use crate::table::{self, NONE};
use crate::target::Kind;

/// How many history entries `status` shows.
pub const STATUS_HISTORY: usize = 5;

/// How the read commands print.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// `-o wide`: more columns.
    pub wide: bool,
    pub now: DateTime<Utc>,
}

/// One child object of an Instance or Sandbox, as read with the user's
/// credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub kind: &'static str,
    pub name: String,
    /// What it is doing, in a few words.
    pub state: String,
    /// More, for `-o wide`.
    pub detail: String,
    /// Whether its owner reference points at the object; None when it
    /// could not be read.
    pub owned: Option<bool>,
}

fn owned_by(meta: &ObjectMeta, owner_uid: &str) -> Option<bool> {
    Some(
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner_uid),
    )
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// A Deployment: ready, up-to-date and available replicas.
pub fn deployment_child(deployment: &Deployment, owner_uid: &str) -> Child {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let images: Vec<String> = deployment
        .spec
        .iter()
        .flat_map(|s| s.template.spec.iter())
        .flat_map(|p| p.containers.iter())
        .filter_map(|c| c.image.clone())
        .collect();
    Child {
        kind: "Deployment",
        name: name_of(&deployment.metadata),
        state: format!(
            "{}/{desired} ready, {} up-to-date, {} available",
            status.ready_replicas.unwrap_or(0),
            status.updated_replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0)
        ),
        detail: format!("image {}", images.join(",")),
        owned: owned_by(&deployment.metadata, owner_uid),
    }
}

/// A Service: its type, address and ports.
pub fn service_child(service: &Service, owner_uid: &str) -> Child {
    let spec = service.spec.clone().unwrap_or_default();
    let ports: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
        .collect();
    Child {
        kind: "Service",
        name: name_of(&service.metadata),
        state: format!(
            "{} {}, ports {}",
            spec.type_.as_deref().unwrap_or("ClusterIP"),
            spec.cluster_ip.as_deref().unwrap_or(NONE),
            if ports.is_empty() {
                NONE.to_string()
            } else {
                ports.join(",")
            }
        ),
        detail: String::new(),
        owned: owned_by(&service.metadata, owner_uid),
    }
}

/// A Pod: its phase, readiness, node and IP.
pub fn pod_child(pod: &Pod, owner_uid: &str) -> Child {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let restarts: i32 = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    let state = if pod.metadata.deletion_timestamp.is_some() {
        "Terminating".to_string()
    } else {
        format!(
            "{}, {}",
            status.phase.as_deref().unwrap_or("Unknown"),
            if ready { "ready" } else { "not ready" }
        )
    };
    Child {
        kind: "Pod",
        name: name_of(&pod.metadata),
        state,
        detail: format!(
            "node {}, IP {}, restarts {restarts}",
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or(NONE),
            status.pod_ip.as_deref().unwrap_or(NONE)
        ),
        owned: owned_by(&pod.metadata, owner_uid),
    }
}

/// A PersistentVolumeClaim: bound or not, and its size.
pub fn claim_child(claim: &PersistentVolumeClaim, owner_uid: &str) -> Child {
    let status = claim.status.clone().unwrap_or_default();
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity = status
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .or_else(|| spec.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| NONE.into());
    Child {
        kind: "PersistentVolumeClaim",
        name: name_of(&claim.metadata),
        state: format!(
            "{}, {capacity}",
            status.phase.as_deref().unwrap_or("Pending")
        ),
        detail: format!(
            "volume {}, class {}",
            spec.volume_name.as_deref().unwrap_or(NONE),
            spec.storage_class_name.as_deref().unwrap_or(NONE)
        ),
        owned: owned_by(&claim.metadata, owner_uid),
    }
}

/// A child that could not be read (forbidden, say): shown, not fatal.
pub fn unreadable_child(kind: &'static str, name: &str, error: &str) -> Child {
    Child {
        kind,
        name: name.to_string(),
        state: format!("cannot read: {}", crate::error::one_line(error)),
        detail: String::new(),
        owned: None,
    }
}

/// The in-cluster addresses of a Service's ports: `name -> host:port`.
pub fn service_addresses(service: &Service) -> Vec<(String, String)> {
    let name = name_of(&service.metadata);
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_else(|| p.port.to_string()),
                format!("{name}.{namespace}.svc.cluster.local:{}", p.port),
            )
        })
        .collect()
}

/// `2026-11-27T08:00:00Z (5m ago)`, or `(in 55m)` for the future.
pub fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if at > now {
        format!("{stamp} (in {})", human(at - now))
    } else {
        format!("{stamp} ({} ago)", human(now - at))
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_time(
    time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<DateTime<Utc>> {
    ctrlplane_operator::api::utc_of(time?)
}

fn condition_status(status: ConditionStatus) -> &'static str {
    match status {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

/// `Name:   value` lines, the names padded to one width, as kubectl
/// describe prints them.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 3;
    pairs
        .iter()
        .map(|(k, v)| format!("{:width$}{v}\n", format!("{k}:")))
        .collect()
}

fn section(out: &mut String, title: &str, body: Option<String>) {
    match body {
        Some(body) => {
            out.push_str(title);
            out.push_str(":\n");
            out.push_str(&body);
        }
        None => out.push_str(&format!("{title}:   {NONE}\n")),
    }
}

/// The conditions as a table.
pub fn conditions_table(conditions: &[Condition], view: View, indent: usize) -> Option<String> {
    if conditions.is_empty() {
        return None;
    }
    let mut headers = vec!["TYPE", "STATUS", "REASON", "MESSAGE"];
    if view.wide {
        headers.extend(["LAST-TRANSITION", "GENERATION"]);
    }
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| {
            let mut row = vec![
                c.type_.to_string(),
                condition_status(c.status).to_string(),
                c.reason.to_string(),
                crate::error::one_line(&c.message),
            ];
            if view.wide {
                row.push(when(c.last_transition_time, view.now));
                row.push(
                    c.observed_generation
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| NONE.into()),
                );
            }
            row
        })
        .collect();
    Some(table::render(&headers, &rows, indent))
}

fn children_table(children: &[Child], view: View, indent: usize) -> Option<String> {
    if children.is_empty() {
        return None;
    }
    let mut headers = vec!["KIND", "NAME", "STATE"];
    if view.wide {
        headers.extend(["OWNED", "DETAIL"]);
    }
    let rows: Vec<Vec<String>> = children
        .iter()
        .map(|c| {
            let mut row = vec![c.kind.to_string(), c.name.clone(), c.state.clone()];
            if view.wide {
                row.push(match c.owned {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "?".into(),
                });
                row.push(c.detail.clone());
            }
            row
        })
        .collect();
    let mut text = table::render(&headers, &rows, indent);
    if !view.wide
        && let Some(stray) = children.iter().find(|c| c.owned == Some(false))
    {
        text.push_str(&format!(
            "{}({} {} is not owned by it)\n",
            " ".repeat(indent),
            stray.kind,
            stray.name
        ));
    }
    Some(text)
}

fn transition(entry: &HistoryEntry) -> String {
    match (&entry.from, &entry.to) {
        (Some(from), Some(to)) => format!("{from} -> {to}"),
        (None, Some(to)) => format!("-> {to}"),
        (Some(from), None) => format!("{from} ->"),
        (None, None) => "-".into(),
    }
}

/// History entries as a table: sequence, time, type, from -> to, reason,
/// message; `-o wide` adds the details.
pub fn history_table(entries: &[HistoryEntry], view: View, indent: usize) -> String {
    let mut headers = vec!["SEQ", "TIME", "TYPE", "TRANSITION", "REASON", "MESSAGE"];
    if view.wide {
        headers.push("DETAILS");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.sequence.to_string(),
                stamp(e.time),
                e.type_.as_str().to_string(),
                transition(e),
                e.reason.to_string(),
                crate::error::one_line(&e.message),
            ];
            if view.wide {
                row.push(
                    e.details
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            row
        })
        .collect();
    table::render(&headers, &rows, indent)
}

fn history_section(out: &mut String, kind: Kind, name: &str, history: &[HistoryEntry], view: View) {
    if history.is_empty() {
        section(out, "History", None);
        return;
    }
    let shown = &history[history.len().saturating_sub(STATUS_HISTORY)..];
    let title = if shown.len() < history.len() {
        format!(
            "History (last {} of {}; `kubectl ctrlplane history {}/{name}` shows all)",
            shown.len(),
            history.len(),
            kind.short()
        )
    } else {
        "History".to_string()
    };
    section(out, &title, Some(history_table(shown, view, 2)));
}

fn common_fields(kind: Kind, meta: &ObjectMeta, view: View) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("Name", name_of(meta)),
        ("Namespace", meta.namespace.clone().unwrap_or_default()),
        ("Kind", kind.name().to_string()),
    ];
    if let Some(created) = meta_time(meta.creation_timestamp.as_ref()) {
        pairs.push(("Created", when(created, view.now)));
    }
    if let Some(deleting) = meta_time(meta.deletion_timestamp.as_ref()) {
        pairs.push(("Deleting", format!("since {}", when(deleting, view.now))));
    }
    pairs
}

fn phase_text(phase: Option<String>) -> String {
    phase.unwrap_or_else(|| {
        format!("{NONE} (no status yet: is the operator running for this namespace?)")
    })
}

fn observed(generation: Option<i64>, observed: Option<i64>) -> String {
    match (observed, generation) {
        (Some(o), Some(g)) if o == g => format!("generation {g} (up to date)"),
        (Some(o), Some(g)) => format!("generation {o} of {g} (catching up)"),
        (None, Some(g)) => format!("not yet (generation {g})"),
        _ => NONE.into(),
    }
}

/// `status` of an Instance.
pub fn instance_status(instance: &Instance, children: &[Child], view: View) -> String {
    let name = name_of(&instance.metadata);
    let status = instance.status.clone().unwrap_or_default();
    let spec = &instance.spec;
    let mut pairs = common_fields(Kind::Instance, &instance.metadata, view);
    pairs.push(("Phase", phase_text(status.phase.map(|p| p.to_string()))));
    let release = status
        .current_release
        .as_ref()
        .map(|r| format!(" (release {}, {:?})", r.version, r.outcome))
        .unwrap_or_default();
    pairs.push(("Image", format!("{}{release}", spec.image)));
    pairs.push((
        "Replicas",
        format!("{} desired, {} ready", spec.replicas, status.ready_replicas),
    ));
    pairs.push(("Desired state", format!("{:?}", spec.state)));
    if let Some(suspend) = &spec.suspend {
        let since = status
            .suspended_at
            .map(|at| format!("since {}: ", when(at, view.now)))
            .unwrap_or_default();
        pairs.push(("Suspended", format!("{since}{}", suspend.reason)));
    }
    if let Some(asked) = spec.restarted_at {
        let done = if status.restarted_at == Some(asked) {
            "carried out"
        } else {
            "not carried out yet"
        };
        pairs.push(("Restart", format!("{} ({done})", stamp(asked))));
    }
    pairs.push((
        "Observed",
        observed(instance.metadata.generation, status.observed_generation),
    ));
    let mut out = fields(&pairs);
    section(
        &mut out,
        "Conditions",
        conditions_table(&status.conditions, view, 2),
    );
    section(&mut out, "Children", children_table(children, view, 2));
    let endpoints = (!status.endpoints.is_empty()).then(|| {
        let rows: Vec<Vec<String>> = status
            .endpoints
            .iter()
            .map(|e| vec![e.name.to_string(), e.url.clone()])
            .collect();
        table::render(&["NAME", "URL"], &rows, 2)
    });
    section(&mut out, "Endpoints", endpoints);
    history_section(&mut out, Kind::Instance, &name, &status.history, view);
    out
}

/// `status` of a Sandbox; `addresses` are its Service's ports.
pub fn sandbox_status(
    sandbox: &Sandbox,
    children: &[Child],
    addresses: &[(String, String)],
    view: View,
) -> String {
    let name = name_of(&sandbox.metadata);
    let status = sandbox.status.clone().unwrap_or_default();
    let spec = &sandbox.spec;
    let mut pairs = common_fields(Kind::Sandbox, &sandbox.metadata, view);
    pairs.push(("Phase", phase_text(status.phase.map(|p| p.to_string()))));
    pairs.push(("Image", spec.image.clone()));
    pairs.push(("Desired state", format!("{:?}", spec.state)));
    pairs.push(("Host", status.host.clone().unwrap_or_else(|| NONE.into())));
    if let Some(started) = status.started_at {
        pairs.push(("Started", when(started, view.now)));
    }
    let expired = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Expired" && c.status == ConditionStatus::True);
    let expires = match status.expires_at {
        Some(at) => format!(
            "{}{}, then {:?}",
            when(at, view.now),
            if expired { ", expired" } else { "" },
            spec.expiry_policy
        ),
        None => "never".into(),
    };
    pairs.push(("Expires", expires));
    if let Some(agent) = &spec.agent_id {
        pairs.push(("Agent", agent.clone()));
    }
    if let Some(job) = &spec.job_id {
        pairs.push(("Job", job.clone()));
    }
    if let Some(asked) = spec.restarted_at {
        let done = if status.restarted_at == Some(asked) {
            "carried out"
        } else {
            "not carried out yet"
        };
        pairs.push(("Restart", format!("{} ({done})", stamp(asked))));
    }
    pairs.push((
        "Observed",
        observed(sandbox.metadata.generation, status.observed_generation),
    ));
    let mut out = fields(&pairs);
    section(
        &mut out,
        "Conditions",
        conditions_table(&status.conditions, view, 2),
    );
    section(&mut out, "Children", children_table(children, view, 2));
    let mut rows: Vec<Vec<String>> = Vec::new();
    if let Some(ip) = &status.pod_ip {
        rows.push(vec!["pod".into(), ip.clone()]);
    }
    rows.extend(addresses.iter().map(|(n, a)| vec![n.clone(), a.clone()]));
    let endpoints = (!rows.is_empty()).then(|| table::render(&["NAME", "ADDRESS"], &rows, 2));
    section(&mut out, "Endpoints", endpoints);
    history_section(&mut out, Kind::Sandbox, &name, &status.history, view);
    out
}

/// `deliveries`: one row per WebhookDelivery record.
pub fn deliveries_table(
    deliveries: &[WebhookDelivery],
    all_namespaces: bool,
    view: View,
) -> String {
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "WEBHOOK",
        "EVENT",
        "OBJECT",
        "PHASE",
        "ATTEMPTS",
        "CODE",
        "LAST-ERROR",
    ]);
    if view.wide {
        headers.extend(["SEQ", "NEXT-ATTEMPT", "COMPLETED", "AGE"]);
    }
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            let status = d.status.clone().unwrap_or_default();
            let event = &d.spec.event;
            let mut row = vec![];
            if all_namespaces {
                row.push(d.metadata.namespace.clone().unwrap_or_default());
            }
            let error = status.last_error.clone().unwrap_or_else(|| NONE.into());
            row.extend([
                name_of(&d.metadata),
                d.spec.webhook_name.clone(),
                event.type_.as_str().to_string(),
                format!(
                    "{}/{}",
                    event.subject.kind.to_lowercase(),
                    event.subject.name
                ),
                status
                    .phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "Pending".into()),
                status.attempts.to_string(),
                status
                    .last_status_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| NONE.into()),
                if view.wide {
                    crate::error::one_line(&error)
                } else {
                    table::truncate(&error, 60)
                },
            ]);
            if view.wide {
                row.push(event.sequence.to_string());
                row.push(
                    status
                        .next_attempt_at
                        .map(|t| when(t, view.now))
                        .unwrap_or_else(|| NONE.into()),
                );
                row.push(
                    status
                        .completed_at
                        .map(|t| when(t, view.now))
                        .unwrap_or_else(|| NONE.into()),
                );
                row.push(
                    meta_time(d.metadata.creation_timestamp.as_ref())
                        .map(|t| human(view.now - t))
                        .unwrap_or_else(|| NONE.into()),
                );
            }
            row
        })
        .collect();
    table::render(&headers, &rows, 0)
}

/// The order `deliveries` lists records in (and `redeliver --failed`
/// asks for them): by namespace, webhook, object and event sequence (their
/// names sort sequence 10 before 2).
pub fn delivery_order(d: &WebhookDelivery) -> (Option<String>, String, String, String, i64) {
    (
        d.metadata.namespace.clone(),
        d.spec.webhook_name.clone(),
        d.spec.event.subject.name.clone(),
        d.spec.event.subject.uid.clone(),
        d.spec.event.sequence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn view(wide: bool) -> View {
        View {
            wide,
            now: at("2026-11-27T09:00:00Z"),
        }
    }

    fn history(count: i64) -> Vec<serde_json::Value> {
        let phases = ["Provisioning", "Starting", "Running", "Stopping", "Stopped"];
        (1..=count)
            .map(|seq| {
                let i = ((seq - 1) % 5) as usize;
                json!({
                    "sequence": seq,
                    "type": "instance.started",
                    "from": phases[i],
                    "to": phases[(i + 1) % 5],
                    "reason": "Started",
                    "message": format!("step {seq}\nsecond line"),
                    "details": {"replicas": "2"},
                    "time": format!("2026-11-27T08:{:02}:00Z", seq),
                })
            })
            .collect()
    }

    fn instance(history_len: i64) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "Instance",
            "metadata": {
                "name": "web", "namespace": "team-a", "uid": "u-1", "generation": 3,
                "creationTimestamp": "2026-11-27T08:00:00Z"
            },
            "spec": {
                "image": "nginx:1.27", "replicas": 2, "state": "Stopped",
                "suspend": {"reason": "invoice 1042 unpaid"},
                "restartedAt": "2026-11-27T08:30:00Z"
            },
            "status": {
                "phase": "Stopped",
                "observedGeneration": 3,
                "readyReplicas": 0,
                "suspendedAt": "2026-11-27T08:55:00Z",
                "restartedAt": "2026-11-27T08:30:00Z",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Suspended",
                     "message": "suspended: invoice 1042 unpaid", "lastTransitionTime": "2026-11-27T08:55:00Z",
                     "observedGeneration": 3},
                    {"type": "Suspended", "status": "True", "reason": "Suspended",
                     "message": "invoice 1042 unpaid", "lastTransitionTime": "2026-11-27T08:55:00Z"}
                ],
                "endpoints": [{"name": "http", "url": "http://web.team-a.svc.cluster.local:8080"}],
                "currentRelease": {"version": 1, "image": "nginx:1.27", "createdAt": "2026-11-27T08:00:00Z", "outcome": "Succeeded"},
                "history": history(history_len)
            }
        }))
        .unwrap()
    }

    fn children() -> Vec<Child> {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "ownerReferences": [
                {"apiVersion": "ctrlplane.dev/v1alpha1", "kind": "Instance", "name": "web", "uid": "u-1"}]},
            "spec": {"replicas": 0, "selector": {}, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}},
            "status": {}
        }))
        .unwrap();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.7", "ports": [{"name": "http", "port": 8080}]}
        }))
        .unwrap();
        vec![
            deployment_child(&deployment, "u-1"),
            service_child(&service, "u-1"),
        ]
    }

    #[test]
    fn instance_status_shows_phase_conditions_children_endpoints_and_recent_history() {
        let text = instance_status(&instance(7), &children(), view(false));
        let expected = "\
Name:           web
Namespace:      team-a
Kind:           Instance
Created:        2026-11-27T08:00:00Z (60m ago)
Phase:          Stopped
Image:          nginx:1.27 (release 1, Succeeded)
Replicas:       2 desired, 0 ready
Desired state:  Stopped
Suspended:      since 2026-11-27T08:55:00Z (5m ago): invoice 1042 unpaid
Restart:        2026-11-27T08:30:00Z (carried out)
Observed:       generation 3 (up to date)
Conditions:
  TYPE        STATUS   REASON      MESSAGE
  Ready       False    Suspended   suspended: invoice 1042 unpaid
  Suspended   True     Suspended   invoice 1042 unpaid
Children:
  KIND         NAME   STATE
  Deployment   web    0/0 ready, 0 up-to-date, 0 available
  Service      web    ClusterIP 10.0.0.7, ports 8080/TCP
  (Service web is not owned by it)
Endpoints:
  NAME   URL
  http   http://web.team-a.svc.cluster.local:8080
History (last 5 of 7; `kubectl ctrlplane history inst/web` shows all):
  SEQ   TIME                   TYPE               TRANSITION               REASON    MESSAGE
  3     2026-11-27T08:03:00Z   instance.started   Running -> Stopping      Started   step 3 second line
  4     2026-11-27T08:04:00Z   instance.started   Stopping -> Stopped      Started   step 4 second line
  5     2026-11-27T08:05:00Z   instance.started   Stopped -> Provisioning   Started   step 5 second line
  6     2026-11-27T08:06:00Z   instance.started   Provisioning -> Starting   Started   step 6 second line
  7     2026-11-27T08:07:00Z   instance.started   Starting -> Running      Started   step 7 second line
";
        // Columns are aligned per table; compare line by line, normalising the
        // padding of the history rows, which depends on the longest cell.
        let normalise = |s: &str| -> Vec<String> {
            s.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(normalise(&text), normalise(expected), "\n{text}");
        // The exact layout of one table.
        assert!(text.contains("  KIND         NAME   STATE\n  Deployment   web    0/0 ready"));
    }

    #[test]
    fn wide_adds_columns() {
        let text = instance_status(&instance(2), &children(), view(true));
        assert!(text.contains("LAST-TRANSITION"), "{text}");
        assert!(text.contains("OWNED"));
        assert!(text.contains("image nginx:1.27"));
        assert!(text.contains("DETAILS"));
        assert!(text.contains("replicas=2"));
        // Short history: no "last N of M".
        assert!(text.contains("History:\n"));
    }

    #[test]
    fn an_object_the_operator_has_not_seen_says_so() {
        let mut fresh = instance(0);
        fresh.status = None;
        let text = instance_status(&fresh, &[], view(false));
        assert!(
            text.contains("Phase:          <none> (no status yet: is the operator running"),
            "{text}"
        );
        assert!(text.contains("Conditions:   <none>"));
        assert!(text.contains("Children:   <none>"));
        assert!(text.contains("History:   <none>"));
    }

    #[test]
    fn history_table_is_every_entry() {
        let entries: Vec<HistoryEntry> = serde_json::from_value(json!(history(12))).unwrap();
        let text = history_table(&entries, view(false), 0);
        assert_eq!(text.lines().count(), 13);
        assert!(text.starts_with("SEQ   TIME"));
        assert!(text.contains("Provisioning -> Starting"));
        assert!(!text.contains("DETAILS"));
        assert!(history_table(&entries, view(true), 0).contains("replicas=2"));
    }

    #[test]
    fn sandbox_status_shows_expiry_pod_claim_and_addresses() {
        let sandbox: Sandbox = serde_json::from_value(json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "box", "namespace": "team-a", "uid": "s-1", "generation": 1},
            "spec": {"image": "ghcr.io/acme/devbox:1", "resources": {"cpu": "500m", "memory": "1Gi", "storage": "5Gi"},
                     "expiryPolicy": "Stop", "agentId": "agent-a1"},
            "status": {"phase": "Running", "observedGeneration": 1, "host": "kwok-node-0", "podIP": "10.0.0.9",
                       "expiresAt": "2026-11-27T10:00:00Z",
                       "conditions": [{"type": "Expired", "status": "False", "reason": "NotExpired",
                                       "message": "expires at 2026-11-27T10:00:00Z", "lastTransitionTime": "2026-11-27T08:00:00Z"}]}
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "box", "ownerReferences": [{"apiVersion": "v1", "kind": "Sandbox", "name": "box", "uid": "s-1"}]},
            "spec": {"nodeName": "kwok-node-0", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "box-data", "ownerReferences": [{"apiVersion": "v1", "kind": "Sandbox", "name": "box", "uid": "s-1"}]},
            "spec": {"volumeName": "pv-1", "storageClassName": "standard"},
            "status": {"phase": "Bound", "capacity": {"storage": "20Gi"}}
        }))
        .unwrap();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "box", "namespace": "team-a"},
            "spec": {"ports": [{"name": "ssh", "port": 2222}]}
        }))
        .unwrap();
        let children = [pod_child(&pod, "s-1"), claim_child(&claim, "s-1")];
        let text = sandbox_status(
            &sandbox,
            &children,
            &service_addresses(&service),
            view(false),
        );
        assert!(
            text.contains("Expires:        2026-11-27T10:00:00Z (in 60m), then Stop"),
            "{text}"
        );
        assert!(
            text.contains("Pod                     box        Running, ready"),
            "{text}"
        );
        assert!(
            text.contains("PersistentVolumeClaim   box-data   Bound, 20Gi"),
            "{text}"
        );
        assert!(text.contains("pod    10.0.0.9"), "{text}");
        assert!(
            text.contains("ssh    box.team-a.svc.cluster.local:2222"),
            "{text}"
        );
        assert!(text.contains("Agent:          agent-a1"));
        let wide = sandbox_status(&sandbox, &children, &[], view(true));
        assert!(
            wide.contains("node kwok-node-0, IP 10.0.0.9, restarts 0"),
            "{wide}"
        );
        assert!(wide.contains("volume pv-1, class standard"), "{wide}");
    }

    #[test]
    fn an_unreadable_child_is_shown_with_why() {
        let child = unreadable_child(
            "Deployment",
            "web",
            "deployments.apps \"web\" is forbidden:\nno",
        );
        assert_eq!(
            child.state,
            "cannot read: deployments.apps \"web\" is forbidden: no"
        );
        assert_eq!(child.owned, None);
    }

    fn delivery(name: &str, seq: i64, status: serde_json::Value) -> WebhookDelivery {
        serde_json::from_value(json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "WebhookDelivery",
            "metadata": {"name": name, "namespace": "team-a", "creationTimestamp": "2026-11-27T08:58:00Z"},
            "spec": {"webhookName": "hooks", "event": {
                "id": "msg_1", "type": "instance.created", "timestamp": "2026-11-27T08:58:00Z",
                "subject": {"kind": "Instance", "name": "web", "uid": "u-1"}, "sequence": seq, "reason": "Created"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn deliveries_list_webhook_event_object_phase_attempts_code_and_error() {
        let mut items = vec![
            delivery(
                "hooks-u-1-10",
                10,
                json!({"phase": "Succeeded", "attempts": 1, "lastStatusCode": 200}),
            ),
            delivery(
                "hooks-u-1-2",
                2,
                json!({"phase": "Failed", "attempts": 1, "lastStatusCode": 500,
                "lastError": "the endpoint answered 500 Internal Server Error", "completedAt": "2026-11-27T08:59:00Z"}),
            ),
        ];
        items.sort_by_key(delivery_order);
        let text = deliveries_table(&items, false, view(false));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME           WEBHOOK   EVENT              OBJECT         PHASE       ATTEMPTS   CODE   LAST-ERROR"
        );
        assert!(
            lines[1].starts_with("hooks-u-1-2 "),
            "sequence order: {text}"
        );
        assert!(
            lines[1]
                .contains("instance/web   Failed      1          500    the endpoint answered 500"),
            "{text}"
        );
        assert!(
            lines[2].contains("Succeeded   1          200    <none>"),
            "{text}"
        );
        let wide = deliveries_table(&items, true, view(true));
        assert!(wide.starts_with("NAMESPACE   NAME"), "{wide}");
        assert!(wide.contains("2026-11-27T08:59:00Z (60s ago)"), "{wide}");
        assert!(wide.trim_end().ends_with("   2m"), "{wide}");
    }
}
