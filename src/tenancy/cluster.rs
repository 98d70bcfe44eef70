//! The Kubernetes side of the tenancy source: a project's namespace, quota
//! and RoleBindings made so, and namespaces taken down in an order that lets
//! the last events of their objects out. Every write is a server-side apply
//! with the operator's field manager, so doing it again changes nothing, and
//! every deletion is of something found by our labels.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{info, warn};

use super::naming::{Tenant, namespace_name};
use super::objects::{self, NamespaceRefusal, SeenNamespace, Templates};
use crate::api::{DeliveryPhase, Instance, MANAGED_BY, Sandbox, WebhookDelivery};
use crate::runtime::describe_kube_error;

/// The field manager of every apply.
const FIELD_MANAGER: &str = MANAGED_BY;
/// How long a deletion waits for webhook deliveries still being retried
/// before it lets them go: a receiver that is down must not hold a tenant's
/// deletion (and every tenancy event after it) for the hours its retry
/// policy may allow.
const DELIVERY_GRACE: Duration = Duration::from_secs(60);

/// Errors of the cluster side; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}: {}", describe_kube_error(source))]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Refused(#[from] NamespaceRefusal),
    #[error("{what}: {reason}")]
    Watch { what: String, reason: String },
    #[error("gave up after {timeout:?} {what}")]
    Timeout { what: String, timeout: Duration },
}

fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Kube { what, source }
}

/// Makes and removes project namespaces.
pub struct Cluster {
    client: Client,
    templates: Templates,
    deletion_timeout: Duration,
}

impl Cluster {
    pub fn new(client: Client, templates: Templates, deletion_timeout: Duration) -> Self {
        Self {
            client,
            templates,
            deletion_timeout,
        }
    }

    /// Makes the project's namespace, quota and RoleBindings what the
    /// templates say, and removes what they no longer call for. Returns the
    /// namespace.
    pub async fn ensure_project(&self, tenant: &Tenant) -> Result<String, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selector = objects::project_selector(&tenant.project_id);
        let labelled: Vec<SeenNamespace> = namespaces
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube("listing the project's namespaces"))?
            .items
            .iter()
            .map(SeenNamespace::from_namespace)
            .collect();
        let at_derived_name = if labelled.is_empty() {
            let name = namespace_name(tenant);
            namespaces
                .get_opt(&name)
                .await
                .map_err(kube(format!("reading namespace {name}")))?
                .as_ref()
                .map(SeenNamespace::from_namespace)
        } else {
            None
        };
        let name = objects::choose_namespace(tenant, &labelled, at_derived_name.as_ref())?;

        apply(&namespaces, &name, &objects::namespace(tenant, &name)).await?;
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &name);
        let quota = objects::quota(tenant, &name, &self.templates);
        if let Some(quota) = &quota {
            apply(&quotas, objects::QUOTA_NAME, quota).await?;
        }
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &name);
        let wanted_bindings = objects::role_bindings(tenant, &name, &self.templates);
        for binding in &wanted_bindings {
            apply(&bindings, &binding.name_any(), binding).await?;
        }

        let wanted_quota: Vec<String> = quota.iter().map(|q| q.name_any()).collect();
        prune(&quotas, &selector, &wanted_quota).await?;
        let wanted_bindings: Vec<String> = wanted_bindings.iter().map(|b| b.name_any()).collect();
        prune(&bindings, &selector, &wanted_bindings).await?;
        Ok(name)
    }

    /// Removes every namespace the selector finds (a project's, or all of
    /// an org's), all at once, and returns once each is gone.
    pub async fn remove_namespaces(&self, selector: &str) -> Result<Vec<String>, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let found = namespaces
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(kube("listing namespaces to delete"))?
            .items;
        let deadline = Instant::now() + self.deletion_timeout;
        let removals = found
            .iter()
            .map(|namespace| self.remove_namespace(namespace, deadline));
        let mut errors = Vec::new();
        for result in futures::future::join_all(removals).await {
            if let Err(error) = result {
                errors.push(error);
            }
        }
        match errors.into_iter().next() {
            // The first error says enough; the others are retried with it.
            Some(error) => Err(error),
            None => Ok(found.iter().map(|n| n.name_any()).collect()),
        }
    }

    /// One namespace, in an order that loses no event: first its Instances
    /// and Sandboxes are deleted, and our own finalizers hold each until its
    /// last lifecycle event is dispatched to the namespace's Webhooks, which
    /// still exist; then those deliveries get their chance to go out; only
    /// then is the namespace deleted. Returns once it is gone.
    async fn remove_namespace(
        &self,
        namespace: &Namespace,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let name = namespace.name_any();
        let uid = namespace.uid().unwrap_or_default();
        if namespace.metadata.deletion_timestamp.is_none() {
            self.release_objects(&name, deadline).await?;
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            // Only the namespace that was listed: a namespace of the same
            // name made since is not ours to delete.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match namespaces.delete(&name, &params).await {
                Ok(_) => info!(namespace = name, "namespace deleted"),
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(source) => {
                    return Err(ClusterError::Kube {
                        what: format!("deleting namespace {name}"),
                        source,
                    });
                }
            }
        }
        let gone = await_condition(
            Api::<Namespace>::all(self.client.clone()),
            &name,
            conditions::is_deleted(&uid),
        );
        match tokio::time::timeout_at(deadline, gone).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(ClusterError::Watch {
                what: format!("waiting for namespace {name} to go"),
                reason: error.to_string(),
            }),
            Err(_) => Err(ClusterError::Timeout {
                what: format!("waiting for namespace {name} to go"),
                timeout: self.deletion_timeout,
            }),
        }
    }

    /// Deletes the namespace's Instances and Sandboxes and waits until their
    /// finalizers have let them go, then waits (at most [`DELIVERY_GRACE`])
    /// for the deliveries still pending.
    async fn release_objects(
        &self,
        namespace: &str,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let instances: Api<Instance> = Api::namespaced(self.client.clone(), namespace);
        let sandboxes: Api<Sandbox> = Api::namespaced(self.client.clone(), namespace);
        delete_all(&instances, namespace).await?;
        delete_all(&sandboxes, namespace).await?;
        let objects_gone = futures::future::try_join(
            wait_until_none(instances, |_| true, deadline, namespace),
            wait_until_none(sandboxes, |_| true, deadline, namespace),
        );
        if let Err(error) = objects_gone.await {
            return Err(match error {
                WaitError::Failed(reason) => ClusterError::Watch {
                    what: format!("waiting for the Instances and Sandboxes of {namespace} to go"),
                    reason,
                },
                WaitError::TimedOut(left) => ClusterError::Timeout {
                    what: format!(
                        "waiting for the Instances and Sandboxes of {namespace} to go ({left} left)"
                    ),
                    timeout: self.deletion_timeout,
                },
            });
        }
        let deliveries: Api<WebhookDelivery> = Api::namespaced(self.client.clone(), namespace);
        let grace = deadline.min(Instant::now() + DELIVERY_GRACE);
        match wait_until_none(deliveries, is_pending, grace, namespace).await {
            Ok(()) => Ok(()),
            Err(WaitError::TimedOut(left)) => {
                warn!(
                    namespace,
                    pending = left,
                    "webhook deliveries still pending; they go with the namespace"
                );
                Ok(())
            }
            Err(WaitError::Failed(reason)) => Err(ClusterError::Watch {
                what: format!("waiting for the webhook deliveries of {namespace}"),
                reason,
            }),
        }
    }
}

