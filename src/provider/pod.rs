//! The `pod` provider for Sandboxes: a PersistentVolumeClaim that keeps the
//! data across stops, a Pod while it runs (placed on the host the planner
//! chose, with a restricted security context), and a Service when it
//! declares ports. Building the objects and reading them are pure functions;
//! the provider applies them and reads its caches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Node, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, Toleration, TypedLocalObjectReference, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{AttachParams, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::cached::{CachedPod, CachedService, Summaries, keep_our_metadata};
use super::kubernetes::pod_problems;
use super::shape::{self, Ownership};
use super::{
    ActionNote, ApplyReason, ClaimObserved, Cleanup, Deprovision, ExecOutcome, ExecRequest, Host,
    PodObserved, ProviderError, ProviderResult, RunWanted, SANDBOX_HOST_TAINT, SANDBOX_LABEL,
    SandboxObserved, SandboxProvider, SandboxWorkload, SnapshotObserved, SnapshotRequest, Tail,
    WorkloadId, milli,
};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::runtime::kubeapi::{delete_if_present, is_conflict};
use volume_snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};

/// The provider's name in spec.provider.
pub const NAME: &str = "pod";
/// The annotation that records which revision of the spec a Pod was made from.
pub const REVISION_ANNOTATION: &str = "ctrlplane.dev/revision";
/// The annotation that records the host the operator chose for a Pod.
pub const HOST_ANNOTATION: &str = "ctrlplane.dev/host";
/// Where the claim is mounted in the sandbox.
pub const DATA_PATH: &str = "/data";

/// The claim that keeps a sandbox's data.
pub fn claim_name(sandbox: &str) -> String {
    format!("{sandbox}-data")
}
/// The user sandbox containers run as when the image does not say.
const SANDBOX_USER: i64 = 65532;

fn labels(workload: &SandboxWorkload) -> BTreeMap<String, String> {
    let mut labels = workload.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(SANDBOX_LABEL.to_string(), workload.name.clone());
    labels
}

fn meta(workload: &SandboxWorkload, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(workload.namespace.clone()),
        labels: Some(labels(workload)),
        owner_references: Some(vec![workload.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The claim that keeps a sandbox's data: empty, or a copy of the volume
/// snapshot it starts from (at least as large as that needs). Pure.
pub fn claim_for(workload: &SandboxWorkload) -> PersistentVolumeClaim {
    let restore = workload.restore_from.as_ref();
    let storage = match restore.and_then(|r| r.restore_size.as_ref()) {
        Some(needed) if larger(needed, &workload.storage) => needed.clone(),
        _ => workload.storage.clone(),
    };
    PersistentVolumeClaim {
        metadata: meta(workload, &claim_name(&workload.name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: workload.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(storage))])),
                ..VolumeResourceRequirements::default()
            }),
            data_source: restore.map(|r| TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: r.volume_snapshot.clone(),
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Whether quantity `a` is larger than `b` (both as Kubernetes writes them).
fn larger(a: &str, b: &str) -> bool {
    let bytes = |q: &str| {
        kube_quantity::ParsedQuantity::try_from(&Quantity(q.to_string()))
            .ok()
            .and_then(|q| milli(&q, false))
    };
    matches!((bytes(a), bytes(b)), (Some(a), Some(b)) if a > b)
}

/// The few lines of POSIX sh every command runs behind: they read the
/// command's environment from standard input (one `NAME=value` per line,
/// values escaped for `printf %b`, an empty line last), change to its
/// working directory (the first argument), and run it in their place. So
/// values, Secret values among them, never travel in the exec request (a
/// URL the API server logs) nor show in a process list.
pub const EXEC_PROLOGUE: &str = r#"while IFS= read -r ctrlplane_assignment && [ -n "$ctrlplane_assignment" ]; do
  ctrlplane_value=$(printf '%bx' "${ctrlplane_assignment#*=}")
  export "${ctrlplane_assignment%%=*}=${ctrlplane_value%x}"
done
unset ctrlplane_assignment ctrlplane_value
if [ -n "$1" ]; then cd -- "$1" || exit 126; fi
shift
exec "$@""#;

/// The argv an exec request carries for a command: the prologue, its
/// working directory, then the command's own argv. Pure.
pub fn exec_argv(request: &ExecRequest) -> Vec<String> {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        EXEC_PROLOGUE.to_string(),
        "ctrlplane-command".to_string(),
        request.working_dir.clone().unwrap_or_default(),
    ];
    argv.extend(request.argv.iter().cloned());
    argv
}

/// The environment block the prologue reads: `NAME=value` lines with
/// backslashes, newlines and other control characters escaped as
/// `printf %b` reads them, and an empty line to end. Pure.
pub fn env_block(env: &[(String, String)]) -> Vec<u8> {
    let mut block = String::new();
    for (name, value) in env {
        block.push_str(name);
        block.push('=');
        for c in value.chars() {
            match c {
                '\\' => block.push_str("\\\\"),
                '\n' => block.push_str("\\n"),
                c if c.is_control() && (c as u32) < 0x80 => {
                    block.push_str(&format!("\\0{:03o}", c as u32))
                }
                c => block.push(c),
            }
        }
        block.push('\n');
    }
    block.push('\n');
    block.into_bytes()
}

/// The exit code a finished exec reported: 0 on Success, else the code in
/// its status's causes (ExitCode), else 1.
pub fn exit_code(status: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i32 {
    let Some(status) = status else {
        return 1;
    };
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message.as_ref()?.parse().ok())
        })
        .unwrap_or(1)
}

