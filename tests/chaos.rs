//! Chaos tests against the local control plane: the API server restarted,
//! etcd frozen for 15 s, the leader frozen past its lease while a follower
//! takes over, a webhook receiver down for a minute; each in the middle of a
//! churn of Instances, Sandboxes and webhook events.
//!
//! After every fault the same checks run:
//! - the operator recovers by itself: the process that ran before the fault
//!   (the same pid) is ready again and finishes the churn;
//! - no event is lost: every history entry of every object (gapless
//!   sequences, for deleted objects up to their final `instance.deleted` or
//!   `sandbox.destroyed`) reaches the receiver, with one `webhook-id` per
//!   entry, in sequence order per object (order of first arrival);
//!   duplicates are allowed (delivery is at least once) and counted;
//! - no duplicate or orphaned child: each Instance owns exactly one
//!   Deployment and, with ports, one Service; each Sandbox one claim, one
//!   Pod while it runs and, with ports, one Service; nothing is owned by an
//!   object that is gone, once garbage collection is done;
//! - and each test prints how long recovery took (`chaos: ...` lines).
//!
//! They disturb the control plane for everything on it, so a plain `cargo
//! test` skips them (`#[ignore]`) and `hack/test.sh` runs them after the
//! other tests, one at a time, on a fresh control plane of their own with
//! the API server's audit log on (`hack/test.sh chaos` runs only them). By
//! hand, against a control plane started with `CTRLPLANE_AUDIT_LOG=1
//! hack/controlplane.sh up` and `eval "$(hack/controlplane.sh env)"`:
//! `cargo test --test chaos -- --ignored --test-threads=1 --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::controlplane::{
    AuditEvent, Fault, audit_events, fmt_secs, impersonating_kubeconfig, secs,
};
use common::receiver::{Received, Receiver};
use common::storage::Storage;
use common::*;
use ctrlplane_operator::api::{DeliveryPhase, Instance, Sandbox, WebhookDelivery};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};

/// The longest any one wait may take; every wait in these tests has it as
/// its deadline, so each test is bounded.
const WAIT: Duration = Duration::from_secs(240);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Rounds of changes after the objects are created.
const ROUNDS: usize = 5;
/// Leader election tests use a short lease, so a takeover takes seconds.
const LEASE_SECONDS: i64 = 6;

/// One chaos test at a time: each disturbs the control plane, or times
/// faults of its own that another test's load would blur. (hack/test.sh
/// also runs them with --test-threads=1.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Instance,
    Sandbox,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Instance => ApiResource::erase::<Instance>(&()),
            Kind::Sandbox => ApiResource::erase::<Sandbox>(&()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Instance => "Instance",
            Kind::Sandbox => "Sandbox",
        }
    }

    /// The last event of a deleted object: its finalizer is released only
    /// once this is dispatched.
    fn terminal_event(self) -> &'static str {
        match self {
            Kind::Instance => "instance.deleted",
            Kind::Sandbox => "sandbox.destroyed",
        }
    }
}

/// One object of the churn.
#[derive(Debug, Clone)]
struct Member {
    kind: Kind,
    name: String,
    ports: bool,
}

impl Member {
    fn new(kind: Kind, name: &str, ports: bool) -> Self {
        Self {
            kind,
            name: name.into(),
            ports,
        }
    }

    fn manifest(&self, storage_class: &str) -> serde_json::Value {
        let mut spec = match self.kind {
            Kind::Instance => serde_json::json!({"image": "nginx:1.27", "replicas": 1}),
            Kind::Sandbox => serde_json::json!({
                "image": "ghcr.io/acme/devbox:1",
                "resources": {"cpu": "500m", "memory": "1Gi", "storage": "5Gi", "storageClassName": storage_class},
            }),
        };
        if self.ports {
            let port = match self.kind {
                Kind::Instance => serde_json::json!({"name": "http", "port": 8080}),
                Kind::Sandbox => serde_json::json!({"name": "ssh", "port": 2222}),
            };
            spec["ports"] = serde_json::json!([port]);
        }
        serde_json::json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": self.kind.name(),
            "metadata": {"name": self.name},
            "spec": spec,
        })
    }
}

/// One change the churn makes.
#[derive(Debug, Clone)]
enum Step {
    Create(Member),
    Patch(Kind, String, serde_json::Value),
    Delete(Kind, String),
}

