//! The Sandbox reconciler: observe -> plan -> act -> record, like the
//! Instance one, with the pod provider, expiry and the capacity check.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::info;

use super::Context;
use super::record::{RecordError, add_finalizer, all_dispatched, record, remove_finalizer};
use crate::api::Sandbox;
use crate::plan::conditions::{DesiredCondition, set_condition, types};
use crate::plan::sandbox::{SandboxAction, SandboxObservation, SandboxPlan, plan};
use crate::plan::{FinalizerAction, PlannedEvent};
use crate::provider::{ProviderError, SandboxProvider, WorkloadId};

const KIND: &str = "Sandbox";

/// Errors of one Sandbox reconcile.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(
        "updating the labels of {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Labels {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "deleting expired sandbox {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Expire {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl SandboxError {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Record(e) => e.metric_label(),
            Self::Provider(e) => e.reason(),
            Self::Labels { .. } => "Labels",
            Self::Expire { .. } => "Expire",
        }
    }
}

/// Runs the Sandbox controller of one scope until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn controller(
    sandboxes: impl Stream<Item = Result<Sandbox, watcher::Error>> + Send + 'static,
    store: Store<Sandbox>,
    pods: impl Stream<Item = Arc<Pod>> + Send + 'static,
    services: impl Stream<Item = Arc<Service>> + Send + 'static,
    claims: impl Stream<Item = Result<PersistentVolumeClaim, watcher::Error>> + Send + 'static,
    concurrency: u16,
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sandboxes =
        sandboxes.predicate_filter(super::instance::reconcile_trigger, Default::default());
    Controller::for_stream(sandboxes, store)
        .owns_shared_stream(pods)
        .owns_shared_stream(services)
        .owns_stream(claims)
        .with_config(ControllerRuntimeConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(sandbox: Arc<Sandbox>, error: &SandboxError, context: Arc<Context>) -> Action {
    super::retry_after_failure(
        KIND,
        sandbox.as_ref(),
        error.metric_label(),
        error,
        &context,
    )
}

async fn reconcile(sandbox: Arc<Sandbox>, context: Arc<Context>) -> Result<Action, SandboxError> {
    let work = reconcile_inner(sandbox.clone(), &context);
    super::instrumented_reconcile(KIND, sandbox.as_ref(), &context, work).await
}

async fn reconcile_inner(sandbox: Arc<Sandbox>, context: &Context) -> Result<Action, SandboxError> {
    let name = sandbox.name_any();
    let namespace = sandbox.namespace().unwrap_or_default();
    let id = WorkloadId {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let api: Api<Sandbox> = Api::namespaced(context.client.clone(), &namespace);

    // observe
    let provider = context.sandboxes.resolve(sandbox.spec.provider.as_deref());
    let (observed, hosts) = match &provider {
        Ok(provider) => (provider.status(&id).await?, provider.hosts().await?),
        Err(_) => Default::default(),
    };
    let observation = SandboxObservation {
        provider: provider
            .as_ref()
            .map(|p| p.name().to_string())
            .map_err(Clone::clone),
        observed,
        hosts,
    };

    // plan
    let mut plan = plan(&sandbox, &observation, Utc::now());

    let sandbox = if plan.finalizer == FinalizerAction::Add {
        Arc::new(add_finalizer(&api, &sandbox).await?)
    } else {
        sandbox
    };
    let sandbox = match &plan.labels {
        // The agent and job also become labels, so `kubectl get sbx -l` finds them.
        Some(labels) => {
            let patch = serde_json::json!({ "metadata": { "labels": labels } });
            Arc::new(
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| SandboxError::Labels {
                        name: name.clone(),
                        source,
                    })?,
            )
        }
        None => sandbox,
    };

    // act
    if let Ok(provider) = &provider
        && let Err(error) = act(provider.as_ref(), &plan, &id).await
    {
        if let ProviderError::NamespaceTerminating { .. } = error {
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        set_condition(
            &mut plan.status.conditions,
            DesiredCondition::new(types::SYNCED, false, error.reason(), error.to_string()),
            sandbox.metadata.generation,
            Utc::now(),
        );
        plan.events.push(PlannedEvent {
            warning: true,
            reason: error.reason().to_string(),
            message: error.to_string(),
        });
        record(&api, &sandbox, &mut plan.status, &plan.events, context).await?;
        return Err(error.into());
    }

    // record
    let Some(written) = record(&api, &sandbox, &mut plan.status, &plan.events, context).await?
    else {
        return Ok(Action::requeue(Duration::from_millis(100)));
    };

    if plan.delete_sandbox {
        // Expired with policy Delete: the expiry is recorded above; now the
        // Sandbox goes, through its finalizer.
        info!("expired; deleting the sandbox");
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => return Err(SandboxError::Expire { name, source }),
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if plan.finalizer == FinalizerAction::Release && all_dispatched(&written) {
        remove_finalizer(&api, &written).await?;
        info!("finalizer released; the Sandbox is gone");
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

async fn act(
    provider: &dyn SandboxProvider,
    plan: &SandboxPlan,
    id: &WorkloadId,
) -> Result<(), ProviderError> {
    for action in &plan.actions {
        match action {
            SandboxAction::Provision => {
                if let Some(workload) = &plan.workload {
                    provider.provision(workload).await?;
                }
            }
            SandboxAction::Start => {
                if let Some(workload) = &plan.workload {
                    provider.start(workload).await?;
                }
            }
            SandboxAction::Stop => provider.stop(id).await?,
            SandboxAction::Deprovision => {
                provider.deprovision(id).await?;
            }
        }
    }
    Ok(())
}