async fn read_tail(
    reader: Option<impl tokio::io::AsyncRead + Unpin>,
    keep: usize,
) -> std::io::Result<Tail> {
    use tokio::io::AsyncReadExt;
    let mut tail = Tail::new(keep);
    let Some(mut reader) = reader else {
        return Ok(tail);
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(tail);
        }
        tail.push(&buffer[..read]);
    }
}

/// The Pod of a running sandbox, on its chosen host. Pure.
pub fn pod_for(workload: &SandboxWorkload, host: &str, host_label: &str) -> Pod {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(workload.cpu.clone())),
        ("memory".to_string(), Quantity(workload.memory.clone())),
    ]);
    let mut metadata = meta(workload, &workload.name);
    metadata.annotations = Some(BTreeMap::from([
        (REVISION_ANNOTATION.to_string(), workload.revision.clone()),
        (HOST_ANNOTATION.to_string(), host.to_string()),
    ]));
    let env = shape::container_env(&workload.env);
    let ports = shape::container_ports(&workload.ports);
    Pod {
        metadata,
        spec: Some(PodSpec {
            // The operator chose the host with room for it (see the capacity
            // check); the scheduler only confirms, and binds the claim.
            node_selector: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                host_label.to_string(),
            )])),
            tolerations: Some(vec![Toleration {
                key: Some(SANDBOX_HOST_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }]),
            // Restricted by default, as the Pod Security Standards define it.
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(SANDBOX_USER),
                run_as_group: Some(SANDBOX_USER),
                fs_group: Some(SANDBOX_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![Container {
                name: "sandbox".into(),
                image: Some(workload.image.clone()),
                resources: Some(ResourceRequirements {
                    requests: Some(resources.clone()),
                    limits: Some(resources),
                    ..ResourceRequirements::default()
                }),
                env: (!env.is_empty()).then_some(env),
                ports: (!ports.is_empty()).then_some(ports),
                volume_mounts: Some(vec![VolumeMount {
                    name: "data".into(),
                    mount_path: DATA_PATH.into(),
                    ..VolumeMount::default()
                }]),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&workload.name),
                    read_only: Some(false),
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The Service of a sandbox that declares ports. Pure.
pub fn service_for(workload: &SandboxWorkload) -> Option<Service> {
    shape::cluster_ip_service(
        meta(workload, &workload.name),
        (SANDBOX_LABEL, &workload.name),
        &workload.ports,
    )
}

/// Container waiting reasons that mean the Pod cannot start by itself.
const STUCK: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What a sandbox's Pod says about itself. Pure.
pub fn pod_observed(pod: &CachedPod) -> PodObserved {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let unschedulable = status.conditions.iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    let stuck = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| STUCK.contains(&r))
    });
    // A pod whose claim is not bound yet is not scheduled until it is: it
    // waits for its data, which is no failure.
    let waiting_for_data = status.conditions.iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.message
                .as_deref()
                .is_some_and(|m| m.contains("unbound") && m.contains("PersistentVolumeClaim"))
    });
    let failed =
        status.phase.as_deref() == Some("Failed") || (unschedulable && !waiting_for_data) || stuck;
    let problems = if ready {
        Vec::new()
    } else {
        pod_problems(&[Arc::new(pod.clone())])
    };
    PodObserved {
        name: pod.name_any(),
        revision: pod.annotations().get(REVISION_ANNOTATION).cloned(),
        ready,
        ip: status.pod_ip.clone(),
        host: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        placed_on: pod.annotations().get(HOST_ANNOTATION).cloned(),
        failed,
        waiting_for_data,
        problems,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// CPU (millicores) and memory (bytes) a Pod asks for.
fn pod_requests(pod: &CachedPod) -> (i64, i64) {
    let mut cpu = 0;
    let mut memory = 0;
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        if let Some(q) = requests.and_then(|r| r.get("cpu")) {
            cpu += kube_quantity::ParsedQuantity::try_from(q)
                .ok()
                .and_then(|q| milli(&q, true))
                .unwrap_or(0);
        }
        if let Some(q) = requests.and_then(|r| r.get("memory")) {
            memory += kube_quantity::ParsedQuantity::try_from(q)
                .ok()
                .and_then(|q| milli(&q, false))
                .unwrap_or(0);
        }
    }
    (cpu, memory)
}