/// The churn: nine objects created, then `rounds` rounds in which every
/// Instance is scaled, stopped or started, given a new image or restarted,
/// every other Sandbox stopped or started, and objects are deleted and new
/// ones created. Deterministic; every change makes history entries.
fn churn_plan(rounds: usize) -> Vec<Vec<Step>> {
    let mut alive = vec![
        Member::new(Kind::Instance, "web-0", true),
        Member::new(Kind::Instance, "web-1", true),
        Member::new(Kind::Instance, "web-2", true),
        Member::new(Kind::Instance, "worker-0", false),
        Member::new(Kind::Instance, "worker-1", false),
        Member::new(Kind::Instance, "worker-2", false),
        Member::new(Kind::Sandbox, "box-0", false),
        Member::new(Kind::Sandbox, "box-1", true),
        Member::new(Kind::Sandbox, "box-2", false),
    ];
    let mut plan = vec![alive.iter().cloned().map(Step::Create).collect::<Vec<_>>()];
    let restarted_at = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for round in 1..=rounds {
        let mut steps = Vec::new();
        let (deleted, created): (&[&str], Vec<Member>) = match round {
            2 => (&["worker-2", "box-2"], vec![]),
            3 => (
                &[],
                vec![
                    Member::new(Kind::Instance, "worker-3", false),
                    Member::new(Kind::Sandbox, "box-3", false),
                ],
            ),
            4 => (&["web-2"], vec![]),
            5 => (&[], vec![Member::new(Kind::Instance, "web-3", true)]),
            _ => (&[], vec![]),
        };
        for name in deleted {
            let at = alive.iter().position(|m| m.name == *name).unwrap();
            let member = alive.remove(at);
            steps.push(Step::Delete(member.kind, member.name));
        }
        let instances = alive.iter().filter(|m| m.kind == Kind::Instance);
        for (i, member) in instances.enumerate() {
            let spec = match (round + i) % 4 {
                0 => serde_json::json!({"replicas": 1 + round % 3}),
                1 => {
                    let state = if (round + i) / 4 % 2 == 0 {
                        "Stopped"
                    } else {
                        "Running"
                    };
                    serde_json::json!({"state": state})
                }
                2 => serde_json::json!({"image": format!("nginx:1.{}", 20 + round)}),
                _ => serde_json::json!({"restartedAt": restarted_at, "replicas": 2}),
            };
            steps.push(Step::Patch(Kind::Instance, member.name.clone(), spec));
        }
        let sandboxes = alive.iter().filter(|m| m.kind == Kind::Sandbox);
        for (j, member) in sandboxes.enumerate() {
            if (round + j) % 2 == 0 {
                let state = if (round + j) / 2 % 2 == 1 {
                    "Stopped"
                } else {
                    "Running"
                };
                steps.push(Step::Patch(
                    Kind::Sandbox,
                    member.name.clone(),
                    serde_json::json!({"state": state}),
                ));
            }
        }
        steps.extend(created.iter().cloned().map(Step::Create));
        alive.extend(created);
        plan.push(steps);
    }
    plan
}

/// Every object the churn made, by uid, and which of them it deleted.
#[derive(Debug, Default, Clone)]
struct Ledger {
    objects: BTreeMap<String, Member>,
    deleted: BTreeSet<String>,
}

/// How far the churn has got: rounds whose changes were written, and rounds
/// the operator has seen (observedGeneration caught up) after that.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    applied: usize,
    observed: usize,
}

/// Drives the churn. Every write is tried again until it goes through, so
/// the churn carries on through a fault (it waits where the API server does
/// not answer); each round waits until the operator has seen the last one.
struct Churn {
    client: Client,
    namespace: String,
    storage_class: String,
    ledger: Mutex<Ledger>,
    progress: tokio::sync::watch::Sender<Progress>,
}

