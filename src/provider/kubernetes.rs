//! The `kubernetes` provider: an Instance becomes a Deployment and, when it
//! declares ports, a Service of the same name, owned by the Instance.
//!
//! Building the objects and reading their status are pure functions
//! ([`deployment_for`], [`service_for`], [`workload_status`]); the provider
//! itself only applies them (server-side apply, one field manager, forced, so
//! hand edits of our fields are put back) and reads its reflector caches,
//! which hold every Deployment and Service in scope (other people's trimmed
//! to their metadata), so whose an object of the same name is, is known
//! without asking the API server.
//!
//! It remembers, per object, the hash of what it last applied and the
//! generation the API server answered with. A reconcile whose desired object
//! hashes the same, against a cached object at that generation, makes no API
//! call at all; a hand edit bumps the generation and is repaired, a deleted
//! object is missing from the cache and is created again.
//!
//! Everything it makes is owned by the Instance, so the garbage collector
//! removes it once the Instance is gone: deletion costs no request here.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Service, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::cached::{
    CachedDeployment, CachedPod, CachedService, RolloutCondition, Summaries, keep_our_metadata,
};
use super::shape::{self, Ownership};
use super::{
    ActionNote, ApplyReason, Cleanup, Deprovision, INSTANCE_LABEL, InstanceProvider,
    InstanceWorkload, ProviderError, ProviderResult, WorkloadId, WorkloadStatus,
};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL, ProviderRef};
use crate::runtime::digest;

/// The provider's name in spec.provider.
pub const NAME: &str = "kubernetes";
/// The field manager of every server-side apply the operator makes.
pub use super::shape::FIELD_MANAGER;
/// The pod-template annotation whose change rolls the replicas.
pub const RESTART_ANNOTATION: &str = "ctrlplane.dev/restartedAt";
/// The name of the one container of an Instance's pods.
pub const CONTAINER_NAME: &str = "app";
/// The annotation that carries the hash of the Deployment last applied, so
/// an operator that starts again knows what it applied before.
pub const APPLIED_HASH_ANNOTATION: &str = "ctrlplane.dev/applied-hash";

/// The labels that mark a child as ours and tie it to its Instance.
pub fn child_labels(workload: &InstanceWorkload) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (INSTANCE_LABEL.to_string(), workload.name.clone()),
    ])
}

/// The Instance's labels plus ours; ours win.
fn object_labels(workload: &InstanceWorkload) -> BTreeMap<String, String> {
    let mut labels = workload.labels.clone();
    labels.extend(child_labels(workload));
    labels
}

