//! Providers: what turns an object's decided state into something that runs,
//! and reports what runs.
//!
//! The contract is small, the same for every kind: make the workload match
//! what the plan decided (the reason, such as deploy, scale or restart, is
//! passed along and recorded, not a separate method), deprovision, and
//! observe. Its types (the desired workloads, the observations, the labels
//! children carry) live here, in the providers' room: the planners use them
//! and nothing else of a provider, and no provider imports a planner.
//!
//! A [`Registry`] holds the providers of one kind by name, with a default.
//! The lifecycle engine only ever sees the traits, so a new provider plugs
//! in beside `kubernetes` or `pod` without any change to a reconciler: a
//! test registers one of its own and drives an Instance through its life.

pub mod cached;
pub mod kubernetes;
pub mod pod;
pub mod shape;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::{EnvVar, HealthCheck, InstanceResources, PortSpec, ProviderRef};

/// The label that ties an Instance's children and pods to it.
pub const INSTANCE_LABEL: &str = "ctrlplane.dev/instance";
/// The label that ties a Sandbox's children to it.
pub const SANDBOX_LABEL: &str = "ctrlplane.dev/sandbox";
/// The label that carries a Sandbox's spec.agentId, on it and its Pod.
pub const AGENT_LABEL: &str = "ctrlplane.dev/agent-id";
/// The label that carries a Sandbox's spec.jobId, on it and its Pod.
pub const JOB_LABEL: &str = "ctrlplane.dev/job-id";
/// The taint that marks hosts dedicated to sandboxes. Sandbox pods tolerate
/// it; other pods stay away.
pub const SANDBOX_HOST_TAINT: &str = "ctrlplane.dev/sandbox-host";

/// The object a workload belongs to: its namespace, name and UID (two
/// objects of one name, one deleted and one new, are told apart by it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Why a provider is asked to make a workload match. Providers to which
/// the difference matters (a VM is started, not scaled) read it; the
/// `kubernetes` provider applies the same desired objects whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApplyReason {
    /// Create what is missing, or repair what drifted.
    Provision,
    /// Roll out a new release.
    Deploy,
    /// Return to an earlier release.
    Rollback,
    /// Change the number or size of the replicas.
    Scale,
    /// Replace every replica.
    Restart,
    /// Run the replicas (or the sandbox).
    Start,
    /// Stop every replica (or the sandbox), keeping the rest.
    Stop,
}

impl ApplyReason {
    /// A lower-case word for logs and notes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::Scale => "scale",
            Self::Restart => "restart",
            Self::Start => "start",
            Self::Stop => "stop",
        }
    }
}

/// How what a provider made goes away when its object is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Everything is owned by the object (owner references), so the garbage
    /// collector removes it once the object is gone: deletion waits for
    /// nothing but the object's last events.
    GarbageCollected,
    /// The provider must deprovision first (an external host, a VM), and
    /// the object stays until it has.
    Deprovision,
}

// ------------------------------------------------------------------ Instance

/// Everything a provider needs to run an Instance, as the planner decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceWorkload {
    pub namespace: String,
    pub name: String,
    /// The Instance, as the controlling owner of whatever the provider creates.
    pub owner: OwnerReference,
    /// The Instance's own labels, carried onto the children.
    pub labels: BTreeMap<String, String>,
    /// The image to run: the current release's, which differs from
    /// spec.image while a failed release is rolled back.
    pub image: String,
    /// Replicas to run: zero while stopped or suspended.
    pub replicas: i32,
    pub resources: Option<InstanceResources>,
    pub env: Vec<EnvVar>,
    pub ports: Vec<PortSpec>,
    pub health_check: Option<HealthCheck>,
    pub region: Option<String>,
    /// Changes to this value roll the replicas (a restart).
    pub restart_token: Option<String>,
    pub progress_deadline_seconds: i32,
}

impl InstanceWorkload {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.owner.uid.clone(),
        }
    }
}

