//! A Tenant Manager double for the tenancy tests: a real HTTP server on
//! 127.0.0.1 that speaks the protocol of the orch-library `tenancy` poller
//! (v0.6.x, `go/pkg/tenancy/poller.go` and `tenancy.go`), so the operator is
//! tested against the wire format and not against its own types.
//!
//! It keeps an event log and the status rows the controller reported, as a
//! Tenant Manager would: replay is synthesized from the current state (every
//! resource's latest event; a deleted one until its deletion is
//! acknowledged with `DELETE /v1/status`), polls page through the log. It
//! records every request, checks each against the shapes the Go poller
//! sends (query parameters in order, exactly the body fields, the status
//! values), and can answer 500 or stop listening on demand.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use ctrlplane_operator::tenancy::naming::{Tenant, namespace_name};
use ctrlplane_operator::tenancy::protocol::Uuid;

/// Waits, once per test binary, until Kubernetes' quota controller counts
/// the ctrlplane.dev kinds. It starts counting a kind up to 30 s after its
/// CRD appears, and a quota made before then counts it only from its next
/// full resync (five minutes), refusing those objects meanwhile ("status
/// unknown for quota"). Tests whose project quotas count them, right after
/// the CRDs were installed, wait here first: a quota of their own, made
/// again until it counts all three.
pub fn ensure_quotas_count_ctrlplane_kinds() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let result = READY.get_or_init(|| {
        let ns = super::TestNamespace::create("quota-probe");
        let kinds = ["instances", "sandboxes", "webhooks"].map(|k| format!("count/{k}.ctrlplane.dev"));
        let hard: Vec<String> = kinds.iter().map(|k| format!("{k}: \"100\"")).collect();
        let probe = format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: probe\nspec:\n  hard: {{{}}}\n",
            hard.join(", ")
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            super::kubectl(["delete", "resourcequota", "probe", "-n", &ns.name, "--ignore-not-found"]);
            super::apply_manifest(&ns.name, &probe).expect_success("a probe quota");
            // Each probe gets a few seconds to be counted before it is made again.
            let made = Instant::now();
            while made.elapsed() < Duration::from_secs(5) {
                last = super::kubectl([
                    "get", "resourcequota", "probe", "-n", &ns.name, "-o", "jsonpath={.status.used}",
                ])
                .stdout;
                let used: serde_json::Map<String, Value> =
                    serde_json::from_str(&last).unwrap_or_default();
                if kinds.iter().all(|k| used.contains_key(k)) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Err(format!("the quota controller never counted the ctrlplane.dev kinds; last: {last}"))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// The page size the Go poller asks for.
const POLL_LIMIT: &str = "100";

/// An organisation in the double.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: String,
}

/// A project in the double.
#[derive(Debug, Clone)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub org: Org,
}

impl Project {
    /// The tenant, as the operator derives names from it.
    pub fn tenant(&self) -> Tenant {
        Tenant {
            org_id: Uuid::parse(&self.org.id).unwrap(),
            org_name: self.org.name.clone(),
            project_id: Uuid::parse(&self.id).unwrap(),
            project_name: self.name.clone(),
        }
    }

    /// The namespace the operator gives this project.
    pub fn namespace(&self) -> String {
        namespace_name(&self.tenant())
    }
}

/// One request that arrived, whatever it was.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Query parameters in the order they came.
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub at: Instant,
    /// What the double answered.
    pub answered: u16,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_replay(&self) -> bool {
        self.path == "/v1/events" && self.param("replay") == Some("true")
    }

    /// The cursor of a poll (`after=`).
    pub fn after(&self) -> Option<i64> {
        (self.path == "/v1/events")
            .then(|| self.param("after")?.parse().ok())
            .flatten()
    }

    pub fn is_status(&self) -> bool {
        self.path == "/v1/status"
    }

    pub fn resource_id(&self) -> Option<&str> {
        self.body.as_ref()?["resourceId"].as_str()
    }

    /// `in_progress`, `completed` or `error` for a PUT; `DELETE` for a delete.
    pub fn status(&self) -> Option<String> {
        if self.method == "DELETE" {
            return Some("DELETE".into());
        }
        Some(self.body.as_ref()?["status"].as_str()?.to_string())
    }

    pub fn message(&self) -> String {
        self.body
            .as_ref()
            .and_then(|b| b["message"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Debug, Clone)]
struct LoggedEvent {
    id: i64,
    event_type: &'static str,
    resource_type: &'static str,
    resource_id: String,
    resource_name: String,
    org_id: Option<String>,
    org_name: Option<String>,
}

impl LoggedEvent {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "eventType": self.event_type,
            "resourceType": self.resource_type,
            "resourceId": self.resource_id,
            "resourceName": self.resource_name,
            "orgId": self.org_id,
            "orgName": self.org_name,
            "folderId": null,
            "createdAt": "2026-05-15T10:00:00.123456789Z",
        })
    }
}