fn object_meta(workload: &InstanceWorkload) -> ObjectMeta {
    ObjectMeta {
        name: Some(workload.name.clone()),
        namespace: Some(workload.namespace.clone()),
        labels: Some(object_labels(workload)),
        owner_references: Some(vec![workload.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The Deployment that runs an Instance. Pure.
pub fn deployment_for(workload: &InstanceWorkload) -> Deployment {
    let selector = BTreeMap::from([(INSTANCE_LABEL.to_string(), workload.name.clone())]);
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(resources) = &workload.resources {
        if let Some(cpu) = &resources.cpu {
            requests.insert("cpu".to_string(), cpu.clone());
        }
        if let Some(memory) = &resources.memory {
            // Memory is not compressible: the limit equals the request so a
            // replica cannot take memory its node promised to others. CPU
            // gets no limit, so idle capacity is not wasted.
            requests.insert("memory".to_string(), memory.clone());
            limits.insert("memory".to_string(), memory.clone());
        }
    }
    let env = shape::container_env(&workload.env);
    let ports = shape::container_ports(&workload.ports);
    let probe = workload.health_check.as_ref().map(|h| Probe {
        http_get: h.http_get.as_ref().map(|g| HTTPGetAction {
            path: Some(g.path.clone()),
            port: IntOrString::String(g.port.clone()),
            ..HTTPGetAction::default()
        }),
        tcp_socket: h.tcp_socket.as_ref().map(|t| TCPSocketAction {
            port: IntOrString::String(t.port.clone()),
            ..TCPSocketAction::default()
        }),
        exec: h.exec.as_ref().map(|e| ExecAction {
            command: Some(e.command.clone()),
        }),
        initial_delay_seconds: h.initial_delay_seconds,
        period_seconds: h.period_seconds,
        timeout_seconds: h.timeout_seconds,
        failure_threshold: h.failure_threshold,
        ..Probe::default()
    });
    let annotations = workload
        .restart_token
        .as_ref()
        .map(|token| BTreeMap::from([(RESTART_ANNOTATION.to_string(), token.clone())]));
    let node_selector = workload.region.as_ref().map(|region| {
        BTreeMap::from([("topology.kubernetes.io/region".to_string(), region.clone())])
    });
    Deployment {
        metadata: object_meta(workload),
        spec: Some(DeploymentSpec {
            replicas: Some(workload.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(workload.progress_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(child_labels(workload)),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: CONTAINER_NAME.to_string(),
                        image: Some(workload.image.clone()),
                        env: (!env.is_empty()).then_some(env),
                        ports: (!ports.is_empty()).then_some(ports),
                        resources: (!requests.is_empty()).then(|| ResourceRequirements {
                            requests: Some(requests),
                            limits: (!limits.is_empty()).then_some(limits),
                            ..ResourceRequirements::default()
                        }),
                        readiness_probe: probe.clone(),
                        liveness_probe: probe,
                        ..Container::default()
                    }],
                    node_selector,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The Service in front of an Instance, one port per declared port; `None`
/// when it declares no ports (a Service needs at least one). Pure.
pub fn service_for(workload: &InstanceWorkload) -> Option<Service> {
    shape::cluster_ip_service(
        object_meta(workload),
        (INSTANCE_LABEL, &workload.name),
        &workload.ports,
    )
}

/// What pods say about why they are not ready, in words a user can act on;
/// at most a few, one per distinct reason. Pure.
pub fn pod_problems(pods: &[Arc<CachedPod>]) -> Vec<String> {
    describe_problems(pods.iter().flat_map(|pod| problems_of(pod)))
}

/// At most a few of `found` (reason, message) problems, one per distinct
/// reason, in words a user can act on. Pure.
pub fn describe_problems(found: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut problems: Vec<(String, String)> = Vec::new();
    for (reason, message) in found {
        if !problems.iter().any(|(r, _)| *r == reason) {
            problems.push((reason, message));
        }
    }
    problems.sort();
    problems.into_iter().take(3).map(|(_, m)| m).collect()
}

/// Why one pod is not ready, as (reason, message) pairs; none when nothing
/// stands in its way. Pure.
pub fn problems_of(pod: &CachedPod) -> Vec<(String, String)> {
    let mut found = Vec::new();
    {
        let name = pod.name_any();
        let Some(status) = &pod.status else {
            return found;
        };
        if status.phase.as_deref() == Some("Failed") {
            found.push((
                "PodFailed".to_string(),
                format!(
                    "pod {name} failed{}",
                    status
                        .message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ));
        }
        for condition in status.conditions.iter().flatten() {
            if condition.type_ == "PodScheduled"
                && condition.status == "False"
                && condition.reason.as_deref() == Some("Unschedulable")
            {
                found.push((
                    "Unschedulable".to_string(),
                    format!(
                        "pod {name} cannot be scheduled: {}",
                        condition.message.clone().unwrap_or_default()
                    ),
                ));
            }
        }
        for container in status.container_statuses.iter().flatten() {
            if container.ready {
                continue;
            }
            let state = container.state.as_ref();
            if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
                let reason = waiting.reason.clone().unwrap_or_else(|| "Waiting".into());
                if matches!(reason.as_str(), "ContainerCreating" | "PodInitializing") {
                    continue;
                }
                let exit = container
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| format!(", last exit code {}", t.exit_code))
                    .unwrap_or_default();
                let restarts = if container.restart_count > 0 {
                    format!(" (restarted {} times{exit})", container.restart_count)
                } else {
                    String::new()
                };
                let message = waiting
                    .message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                found.push((
                    reason.clone(),
                    format!(
                        "pod {name}: container {} is in {reason}{restarts}{message}",
                        container.name
                    ),
                ));
            } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
                let reason = terminated
                    .reason
                    .clone()
                    .unwrap_or_else(|| "Terminated".into());
                found.push((
                    reason.clone(),
                    format!(
                        "pod {name}: container {} terminated ({reason}, exit code {})",
                        container.name, terminated.exit_code
                    ),
                ));
            } else if state.and_then(|s| s.running.as_ref()).is_some() {
                found.push((
                    "NotReady".to_string(),
                    format!(
                        "pod {name}: container {} is running but not ready",
                        container.name
                    ),
                ));
            }
        }
    }
    found
}

/// What the cache of Instances' pods keeps of one: why it is not ready.
/// Pods with nothing to explain (most of them, most of the time) are not
/// kept at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub namespace: String,
    /// The Instance it runs, from its label.
    pub instance: String,
    /// (reason, message) pairs, as [`problems_of`] finds them.
    pub problems: Vec<(String, String)>,
}

/// What the cache of Instances' pods keeps of `pod` (see [`PodHealth`]).
/// Pure.
pub fn pod_health(pod: &CachedPod) -> Option<PodHealth> {
    let problems = problems_of(pod);
    if problems.is_empty() {
        return None;
    }
    Some(PodHealth {
        namespace: pod.namespace()?,
        instance: pod.labels().get(INSTANCE_LABEL)?.clone(),
        problems,
    })
}

/// Reads a workload's status from its Deployment, Service and pods. Pure.
/// `pod_problems` says what its pods' problems are; it is called only when
/// they matter (the rollout is not done), so a healthy workload costs no
/// scan.
pub fn workload_status(
    deployment: &CachedDeployment,
    service: Option<&CachedService>,
    pod_problems: impl FnOnce() -> Vec<String>,
    wants_service: bool,
    caught_up: bool,
) -> WorkloadStatus {
    let spec = deployment.spec.clone().unwrap_or_default();
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or_default();
    let observed = status.observed_generation.unwrap_or_default() >= generation;
    let template = &spec.template;
    let image = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let restart_token = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTART_ANNOTATION).cloned());
    let desired = spec.replicas.unwrap_or(1);
    let replicas = status.replicas.unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or_default();
    let updated = status.updated_replicas.unwrap_or_default();
    let available = status.available_replicas.unwrap_or_default();
    // When it was found stuck; without a time on the condition, now.
    let progress_deadline_exceeded = status
        .conditions
        .iter()
        .flatten()
        .find(|c| says_the_deadline_was_missed(c))
        .map(|c| {
            c.last_update_time
                .as_ref()
                .and_then(crate::api::utc_of)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        });
    let rollout_complete =
        observed && updated == desired && available == desired && replicas == desired;
    // Old replicas can keep `ready` up during a rollout, so the new pods'
    // problems matter whenever the rollout is not complete.
    let problems = if ready < desired || !rollout_complete {
        pod_problems()
    } else {
        Vec::new()
    };
    WorkloadStatus {
        provider_ref: ProviderRef {
            provider: NAME.into(),
            kind: "Deployment".into(),
            name: deployment.name_any(),
        },
        current: observed && caught_up,
        image,
        desired_replicas: desired,
        replicas,
        ready_replicas: ready,
        restart_token,
        rollout_complete,
        progress_deadline_exceeded: progress_deadline_exceeded.filter(|_| observed),
        problems,
        endpoint_ready: !wants_service || service.is_some(),
        terminating: deployment.metadata.deletion_timestamp.is_some(),
    }
}

/// What we last applied to one object. One is kept for every Instance for
/// as long as the operator runs, so it holds numbers only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    hash: u64,
    uid: u64,
    generation: i64,
}

/// What an object's UID is remembered as in an `applied` entry, which is
/// keyed by the digest of the namespace and name: numbers instead of three
/// strings, ~0.2 KB less per Instance.
fn uid_digest<K: Resource>(object: &K) -> u64 {
    digest(&object.meta().uid)
}

/// The caches the provider reads, filled by the controller's reflectors.
#[derive(Clone)]
pub struct Caches {
    /// Every Deployment in scope; those not ours keep only their metadata.
    pub deployments: Store<CachedDeployment>,
    /// Every Service in scope; those not ours keep only their metadata.
    pub services: Store<CachedService>,
    /// Instances' pods that have a problem to explain.
    pub pods: Summaries<PodHealth>,
}

/// Runs Instances as Deployments and Services.
pub struct KubernetesProvider {
    client: Client,
    caches: Caches,
    /// By the digest of the Deployment's namespace and name.
    applied: Mutex<HashMap<u64, Applied>>,
    wakeups: super::WakeupSlot,
}

impl KubernetesProvider {
    /// `deployments` and `services` are the watch events of what it reads,
    /// and `unready_pods` the Instances whose pods are not ready: each wakes
    /// the Instance it belongs to.
    pub fn new(
        client: Client,
        caches: Caches,
        deployments: impl futures::Stream<Item = Arc<CachedDeployment>> + Send + 'static,
        services: impl futures::Stream<Item = Arc<CachedService>> + Send + 'static,
        unready_pods: impl futures::Stream<Item = WorkloadId> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        let owner = |id: Option<WorkloadId>| futures::future::ready(id);
        let wakeups = futures::stream::select_all([
            deployments
                .filter_map(move |d| owner(shape::owner_of(d.as_ref(), "Instance")))
                .boxed(),
            services
                .filter_map(move |s| owner(shape::owner_of(s.as_ref(), "Instance")))
                .boxed(),
            unready_pods.boxed(),
        ])
        .boxed();
        Self {
            client,
            caches,
            applied: Mutex::new(HashMap::new()),
            wakeups: super::WakeupSlot::new(wakeups),
        }
    }

    fn applied_record(&self, key: &u64) -> Option<Applied> {
        self.applied
            .lock()
            .map(|m| m.get(key).cloned())
            .unwrap_or(None)
    }

    /// Makes the Deployment and Service match the workload, calling the API
    /// only when the cache shows they do not already.
    async fn ensure(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>> {
        let mut notes = Vec::new();
        let id = workload.id();
        let key = digest(&(&workload.namespace, &workload.name));
        let mut desired = deployment_for(workload);
        let hash = hash_of(&desired);
        desired
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(APPLIED_HASH_ANNOTATION.to_string(), format!("{hash:016x}"));
        let object = ObjectRef::<CachedDeployment>::new(&workload.name).within(&workload.namespace);
        let cached = self.caches.deployments.get(&object);
        if let Some(existing) = cached.as_deref()
            && ownership(existing, &id) == Ownership::Foreign
        {
            return Err(conflict("Deployment", &workload.name));
        }
        let record = self
            .applied_record(&key)
            .or_else(|| applied_before_a_restart(cached.as_deref(), workload, hash));
        let up_to_date = match (&cached, &record) {
            (Some(cached), Some(record)) => {
                record.hash == hash
                    && uid_digest(cached.as_ref()) == record.uid
                    && cached.metadata.generation.unwrap_or_default() <= record.generation
            }
            _ => false,
        };
        if up_to_date
            && let Some(record) = &record
            && let Ok(mut map) = self.applied.lock()
        {
            map.entry(key).or_insert_with(|| record.clone());
        }
        if !up_to_date {
            match (&cached, &record) {
                (None, Some(_)) => notes.push(ActionNote {
                    warning: true,
                    reason: "DriftRepaired".into(),
                    message: format!(
                        "Deployment {} was missing and has been created again",
                        workload.name
                    ),
                }),
                (Some(cached), Some(record))
                    if record.hash == hash
                        && cached.metadata.generation.unwrap_or_default() > record.generation =>
                {
                    notes.push(ActionNote {
                        warning: true,
                        reason: "DriftRepaired".into(),
                        message: format!(
                            "Deployment {} was changed by hand; its spec has been put back",
                            workload.name
                        ),
                    })
                }
                _ => {}
            }
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &workload.namespace);
            let applied = api
                .patch(
                    &workload.name,
                    &PatchParams::apply(shape::FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map_err(|source| {
                    ProviderError::kube(
                        format!("applying Deployment {}", workload.name),
                        &workload.namespace,
                        source,
                    )
                })?;
            if let Ok(mut map) = self.applied.lock() {
                map.insert(
                    key,
                    Applied {
                        hash,
                        uid: uid_digest(&applied),
                        generation: applied.metadata.generation.unwrap_or_default(),
                    },
                );
            }
        }
        notes.extend(
            shape::ensure_service(
                &self.client,
                &self.caches.services,
                &id,
                "Instance",
                INSTANCE_LABEL,
                service_for(workload),
            )
            .await?,
        );
        Ok(notes)
    }
}

/// Shrinks a cached Deployment of ours further: of its annotations and its
/// template's only ours, and of its status conditions only one saying the
/// rollout is stuck. The cached type already leaves out every other field;
/// these maps and lists are what is left that other controllers fill.
pub fn keep_what_the_provider_reads(deployment: &mut CachedDeployment) {
    keep_our_metadata(
        &mut deployment.metadata,
        |owner| owner.controller == Some(true),
        &[APPLIED_HASH_ANNOTATION],
    );
    // With a controlling owner, the owner says whose it is (see
    // `shape::ownership`): our labels would only repeat it, at ~0.6 KB a map.
    if deployment
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true))
    {
        deployment.metadata.labels = None;
    }
    // The one annotation kept moves into the spec, and the map goes.
    let applied_hash = deployment
        .metadata
        .annotations
        .take()
        .and_then(|mut a| a.remove(APPLIED_HASH_ANNOTATION));
    if let Some(spec) = &mut deployment.spec {
        spec.applied_hash = applied_hash;
    }
    if let Some(annotations) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.retain(|key, _| key == RESTART_ANNOTATION);
    }
    // Of the conditions, only one that says the rollout missed its deadline
    // is read (see `workload_status`); a healthy Deployment keeps none.
    if let Some(status) = deployment.status.as_mut() {
        let stuck = status
            .conditions
            .take()
            .into_iter()
            .flatten()
            .filter(says_the_deadline_was_missed)
            .collect::<Vec<_>>();
        status.conditions = (!stuck.is_empty()).then_some(stuck);
    }
}

/// Whether a Deployment condition says its rollout missed its progress
/// deadline.
fn says_the_deadline_was_missed(condition: &RolloutCondition) -> bool {
    condition.type_ == "Progressing"
        && condition.status == "False"
        && condition.reason.as_deref() == Some("ProgressDeadlineExceeded")
}

/// What an earlier run of the operator applied, read off a cached
/// Deployment of ours: its hash annotation says what was applied, and what
/// the plan cares most about (the image, the replicas, the restart token)
/// must still be as asked. Then a restart applies nothing again; a hand
/// edit of those made while no operator ran is still put back.
fn applied_before_a_restart(
    cached: Option<&CachedDeployment>,
    workload: &InstanceWorkload,
    hash: u64,
) -> Option<Applied> {
    let cached = cached?;
    // Trimmed, the cache keeps the annotation's value in the spec.
    let noted = cached
        .spec
        .as_ref()
        .and_then(|s| s.applied_hash.as_ref())
        .or_else(|| cached.annotations().get(APPLIED_HASH_ANNOTATION))?;
    if noted != &format!("{hash:016x}") || ownership(cached, &workload.id()) != Ownership::Ours {
        return None;
    }
    let spec = cached.spec.as_ref()?;
    let template = &spec.template;
    let image = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref());
    let token = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTART_ANNOTATION));
    let as_asked = image == Some(workload.image.as_str())
        && spec.replicas == Some(workload.replicas)
        && token == workload.restart_token.as_ref();
    as_asked.then(|| Applied {
        hash,
        uid: uid_digest(cached),
        generation: cached.metadata.generation.unwrap_or_default(),
    })
}

