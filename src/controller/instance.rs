//! The Instance reconciler: observe -> plan -> act -> record.
//!
//! - observe: the provider's view, from the reflector caches.
//! - plan: [`crate::plan::instance::plan`], pure.
//! - act: the plan's provider actions, all idempotent.
//! - record: the status through the status subresource, with the object's
//!   resourceVersion (a conflict means observe again, never overwrite), then
//!   Kubernetes Events, webhook dispatch, and the finalizer.

use std::sync::Arc;
use std::time::Instant as Clock;

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info, warn};

use super::{Context, dispatch};
use crate::api::{Instance, InstanceStatus};
use crate::plan::conditions::{DesiredCondition, set_condition, types};
use crate::plan::instance::{
    INSTANCE_LABEL, InstanceObservation, InstancePlan, ProviderAction, plan,
};
use crate::plan::{FINALIZER, FinalizerAction, PlannedEvent};
use crate::provider::{Deprovision, InstanceProvider, ProviderError, WorkloadId};
use crate::runtime::metrics::{ErrorLabels, KindLabels, TransitionLabels};

/// Errors of one Instance reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "writing the status of {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "updating the finalizer of {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Finalizer {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Dispatch(#[from] dispatch::DispatchError),
}

impl ReconcileError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "WriteStatus",
            Self::Finalizer { .. } => "Finalizer",
            Self::Provider(e) => e.reason(),
            Self::Dispatch(_) => "Dispatch",
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
    services: impl Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
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
        .owns_stream(services)
        .watches_stream(pods, pod_owner)
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

/// What about an Instance starts a reconcile: its generation (spec), its
/// deletion, and its labels (copied onto the children).
fn reconcile_trigger(instance: &Instance) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    instance.metadata.generation.hash(&mut hasher);
    instance
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    instance.metadata.labels.hash(&mut hasher);
    instance.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

/// A pod starts a reconcile of its Instance only when it is not ready: its
/// problems are news; a ready pod shows up in the Deployment's status anyway.
fn pod_owner(pod: Pod) -> Option<ObjectRef<Instance>> {
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
    warn!(namespace = instance.namespace().unwrap_or_default(), name = instance.name_any(), error = %error, "reconcile failed");
    context
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: KIND.into(),
            reason: error.metric_label().into(),
        })
        .inc();
    Action::requeue(
        context
            .backoff
            .failed(&ObjectRef::from_obj(instance.as_ref()).erase()),
    )
}

async fn reconcile(
    instance: Arc<Instance>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    context.caches_synced.clone().await;
    let span = tracing::info_span!(
        "reconcile",
        kind = KIND,
        namespace = instance.namespace().unwrap_or_default(),
        name = instance.name_any()
    );
    let started = Clock::now();
    let object = ObjectRef::from_obj(instance.as_ref()).erase();
    let result = reconcile_inner(instance, &context).instrument(span).await;
    if result.is_ok() {
        context.backoff.succeeded(&object);
    }
    let labels = KindLabels { kind: KIND.into() };
    context.metrics.reconciles.get_or_create(&labels).inc();
    context
        .metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
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
        record(&api, &instance, &mut plan, context).await?;
        return Err(error.into());
    }
    plan.events.extend(notes.into_iter().map(|n| PlannedEvent {
        warning: n.warning,
        reason: n.reason,
        message: n.message,
    }));

    // record
    let Some(written) = record(&api, &instance, &mut plan, context).await? else {
        // Conflict: someone changed the Instance since we read it. Look again.
        return Ok(Action::requeue(std::time::Duration::from_millis(100)));
    };

    if plan.finalizer == FinalizerAction::Release {
        let last = written
            .status
            .as_ref()
            .and_then(|s| s.history.last())
            .map_or(0, |e| e.sequence);
        let dispatched = written.status.as_ref().map_or(0, |s| s.dispatched_seq);
        if dispatched >= last {
            remove_finalizer(&api, &written).await?;
            info!("finalizer released; the Instance is gone");
            return Ok(Action::await_change());
        }
    }
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