/// What one Pod takes of a host's room, as the capacity cache keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUsage {
    /// The node it is bound to, or that we chose for it.
    pub host: Box<str>,
    /// CPU in millicores and memory in bytes that its containers request.
    pub cpu: i64,
    pub memory: i64,
}

/// What `pod` takes of a host's room: nothing once it has finished, or
/// while it has no host. The capacity cache keeps this of every Pod in the
/// cluster instead of the Pod. Pure.
pub fn pod_usage(pod: &CachedPod) -> Option<PodUsage> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return None;
    }
    // Bound, or one of ours on its way to the host we chose.
    let host = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .or_else(|| pod.annotations().get(HOST_ANNOTATION).map(String::as_str))?;
    let (cpu, memory) = pod_requests(pod);
    Some(PodUsage {
        host: host.into(),
        cpu,
        memory,
    })
}

/// Whether a change to a Sandbox's pod is news for its Sandbox: it runs,
/// ended, failed, is going away, or has a problem to explain. A pod on its
/// way (created, scheduled, its containers being made, waiting for its claim
/// to bind) changes nothing the Sandbox shows, and would only wake it for a
/// reconcile that finds nothing to do; a Sandbox still starting is looked at
/// again after a while anyway. Pure.
pub fn pod_is_news(pod: &CachedPod) -> bool {
    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let observed = pod_observed(pod);
    !pending
        || observed.terminating
        || observed.ready
        || observed.failed
        || (!observed.problems.is_empty() && !observed.waiting_for_data)
}

/// Whether a change to a Sandbox's claim is news for its Sandbox: it bound,
/// or is going away. An unbound claim changes nothing the Sandbox shows
/// until it has waited long enough to say so, which a requeue looks at.
/// Pure.
pub fn claim_is_news(claim: &PersistentVolumeClaim) -> bool {
    claim.metadata.deletion_timestamp.is_some()
        || claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending")
}

/// Shrinks a Sandbox's Pod to what the pod provider reads: its metadata
/// with only our annotations and its Sandbox owner, the node it is bound
/// to, and its status. What its containers request is the capacity cache's
/// to count.
pub fn keep_what_the_provider_reads(pod: &mut CachedPod) {
    keep_our_metadata(
        &mut pod.metadata,
        |owner| owner.kind == "Sandbox",
        &[REVISION_ANNOTATION, HOST_ANNOTATION],
    );
    if let Some(spec) = &mut pod.spec {
        spec.containers = Vec::new();
    }
}