fn ownership<K: Resource>(existing: &K, id: &WorkloadId) -> Ownership {
    shape::ownership(existing, &id.uid, (INSTANCE_LABEL, &id.name))
}

fn conflict(kind: &str, name: &str) -> ProviderError {
    ProviderError::Conflict {
        kind: kind.into(),
        name: name.into(),
        owner: "Instance".into(),
    }
}

/// The Instance whose pod this is, when the pod is not ready. A pod wakes
/// its Instance only then: its problems are news; a ready pod shows up in
/// the Deployment's status anyway. Pure.
pub fn unready_pod_owner(pod: &CachedPod) -> Option<WorkloadId> {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready {
        return None;
    }
    Some(WorkloadId {
        namespace: pod.namespace()?,
        name: pod.labels().get(INSTANCE_LABEL)?.clone(),
        // Pods are owned by ReplicaSets; the label names the Instance, and
        // a wake-up needs no more than its name.
        uid: String::new(),
    })
}

fn hash_of(object: &impl serde::Serialize) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(object)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

impl super::Named for KubernetesProvider {
    fn name(&self) -> &str {
        NAME
    }
}

#[async_trait]
impl InstanceProvider for KubernetesProvider {
    async fn apply(
        &self,
        workload: &InstanceWorkload,
        reason: ApplyReason,
    ) -> ProviderResult<Vec<ActionNote>> {
        tracing::debug!(reason = reason.as_str(), "applying the workload");
        self.ensure(workload).await
    }

