//! Providers: what turns an object's decided state into something that runs.
//!
//! The trait is modelled on the ctrlplane provider interface (provision,
//! deprovision, start, stop, restart, status, scale, deploy, rollback). Every
//! verb receives the whole desired [`InstanceWorkload`] the planner decided on,
//! so each call is idempotent: a provider makes the world match it, and the
//! verb says why, for providers to which the difference matters (a VM is
//! started, not scaled).
//!
//! A [`ProviderRegistry`] holds providers by name with a default. Reconcilers
//! only ever see the trait, so a new provider plugs in beside `kubernetes`
//! without any change to them.

pub mod kubernetes;
pub mod pod;
pub mod shape;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::{EnvVar, HealthCheck, InstanceResources, PortSpec, ProviderRef};
use crate::plan::capacity::Host;
use crate::plan::sandbox::{SandboxObserved, SandboxWorkload};

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

/// The names that identify an Instance's workload, for calls that need no spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub namespace: String,
    pub name: String,
}

impl InstanceWorkload {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
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
    /// The rollout made no progress within the deadline.
    pub progress_deadline_exceeded: bool,
    /// Why replicas are not ready, in words a user can act on.
    pub problems: Vec<String>,
    /// Whether the network endpoint (the Service) exists, when ports are declared.
    pub endpoint_ready: bool,
    /// The workload is being deleted.
    pub terminating: bool,
}

/// What a deprovision call achieved.
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
        "{kind} {name} already exists and is not managed by this Instance; rename the Instance or remove the {kind}"
    )]
    Conflict { kind: String, name: String },
    /// The provider cannot do what was asked.
    #[error("the {provider} provider does not support {what}")]
    Unsupported { provider: String, what: String },
    /// The namespace is being deleted: nothing new can be created in it, and
    /// the Instance's own deletion is on its way.
    #[error("namespace {namespace} is being deleted; nothing can be created in it")]
    NamespaceTerminating { namespace: String },
}

impl ProviderError {
    /// Wraps a kube error, telling a terminating namespace apart.
    pub fn kube(action: impl Into<String>, namespace: &str, source: kube::Error) -> Self {
        if let kube::Error::Api(status) = &source
            && status.code == 403
            && status.message.contains("because it is being terminated")
        {
            return Self::NamespaceTerminating {
                namespace: namespace.to_string(),
            };
        }
        Self::Kube {
            action: action.into(),
            source,
        }
    }
}

impl ProviderError {
    /// A short CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "ProviderError",
            Self::Conflict { .. } => "ChildConflict",
            Self::Unsupported { .. } => "Unsupported",
            Self::NamespaceTerminating { .. } => "NamespaceTerminating",
        }
    }
}

pub type ProviderResult<T> = Result<T, ProviderError>;

/// A provider of Instances. Every call is idempotent.
#[async_trait]
pub trait InstanceProvider: Named + Send + Sync {
    /// Creates whatever the Instance needs, or repairs it to match.
    async fn provision(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Removes everything the Instance had.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision>;
    /// Runs the replicas.
    async fn start(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Stops every replica, keeping the rest (for example the Service).
    async fn stop(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Replaces every replica, one after another.
    async fn restart(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Changes the number or size of the replicas in place.
    async fn scale(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Rolls out a new release.
    async fn deploy(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Rolls back to an earlier release.
    async fn rollback(&self, workload: &InstanceWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// What runs now; `None` when nothing exists.
    async fn status(&self, id: &WorkloadId) -> ProviderResult<Option<WorkloadStatus>>;
}

/// A provider of Sandboxes. Every call is idempotent. Scaling, deploying and
/// rolling back belong to long-running applications; a sandbox is made
/// again from its spec instead.
#[async_trait]
pub trait SandboxProvider: Named + Send + Sync {
    /// Creates what outlives a stop (the sandbox's data) and its network
    /// endpoint, or repairs them.
    async fn provision(&self, workload: &SandboxWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Runs the sandbox on `workload.host`.
    async fn start(&self, workload: &SandboxWorkload) -> ProviderResult<Vec<ActionNote>>;
    /// Stops it; its data stays.
    async fn stop(&self, id: &WorkloadId) -> ProviderResult<()>;
    /// Removes everything, data included.
    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision>;
    /// What exists now.
    async fn status(&self, id: &WorkloadId) -> ProviderResult<SandboxObserved>;
    /// The hosts a sandbox could run on, with what they have free.
    async fn hosts(&self) -> ProviderResult<Vec<Host>>;
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
pub type ProviderRegistry = Registry<dyn InstanceProvider>;
/// The Sandbox providers.
pub type SandboxProviderRegistry = Registry<dyn SandboxProvider>;

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