/// What a provider observes of an Instance's workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadStatus {
    /// The provider's own object, e.g. the Deployment.
    pub provider_ref: ProviderRef,
    /// Whether the observation describes the latest desired state that was
    /// applied (the provider has caught up with our last change).
    pub current: bool,
    /// The image the workload runs.
    pub image: String,
    /// The replicas the workload is asked to run.
    pub desired_replicas: i32,
    /// Replicas that exist, ready or not.
    pub replicas: i32,
    /// Replicas that are ready.
    pub ready_replicas: i32,
    /// The restart token the workload carries.
    pub restart_token: Option<String>,
    /// Every replica runs the latest template and is available.
    pub rollout_complete: bool,
    /// The rollout made no progress within the deadline: since when the
    /// workload says so. A planner compares it with when the release began,
    /// since the verdict of an earlier rollout can still be standing while
    /// the next one starts.
    pub progress_deadline_exceeded: Option<chrono::DateTime<chrono::Utc>>,
    /// Why replicas are not ready, in words a user can act on.
    pub problems: Vec<String>,
    /// Whether the network endpoint (the Service) exists, when ports are declared.
    pub endpoint_ready: bool,
    /// The workload is being deleted.
    pub terminating: bool,
}

// ------------------------------------------------------------------- Sandbox

/// Whether a sandbox's running part (its Pod, its VM) should exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunWanted {
    /// Leave it as it is (running fine, or waiting for room to start).
    AsIs,
    /// Start it on this host, if it is not running.
    On(String),
    /// Stop it; its data stays.
    Stopped,
}

/// Everything a provider needs to run a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxWorkload {
    pub namespace: String,
    pub name: String,
    pub owner: OwnerReference,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub cpu: String,
    pub memory: String,
    pub storage: String,
    pub storage_class: Option<String>,
    pub env: Vec<EnvVar>,
    pub ports: Vec<PortSpec>,
    /// Whether it should run, and where.
    pub run: RunWanted,
    /// A volume snapshot its data starts from, when its data is made.
    pub restore_from: Option<RestoreSource>,
    /// Changes whenever the running part must be made again (image,
    /// resources, env, ports, placement, a restart request).
    pub revision: String,
}

impl SandboxWorkload {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.owner.uid.clone(),
        }
    }
}

/// A volume snapshot a sandbox's data starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSource {
    /// The volume snapshot's name, in the sandbox's namespace.
    pub volume_snapshot: String,
    /// The size a volume restored from it needs, when known.
    pub restore_size: Option<String>,
}

/// What the provider reports about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxObserved {
    /// The name of the claim the provider keeps the sandbox's data in,
    /// whether or not it exists yet, so the status can name it from the
    /// write that asks for it; `None` for a provider without one.
    pub claim_name: Option<String>,
    pub claim: Option<ClaimObserved>,
    pub pod: Option<PodObserved>,
    pub service: bool,
}

/// The sandbox's data (a PersistentVolumeClaim for the `pod` provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimObserved {
    pub name: String,
    pub bound: bool,
    /// When the claim was made, if known: how long an unbound one has waited.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The sandbox's running part (a Pod for the `pod` provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObserved {
    pub name: String,
    /// The revision it was made from.
    pub revision: Option<String>,
    pub ready: bool,
    pub ip: Option<String>,
    /// The host it runs on, once bound there.
    pub host: Option<String>,
    /// The host it was placed on, before it is bound there.
    pub placed_on: Option<String>,
    /// It failed or cannot start: crash, image pull, unschedulable, exited.
    pub failed: bool,
    /// It waits for its data to be attached (an unbound claim): not a
    /// failure, and not ready yet.
    pub waiting_for_data: bool,
    pub problems: Vec<String>,
    pub terminating: bool,
}

/// A host as the capacity check sees it. CPU in millicores, memory in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable_cpu: i64,
    pub allocatable_memory: i64,
    pub requested_cpu: i64,
    pub requested_memory: i64,
    /// Ready and not cordoned.
    pub schedulable: bool,
    /// Taints with a NoSchedule or NoExecute effect, by key.
    pub blocking_taints: Vec<String>,
}

impl Host {
    /// Saturating: counts come from the cluster's objects, and need not be
    /// sensible.
    pub fn free_cpu(&self) -> i64 {
        self.allocatable_cpu.saturating_sub(self.requested_cpu)
    }

    pub fn free_memory(&self) -> i64 {
        self.allocatable_memory
            .saturating_sub(self.requested_memory)
    }
}

// ------------------------------------------------------- commands, snapshots

/// A command to run in a sandbox's running part.
#[derive(Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment variables, values resolved (Secret values included). A
    /// provider passes them so they never appear in a URL, a process list,
    /// an audit log or a log line.
    pub env: Vec<(String, String)>,
    /// The directory to run in; `None` for the environment's own.
    pub working_dir: Option<String>,
    /// How many bytes of the end of each output stream to keep.
    pub keep_bytes: usize,
}

/// Never shows env values: they may be secrets.
impl std::fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRequest")
            .field("argv", &self.argv)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