    /// The garbage collector removes the Deployment and the Service once the
    /// Instance is gone; all that is left to do is forget what was applied.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision> {
        if let Ok(mut map) = self.applied.lock() {
            map.remove(&digest(&(&id.namespace, &id.name)));
        }
        Ok(Deprovision::Done)
    }

    fn cleanup(&self) -> Cleanup {
        Cleanup::GarbageCollected
    }

    fn wakeups(&self) -> Option<super::Wakeups> {
        self.wakeups.take()
    }

    async fn observe(&self, id: &WorkloadId) -> ProviderResult<Option<WorkloadStatus>> {
        let deployment = self
            .caches
            .deployments
            .get(&shape::named(&id.namespace, &id.name))
            .filter(|d| ownership(d.as_ref(), id) == Ownership::Ours);
        let service = self
            .caches
            .services
            .get(&shape::named(&id.namespace, &id.name))
            .filter(|s| ownership(s.as_ref(), id) == Ownership::Ours);
        let Some(deployment) = deployment else {
            // A Service without its Deployment is still something of ours.
            return Ok(service.map(|_| WorkloadStatus {
                provider_ref: ProviderRef {
                    provider: NAME.into(),
                    kind: "Service".into(),
                    name: id.name.clone(),
                },
                current: false,
                image: String::new(),
                desired_replicas: 0,
                replicas: 0,
                ready_replicas: 0,
                restart_token: None,
                rollout_complete: false,
                progress_deadline_exceeded: None,
                problems: Vec::new(),
                endpoint_ready: true,
                terminating: false,
            }));
        };
        let pod_problems = || {
            describe_problems(
                self.caches
                    .pods
                    .values()
                    .into_iter()
                    .filter(|p| p.namespace == id.namespace && p.instance == id.name)
                    .flat_map(|p| p.problems),
            )
        };
        let record = self.applied_record(&digest(&(&id.namespace, &id.name)));
        let caught_up = record.is_none_or(|r| {
            uid_digest(deployment.as_ref()) != r.uid
                || deployment.metadata.generation.unwrap_or_default() >= r.generation
        });
        let wants_service = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .is_some_and(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()));
        Ok(Some(workload_status(
            &deployment,
            service.as_deref(),
            pod_problems,
            wants_service,
            caught_up,
        )))
    }
}

#[cfg(test)]
mod tests;