/// The hosts, with what every Pod bound or headed to them asks for, and
/// what `reserved` holds for Pods just created. Pure.
pub fn hosts_from(
    nodes: &[Arc<Node>],
    pods: &[PodUsage],
    reserved: &[(String, i64, i64)],
) -> Vec<Host> {
    let mut used: HashMap<&str, (i64, i64)> = HashMap::new();
    let claims = pods
        .iter()
        .map(|p| (&*p.host, p.cpu, p.memory))
        .chain(reserved.iter().map(|(h, c, m)| (h.as_str(), *c, *m)));
    for (host, cpu, memory) in claims {
        let entry = used.entry(host).or_default();
        entry.0 = entry.0.saturating_add(cpu);
        entry.1 = entry.1.saturating_add(memory);
    }
    nodes
        .iter()
        .map(|node| {
            let status = node.status.clone().unwrap_or_default();
            let allocatable = status.allocatable.unwrap_or_default();
            let parse = |key: &str, thousandths: bool| {
                allocatable
                    .get(key)
                    .and_then(|q| kube_quantity::ParsedQuantity::try_from(q).ok())
                    .and_then(|q| milli(&q, thousandths))
                    .unwrap_or(0)
            };
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let spec = node.spec.clone().unwrap_or_default();
            let (requested_cpu, requested_memory) = used
                .get(node.name_any().as_str())
                .copied()
                .unwrap_or_default();
            Host {
                name: node.name_any(),
                labels: node.labels().clone(),
                allocatable_cpu: parse("cpu", true),
                allocatable_memory: parse("memory", false),
                requested_cpu,
                requested_memory,
                schedulable: ready && !spec.unschedulable.unwrap_or(false),
                blocking_taints: spec
                    .taints
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                    .map(|t| t.key)
                    .collect(),
            }
        })
        .collect()
}

/// The caches the pod provider reads.
#[derive(Clone)]
pub struct Caches {
    /// Our Pods and claims in the scope.
    pub pods: Store<CachedPod>,
    pub claims: Store<PersistentVolumeClaim>,
    /// Every Service in scope; those not ours keep only their metadata.
    pub services: Store<CachedService>,
    /// Every node, and what every Pod in the cluster takes of its host's
    /// room, for the capacity check.
    pub nodes: Store<Node>,
    pub pod_usage: Summaries<PodUsage>,
    /// Our VolumeSnapshots; `None` when the cluster has no snapshot API.
    pub volume_snapshots: Option<Store<VolumeSnapshot>>,
}

/// A Pod just created, counted against its host until the cache shows it.
struct Reservation {
    host: String,
    cpu: i64,
    memory: i64,
    at: Instant,
}

/// Runs sandboxes as Pods with claims.
pub struct PodProvider {
    client: Client,
    caches: Caches,
    reservations: Mutex<HashMap<(String, String), Reservation>>,
    wakeups: super::WakeupSlot,
}

impl PodProvider {
    /// `pods`, `services` and `claims` are the watch events of what it
    /// reads, which wake the Sandbox they belong to.
    pub fn new(
        client: Client,
        caches: Caches,
        pods: impl futures::Stream<Item = Arc<CachedPod>> + Send + 'static,
        services: impl futures::Stream<Item = Arc<CachedService>> + Send + 'static,
        claims: impl futures::Stream<Item = Arc<PersistentVolumeClaim>> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        let owner = |id: Option<WorkloadId>| futures::future::ready(id);
        let wakeups = futures::stream::select_all([
            pods.filter(|p| futures::future::ready(pod_is_news(p)))
                .filter_map(move |p| owner(shape::owner_of(p.as_ref(), "Sandbox")))
                .boxed(),
            services
                .filter_map(move |s| owner(shape::owner_of(s.as_ref(), "Sandbox")))
                .boxed(),
            claims
                .filter(|c| futures::future::ready(claim_is_news(c)))
                .filter_map(move |c| owner(shape::owner_of(c.as_ref(), "Sandbox")))
                .boxed(),
        ])
        .boxed();
        Self {
            client,
            caches,
            reservations: Mutex::new(HashMap::new()),
            wakeups: super::WakeupSlot::new(wakeups),
        }
    }