fn is_pending(delivery: &WebhookDelivery) -> bool {
    delivery
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|phase| phase == DeliveryPhase::Pending)
}

/// Server-side apply, forced: a hand edit of our fields is taken back, and
/// applying what is already there changes nothing (not even the
/// resourceVersion).
async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<(), ClusterError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(kube(format!(
        "applying {} {name}",
        K::kind(&Default::default())
    )))
    .map(|_| ())
}

/// Deletes what carries the project's labels but is no longer wanted.
async fn prune<K>(api: &Api<K>, selector: &str, wanted: &[String]) -> Result<(), ClusterError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let found: Vec<String> = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(kube(format!("listing {kind}s")))?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    for name in objects::stale(&found, wanted) {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(kind, name, "deleted; the templates no longer call for it"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ClusterError::Kube {
                    what: format!("deleting {kind} {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Deletes every object of a kind in the namespace, in one request.
async fn delete_all<K>(api: &Api<K>, namespace: &str) -> Result<(), ClusterError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .map_err(kube(format!(
            "deleting the {}s of {namespace}",
            K::kind(&Default::default())
        )))
        .map(|_| ())
}

enum WaitError {
    /// The watch failed, with the reason.
    Failed(String),
    /// The deadline passed with this many left.
    TimedOut(usize),
}

/// Watches the kind in `namespace` until none of its objects is `left`.
async fn wait_until_none<K>(
    api: Api<K>,
    left: fn(&K) -> bool,
    deadline: Instant,
    namespace: &str,
) -> Result<(), WaitError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store::<K>();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).boxed();
    let count = || reader.state().iter().filter(|o| left(o)).count();
    let watched = async {
        let mut synced = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => synced = true,
                Ok(_) => {}
                Err(error) => return Err(WaitError::Failed(error.to_string())),
            }
            if synced && count() == 0 {
                return Ok(());
            }
        }
        Err(WaitError::Failed(format!("the watch in {namespace} ended")))
    };
    match tokio::time::timeout_at(deadline, watched).await {
        Ok(result) => result,
        Err(_) => Err(WaitError::TimedOut(count())),
    }
}