impl Churn {
    fn new(client: Client, namespace: &str, storage_class: &str) -> Arc<Self> {
        Arc::new(Self {
            client,
            namespace: namespace.into(),
            storage_class: storage_class.into(),
            ledger: Mutex::new(Ledger::default()),
            progress: tokio::sync::watch::channel(Progress::default()).0,
        })
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.resource())
    }

    fn ledger(&self) -> Ledger {
        self.ledger.lock().unwrap().clone()
    }

    /// Waits until the churn has got this far.
    async fn wait_progress(&self, what: &str, reached: impl Fn(&Progress) -> bool) {
        let mut progress = self.progress.subscribe();
        tokio::time::timeout(WAIT, progress.wait_for(|p| reached(p)))
            .await
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for the churn: {what}"))
            .expect("the churn is running");
    }

    async fn run(self: Arc<Self>, plan: Vec<Vec<Step>>) {
        for (round, steps) in plan.into_iter().enumerate() {
            let mut awaited = Vec::new();
            for step in steps {
                match step {
                    Step::Create(member) => {
                        let created = self.create(&member).await;
                        awaited.push((member.kind, member.name, created.metadata.generation));
                    }
                    Step::Patch(kind, name, spec) => {
                        let patched = self.patch(kind, &name, &spec).await;
                        awaited.push((kind, name, patched.metadata.generation));
                    }
                    Step::Delete(kind, name) => self.delete(kind, &name).await,
                }
            }
            self.progress.send_modify(|p| p.applied = round + 1);
            for (kind, name, generation) in awaited {
                self.wait_observed(kind, &name, generation.unwrap_or(1))
                    .await;
            }
            self.progress.send_modify(|p| p.observed = round + 1);
        }
    }

    /// Creates an object (an earlier try that went through but whose
    /// answer was lost counts), and notes its uid.
    async fn create(&self, member: &Member) -> DynamicObject {
        let api = self.api(member.kind);
        let object: DynamicObject =
            serde_json::from_value(member.manifest(&self.storage_class)).unwrap();
        let created = wait_until(
            &format!("{} {} to be created", member.kind.name(), member.name),
            WAIT,
            || async {
                match api.create(&PostParams::default(), &object).await {
                    Ok(created) => Ok(Some(created)),
                    Err(e) if is_code(&e, 409) => api
                        .get(&member.name)
                        .await
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        self.ledger
            .lock()
            .unwrap()
            .objects
            .insert(created.uid().unwrap(), member.clone());
        created
    }

    async fn patch(&self, kind: Kind, name: &str, spec: &serde_json::Value) -> DynamicObject {
        let api = self.api(kind);
        let patch = serde_json::json!({ "spec": spec });
        wait_until(
            &format!("{} {name} to be changed", kind.name()),
            WAIT,
            || async {
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    async fn delete(&self, kind: Kind, name: &str) {
        let uid = {
            let ledger = self.ledger.lock().unwrap();
            ledger
                .objects
                .iter()
                .find(|(uid, m)| m.kind == kind && m.name == name && !ledger.deleted.contains(*uid))
                .map(|(uid, _)| uid.clone())
                .expect("deleting an object the churn made")
        };
        let api = self.api(kind);
        wait_until(
            &format!("{} {name} to be deleted", kind.name()),
            WAIT,
            || async {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => Ok(Some(())),
                    Err(e) if is_code(&e, 404) => Ok(Some(())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        self.ledger.lock().unwrap().deleted.insert(uid);
    }

    /// Waits until the operator has seen this generation of the object.
    async fn wait_observed(&self, kind: Kind, name: &str, generation: i64) {
        let api = self.api(kind);
        wait_until(
            &format!(
                "the operator to see generation {generation} of {} {name}",
                kind.name()
            ),
            WAIT,
            || async {
                let object = match api.get_opt(name).await {
                    Ok(Some(object)) => object,
                    // Deleted meanwhile: nothing more to see.
                    Ok(None) => return Ok(Some(())),
                    Err(e) => return Err(e.to_string()),
                };
                let observed = object.data["status"]["observedGeneration"].as_i64();
                Ok((observed >= Some(generation)).then_some(()))
            },
        )
        .await;
    }

    /// Every object the churn made that still exists, by uid.
    async fn alive(&self) -> Result<BTreeMap<String, (Kind, DynamicObject)>, String> {
        let mut alive = BTreeMap::new();
        for kind in [Kind::Instance, Kind::Sandbox] {
            let list = self
                .api(kind)
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            for object in list.items {
                alive.insert(object.uid().unwrap_or_default(), (kind, object));
            }
        }
        Ok(alive)
    }
}

fn is_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Why an object is not settled yet, or `None` once it is: it has seen its
/// spec, reached the phase the spec asks for (Ready when Running), and
/// dispatched every history entry.
fn unsettled(object: &DynamicObject) -> Option<String> {
    let status = &object.data["status"];
    if object.metadata.deletion_timestamp.is_some() {
        return Some("being deleted".into());
    }
    if status["observedGeneration"].as_i64() != object.metadata.generation {
        return Some(format!(
            "observed generation {:?} of {:?}",
            status["observedGeneration"].as_i64(),
            object.metadata.generation
        ));
    }
    let desired = object.data["spec"]["state"].as_str().unwrap_or("Running");
    let phase = status["phase"].as_str().unwrap_or("none");
    if phase != desired {
        return Some(format!("{phase}, not {desired}"));
    }
    let ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    if desired == "Running" && !ready {
        return Some("Running but not Ready".into());
    }
    let last = last_sequence(object);
    let dispatched = status["dispatchedSeq"].as_i64().unwrap_or(0);
    if dispatched < last {
        return Some(format!("dispatched {dispatched} of {last} history entries"));
    }
    None
}

/// The sequence of the last history entry.
fn last_sequence(object: &DynamicObject) -> i64 {
    object.data["status"]["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|e| e["sequence"].as_i64())
        .unwrap_or(0)
}

/// What the receiver got, checked against what the objects recorded.
#[derive(Debug)]
struct Delivered {
    /// Distinct events (uid, sequence).
    events: usize,
    /// Requests the receiver accepted.
    requests: usize,
    /// Events that arrived more than once.
    duplicated: usize,
}

/// Every event the objects recorded has arrived, or what is missing. For a
/// live object that is every sequence up to its last history entry; for a
/// deleted one every sequence up to its final event, which must have come.
fn missing_events(
    received: &[Received],
    ledger: &Ledger,
    alive: &BTreeMap<String, (Kind, DynamicObject)>,
) -> Result<Delivered, String> {
    let mut by_event: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut terminal: BTreeMap<String, i64> = BTreeMap::new();
    for r in received {
        *by_event.entry((r.uid.clone(), r.sequence)).or_default() += 1;
        if let Some(member) = ledger.objects.get(&r.uid)
            && r.type_ == member.kind.terminal_event()
        {
            terminal.insert(r.uid.clone(), r.sequence);
        }
    }
    let mut missing = Vec::new();
    for (uid, member) in &ledger.objects {
        let last = match alive.get(uid) {
            Some((_, object)) => last_sequence(object),
            None => match terminal.get(uid) {
                Some(last) => *last,
                None => {
                    missing.push(format!(
                        "{} {} (deleted): {}",
                        member.kind.name(),
                        member.name,
                        member.kind.terminal_event()
                    ));
                    continue;
                }
            },
        };
        for sequence in 1..=last {
            if !by_event.contains_key(&(uid.clone(), sequence)) {
                missing.push(format!(
                    "{} {} #{sequence}",
                    member.kind.name(),
                    member.name
                ));
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} events missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    Ok(Delivered {
        events: by_event.len(),
        requests: received.len(),
        duplicated: by_event.values().filter(|n| **n > 1).count(),
    })
}

/// The test's namespace, static volumes, receiver, signing Secret and
/// Webhook. Fields drop in order: the receiver, the volumes, then the
/// namespace (the test's operators are dropped before all of them).
struct Scene {
    receiver: Receiver,
    storage: Storage,
    ns: TestNamespace,
    client: Client,
}

impl Scene {
    /// `retry_policy`: the Webhook's `spec.retryPolicy` in flow YAML, or
    /// empty for the default one.
    async fn new(prefix: &str, retry_policy: &str) -> Self {
        ensure_crds();
        let ns = TestNamespace::create(prefix);
        // One volume per Sandbox the churn ever makes (a deleted claim's
        // volume is Released, not reused), and a spare.
        let storage = Storage::create(&ns.name, 5);
        let receiver = Receiver::start(&[SECRET]).await;
        apply_manifest(
            &ns.name,
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"
            ),
        )
        .expect_success("the signing Secret");
        let retry_policy = if retry_policy.is_empty() {
            String::new()
        } else {
            format!("  retryPolicy: {retry_policy}\n")
        };
        apply_manifest(
            &ns.name,
            &format!(
                "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\nspec:\n  url: {}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n{retry_policy}",
                receiver.url()
            ),
        )
        .expect_success("the Webhook");
        Self {
            receiver,
            storage,
            client: client().await,
            ns,
        }
    }

    fn churn(&self) -> Arc<Churn> {
        Churn::new(self.client.clone(), &self.ns.name, &self.storage.class)
    }

    /// Waits until every object of the churn is settled and every deleted
    /// one is gone.
    async fn wait_settled(&self, churn: &Churn) {
        wait_until("every object to settle", WAIT, || async {
            let ledger = churn.ledger();
            let alive = churn.alive().await?;
            let mut waiting = Vec::new();
            for (uid, member) in &ledger.objects {
                match (alive.get(uid), ledger.deleted.contains(uid)) {
                    (Some(_), true) => waiting.push(format!("{} still exists", member.name)),
                    (Some((_, object)), false) => {
                        if let Some(why) = unsettled(object) {
                            waiting.push(format!("{}: {why}", member.name));
                        }
                    }
                    (None, true) => {}
                    (None, false) => waiting.push(format!("{} is gone", member.name)),
                }
            }
            if waiting.is_empty() {
                Ok(Some(()))
            } else {
                Err(waiting.join("; "))
            }
        })
        .await
    }

    /// Waits until every object has exactly its children and nothing is
    /// owned by an object that is gone (garbage collection takes a moment).
    async fn wait_children(&self, churn: &Churn) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns.name);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.ns.name);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        wait_until("exactly the children the objects own", WAIT, || async {
            let alive = churn.alive().await?;
            let lp = ListParams::default();
            let err = |e: kube::Error| e.to_string();
            let mut children: Vec<(&str, ObjectMeta)> = Vec::new();
            children.extend(
                deployments
                    .list(&lp)
                    .await
                    .map_err(err)?
                    .items
                    .into_iter()
                    .map(|o| ("Deployment", o.metadata)),
            );
            children.extend(
                services
                    .list(&lp)
                    .await
                    .map_err(err)?
                    .items
                    .into_iter()
                    .map(|o| ("Service", o.metadata)),
            );
            children.extend(
                pods.list(&lp)
                    .await
                    .map_err(err)?
                    .items
                    .into_iter()
                    .map(|o| ("Pod", o.metadata)),
            );
            children.extend(
                claims
                    .list(&lp)
                    .await
                    .map_err(err)?
                    .items
                    .into_iter()
                    .map(|o| ("PersistentVolumeClaim", o.metadata)),
            );
            let mut owned: BTreeMap<(String, &str), usize> = BTreeMap::new();
            let mut problems = Vec::new();
            for (kind, meta) in &children {
                let owner = meta
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.kind == "Instance" || o.kind == "Sandbox");
                let managed = meta.labels.as_ref().is_some_and(|l| {
                    l.get("app.kubernetes.io/managed-by").map(String::as_str)
                        == Some("ctrlplane-operator")
                });
                match owner {
                    Some(owner) if alive.contains_key(&owner.uid) => {
                        *owned.entry((owner.uid.clone(), *kind)).or_default() += 1;
                    }
                    Some(owner) => problems.push(format!(
                        "{kind} {} is owned by {} {}, which is gone",
                        meta.name.as_deref().unwrap_or_default(),
                        owner.kind,
                        owner.name
                    )),
                    None if managed
                        && meta.owner_references.as_ref().is_none_or(|o| o.is_empty()) =>
                    {
                        problems.push(format!(
                            "{kind} {} is ours and has no owner",
                            meta.name.as_deref().unwrap_or_default()
                        ))
                    }
                    None => {}
                }
            }
            for (uid, (kind, object)) in &alive {
                let count = |child: &str| owned.get(&(uid.clone(), child)).copied().unwrap_or(0);
                let ports = object.data["spec"]["ports"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty()) as usize;
                let phase = object.data["status"]["phase"].as_str().unwrap_or_default();
                let wanted: &[(&str, usize)] = match kind {
                    Kind::Instance => &[("Deployment", 1), ("Service", ports)],
                    Kind::Sandbox => &[
                        ("PersistentVolumeClaim", 1),
                        ("Pod", (phase == "Running") as usize),
                        ("Service", ports),
                    ],
                };
                for (child, n) in wanted {
                    if count(child) != *n {
                        problems.push(format!(
                            "{} {} ({phase}) owns {} {child}(s), not {n}",
                            kind.name(),
                            object.name_any(),
                            count(child)
                        ));
                    }
                }
            }
            if problems.is_empty() {
                Ok(Some(()))
            } else {
                Err(problems.join("; "))
            }
        })
        .await
    }

    /// Waits until every event of the churn has arrived, then checks order,
    /// ids, types and signatures.
    async fn wait_delivered(&self, churn: &Churn) -> Delivered {
        let delivered = wait_until("every recorded event to arrive", WAIT, || async {
            let ledger = churn.ledger();
            let alive = churn.alive().await?;
            missing_events(&self.receiver.accepted(), &ledger, &alive).map(Some)
        })
        .await;
        let received = self.receiver.accepted();
        let ledger = churn.ledger();
        let alive = churn.alive().await.unwrap();
        let mut first_arrivals: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        let mut ids: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
        for r in &received {
            assert!(
                ledger.objects.contains_key(&r.uid),
                "an event of an object the churn did not make: {r:?}"
            );
            assert_eq!(r.verified_with, [0], "every request verifies: {r:?}");
            let arrivals = first_arrivals.entry(&r.uid).or_default();
            if !arrivals.contains(&r.sequence) {
                arrivals.push(r.sequence);
            }
            ids.entry((&r.uid, r.sequence)).or_default().insert(&r.id);
        }
        for (uid, arrivals) in &first_arrivals {
            let name = &ledger.objects[*uid].name;
            assert!(
                arrivals.windows(2).all(|w| w[0] < w[1]),
                "{name}: events arrived out of order: {arrivals:?}"
            );
        }
        for ((uid, sequence), ids) in &ids {
            assert_eq!(
                ids.len(),
                1,
                "{} #{sequence}: one webhook-id per event, however often it is sent: {ids:?}",
                ledger.objects[*uid].name
            );
        }
        // What arrived is what the history says.
        for (uid, (_, object)) in &alive {
            for entry in object.data["status"]["history"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let sequence = entry["sequence"].as_i64().unwrap();
                for r in received
                    .iter()
                    .filter(|r| &r.uid == uid && r.sequence == sequence)
                {
                    assert_eq!(
                        entry["type"].as_str(),
                        Some(r.type_.as_str()),
                        "{} #{sequence}",
                        object.name_any()
                    );
                }
            }
        }
        // A deleted object's final event is its last.
        for uid in &ledger.deleted {
            let member = &ledger.objects[uid];
            let arrivals = &first_arrivals[uid.as_str()];
            let last = received
                .iter()
                .find(|r| &r.uid == uid && r.type_ == member.kind.terminal_event())
                .map(|r| r.sequence);
            assert_eq!(
                arrivals.iter().max().copied(),
                last,
                "{}: nothing after {}",
                member.name,
                member.kind.terminal_event()
            );
        }
        delivered
    }

    /// No delivery ended Failed; how many records were made.
    async fn delivery_records(&self) -> usize {
        let api: Api<WebhookDelivery> = Api::namespaced(self.client.clone(), &self.ns.name);
        let records = api.list(&ListParams::default()).await.unwrap();
        let failed: Vec<String> = records
            .items
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeliveryPhase::Failed))
            .map(|d| d.name_any())
            .collect();
        assert!(failed.is_empty(), "deliveries failed: {failed:?}");
        records.items.len()
    }
}

/// Waits until the operator's /readyz answers 200.
async fn wait_operator_ready(operator: &Operator) -> Instant {
    let address = operator.metrics_address;
    wait_until(
        "the operator's /readyz to answer 200",
        WAIT,
        || async move {
            let answer = tokio::task::spawn_blocking(move || http_get(address, "/readyz"))
                .await
                .unwrap();
            match answer {
                Some((200, _)) => Ok(Some(Instant::now())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Asks the operator's /readyz every 200 ms, on a thread of its own, from
/// before a fault until [`ReadySampler::stop`]: how many answers were 200,
/// and how many were not.
struct ReadySampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl ReadySampler {
    fn start(operator: &Operator) -> Self {
        let address = operator.metrics_address;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ready, mut not_ready) = (0, 0);
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                match http_get(address, "/readyz") {
                    Some((200, _)) => ready += 1,
                    _ => not_ready += 1,
                }
                // A sampling rate, not a wait for anything.
                std::thread::sleep(Duration::from_millis(200));
            }
            (ready, not_ready)
        });
        Self { stop, thread }
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// After a fault: a new Instance, created as soon as the API answers. When
/// the operator first wrote its status (its own recovery: watches and
/// writes work again), and when it is Running (the whole control plane's:
/// the Deployment controller, the scheduler and kwok recover too). It is
/// part of the churn's ledger, so its events are checked too.
struct Probe {
    seen: Instant,
    running: Instant,
}

async fn probe(churn: &Churn) -> Probe {
    let member = Member::new(Kind::Instance, "probe", false);
    churn.create(&member).await;
    let api = churn.api(Kind::Instance);
    let seen: Mutex<Option<Instant>> = Mutex::new(None);
    let running = wait_until("the probe Instance to be Running", WAIT, || async {
        let object = api.get("probe").await.map_err(|e| e.to_string())?;
        if object.data["status"]["observedGeneration"].as_i64() >= Some(1) {
            seen.lock().unwrap().get_or_insert_with(Instant::now);
        }
        Ok(unsettled(&object).is_none().then(Instant::now))
    })
    .await;
    let seen = seen.into_inner().unwrap();
    Probe {
        seen: seen.unwrap_or(running),
        running,
    }
}

/// What every fault test checks once the fault is over: the churn runs to
/// its end, every object settles with exactly its children, every event
/// arrives; and the times from `back` (the fault's end) to each.
struct Recovery {
    settled: Instant,
    children: Instant,
    delivered: Instant,
    outcome: Delivered,
    records: usize,
}

async fn recover(
    scene: &Scene,
    churn: &Arc<Churn>,
    driver: tokio::task::JoinHandle<()>,
) -> Recovery {
    driver.await.expect("the churn ran to its end");
    scene.wait_settled(churn).await;
    let settled = Instant::now();
    // Delivery is checked before the children: waiting for garbage
    // collection must not count towards the time events took.
    let outcome = scene.wait_delivered(churn).await;
    let delivered = Instant::now();
    scene.wait_children(churn).await;
    let children = Instant::now();
    let records = scene.delivery_records().await;
    Recovery {
        settled,
        children,
        delivered,
        outcome,
        records,
    }
}

fn report(test: &str, lines: &[String]) {
    eprintln!("chaos: {test}: {}", lines.join("; "));
}

fn operator_args() -> Vec<&'static str> {
    vec!["--allow-private-webhook-addresses"]
}

/// The retry policy of the tests that disturb the API server: the receiver
/// is up, so any retry is the operator's own doing, and comes quickly.
const QUICK_RETRIES: &str = "{maxAttempts: 50, backoffBaseSeconds: 1, backoffCapSeconds: 5}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: disturbs the control plane; hack/test.sh runs it on a control plane of its own"]
async fn chaos_the_api_server_restarted_in_the_middle_of_a_churn() {
    survive_a_control_plane_fault(
        "chaos-apiserver",
        "kube-apiserver restarted",
        || Fault::stop("kube-apiserver"),
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: disturbs the control plane; hack/test.sh runs it on a control plane of its own"]
async fn chaos_etcd_paused_for_15s_in_the_middle_of_a_churn() {
    survive_a_control_plane_fault(
        "chaos-etcd",
        "etcd paused 15s",
        || Fault::pause("etcd"),
        Duration::from_secs(15),
    )
    .await;
}

/// A fault of the control plane in the middle of a churn, held for `held`
/// (none: `start_fault` returns once the component is down, and it is
/// brought back at once), then what every such test checks: the same
/// operator process recovers by itself, sees a new Instance, settles the
/// churn, delivers every event and leaves exactly the children.
async fn survive_a_control_plane_fault<F>(
    namespace: &str,
    title: &str,
    start_fault: impl FnOnce() -> F,
    held: Duration,
) where
    F: std::future::Future<Output = Fault>,
{
    let _serial = SERIAL.lock().await;
    let scene = Scene::new(namespace, QUICK_RETRIES).await;
    let mut operator = Operator::start_with(&scene.ns.name, &operator_args());
    let pid = operator.pid();
    let churn = scene.churn();
    let driver = tokio::spawn(churn.clone().run(churn_plan(ROUNDS)));
    // In the middle: round 2's changes are written, the operator is at work.
    churn
        .wait_progress("round 2 written", |p| p.applied >= 3)
        .await;
    let sampler = ReadySampler::start(&operator);
    let fault = start_fault().await;
    let began = fault.began;
    if !held.is_zero() {
        // The fault itself: the component stays down this long.
        tokio::time::sleep(held).await;
    }
    let back = fault.end().await;
    let ready = wait_operator_ready(&operator).await;
    let probed = probe(&churn).await;
    let recovery = recover(&scene, &churn, driver).await;
    let (answered_ready, answered_not_ready) = sampler.stop();

    assert_eq!(operator.exit_status(), None, "the operator kept running");
    assert_eq!(
        operator.pid(),
        pid,
        "the same operator process, never restarted"
    );
    report(
        title,
        &[
            format!("down {}", fmt_secs(back - began)),
            format!(
                "operator ready {:.1}s after it was back (/readyz through it all: {answered_ready} times 200, {answered_not_ready} not)",
                secs(back, ready)
            ),
            format!(
                "a new Instance seen by the operator after {:.1}s, Running after {:.1}s",
                secs(back, probed.seen),
                secs(back, probed.running)
            ),
            format!("churn settled after {:.1}s", secs(back, recovery.settled)),
            format!(
                "every event delivered after {:.1}s",
                secs(back, recovery.delivered)
            ),
            format!(
                "exactly the children (garbage collected) after {:.1}s",
                secs(back, recovery.children)
            ),
            format!(
                "{} events, {} requests, {} sent more than once, {} delivery records",
                recovery.outcome.events,
                recovery.outcome.requests,
                recovery.outcome.duplicated,
                recovery.records
            ),
            format!(
                "{} failed reconciles",
                operator.metric("ctrlplane_reconcile_errors_total") as u64
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: disturbs the control plane; hack/test.sh runs it on a control plane of its own"]
async fn chaos_a_receiver_down_for_60s_gets_everything_in_order() {
    let _serial = SERIAL.lock().await;
    // The default retry policy (8 attempts, from 1 s doubling): what users get.
    let mut scene = Scene::new("chaos-receiver", "").await;
    let mut operator = Operator::start_with(&scene.ns.name, &operator_args());
    let pid = operator.pid();
    let churn = scene.churn();
    let driver = tokio::spawn(churn.clone().run(churn_plan(ROUNDS)));
    churn
        .wait_progress("round 1 written", |p| p.applied >= 2)
        .await;
    scene.receiver.stop().await;
    let down = Instant::now();
    // The churn goes on while nothing can be delivered.
    churn
        .wait_progress("every round seen by the operator", |p| {
            p.observed == ROUNDS + 1
        })
        .await;
    let churn_done = Instant::now();
    // The fault itself: the receiver stays down for 60 seconds.
    tokio::time::sleep_until((down + Duration::from_secs(60)).into()).await;
    scene.receiver.resume().await;
    let up = Instant::now();
    let recovery = recover(&scene, &churn, driver).await;

    assert_eq!(operator.exit_status(), None, "the operator kept running");
    assert_eq!(
        operator.pid(),
        pid,
        "the same operator process, never restarted"
    );
    assert_eq!(
        operator.metric("ctrlplane_webhook_deliveries_total{outcome=\"failed\""),
        0.0
    );
    report(
        "receiver down 60s",
        &[
            format!("churn done {:.1}s into the outage", secs(down, churn_done)),
            format!("down {:.1}s", secs(down, up)),
            format!(
                "every event delivered {:.1}s after it was back",
                secs(up, recovery.delivered)
            ),
            format!(
                "{} events, {} requests, {} sent more than once, {} delivery records",
                recovery.outcome.events,
                recovery.outcome.requests,
                recovery.outcome.duplicated,
                recovery.records
            ),
        ],
    );
}

/// The holder of the leader election Lease, and when it last renewed.
async fn lease_holder(leases: &Api<Lease>) -> Result<(String, Option<DateTime<Utc>>), String> {
    let lease = leases
        .get("ctrlplane-operator")
        .await
        .map_err(|e| e.to_string())?;
    let spec = lease.spec.unwrap_or_default();
    let renewed = spec
        .renew_time
        .map(|t| t.0.to_string().parse::<DateTime<Utc>>().unwrap());
    Ok((spec.holder_identity.unwrap_or_default(), renewed))
}

/// The operator's JSON log lines with this message, with their time.
fn log_lines(log: &str, message: &str) -> Vec<(DateTime<Utc>, serde_json::Value)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .filter_map(|line| {
            let at = line["timestamp"].as_str()?.parse::<DateTime<Utc>>().ok()?;
            Some((at, line))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: freezes the leader and reads the API server's audit log; hack/test.sh runs it on a control plane of its own"]
async fn chaos_a_frozen_leader_writes_nothing_after_losing_its_lease_and_exits() {
    let _serial = SERIAL.lock().await;
    let scene = Scene::new("chaos-leader", QUICK_RETRIES).await;
    let ns = scene.ns.name.clone();
    // Two replicas with identities of their own, in the Lease (POD_NAME) and
    // towards the API server (impersonation), so the audit log tells them
    // apart. Each logs every write that passes its fence (trace).
    let (first, second) = (format!("{ns}-a"), format!("{ns}-b"));
    let lease_duration = LEASE_SECONDS.to_string();
    let mut args = operator_args();
    args.extend([
        "--leader-election",
        "--leader-election-namespace",
        &ns,
        "--leader-election-lease-duration",
        &lease_duration,
    ]);
    let start = |identity: &str| {
        Operator::start_as_with_env(
            &ns,
            &impersonating_kubeconfig(identity),
            &args,
            &[
                ("POD_NAME", identity),
                (
                    "CTRLPLANE_LOG_LEVEL",
                    "info,ctrlplane_operator=debug,ctrlplane_operator::runtime::fence=trace",
                ),
            ],
        )
    };
    let mut leader = start(&first);
    wait_until("the first replica to lead", WAIT, || async {
        Ok((leader.metric("ctrlplane_leader ") == 1.0).then_some(()))
    })
    .await;
    let follower = start(&second);
    assert_eq!(follower.metric("ctrlplane_leader "), 0.0);
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &ns);

    let churn = scene.churn();
    let driver = tokio::spawn(churn.clone().run(churn_plan(ROUNDS)));
    // Frozen in the middle of its work: round 2's changes just written.
    churn
        .wait_progress("round 2 written", |p| p.applied >= 3)
        .await;
    leader.signal("STOP");
    let frozen = Instant::now();
    let frozen_at = Utc::now();
    let took_over = wait_until("the follower to take the lease", WAIT, || async {
        let (holder, _) = lease_holder(&leases).await?;
        Ok((holder == second).then(Instant::now))
    })
    .await;
    // The follower reconciles: the churn goes on under it.
    churn
        .wait_progress("round 3 seen by the new leader", |p| p.observed >= 4)
        .await;
    let reconciling = Instant::now();
    let resumed_at = Utc::now();
    leader.signal("CONT");
    let resumed = Instant::now();
    let status = wait_until("the old leader to exit", WAIT, || {
        let status = leader.exit_status();
        async move { Ok(status) }
    })
    .await;
    assert!(!status.success(), "it exits with an error: {status}");
    let log = leader.log();
    let (stopped_at, _) = log_lines(&log, "lost the lease; stopping at once")
        .into_iter()
        .next()
        .expect("it says why it stops");
    let recovery = recover(&scene, &churn, driver).await;

    // Writes per identity, from the API server's audit log. The old
    // leader's last successful renewal before the freeze: its lease ran
    // out LEASE_SECONDS after that.
    let events = audit_events();
    let ok = |e: &AuditEvent| (200..300).contains(&e.code);
    let writes_of = |user: &str| -> Vec<&AuditEvent> {
        events
            .iter()
            .filter(|e| e.namespace == ns && e.user == user)
            .collect()
    };
    let old_leader = writes_of(&first);
    let new_leader = writes_of(&second);
    let last_renewal = old_leader
        .iter()
        .filter(|e| e.resource == "leases" && ok(e) && e.received < frozen_at)
        .map(|e| e.received)
        .max()
        .expect("the leader renewed its lease");
    let expired_at = last_renewal + chrono::Duration::seconds(LEASE_SECONDS);
    let acquired_at = new_leader
        .iter()
        .filter(|e| e.resource == "leases" && ok(e))
        .map(|e| e.received)
        .min()
        .expect("the follower wrote the lease");
    let before_acquiring: Vec<String> = new_leader
        .iter()
        .filter(|e| e.received < acquired_at && e.resource != "leases")
        .map(|e| e.describe())
        .collect();
    assert!(
        before_acquiring.is_empty(),
        "the follower wrote before it held the lease:\n{}",
        before_acquiring.join("\n")
    );
    let new_leader_writes = new_leader
        .iter()
        .filter(|e| e.received >= acquired_at && e.resource != "leases")
        .count();
    assert!(new_leader_writes > 0, "the new leader does the work");

    // The old leader, by its own account: no write passed its fence after
    // SIGCONT.
    let passes = log_lines(&log, "write passed the fence");
    let passed_after: Vec<String> = passes
        .iter()
        .filter(|(at, _)| *at >= resumed_at)
        .map(|(at, line)| format!("{at} {} {}", line["method"], line["path"]))
        .collect();
    assert!(
        passed_after.is_empty(),
        "the old leader let writes through after SIGCONT:\n{}",
        passed_after.join("\n")
    );
    // And by the API server's: whatever arrived after its lease ran out was
    // a request that passed the fence before the freeze and was still on its
    // way (handed to the HTTP client, not yet sent) when the process froze.
    // The fence cannot call those back; nothing else may arrive.
    let after_expiry: Vec<&&AuditEvent> = old_leader
        .iter()
        .filter(|e| e.received > expired_at)
        .collect();
    // Each arrival needs a pass of its own: per method and path, no more
    // of the old leader's writes arrived than passed its fence before the
    // freeze. "Before the freeze" is before SIGCONT: `frozen_at` is read just
    // before SIGSTOP is sent, and a pass in between was decided while the
    // process still ran, with its lease still good; a frozen process decides
    // nothing, and none passed after SIGCONT (asserted above).
    let passed = |method: &str, path: &str| {
        passes
            .iter()
            .filter(|(at, line)| {
                *at < resumed_at && line["method"] == method && line["path"] == path
            })
            .count()
    };
    let arrived = |method: &str, path: &str| {
        old_leader
            .iter()
            .filter(|e| e.method == method && e.path == path)
            .count()
    };
    let decided_after: Vec<String> = after_expiry
        .iter()
        .filter(|e| arrived(&e.method, &e.path) > passed(&e.method, &e.path))
        .map(|e| e.describe())
        .collect();
    assert!(
        decided_after.is_empty(),
        "the old leader wrote after its lease ran out at {expired_at} (frozen at {frozen_at}, \
         resumed at {resumed_at}):\n{}",
        decided_after.join("\n")
    );
    let in_flight: Vec<String> = after_expiry
        .iter()
        .map(|e| {
            let last_pass = passes
                .iter()
                .filter(|(at, line)| {
                    *at < resumed_at && line["method"] == e.method && line["path"] == e.path
                })
                .map(|(at, _)| *at)
                .max()
                .unwrap();
            format!(
                "{} (its last pass of the fence: {} ms before SIGSTOP was sent)",
                e.describe(),
                (frozen_at - last_pass).num_milliseconds()
            )
        })
        .collect();
    if !in_flight.is_empty() {
        eprintln!(
            "chaos: leader frozen past its lease: on its way when it froze, arrived after SIGCONT:\n  {}",
            in_flight.join("\n  ")
        );
    }
    report(
        "leader frozen past its lease",
        &[
            format!(
                "lease ran out {:.1}s after the freeze",
                (expired_at - frozen_at).num_milliseconds() as f64 / 1000.0
            ),
            format!(
                "follower took over {:.1}s after the freeze",
                secs(frozen, took_over)
            ),
            format!(
                "and reconciled the churn {:.1}s after",
                secs(frozen, reconciling)
            ),
            format!(
                "frozen for {:.1}s; the old leader stopped {:.3}s after SIGCONT",
                secs(frozen, resumed),
                (stopped_at - resumed_at)
                    .num_microseconds()
                    .unwrap_or_default() as f64
                    / 1e6
            ),
            format!(
                "writes: old leader {} before its lease ran out, {} after (requests on their way when it froze); \
                 {} refused by its fence after SIGCONT; new leader {} after taking over",
                old_leader
                    .iter()
                    .filter(|e| e.received <= expired_at)
                    .count(),
                in_flight.len(),
                log.lines()
                    .filter(|l| l.contains("\"message\":\"not writing:"))
                    .count(),
                new_leader_writes
            ),
            format!(
                "churn settled {:.1}s after the freeze",
                secs(frozen, recovery.settled)
            ),
            format!(
                "{} events, {} requests, {} sent more than once, {} delivery records",
                recovery.outcome.events,
                recovery.outcome.requests,
                recovery.outcome.duplicated,
                recovery.records
            ),
        ],
    );
    drop(follower);
}