    fn kube_error(
        &self,
        action: String,
        namespace: &str,
    ) -> impl FnOnce(kube::Error) -> ProviderError + '_ {
        let namespace = namespace.to_string();
        move |source| ProviderError::kube(action, &namespace, source)
    }

    /// Creates a child that the cache does not show. An object of that name
    /// appearing in between (409) is looked at once: ours (the cache was
    /// behind) is fine, ours to adopt gets our owner reference, anything
    /// else is a conflict that is never touched.
    async fn create_child<K>(
        &self,
        workload: &SandboxWorkload,
        kind: &str,
        object: &K,
    ) -> ProviderResult<bool>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &workload.namespace);
        let error =
            |action: &str| self.kube_error(format!("{action} {kind} {name}"), &workload.namespace);
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(true),
            Err(source) if is_conflict(&source) => {}
            Err(source) => return Err(error("creating")(source)),
        }
        let existing = api.get(&name).await.map_err(error("reading"))?;
        let id = workload.id();
        match shape::ownership(&existing, &id.uid, (SANDBOX_LABEL, &id.name)) {
            Ownership::Ours => Ok(false),
            Ownership::Adoptable => {
                let patch = serde_json::json!({
                    "metadata": {"ownerReferences": [workload.owner.clone()]}
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(error("adopting"))?;
                Ok(false)
            }
            Ownership::Foreign => Err(ProviderError::Conflict {
                kind: kind.into(),
                name,
                owner: "Sandbox".into(),
            }),
        }
    }

    fn ours<K: Resource>(&self, object: &Arc<K>, id: &WorkloadId) -> bool {
        shape::ownership(object.as_ref(), &id.uid, (SANDBOX_LABEL, &id.name)) == Ownership::Ours
    }
}

impl super::Named for PodProvider {
    fn name(&self) -> &str {
        NAME
    }
}

#[async_trait]
impl SandboxProvider for PodProvider {
    async fn apply(
        &self,
        workload: &SandboxWorkload,
        reason: ApplyReason,
    ) -> ProviderResult<Vec<ActionNote>> {
        tracing::debug!(reason = reason.as_str(), "applying the sandbox");
        let id = workload.id();
        let claim = claim_name(&workload.name);
        if self
            .caches
            .claims
            .get(&shape::named(&workload.namespace, &claim))
            .is_none()
        {
            self.create_child(workload, "claim", &claim_for(workload))
                .await?;
        }
        let notes = shape::ensure_service(
            &self.client,
            &self.caches.services,
            &id,
            "Sandbox",
            SANDBOX_LABEL,
            service_for(workload),
        )
        .await?;
        let pod = self
            .caches
            .pods
            .get(&shape::named(&workload.namespace, &workload.name));
        match &workload.run {
            RunWanted::AsIs => {}
            RunWanted::Stopped => {
                if pod.is_some() {
                    let pods: Api<Pod> = Api::namespaced(self.client.clone(), &workload.namespace);
                    delete_if_present(&pods, &workload.name, &DeleteParams::default())
                        .await
                        .map_err(self.kube_error(
                            format!("deleting pod {}", workload.name),
                            &workload.namespace,
                        ))?;
                }
            }
            RunWanted::On(host) if pod.is_none() => {
                let host_label = self
                    .caches
                    .nodes
                    .get(&ObjectRef::new(host))
                    .and_then(|n| n.labels().get("kubernetes.io/hostname").cloned())
                    .unwrap_or_else(|| host.clone());
                let pod = pod_for(workload, host, &host_label);
                let (cpu, memory) = pod_requests(&CachedPod::of(&pod));
                // Where it went is in the Sandbox's Scheduled condition and
                // status.host; an Event for it would only repeat that.
                if self.create_child(workload, "pod", &pod).await?
                    && let Ok(mut reservations) = self.reservations.lock()
                {
                    reservations.insert(
                        (workload.namespace.clone(), workload.name.clone()),
                        Reservation {
                            host: host.clone(),
                            cpu,
                            memory,
                            at: Instant::now(),
                        },
                    );
                }
            }
            RunWanted::On(_) => {}
        }
        Ok(notes)
    }