struct Shared {
    controller: String,
    log: Vec<LoggedEvent>,
    /// Deletions the controller acknowledged: gone for good, not replayed.
    acknowledged: HashSet<String>,
    /// The status row of each resource: (status, message).
    rows: HashMap<String, (String, String)>,
    requests: Vec<Request>,
    violations: Vec<String>,
    events_answer: Option<u16>,
    status_answer: Option<u16>,
}

/// The double, listening on 127.0.0.1.
pub struct TenantManager {
    pub address: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A random version-4 UUID in canonical form.
pub fn new_uuid() -> String {
    let hex: String = (0..32)
        .map(|i| match i {
            12 => '4',
            16 => ['8', '9', 'a', 'b'][fastrand::usize(..4)],
            _ => char::from_digit(fastrand::u32(..16), 16).unwrap(),
        })
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl TenantManager {
    /// Starts a double that serves `controller` (the name the operator must
    /// send).
    pub async fn start(controller: &str) -> Self {
        let mut double = Self {
            address: "127.0.0.1:0".parse().unwrap(),
            shared: Arc::new(Mutex::new(Shared {
                controller: controller.to_string(),
                log: Vec::new(),
                acknowledged: HashSet::new(),
                rows: HashMap::new(),
                requests: Vec::new(),
                violations: Vec::new(),
                events_answer: None,
                status_answer: None,
            })),
            stop: None,
            task: None,
        };
        double.listen().await;
        double
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.address = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        }));
    }

    /// The URL the operator is given.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops listening: connections are refused until [`TenantManager::resume`].
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Listens again on the same address, with the same state.
    pub async fn resume(&mut self) {
        self.listen().await;
    }

    /// Answer `GET /v1/events` with this code (and no events) from now on;
    /// `None`: answer properly.
    pub fn answer_events_with(&self, code: Option<u16>) {
        self.shared.lock().unwrap().events_answer = code;
    }

    /// Answer `PUT` and `DELETE /v1/status` with this code from now on.
    pub fn answer_status_with(&self, code: Option<u16>) {
        self.shared.lock().unwrap().status_answer = code;
    }

    fn append(&self, mut event: LoggedEvent) -> i64 {
        let mut shared = self.shared.lock().unwrap();
        event.id = shared.log.last().map_or(0, |e| e.id) + 1;
        let id = event.id;
        shared.log.push(event);
        id
    }

    pub fn create_org(&self, name: &str) -> Org {
        let org = Org {
            id: new_uuid(),
            name: name.to_string(),
        };
        self.append(LoggedEvent {
            id: 0,
            event_type: "created",
            resource_type: "org",
            resource_id: org.id.clone(),
            resource_name: org.name.clone(),
            org_id: None,
            org_name: None,
        });
        org
    }

    pub fn create_project(&self, org: &Org, name: &str) -> Project {
        let project = Project {
            id: new_uuid(),
            name: name.to_string(),
            org: org.clone(),
        };
        self.append(LoggedEvent {
            id: 0,
            event_type: "created",
            resource_type: "project",
            resource_id: project.id.clone(),
            resource_name: project.name.clone(),
            org_id: Some(org.id.clone()),
            org_name: Some(org.name.clone()),
        });
        project
    }

    /// Deletes a project; returns the event's id.
    pub fn delete_project(&self, project: &Project) -> i64 {
        self.append(LoggedEvent {
            id: 0,
            event_type: "deleted",
            resource_type: "project",
            resource_id: project.id.clone(),
            resource_name: project.name.clone(),
            org_id: Some(project.org.id.clone()),
            org_name: Some(project.org.name.clone()),
        })
    }

    /// Deletes an org (and nothing else: no events for its projects).
    pub fn delete_org(&self, org: &Org) -> i64 {
        self.append(LoggedEvent {
            id: 0,
            event_type: "deleted",
            resource_type: "org",
            resource_id: org.id.clone(),
            resource_name: org.name.clone(),
            org_id: None,
            org_name: None,
        })
    }

    /// The id of the newest event.
    pub fn last_event_id(&self) -> i64 {
        self.shared.lock().unwrap().log.last().map_or(0, |e| e.id)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// The status calls about one resource, in order: `in_progress`,
    /// `completed`, `error` or `DELETE`.
    pub fn statuses(&self, resource_id: &str) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.is_status() && r.resource_id() == Some(resource_id))
            .filter_map(Request::status)
            .collect()
    }

    /// The resource's status row now: (status, message), `None` when there
    /// is none (never reported, or deleted).
    pub fn row(&self, resource_id: &str) -> Option<(String, String)> {
        self.shared.lock().unwrap().rows.get(resource_id).cloned()
    }

    /// Requests that did not have the shape the Go poller sends.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().unwrap().violations.clone()
    }
}

