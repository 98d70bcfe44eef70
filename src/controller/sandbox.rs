//! Sandboxes in the lifecycle engine: what they observe (their provider's
//! view and the hosts with room), how they plan
//! ([`crate::plan::sandbox::plan`]), and the provider calls their plans ask
//! for. Everything else (expiry's self-deletion included) is the engine's.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tracing::{debug, info};

use super::Context;
use super::instance::{SETTLE, SETTLE_AT_MOST, reconcile_trigger};
use super::lifecycle::{LifecycleKind, run_controller};
use super::watches::settle;
use crate::api::Sandbox;
use crate::api::{CommandMark, SandboxCommand};
use crate::plan::Decision;
use crate::plan::sandbox::{CommandView, SandboxAction, SandboxObservation, SourceView, plan};
use crate::provider::{
    ActionNote, ApplyReason, Cleanup, Deprovision, ProviderError, SandboxProvider, SandboxWorkload,
    WorkloadId,
};

/// What a Sandbox's plan asks of its provider.
pub struct SandboxActs {
    provider: Option<Arc<dyn SandboxProvider>>,
    id: WorkloadId,
    workload: Option<SandboxWorkload>,
    actions: Vec<SandboxAction>,
}

fn workload_id(sandbox: &Sandbox) -> WorkloadId {
    WorkloadId {
        namespace: sandbox.namespace().unwrap_or_default(),
        name: sandbox.name_any(),
        uid: sandbox.uid().unwrap_or_default(),
    }
}

#[async_trait]
impl LifecycleKind for Sandbox {
    /// A room the Pod provider set aside for a Pod it was about to create
    /// is given back, as a deprovision through the finalizer would.
    async fn gone(&self, context: &Context) {
        if let Ok(provider) = context
            .sandbox_providers
            .resolve(self.spec.provider.as_deref())
            && let Err(error) = provider.deprovision(&workload_id(self)).await
        {
            debug!(%error, "deprovisioning a deleted Sandbox failed");
        }
    }

    type Observation = (SandboxObservation, Option<Arc<dyn SandboxProvider>>);
    type Acts = SandboxActs;

    async fn observe(&self, context: &Context) -> Result<Self::Observation, ProviderError> {
        let provider = context
            .sandbox_providers
            .resolve(self.spec.provider.as_deref());
        let (observed, hosts, cleanup) = match &provider {
            Ok(provider) => (
                provider.observe(&workload_id(self)).await?,
                provider.hosts().await?,
                provider.cleanup(),
            ),
            Err(_) => (Default::default(), Vec::new(), Cleanup::GarbageCollected),
        };
        let observation = SandboxObservation {
            provider: provider
                .as_ref()
                .map(|p| p.name().to_string())
                .map_err(Clone::clone),
            cleanup,
            webhooks_listen: context
                .dispatcher
                .has_webhooks(&self.namespace().unwrap_or_default()),
            observed,
            hosts,
            commands: commands_of(self, &context.commands),
            source: self.spec.source.as_ref().and_then(|source| {
                let snapshot = context.snapshots.get(
                    &ObjectRef::new(&source.snapshot_ref.name)
                        .within(&self.namespace().unwrap_or_default()),
                )?;
                let status = snapshot.status.clone().unwrap_or_default();
                Some(SourceView {
                    phase: status.phase,
                    volume_snapshot: status.volume_snapshot_name.clone(),
                    restore_size: status.restore_size.as_ref().map(|q| q.0.clone()),
                    message: status
                        .error
                        .clone()
                        .or_else(|| {
                            status
                                .conditions
                                .iter()
                                .find(|c| c.type_ == "Ready")
                                .map(|c| c.message.to_string())
                        })
                        .unwrap_or_default(),
                })
            }),
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
            labels: plan.labels,
            delete_object: plan.delete_sandbox,
            record_first: false,
        };
        let acts = SandboxActs {
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
        if acts.actions.contains(&SandboxAction::Deprovision) {
            if provider.deprovision(&acts.id).await? == Deprovision::InProgress {
                info!("deprovisioning: waiting for the children to go");
            }
            return Ok(Vec::new());
        }
        let reason = if acts.actions.contains(&SandboxAction::Stop) {
            ApplyReason::Stop
        } else if acts.actions.contains(&SandboxAction::Start) {
            ApplyReason::Start
        } else {
            ApplyReason::Provision
        };
        match &acts.workload {
            Some(workload) if !acts.actions.is_empty() => provider.apply(workload, reason).await,
            _ => Ok(Vec::new()),
        }
    }
}

/// A Sandbox's commands, in the order they run: by creation, then name.
pub fn commands_of(sandbox: &Sandbox, store: &Store<SandboxCommand>) -> Vec<CommandView> {
    let namespace = sandbox.namespace();
    let name = sandbox.name_any();
    let mut commands: Vec<CommandView> = store
        .state()
        .iter()
        .filter(|c| c.namespace() == namespace && c.spec.sandbox_ref.name == name)
        .map(|c| {
            let status = c.status.clone().unwrap_or_default();
            let failed = status.conditions.iter().find(|c| c.type_ == "Failed");
            CommandView {
                mark: command_mark(c),
                phase: status.phase,
                started: status.started_at.is_some(),
                exit_code: status.exit_code,
                reason: failed.map(|c| c.reason.to_string()).unwrap_or_default(),
                message: failed.map(|c| c.message.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    commands.sort_by(|a, b| (a.mark.created, &a.mark.name).cmp(&(b.mark.created, &b.mark.name)));
    commands
}

/// Where a command stands in its Sandbox's order.
pub fn command_mark(command: &SandboxCommand) -> CommandMark {
    let created = command
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(crate::api::utc_of)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    CommandMark {
        name: command.name_any(),
        uid: command.uid().unwrap_or_default(),
        created,
    }
}

/// Runs the Sandbox controller of one scope until shutdown.
pub async fn controller(
    sandboxes: impl Stream<Item = Result<Sandbox, watcher::Error>> + Send + 'static,
    store: Store<Sandbox>,
    woken: impl Stream<Item = (String, String)> + Send + 'static,
    concurrency: u16,
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use kube::runtime::WatchStreamExt;
    let sandboxes = sandboxes.predicate_filter(reconcile_trigger, Default::default());
    let providers = futures::stream::select_all(
        context
            .sandbox_providers
            .all()
            .filter_map(|p| p.wakeups())
            .collect::<Vec<_>>(),
    )
    .map(|id| (id.namespace, id.name));
    let providers = settle(providers, SETTLE, SETTLE_AT_MOST)
        .map(|(namespace, name)| ObjectRef::<Sandbox>::new(&name).within(&namespace));
    let woken = woken.map(|(namespace, name)| ObjectRef::new(&name).within(&namespace));
    let woken = futures::stream::select(providers, woken);
    run_controller(sandboxes, store, woken, concurrency, context, shutdown).await;
}
