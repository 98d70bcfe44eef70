//! SandboxSnapshots in the lifecycle engine: what they observe (their
//! Sandbox's claim and the volume snapshot behind them, through the
//! Sandbox's provider), how they plan ([`crate::plan::snapshot::plan`]),
//! and the provider calls their plans ask for.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::Context;
use super::lifecycle::LifecycleKind;
use crate::api::{SandboxSnapshot, SandboxSnapshotStatus};
use crate::plan::Decision;
use crate::plan::snapshot::{SnapshotAction, SnapshotObservation, SnapshotSource, plan};
use crate::provider::{
    ActionNote, Deprovision, ProviderError, SandboxProvider, SnapshotRequest, WorkloadId,
};

/// What a snapshot's plan asks of the provider.
pub struct SnapshotActs {
    action: Option<SnapshotAction>,
}

impl SandboxSnapshot {
    /// The provider of its Sandbox (or the default one, when the Sandbox is
    /// gone: it still has a volume snapshot to delete).
    fn provider(&self, context: &Context) -> Result<Arc<dyn SandboxProvider>, ProviderError> {
        let sandbox = context.sandboxes.get(
            &ObjectRef::new(&self.spec.sandbox_ref.name)
                .within(&self.namespace().unwrap_or_default()),
        );
        context
            .sandbox_providers
            .resolve(sandbox.as_ref().and_then(|s| s.spec.provider.as_deref()))
            .map_err(|unknown| ProviderError::Unsupported {
                provider: unknown.name.clone(),
                what: format!("snapshots ({unknown})"),
            })
    }
}

#[async_trait]
impl LifecycleKind for SandboxSnapshot {
    type Observation = SnapshotObservation;
    type Acts = SnapshotActs;

    async fn observe(&self, context: &Context) -> Result<Self::Observation, ProviderError> {
        let namespace = self.namespace().unwrap_or_default();
        let sandbox = context
            .sandboxes
            .get(&ObjectRef::new(&self.spec.sandbox_ref.name).within(&namespace))
            .map(|s| SnapshotSource {
                claim: s.status.as_ref().and_then(|s| s.claim_name.clone()),
                deleting: s.metadata.deletion_timestamp.is_some(),
            });
        let observed = self
            .provider(context)?
            .observe_snapshot(&namespace, &self.name_any())
            .await?;
        Ok(SnapshotObservation { sandbox, observed })
    }

    fn plan(
        &self,
        observation: &Self::Observation,
        now: DateTime<Utc>,
    ) -> (Decision<SandboxSnapshotStatus>, Self::Acts) {
        let (decision, action) = plan(self, observation, now);
        (decision, SnapshotActs { action })
    }

    async fn act(
        &self,
        context: &Context,
        acts: &Self::Acts,
    ) -> Result<Vec<ActionNote>, ProviderError> {
        let namespace = self.namespace().unwrap_or_default();
        match acts.action {
            Some(SnapshotAction::Take) => {
                let sandbox = context
                    .sandboxes
                    .get(&ObjectRef::new(&self.spec.sandbox_ref.name).within(&namespace));
                let id = WorkloadId {
                    namespace: namespace.clone(),
                    name: self.spec.sandbox_ref.name.clone(),
                    uid: sandbox.and_then(|s| s.uid()).unwrap_or_default(),
                };
                let request = SnapshotRequest {
                    namespace,
                    name: self.name_any(),
                    owner: self.controller_owner_ref(&()).unwrap_or_default(),
                    class: self.spec.volume_snapshot_class_name.clone(),
                    annotations: self
                        .annotations()
                        .iter()
                        .filter(|(key, _)| !key.starts_with("kubectl.kubernetes.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                self.provider(context)?.snapshot(&id, &request).await?;
                Ok(Vec::new())
            }
            Some(SnapshotAction::Delete) => {
                if self
                    .provider(context)?
                    .delete_snapshot(&namespace, &self.name_any())
                    .await?
                    == Deprovision::InProgress
                {
                    tracing::debug!("waiting for the volume snapshot to go");
                }
                Ok(Vec::new())
            }
            None => Ok(Vec::new()),
        }
    }
}
