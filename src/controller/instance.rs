//! The Instance reconciler: observe -> plan -> act -> record.
//!
//! - observe: the provider's view, from the reflector caches.
//! - plan: [`crate::plan::instance::plan`], pure.
//! - act: the plan's provider actions, all idempotent.
//! - record: the status through the status subresource, with the object's
//!   resourceVersion (a conflict means observe again, never overwrite), then
//!   Kubernetes Events, webhook dispatch, and the finalizer.

use std::sync::Arc;

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::Context;
use super::record::{RecordError, add_finalizer, all_dispatched, record, remove_finalizer};
use crate::api::Instance;
use crate::plan::conditions::{DesiredCondition, set_condition, types};
use crate::plan::instance::{
    INSTANCE_LABEL, InstanceObservation, InstancePlan, ProviderAction, plan,
};
use crate::plan::{FinalizerAction, PlannedEvent};
use crate::provider::{Deprovision, InstanceProvider, ProviderError, WorkloadId};

/// Errors of one Instance reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl ReconcileError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Record(e) => e.metric_label(),
            Self::Provider(e) => e.reason(),
        }
    }
}

const KIND: &str = "Instance";

/// Builds the Instance controller of one scope.
#[allow(clippy::too_many_arguments)]
pub async fn controller(
    instances: impl Stream<Item = Result<Instance, watcher::Error>> + Send + 'static,
    store: Store<Instance>,
    deployments: impl Stream<Item = Result<Deployment, watcher::Error>> + Send + 'static,
    services: impl Stream<Item = Arc<Service>> + Send + 'static,
    pods: impl Stream<Item = Arc<Pod>> + Send + 'static,
    concurrency: u16,
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Only changes that can change a decision start a reconcile: our own
    // status writes change neither the generation nor these, so they do not
    // feed back into another reconcile.
    let instances = instances.predicate_filter(reconcile_trigger, Default::default());
    Controller::for_stream(instances, store)
        .owns_stream(deployments)
        .owns_shared_stream(services)
        .watches_shared_stream(pods, pod_owner)
        .with_config(ControllerRuntimeConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile loop");
            }
        })
        .await;
}

use kube::runtime::WatchStreamExt;

/// What about an object starts a reconcile: its generation (spec), its
/// deletion, its labels (copied onto the children) and finalizers.
pub fn reconcile_trigger<K: Resource>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    Some(hasher.finish())
}

/// A pod starts a reconcile of its Instance only when it is not ready: its
/// problems are news; a ready pod shows up in the Deployment's status anyway.
fn pod_owner(pod: Arc<Pod>) -> Option<ObjectRef<Instance>> {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready {
        return None;
    }
    let name = pod.labels().get(INSTANCE_LABEL)?.clone();
    Some(ObjectRef::new(&name).within(&pod.namespace()?))
}

fn error_policy(instance: Arc<Instance>, error: &ReconcileError, context: Arc<Context>) -> Action {
    super::retry_after_failure(
        KIND,
        instance.as_ref(),
        error.metric_label(),
        error,
        &context,
    )
}

async fn reconcile(
    instance: Arc<Instance>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let work = reconcile_inner(instance.clone(), &context);
    super::instrumented_reconcile(KIND, instance.as_ref(), &context, work).await
}

async fn reconcile_inner(
    instance: Arc<Instance>,
    context: &Context,
) -> Result<Action, ReconcileError> {
    let name = instance.name_any();
    let namespace = instance.namespace().unwrap_or_default();
    let id = WorkloadId {
        namespace: namespace.clone(),
        name: name.clone(),
    };

    // observe
    let provider = context.registry.resolve(instance.spec.provider.as_deref());
    let workload = match &provider {
        Ok(provider) => provider.status(&id).await?,
        Err(_) => None,
    };
    let observation = InstanceObservation {
        provider: provider
            .as_ref()
            .map(|p| p.name().to_string())
            .map_err(Clone::clone),
        workload,
    };

    // plan
    let mut plan = plan(&instance, &observation, Utc::now());

    // The finalizer goes on before anything is created, so nothing can be
    // left behind by a delete that races the first reconcile.
    let api: Api<Instance> = Api::namespaced(context.client.clone(), &namespace);
    let instance = if plan.finalizer == FinalizerAction::Add {
        Arc::new(add_finalizer(&api, &instance).await?)
    } else {
        instance
    };

    // act
    let mut notes = Vec::new();
    if let Ok(provider) = &provider
        && let Err(error) = act(provider.as_ref(), &plan, &id, &mut notes).await
    {
        if let ProviderError::NamespaceTerminating { .. } = error {
            // Not a fault of the Instance, and Events cannot be created in a
            // terminating namespace: wait quietly for the deletion to arrive.
            tracing::debug!("namespace is terminating; waiting for the Instance's deletion");
            return Ok(Action::requeue(std::time::Duration::from_secs(10)));
        }
        // The status still records what happened, with the error in Synced;
        // the error then retries the reconcile.
        set_condition(
            &mut plan.status.conditions,
            DesiredCondition::new(types::SYNCED, false, error.reason(), error.to_string()),
            instance.metadata.generation,
            Utc::now(),
        );
        plan.events.push(PlannedEvent {
            warning: true,
            reason: error.reason().to_string(),
            message: error.to_string(),
        });
        record(&api, &instance, &mut plan.status, &plan.events, context).await?;
        return Err(error.into());
    }
    plan.events.extend(notes.into_iter().map(|n| PlannedEvent {
        warning: n.warning,
        reason: n.reason,
        message: n.message,
    }));

    // record
    let Some(written) = record(&api, &instance, &mut plan.status, &plan.events, context).await?
    else {
        // Conflict: someone changed the Instance since we read it. Look again.
        return Ok(Action::requeue(std::time::Duration::from_millis(100)));
    };

    if plan.finalizer == FinalizerAction::Release && all_dispatched(&written) {
        remove_finalizer(&api, &written).await?;
        info!("finalizer released; the Instance is gone");
        return Ok(Action::await_change());
    }
    // One line per reconcile at debug level, inside the reconcile span, so
    // `RUST_LOG=ctrlplane_operator=debug` shows which object did what.
    tracing::debug!(
        phase = ?plan.status.phase,
        requeue_after_secs = plan.requeue_after.as_secs(),
        "reconciled"
    );
    Ok(Action::requeue(plan.requeue_after))
}

/// Runs the plan's provider actions in order.
async fn act(
    provider: &dyn InstanceProvider,
    plan: &InstancePlan,
    id: &WorkloadId,
    notes: &mut Vec<crate::provider::ActionNote>,
) -> Result<(), ProviderError> {
    for action in &plan.actions {
        if *action == ProviderAction::Deprovision {
            if provider.deprovision(id).await? == Deprovision::InProgress {
                info!("deprovisioning: waiting for the children to go");
            }
            continue;
        }
        let Some(workload) = &plan.workload else {
            continue;
        };
        let result = match action {
            ProviderAction::Provision => provider.provision(workload).await?,
            ProviderAction::Deploy => provider.deploy(workload).await?,
            ProviderAction::Rollback => provider.rollback(workload).await?,
            ProviderAction::Scale => provider.scale(workload).await?,
            ProviderAction::Restart => provider.restart(workload).await?,
            ProviderAction::Start => provider.start(workload).await?,
            ProviderAction::Stop => provider.stop(workload).await?,
            ProviderAction::Deprovision => Vec::new(),
        };
        notes.extend(result);
    }
    Ok(())
}