/// Writes the planned status if it differs, publishes the Events, and
/// dispatches new history entries to webhooks. Returns the Instance as
/// written, or `None` on a conflict.
async fn record(
    api: &Api<Instance>,
    instance: &Instance,
    plan: &mut InstancePlan,
    context: &Context,
) -> Result<Option<Instance>, ReconcileError> {
    let name = instance.name_any();
    let old_status = instance.status.clone().unwrap_or_default();

    // Entries past dispatchedSeq need deliveries. When no webhook takes them
    // they can be marked dispatched in this same write; otherwise the
    // history is written first, so deliveries are only ever made from events
    // that are durably recorded.
    let subject = dispatch::subject(instance);
    let namespace = instance.namespace().unwrap_or_default();
    let pending = dispatch::pending(context, &subject, &namespace, &plan.status);
    if pending.is_empty() {
        plan.status.dispatched_seq = plan
            .status
            .history
            .last()
            .map_or(plan.status.dispatched_seq, |e| {
                e.sequence.max(plan.status.dispatched_seq)
            });
        crate::plan::history::trim(&mut plan.status.history, plan.status.dispatched_seq);
    }

    let mut written = instance.clone();
    if plan.status != old_status {
        match write_status(api, instance, &plan.status).await {
            Ok(Some(updated)) => written = updated,
            Ok(None) => return Ok(None),
            Err(source) => return Err(ReconcileError::WriteStatus { name, source }),
        }
        context
            .metrics
            .status_writes
            .get_or_create(&KindLabels { kind: KIND.into() })
            .inc();
        count_transitions(context, &old_status, &plan.status);
    }
    publish(context, instance, &plan.events).await;

    if !pending.is_empty() {
        dispatch::create_deliveries(&context.client, &pending).await?;
        let mut status = written.status.clone().unwrap_or_default();
        status.dispatched_seq = status
            .history
            .last()
            .map_or(status.dispatched_seq, |e| e.sequence);
        crate::plan::history::trim(&mut status.history, status.dispatched_seq);
        match write_status(api, &written, &status).await {
            Ok(Some(updated)) => written = updated,
            // The deliveries exist; the next reconcile finds them already
            // there and records dispatchedSeq then.
            Ok(None) => return Ok(None),
            Err(source) => return Err(ReconcileError::WriteStatus { name, source }),
        }
    }
    Ok(Some(written))
}

fn count_transitions(context: &Context, old: &InstanceStatus, new: &InstanceStatus) {
    let last_old = old.history.last().map_or(0, |e| e.sequence);
    for entry in new.history.iter().filter(|e| e.sequence > last_old) {
        if let (Some(from), Some(to)) = (&entry.from, &entry.to) {
            context
                .metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    kind: KIND.into(),
                    from: from.clone(),
                    to: to.clone(),
                })
                .inc();
        }
    }
}

/// Replaces the status with optimistic concurrency: the write carries the
/// resourceVersion we planned from. `Ok(None)` on a conflict.
async fn write_status(
    api: &Api<Instance>,
    instance: &Instance,
    status: &InstanceStatus,
) -> Result<Option<Instance>, kube::Error> {
    let mut updated = instance.clone();
    updated.status = Some(status.clone());
    match api
        .replace_status(&instance.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(response)) if response.code == 409 => {
            info!(
                resource_version = instance.metadata.resource_version,
                message = response.message,
                "status write conflicted; observing again"
            );
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

async fn publish(context: &Context, instance: &Instance, events: &[PlannedEvent]) {
    if events.is_empty() {
        return;
    }
    let reference = instance.object_ref(&());
    for event in events {
        if let Err(err) = context
            .events
            .publish(&reference, event.warning, &event.reason, &event.message)
            .await
        {
            warn!(error = %crate::runtime::describe_kube_error(&err), reason = event.reason, "publishing an Event failed");
        }
    }
}

/// Adds the finalizer; returns the Instance as the API server now has it.
async fn add_finalizer(
    api: &Api<Instance>,
    instance: &Instance,
) -> Result<Instance, ReconcileError> {
    let mut finalizers = instance.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    Ok(patch_finalizers(api, instance, finalizers)
        .await?
        .unwrap_or_else(|| instance.clone()))
}

async fn remove_finalizer(api: &Api<Instance>, instance: &Instance) -> Result<(), ReconcileError> {
    let finalizers = instance
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(api, instance, finalizers)
        .await
        .map(|_| ())
}

/// Sets the finalizer list with a JSON patch that first tests the current
/// list, so a concurrent change is never overwritten.
async fn patch_finalizers(
    api: &Api<Instance>,
    instance: &Instance,
    finalizers: Vec<String>,
) -> Result<Option<Instance>, ReconcileError> {
    let current = instance.metadata.finalizers.clone();
    let mut operations = Vec::new();
    match current {
        Some(current) => {
            operations.push(
                serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": current}),
            );
            operations.push(serde_json::json!({"op": "replace", "path": "/metadata/finalizers", "value": finalizers}));
        }
        None => operations.push(
            serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": finalizers}),
        ),
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
        .map_err(|e| ReconcileError::Finalizer {
            name: instance.name_any(),
            source: kube::Error::SerdeError(e),
        })?;
    match api
        .patch(
            &instance.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(patched) => Ok(Some(patched)),
        // Gone already: nothing left to finalize.
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(None),
        Err(source) => Err(ReconcileError::Finalizer {
            name: instance.name_any(),
            source,
        }),
    }
}