/// The end of an output stream: its last bytes, and how many there were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    keep: usize,
    /// The last `keep` bytes.
    pub bytes: std::collections::VecDeque<u8>,
    /// Every byte there was.
    pub total: u64,
}

impl Tail {
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            bytes: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    /// Takes in the next chunk, dropping the oldest bytes past `keep`.
    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(self.keep)..];
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(self.keep);
        self.bytes.drain(..overflow.min(self.bytes.len()));
        self.bytes.extend(chunk);
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// How a command that ran to its end ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub stdout: Tail,
    pub stderr: Tail,
}

/// A snapshot of a sandbox's data to take.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRequest {
    pub namespace: String,
    /// The volume snapshot's name.
    pub name: String,
    /// The SandboxSnapshot, as the controlling owner of what is made.
    pub owner: OwnerReference,
    /// The snapshot class; `None` for the cluster's default.
    pub class: Option<String>,
    /// Annotations carried over from the SandboxSnapshot, for a snapshot
    /// controller that reads its own.
    pub annotations: BTreeMap<String, String>,
}

/// What a provider reports about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotObserved {
    /// The volume snapshot's name.
    pub name: String,
    pub ready_to_use: bool,
    pub restore_size: Option<String>,
    pub creation_time: Option<chrono::DateTime<chrono::Utc>>,
    /// What the snapshot controller said went wrong.
    pub error: Option<String>,
    /// The claim it copies.
    pub source_claim: Option<String>,
    pub terminating: bool,
}

/// A quantity in thousandths (CPU: millicores) or units (memory: bytes),
/// rounded up: the units [`Host`] counts in.
pub fn milli(quantity: &kube_quantity::ParsedQuantity, thousandths: bool) -> Option<i64> {
    let value = quantity.to_bytes_f64()?;
    let value = if thousandths { value * 1000.0 } else { value };
    value.is_finite().then(|| value.ceil() as i64)
}

// -------------------------------------------------------------- the contract

/// What deprovisioning achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deprovision {
    /// Everything is gone.
    Done,
    /// Deletion is under way; ask again later.
    InProgress,
}

/// What happened while acting, worth an Event for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionNote {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Errors of a provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A Kubernetes API call failed.
    #[error("{action} failed: {}", crate::runtime::describe_kube_error(source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// An object of the same name exists and belongs to someone else.
    #[error(
        "{kind} {name} already exists and is not managed by this {owner}; rename the {owner} or remove the {kind}"
    )]
    Conflict {
        kind: String,
        name: String,
        owner: String,
    },
    /// The provider cannot do what was asked.
    #[error("the {provider} provider does not support {what}")]
    Unsupported { provider: String, what: String },
    /// The namespace is being deleted: nothing new can be created in it, and
    /// the object's own deletion is on its way.
    #[error("namespace {namespace} is being deleted; nothing can be created in it")]
    NamespaceTerminating { namespace: String },
    /// It does not run, so nothing can run in it.
    #[error("{what} does not run")]
    NotRunning { what: String },
    /// A command's streams broke off.
    #[error("the command in pod {pod} broke off: {message}")]
    Exec { pod: String, message: String },
}

impl ProviderError {
    /// Wraps a kube error, telling a terminating namespace apart.
    pub fn kube(action: impl Into<String>, namespace: &str, source: kube::Error) -> Self {
        if crate::runtime::kubeapi::is_namespace_terminating(&source) {
            return Self::NamespaceTerminating {
                namespace: namespace.to_string(),
            };
        }
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// A short CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "ProviderError",
            Self::Conflict { .. } => "ChildConflict",
            Self::Unsupported { .. } => "Unsupported",
            Self::NamespaceTerminating { .. } => "NamespaceTerminating",
            Self::NotRunning { .. } => "NotRunning",
            Self::Exec { .. } => "ExecFailed",
        }
    }
}

pub type ProviderResult<T> = Result<T, ProviderError>;

/// Changes a provider sees in what it runs, by the object they belong to,
/// so the object is looked at again. Taken once, when the controller starts.
pub type Wakeups = BoxStream<'static, WorkloadId>;

/// Holds a provider's wake-up stream until the controller takes it.
#[derive(Default)]
pub struct WakeupSlot(Mutex<Option<Wakeups>>);

impl WakeupSlot {
    pub fn new(wakeups: Wakeups) -> Self {
        Self(Mutex::new(Some(wakeups)))
    }

    pub fn take(&self) -> Option<Wakeups> {
        self.0.lock().ok()?.take()
    }
}