    /// The garbage collector removes the Pod, the claim and the Service once
    /// the Sandbox is gone: nothing to ask the API server for.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision> {
        if let Ok(mut reservations) = self.reservations.lock() {
            reservations.remove(&(id.namespace.clone(), id.name.clone()));
        }
        Ok(Deprovision::Done)
    }

    fn cleanup(&self) -> Cleanup {
        Cleanup::GarbageCollected
    }

    fn wakeups(&self) -> Option<super::Wakeups> {
        self.wakeups.take()
    }

    async fn observe(&self, id: &WorkloadId) -> ProviderResult<SandboxObserved> {
        let pod = self
            .caches
            .pods
            .get(&shape::named(&id.namespace, &id.name))
            .filter(|p| self.ours(p, id));
        if pod.is_some()
            && let Ok(mut reservations) = self.reservations.lock()
        {
            reservations.remove(&(id.namespace.clone(), id.name.clone()));
        }
        let claim = self
            .caches
            .claims
            .get(&shape::named(&id.namespace, &claim_name(&id.name)))
            .filter(|c| self.ours(c, id))
            .map(|c| ClaimObserved {
                name: c.name_any(),
                bound: c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
                created_at: c
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(crate::api::utc_of),
            });
        let service = self
            .caches
            .services
            .get(&shape::named(&id.namespace, &id.name))
            .is_some_and(|s| self.ours(&s, id));
        Ok(SandboxObserved {
            claim_name: Some(claim_name(&id.name)),
            claim,
            pod: pod.map(|p| pod_observed(&p)),
            service,
        })
    }

    async fn exec(&self, id: &WorkloadId, request: &ExecRequest) -> ProviderResult<ExecOutcome> {
        use tokio::io::AsyncWriteExt;
        let pod = self
            .caches
            .pods
            .get(&shape::named(&id.namespace, &id.name))
            .filter(|p| self.ours(p, id));
        if pod.is_none() {
            return Err(ProviderError::NotRunning {
                what: format!("sandbox {}", id.name),
            });
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &id.namespace);
        let params = AttachParams::default()
            .container("sandbox")
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let mut process = pods
            .exec(&id.name, exec_argv(request), &params)
            .await
            .map_err(|source| {
                ProviderError::kube(
                    format!("starting a command in pod {}", id.name),
                    &id.namespace,
                    source,
                )
            })?;
        if let Some(mut stdin) = process.stdin() {
            // Dropped at the end of this block: the command's stdin ends.
            let _ = stdin.write_all(&env_block(&request.env)).await;
            let _ = stdin.shutdown().await;
        }
        let status = process.take_status();
        let (stdout, stderr) = tokio::join!(
            read_tail(process.stdout(), request.keep_bytes),
            read_tail(process.stderr(), request.keep_bytes)
        );
        let status = match status {
            Some(status) => status.await,
            None => None,
        };
        let _ = process.join().await;
        let broken = |e: std::io::Error| ProviderError::Exec {
            pod: id.name.clone(),
            message: e.to_string(),
        };
        Ok(ExecOutcome {
            exit_code: exit_code(status.as_ref()),
            stdout: stdout.map_err(broken)?,
            stderr: stderr.map_err(broken)?,
        })
    }

    async fn snapshot(
        &self,
        sandbox: &WorkloadId,
        request: &SnapshotRequest,
    ) -> ProviderResult<()> {
        let Some(cache) = &self.caches.volume_snapshots else {
            return Err(no_snapshot_api());
        };
        if let Some(existing) = cache.get(&shape::named(&request.namespace, &request.name)) {
            return match existing
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
            {
                Some(owner) if owner.uid == request.owner.uid => Ok(()),
                _ => Err(ProviderError::Conflict {
                    kind: "VolumeSnapshot".into(),
                    name: request.name.clone(),
                    owner: "SandboxSnapshot".into(),
                }),
            };
        }
        let mut snapshot = VolumeSnapshot::new(
            &request.name,
            VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(claim_name(&sandbox.name)),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: request.class.clone(),
            },
        );
        snapshot.metadata.namespace = Some(request.namespace.clone());
        snapshot.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (SANDBOX_LABEL.to_string(), sandbox.name.clone()),
        ]));
        snapshot.metadata.owner_references = Some(vec![request.owner.clone()]);
        if !request.annotations.is_empty() {
            snapshot.metadata.annotations = Some(request.annotations.clone());
        }
        let api: Api<VolumeSnapshot> = Api::namespaced(self.client.clone(), &request.namespace);
        match api.create(&PostParams::default(), &snapshot).await {
            Ok(_) => Ok(()),
            // Made a moment ago, and not in the cache yet.
            Err(source) if is_conflict(&source) => Ok(()),
            Err(source) => Err(ProviderError::kube(
                format!("creating VolumeSnapshot {}", request.name),
                &request.namespace,
                source,
            )),
        }
    }

    async fn observe_snapshot(
        &self,
        namespace: &str,
        name: &str,
    ) -> ProviderResult<Option<SnapshotObserved>> {
        let Some(cache) = &self.caches.volume_snapshots else {
            return Ok(None);
        };
        let Some(snapshot) = cache.get(&shape::named(namespace, name)) else {
            return Ok(None);
        };
        let status = snapshot.status.clone().unwrap_or_default();
        Ok(Some(SnapshotObserved {
            name: name.to_string(),
            ready_to_use: status.ready_to_use.unwrap_or(false),
            restore_size: status.restore_size.map(|q| q.0),
            creation_time: status.creation_time.as_ref().and_then(crate::api::utc_of),
            error: status.error.and_then(|e| e.message),
            source_claim: snapshot.spec.source.persistent_volume_claim_name.clone(),
            terminating: snapshot.metadata.deletion_timestamp.is_some(),
        }))
    }

    async fn delete_snapshot(&self, namespace: &str, name: &str) -> ProviderResult<Deprovision> {
        if self.caches.volume_snapshots.is_none() {
            return Ok(Deprovision::Done);
        }
        let api: Api<VolumeSnapshot> = Api::namespaced(self.client.clone(), namespace);
        match delete_if_present(&api, name, &DeleteParams::default()).await {
            Ok(crate::runtime::kubeapi::Deleted::AlreadyGone) => Ok(Deprovision::Done),
            Ok(crate::runtime::kubeapi::Deleted::Requested) => Ok(Deprovision::InProgress),
            Err(source) => Err(ProviderError::kube(
                format!("deleting VolumeSnapshot {name}"),
                namespace,
                source,
            )),
        }
    }

    async fn hosts(&self) -> ProviderResult<Vec<Host>> {
        let usage = &self.caches.pod_usage;
        let reserved: Vec<(String, i64, i64)> = {
            let mut reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
            // A reservation ends when the cache has the Pod, or after a
            // minute in any case.
            reservations.retain(|(namespace, name), r| {
                r.at.elapsed() < Duration::from_secs(60) && !usage.contains(namespace, name)
            });
            reservations
                .values()
                .map(|r| (r.host.clone(), r.cpu, r.memory))
                .collect()
        };
        Ok(hosts_from(
            &self.caches.nodes.state(),
            &usage.values(),
            &reserved,
        ))
    }
}

/// Why there are no snapshots here.
fn no_snapshot_api() -> ProviderError {
    ProviderError::Unsupported {
        provider: NAME.into(),
        what: format!(
            "snapshots in this cluster: it has no VolumeSnapshot API ({}); install the CSI external-snapshotter",
            volume_snapshot::API_VERSION
        ),
    }
}

pub mod volume_snapshot;

#[cfg(test)]
mod tests;
