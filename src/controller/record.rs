//! The record step, shared by every kind with a lifecycle: the status write
//! with optimistic concurrency, Kubernetes Events, webhook dispatch, and the
//! finalizer.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::Context;
use super::dispatch::{self, HasHistory};
use crate::api::{Instance, InstanceStatus, Sandbox, SandboxStatus};
use crate::plan::PlannedEvent;
use crate::runtime::metrics::{KindLabels, TransitionLabels};

/// A custom resource with a lifecycle status.
pub trait LifecycleObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    type Status: Clone + PartialEq + Default + HasHistory + Send + Sync;
    const KIND: &'static str;
    fn status(&self) -> Option<&Self::Status>;
    fn set_status(&mut self, status: Self::Status);
}

impl LifecycleObject for Instance {
    type Status = InstanceStatus;
    const KIND: &'static str = "Instance";
    fn status(&self) -> Option<&InstanceStatus> {
        self.status.as_ref()
    }
    fn set_status(&mut self, status: InstanceStatus) {
        self.status = Some(status);
    }
}

impl LifecycleObject for Sandbox {
    type Status = SandboxStatus;
    const KIND: &'static str = "Sandbox";
    fn status(&self) -> Option<&SandboxStatus> {
        self.status.as_ref()
    }
    fn set_status(&mut self, status: SandboxStatus) {
        self.status = Some(status);
    }
}

/// Errors of the record step.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
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
    Dispatch(#[from] dispatch::DispatchError),
}

impl RecordError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "WriteStatus",
            Self::Finalizer { .. } => "Finalizer",
            Self::Dispatch(_) => "Dispatch",
        }
    }
}

/// Writes the planned status if it differs, publishes the Events, and
/// dispatches new history entries to webhooks. Returns the object as
/// written, or `None` on a conflict (observe again).
///
/// Entries past dispatchedSeq need deliveries. When no webhook takes them
/// they are marked dispatched in the same write; otherwise the history is
/// written first, so deliveries are only ever made from durably recorded
/// events, and dispatchedSeq moves only after they exist.
pub async fn record<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
    status: &mut K::Status,
    events: &[PlannedEvent],
    context: &Context,
) -> Result<Option<K>, RecordError> {
    let name = object.name_any();
    let old_status = object.status().cloned().unwrap_or_default();
    let subject = dispatch::subject(object);
    let namespace = object.namespace().unwrap_or_default();
    let pending = dispatch::pending(context, &subject, &namespace, status);
    if pending.is_empty() {
        mark_dispatched(status);
    }

    let mut written = object.clone();
    if *status != old_status {
        match write_status(api, object, status).await {
            Ok(Some(updated)) => written = updated,
            Ok(None) => return Ok(None),
            Err(source) => return Err(RecordError::WriteStatus { name, source }),
        }
        context
            .metrics
            .status_writes
            .get_or_create(&KindLabels {
                kind: K::KIND.into(),
            })
            .inc();
        count_transitions::<K>(context, &old_status, status);
    }
    publish(context, object, events).await;

    if !pending.is_empty() {
        match dispatch::create_deliveries(&context.client, &pending).await {
            Ok(()) => {}
            Err(dispatch::DispatchError::NamespaceTerminating { .. }) => {
                // The namespace's Webhooks are being deleted with it; the
                // events have nowhere left to go. Counted, then let go, so
                // the finalizer does not hold the namespace forever.
                context.metrics.events_dropped.inc_by(pending.len() as u64);
                info!(
                    deliveries = pending.len(),
                    "namespace is being deleted; its webhooks go with it"
                );
            }
            Err(other) => return Err(other.into()),
        }
        let mut dispatched = written.status().cloned().unwrap_or_default();
        mark_dispatched(&mut dispatched);
        match write_status(api, &written, &dispatched).await {
            Ok(Some(updated)) => written = updated,
            // The deliveries exist; the next reconcile finds them already
            // there and records dispatchedSeq then.
            Ok(None) => return Ok(None),
            Err(source) => return Err(RecordError::WriteStatus { name, source }),
        }
    }
    Ok(Some(written))
}

fn mark_dispatched(status: &mut impl HasHistory) {
    let last = status.history().last().map_or(0, |e| e.sequence);
    let dispatched = status.dispatched_seq().max(last);
    status.set_dispatched_seq(dispatched);
    crate::plan::history::trim(status.history_mut(), dispatched);
}

/// Whether every history entry is dispatched, so the finalizer may go.
pub fn all_dispatched<K: LifecycleObject>(object: &K) -> bool {
    object.status().is_none_or(|s| {
        let last = s.history().last().map_or(0, |e| e.sequence);
        s.dispatched_seq() >= last
    })
}

fn count_transitions<K: LifecycleObject>(context: &Context, old: &K::Status, new: &K::Status) {
    let last_old = old.history().last().map_or(0, |e| e.sequence);
    for entry in new.history().iter().filter(|e| e.sequence > last_old) {
        if let (Some(from), Some(to)) = (&entry.from, &entry.to) {
            context
                .metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    kind: K::KIND.into(),
                    from: from.clone(),
                    to: to.clone(),
                })
                .inc();
        }
    }
}

/// Replaces the status with optimistic concurrency: the write carries the
/// resourceVersion we planned from. `Ok(None)` on a conflict.
pub async fn write_status<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
    status: &K::Status,
) -> Result<Option<K>, kube::Error> {
    let mut updated = object.clone();
    updated.set_status(status.clone());
    match api
        .replace_status(&object.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(response)) if response.code == 409 => {
            info!(
                resource_version = object.meta().resource_version,
                message = response.message,
                "status write conflicted; observing again"
            );
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Publishes the planned Events about the object.
pub async fn publish<K: LifecycleObject>(context: &Context, object: &K, events: &[PlannedEvent]) {
    if events.is_empty() {
        return;
    }
    let reference = object.object_ref(&());
    for event in events {
        if let Err(err) = context
            .events
            .publish(&reference, event.warning, &event.reason, &event.message)
            .await
        {
            warn!(
                error = %crate::runtime::describe_kube_error(&err),
                reason = event.reason,
                "publishing an Event failed"
            );
        }
    }
}

/// Adds the finalizer; returns the object as the API server now has it.
pub async fn add_finalizer<K: LifecycleObject>(api: &Api<K>, object: &K) -> Result<K, RecordError> {
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(crate::plan::FINALIZER.to_string());
    Ok(patch_finalizers(api, object, finalizers)
        .await?
        .unwrap_or_else(|| object.clone()))
}

/// Removes the finalizer: the object goes.
pub async fn remove_finalizer<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
) -> Result<(), RecordError> {
    let finalizers = object
        .finalizers()
        .iter()
        .filter(|f| *f != crate::plan::FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(api, object, finalizers).await.map(|_| ())
}

/// Sets the finalizer list with a JSON patch that first tests the current
/// list, so a concurrent change is never overwritten.
async fn patch_finalizers<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
    finalizers: Vec<String>,
) -> Result<Option<K>, RecordError> {
    let name = object.name_any();
    let mut operations = Vec::new();
    match object.meta().finalizers.clone() {
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
        .map_err(|e| RecordError::Finalizer {
            name: name.clone(),
            source: kube::Error::SerdeError(e),
        })?;
    match api
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(patched) => Ok(Some(patched)),
        // Gone already: nothing left to finalize.
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(None),
        Err(source) => Err(RecordError::Finalizer { name, source }),
    }
}
