//! Instances in the lifecycle engine: what they observe (their provider's
//! view), how they plan ([`crate::plan::instance::plan`]), and the provider
//! calls their plans ask for. Everything else is the engine's.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tracing::{debug, info};

use super::Context;
use super::lifecycle::{LifecycleKind, run_controller};
use super::watches::settle;
use crate::api::Instance;
use crate::plan::Decision;
use crate::plan::instance::{InstanceObservation, ProviderAction, plan};
use crate::provider::{
    ActionNote, ApplyReason, Cleanup, Deprovision, InstanceProvider, InstanceWorkload,
    ProviderError, WorkloadId,
};

/// What an Instance's plan asks of its provider.
pub struct InstanceActs {
    provider: Option<Arc<dyn InstanceProvider>>,
    id: WorkloadId,
    workload: Option<InstanceWorkload>,
    actions: Vec<ProviderAction>,
}

/// The most telling reason among a plan's calls, the one passed along.
fn reason(actions: &[ProviderAction]) -> ApplyReason {
    use ProviderAction::*;
    [
        (Deploy, ApplyReason::Deploy),
        (Rollback, ApplyReason::Rollback),
        (Restart, ApplyReason::Restart),
        (Scale, ApplyReason::Scale),
        (Start, ApplyReason::Start),
        (Stop, ApplyReason::Stop),
    ]
    .into_iter()
    .find(|(action, _)| actions.contains(action))
    .map_or(ApplyReason::Provision, |(_, reason)| reason)
}

fn workload_id(instance: &Instance) -> WorkloadId {
    WorkloadId {
        namespace: instance.namespace().unwrap_or_default(),
        name: instance.name_any(),
        uid: instance.uid().unwrap_or_default(),
    }
}

#[async_trait]
impl LifecycleKind for Instance {
    /// What the provider remembers of the workload (the Kubernetes provider:
    /// what it last applied) goes, as a deprovision through the finalizer
    /// would let it go. Without this, every Instance deleted without a
    /// finalizer left its record behind for as long as the operator ran.
    async fn gone(&self, context: &Context) {
        if let Ok(provider) = context
            .instance_providers
            .resolve(self.spec.provider.as_deref())
            && let Err(error) = provider.deprovision(&workload_id(self)).await
        {
            debug!(%error, "deprovisioning a deleted Instance failed");
        }
    }

    type Observation = (InstanceObservation, Option<Arc<dyn InstanceProvider>>);
    type Acts = InstanceActs;

    async fn observe(&self, context: &Context) -> Result<Self::Observation, ProviderError> {
        let provider = context
            .instance_providers
            .resolve(self.spec.provider.as_deref());
        let (workload, cleanup) = match &provider {
            Ok(provider) => (
                provider.observe(&workload_id(self)).await?,
                provider.cleanup(),
            ),
            Err(_) => (None, Cleanup::GarbageCollected),
        };
        let observation = InstanceObservation {
            provider: provider
                .as_ref()
                .map(|p| p.name().to_string())
                .map_err(Clone::clone),
            cleanup,
            workload,
            webhooks_listen: context
                .dispatcher
                .has_webhooks(&self.namespace().unwrap_or_default()),
        };
        Ok((observation, provider.ok()))
    }

    fn plan(
        &self,
        (observation, provider): &Self::Observation,
        now: DateTime<Utc>,
    ) -> (Decision<Self::Status>, Self::Acts) {
        let plan = plan(self, observation, now);
        let decision = Decision {
            status: plan.status,
            events: plan.events,
            requeue_after: plan.requeue_after,
            finalizer: plan.finalizer,
            labels: None,
            delete_object: false,
            record_first: false,
        };
        let acts = InstanceActs {
            provider: provider.clone(),
            id: workload_id(self),
            workload: plan.workload,
            actions: plan.actions,
        };
        (decision, acts)
    }

    async fn act(
        &self,
        _context: &Context,
        acts: &Self::Acts,
    ) -> Result<Vec<ActionNote>, ProviderError> {
        let Some(provider) = &acts.provider else {
            return Ok(Vec::new());
        };
        if acts.actions.contains(&ProviderAction::Deprovision) {
            if provider.deprovision(&acts.id).await? == Deprovision::InProgress {
                info!("deprovisioning: waiting for the children to go");
            }
            return Ok(Vec::new());
        }
        match &acts.workload {
            Some(workload) if !acts.actions.is_empty() => {
                provider.apply(workload, reason(&acts.actions)).await
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// What about an object starts a reconcile: its generation (spec), its
/// deletion, and its labels (copied onto the children). Its status and its
/// finalizers are ours, and our own writes must not feed back into another
/// reconcile. Labels the operator sets itself (a Sandbox's agent and job)
/// follow from the spec, whose generation already counts.
pub fn reconcile_trigger<K: kube::Resource>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    if let Some(labels) = &meta.labels {
        for (key, value) in labels {
            if key != crate::provider::AGENT_LABEL && key != crate::provider::JOB_LABEL {
                (key, value).hash(&mut hasher);
            }
        }
    }
    Some(hasher.finish())
}

/// How long the children of one object must be quiet before their news
/// wakes it (see [`settle`]).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest their news is held back, however busy they are.
pub const SETTLE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the Instance controller of one scope until shutdown.
pub async fn controller(
    instances: impl Stream<Item = Result<Instance, watcher::Error>> + Send + 'static,
    store: Store<Instance>,
    dispatched: impl Stream<Item = (String, String)> + Send + 'static,
    concurrency: u16,
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use kube::runtime::WatchStreamExt;
    let instances = instances.predicate_filter(reconcile_trigger, Default::default());
    let providers = futures::stream::select_all(
        context
            .instance_providers
            .all()
            .filter_map(|p| p.wakeups())
            .collect::<Vec<_>>(),
    )
    .map(|id| (id.namespace, id.name));
    let providers = settle(providers, SETTLE, SETTLE_AT_MOST)
        .map(|(namespace, name)| ObjectRef::<Instance>::new(&name).within(&namespace));
    let dispatched = dispatched.map(|(namespace, name)| ObjectRef::new(&name).within(&namespace));
    let woken = futures::stream::select(providers, dispatched);
    run_controller(instances, store, woken, concurrency, context, shutdown).await;
}