/// A provider of Instances. Every call is idempotent.
#[async_trait]
pub trait InstanceProvider: Named + Send + Sync {
    /// Makes what runs match the workload: creates what is missing, repairs
    /// what drifted, changes what the plan changed. `reason` says why.
    async fn apply(
        &self,
        workload: &InstanceWorkload,
        reason: ApplyReason,
    ) -> ProviderResult<Vec<ActionNote>>;
    /// Removes everything the Instance had. Only called for providers whose
    /// [`Cleanup`] is `Deprovision`.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision>;
    /// What runs now, from the provider's caches; `None` when nothing does.
    async fn observe(&self, id: &WorkloadId) -> ProviderResult<Option<WorkloadStatus>>;
    /// How its children go when the Instance is deleted.
    fn cleanup(&self) -> Cleanup;
    /// Changes to what it runs, once (see [`Wakeups`]).
    fn wakeups(&self) -> Option<Wakeups> {
        None
    }
}

/// A provider of Sandboxes. Every call is idempotent.
#[async_trait]
pub trait SandboxProvider: Named + Send + Sync {
    /// Makes the sandbox match the workload: its data and network endpoint
    /// exist, and it runs, is left as it is, or stops, as `workload.run`
    /// says. `reason` says why.
    async fn apply(
        &self,
        workload: &SandboxWorkload,
        reason: ApplyReason,
    ) -> ProviderResult<Vec<ActionNote>>;
    /// Removes everything, data included. Only called for providers whose
    /// [`Cleanup`] is `Deprovision`.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision>;
    /// What exists now, from the provider's caches.
    async fn observe(&self, id: &WorkloadId) -> ProviderResult<SandboxObserved>;
    /// The hosts a sandbox could run on, with what they have free.
    async fn hosts(&self) -> ProviderResult<Vec<Host>>;
    /// How its children go when the Sandbox is deleted.
    fn cleanup(&self) -> Cleanup;
    /// Changes to what it runs, once (see [`Wakeups`]).
    fn wakeups(&self) -> Option<Wakeups> {
        None
    }
    /// Runs a command in the sandbox's running part, to its end. Dropping
    /// the future abandons it.
    async fn exec(&self, _id: &WorkloadId, _request: &ExecRequest) -> ProviderResult<ExecOutcome> {
        Err(ProviderError::Unsupported {
            provider: self.name().to_string(),
            what: "running commands".into(),
        })
    }
    /// Takes a snapshot of the sandbox's data (idempotent: one of that name
    /// is left as it is).
    async fn snapshot(
        &self,
        _sandbox: &WorkloadId,
        _request: &SnapshotRequest,
    ) -> ProviderResult<()> {
        Err(ProviderError::Unsupported {
            provider: self.name().to_string(),
            what: "snapshots".into(),
        })
    }
    /// What a snapshot is now; `None` when there is none of that name.
    async fn observe_snapshot(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> ProviderResult<Option<SnapshotObserved>> {
        Ok(None)
    }
    /// Deletes a snapshot.
    async fn delete_snapshot(&self, _namespace: &str, _name: &str) -> ProviderResult<Deprovision> {
        Ok(Deprovision::Done)
    }
}

/// Every provider has a name, the one users put in spec.provider.
pub trait Named {
    fn name(&self) -> &str;
}

/// The providers of one kind known to the operator, by name, with a default
/// for objects that do not name one.
pub struct Registry<P: ?Sized> {
    providers: BTreeMap<String, Arc<P>>,
    default: String,
}

/// The Instance providers.
pub type InstanceProviders = Registry<dyn InstanceProvider>;
/// The Sandbox providers.
pub type SandboxProviders = Registry<dyn SandboxProvider>;

/// A provider name that is not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider {name:?} is not registered; registered providers: {known}")]
pub struct UnknownProvider {
    pub name: String,
    pub known: String,
}

impl<P: ?Sized + Named> Registry<P> {
    pub fn new(default: impl Into<String>) -> Self {
        Self {
            providers: BTreeMap::new(),
            default: default.into(),
        }
    }

    pub fn register(&mut self, provider: Arc<P>) {
        self.providers.insert(provider.name().to_string(), provider);
    }

    /// The default provider's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every registered provider.
    pub fn all(&self) -> impl Iterator<Item = &Arc<P>> {
        self.providers.values()
    }

    /// The provider for a spec.provider value (`None` means the default).
    pub fn resolve(&self, requested: Option<&str>) -> Result<Arc<P>, UnknownProvider> {
        let name = requested.unwrap_or(&self.default);
        self.providers
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownProvider {
                name: name.to_string(),
                known: self
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