impl Drop for TenantManager {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn is_canonical_uuid(text: &str) -> bool {
    Uuid::parse(text).is_ok_and(|u| u.as_str() == text)
}

/// Checks a status body: exactly these fields, the controller's name, a
/// resource type and a canonical UUID.
fn check_status_body(body: &Value, fields: &[&str], controller: &str) -> Result<(), String> {
    let object = body.as_object().ok_or("the body is not a JSON object")?;
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    let mut wanted = fields.to_vec();
    wanted.sort();
    if keys != wanted {
        return Err(format!("fields {keys:?}, expected {wanted:?}"));
    }
    if body["controller"] != controller {
        return Err(format!(
            "controller {}, expected {controller}",
            body["controller"]
        ));
    }
    if !matches!(body["resourceType"].as_str(), Some("org" | "project")) {
        return Err(format!("resourceType {}", body["resourceType"]));
    }
    if !body["resourceId"].as_str().is_some_and(is_canonical_uuid) {
        return Err(format!(
            "resourceId {} is not a canonical UUID",
            body["resourceId"]
        ));
    }
    Ok(())
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut shared = shared.lock().unwrap();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let parsed: Option<Value> = (!body.is_empty())
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    let path = uri.path().to_string();
    let controller = shared.controller.clone();

    let checked: Result<(u16, Value), String> = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/events") => {
            let keys: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
            let named_us = query
                .first()
                .is_some_and(|(k, v)| k == "controller" && *v == controller);
            if !named_us {
                Err(format!(
                    "GET /v1/events without controller={controller} first: {query:?}"
                ))
            } else if keys == ["controller", "replay"] && query[1].1 == "true" {
                Ok(match shared.events_answer {
                    Some(code) => (code, json!("injected failure")),
                    None => (200, replay(&shared)),
                })
            } else if keys == ["controller", "after", "limit"] {
                match (query[1].1.parse::<i64>(), query[2].1.as_str()) {
                    (Ok(after), POLL_LIMIT) => Ok(match shared.events_answer {
                        Some(code) => (code, json!("injected failure")),
                        None => (200, page(&shared, after)),
                    }),
                    _ => Err(format!("bad after/limit: {query:?}")),
                }
            } else {
                Err(format!("GET /v1/events with {query:?}"))
            }
        }
        ("PUT" | "DELETE", "/v1/status") => {
            let json_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let fields: &[&str] = if method == Method::PUT {
                &[
                    "controller",
                    "resourceType",
                    "resourceId",
                    "status",
                    "message",
                ]
            } else {
                &["controller", "resourceType", "resourceId"]
            };
            match (&parsed, json_type, query.is_empty()) {
                (_, false, _) => Err(format!(
                    "{method} /v1/status without content-type application/json"
                )),
                (_, _, false) => Err(format!("{method} /v1/status with a query: {query:?}")),
                (None, _, _) => Err(format!("{method} /v1/status without a JSON body")),
                (Some(body), true, true) => check_status_body(body, fields, &controller)
                    .and_then(|()| {
                        if method == Method::DELETE {
                            return Ok(());
                        }
                        let status = body["status"].as_str().unwrap_or_default();
                        let message = body["message"].as_str();
                        match (status, message) {
                            ("in_progress" | "completed", Some("")) => Ok(()),
                            ("error", Some(m)) if !m.is_empty() => Ok(()),
                            _ => Err(format!("status {status:?} with message {message:?}")),
                        }
                    })
                    .map_err(|e| format!("{method} /v1/status: {e}"))
                    .map(|()| {
                        let id = body["resourceId"].as_str().unwrap_or_default().to_string();
                        match shared.status_answer {
                            Some(code) => (code, json!("injected failure")),
                            None => {
                                if method == Method::DELETE {
                                    shared.rows.remove(&id);
                                    shared.acknowledged.insert(id);
                                } else {
                                    let row = (
                                        body["status"].as_str().unwrap_or_default().to_string(),
                                        body["message"].as_str().unwrap_or_default().to_string(),
                                    );
                                    shared.rows.insert(id, row);
                                }
                                (200, json!({}))
                            }
                        }
                    }),
            }
        }
        _ => Err(format!("unexpected request {method} {path}")),
    };
    let (code, answer) = match checked {
        Ok(answer) => answer,
        Err(violation) => {
            shared.violations.push(violation.clone());
            (400, json!(violation))
        }
    };
    shared.requests.push(Request {
        method: method.to_string(),
        path,
        query,
        body: parsed,
        at: Instant::now(),
        answered: code,
    });
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// Every resource's latest event, in the order resources first appeared;
/// deleted ones only until their deletion is acknowledged.
fn replay(shared: &Shared) -> Value {
    let mut order: Vec<&str> = Vec::new();
    let mut latest: HashMap<&str, &LoggedEvent> = HashMap::new();
    for event in &shared.log {
        if latest.insert(&event.resource_id, event).is_none() {
            order.push(&event.resource_id);
        }
    }
    let events: Vec<Value> = order
        .iter()
        .map(|id| latest[id])
        .filter(|e| e.event_type == "created" || !shared.acknowledged.contains(&e.resource_id))
        .map(LoggedEvent::to_json)
        .collect();
    json!({"events": events, "lastEventId": shared.log.last().map_or(0, |e| e.id)})
}

/// Up to a page of events after `after`; Go writes no events as null.
fn page(shared: &Shared, after: i64) -> Value {
    let events: Vec<Value> = shared
        .log
        .iter()
        .filter(|e| e.id > after)
        .take(POLL_LIMIT.parse().unwrap())
        .map(LoggedEvent::to_json)
        .collect();
    json!({
        "events": if events.is_empty() { Value::Null } else { Value::Array(events) },
        "lastEventId": shared.log.last().map_or(0, |e| e.id),
    })
}
