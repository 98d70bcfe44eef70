//! The record step's I/O, shared by every kind with a lifecycle: the status
//! write with optimistic concurrency, the one metadata patch (finalizer and
//! labels), Kubernetes Events, and remembering what was written so the next
//! reconcile does not plan from a copy older than its own write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Context;
use crate::api::{
    Condition, HistoryEntry, Instance, InstanceStatus, Sandbox, SandboxCommand,
    SandboxCommandStatus, SandboxSnapshot, SandboxSnapshotStatus, SandboxStatus,
};
use crate::plan::{FINALIZER, PlannedEvent};
use crate::runtime::kubeapi::{self, StatusWrite, is_not_found};
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
    type Status: Clone
        + PartialEq
        + Default
        + HasHistory
        + Serialize
        + Send
        + Sync
        + std::fmt::Debug;
    const KIND: &'static str;
    /// Status fields (as serialized) that report progress rather than a
    /// decision: a change to them alone is written at most every
    /// [`PROGRESS_FOLD`], or with the next decision (see
    /// [`crate::plan::only_progress`]).
    const PROGRESS_FIELDS: &'static [&'static str];
    /// The reason of the Event that says the object is gone.
    const GONE_REASON: &'static str;
    fn status(&self) -> Option<&Self::Status>;
    fn set_status(&mut self, status: Self::Status);
}

/// Status fields that dispatch works with, common to every kind with a
/// history.
pub trait HasHistory {
    fn history(&self) -> &[HistoryEntry];
    fn history_mut(&mut self) -> &mut Vec<HistoryEntry>;
    fn dispatched_seq(&self) -> i64;
    fn set_dispatched_seq(&mut self, sequence: i64);
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

macro_rules! lifecycle_object {
    ($($kind:ty => $status:ty, progress: $progress:expr, gone: $gone:expr;)*) => {$(
        impl LifecycleObject for $kind {
            type Status = $status;
            const KIND: &'static str = stringify!($kind);
            const PROGRESS_FIELDS: &'static [&'static str] = $progress;
            const GONE_REASON: &'static str = $gone;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn set_status(&mut self, status: $status) {
                self.status = Some(status);
            }
        }

        impl HasHistory for $status {
            fn history(&self) -> &[HistoryEntry] {
                &self.history
            }
            fn history_mut(&mut self) -> &mut Vec<HistoryEntry> {
                &mut self.history
            }
            fn dispatched_seq(&self) -> i64 {
                self.dispatched_seq
            }
            fn set_dispatched_seq(&mut self, sequence: i64) {
                self.dispatched_seq = sequence;
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}

lifecycle_object!(
    Instance => InstanceStatus,
        progress: &["replicas", "readyReplicas", "endpoints", "providerRef", "dispatchedSeq"],
        gone: "Deleted";
    Sandbox => SandboxStatus,
        progress: &["podIP", "host", "providerRef", "claimName", "dispatchedSeq"],
        gone: "Destroyed";
    SandboxCommand => SandboxCommandStatus,
        progress: &[],
        gone: "Deleted";
    SandboxSnapshot => SandboxSnapshotStatus,
        progress: &["dispatchedSeq"],
        gone: "SnapshotDeleted";
);

/// How long a change of progress alone (see
/// [`LifecycleObject::PROGRESS_FIELDS`]) may wait to be written, so the
/// counts of a rollout under way or how far dispatch has got fold into the
/// next write that a decision makes anyway. Past this it is written by
/// itself, so what is shown is never older than this.
pub const PROGRESS_FOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// Since when each object's change of progress alone has waited.
#[derive(Default)]
pub struct Deferrals {
    since: Mutex<HashMap<String, std::time::Instant>>,
}

impl Deferrals {
    /// How much longer the object's progress may wait; `None` when it is
    /// due now. The first call starts the clock.
    pub fn wait_left(&self, uid: &str) -> Option<std::time::Duration> {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let started = *since
            .entry(uid.to_string())
            .or_insert_with(std::time::Instant::now);
        PROGRESS_FOLD
            .checked_sub(started.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// The object's status was written: nothing waits.
    pub fn written(&self, uid: &str) {
        if let Ok(mut since) = self.since.lock() {
            since.remove(uid);
        }
    }
}

/// Errors of the record step.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "writing the status of {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "updating the metadata of {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    Metadata {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {name}: {}", kubeapi::describe_kube_error(source))]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl RecordError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "WriteStatus",
            Self::Metadata { .. } => "Metadata",
            Self::Delete { .. } => "Delete",
        }
    }
}

/// The last object each reconcile wrote, by UID, with the resourceVersion
/// it was written over.
///
/// A reconcile can start (a child changed) before the watch has brought our
/// own last write back into the cache. Planning from that older copy would
/// end in a status write that conflicts (409) and a second round. When the
/// cache still shows exactly the version our write replaced, our written
/// copy is the newer one and is used instead; any other version in the
/// cache (the watch caught up, or someone else wrote) is taken as it is.
/// No resourceVersion is ever compared for order, only for equality.
///
/// Entries go as soon as the watch brings any newer version of the object
/// ([`WrittenObjects::seen`]), so only writes the cache has not caught up
/// with are held: a settled object costs nothing here.
///
/// The answer to a write and the watch event of the same write race. When
/// the watch wins, `seen` comes before `remember` and cannot let go of the
/// entry; a settled object may not reconcile again for minutes. So entries
/// also go once they are [`WRITTEN_KEPT`] old (swept as writes come): after
/// that, planning from the cache costs at most a conflict and a second look.
pub struct WrittenObjects {
    by_uid: Mutex<HashMap<String, Written>>,
    swept: Mutex<Instant>,
}

impl Default for WrittenObjects {
    fn default() -> Self {
        Self {
            by_uid: Mutex::default(),
            swept: Mutex::new(Instant::now()),
        }
    }
}

/// How long a write is kept for a cache that has not caught up with it. The
/// watch brings a write back within moments, or seconds under a burst of
/// thousands of objects.
const WRITTEN_KEPT: Duration = Duration::from_secs(30);

/// One write: the version it replaced, the object as written, and when.
struct Written {
    replaced: String,
    object: Arc<dyn std::any::Any + Send + Sync>,
    at: Instant,
}

impl WrittenObjects {
    /// Remembers `written`, which replaced the version `replaced`.
    pub fn remember<K: Resource + Clone + Send + Sync + 'static>(&self, replaced: &K, written: &K) {
        self.remember_at(replaced, written, Instant::now());
    }

    fn remember_at<K: Resource + Clone + Send + Sync + 'static>(
        &self,
        replaced: &K,
        written: &K,
        now: Instant,
    ) {
        let (Some(uid), Some(previous)) = (written.uid(), replaced.resource_version()) else {
            return;
        };
        // Kept as the cache keeps it.
        let mut written = written.clone();
        super::watches::forget_bookkeeping(&mut written);
        let sweep = self.swept.lock().is_ok_and(|mut swept| {
            let due = now.duration_since(*swept) >= WRITTEN_KEPT;
            if due {
                *swept = now;
            }
            due
        });
        if let Ok(mut by_uid) = self.by_uid.lock() {
            if sweep {
                by_uid.retain(|_, w| now.duration_since(w.at) < WRITTEN_KEPT);
            }
            by_uid.insert(
                uid,
                Written {
                    replaced: previous,
                    object: Arc::new(written),
                    at: now,
                },
            );
        }
    }

    /// The freshest copy of `cached`: our own last write, when the cache
    /// has not caught up with it yet.
    pub fn freshest<K: Resource + Clone + 'static>(&self, cached: K) -> K {
        let Some(uid) = cached.uid() else {
            return cached;
        };
        let Ok(mut by_uid) = self.by_uid.lock() else {
            return cached;
        };
        match by_uid.get(&uid) {
            Some(written) if cached.resource_version().as_ref() == Some(&written.replaced) => {
                written
                    .object
                    .downcast_ref::<K>()
                    .cloned()
                    .unwrap_or(cached)
            }
            Some(_) => {
                // The cache has moved past our write: forget it.
                by_uid.remove(&uid);
                cached
            }
            None => cached,
        }
    }

    /// The watch brought `object`: a write it replaced is no longer needed.
    pub fn seen<K: Resource>(&self, object: &K) {
        let Some(uid) = object.meta().uid.as_deref() else {
            return;
        };
        let Ok(mut by_uid) = self.by_uid.lock() else {
            return;
        };
        if by_uid.get(uid).is_some_and(|written| {
            object.meta().resource_version.as_ref() != Some(&written.replaced)
        }) {
            by_uid.remove(uid);
        }
    }

    /// How many writes the cache has not caught up with.
    pub fn len(&self) -> usize {
        self.by_uid.lock().map(|m| m.len()).unwrap_or_default()
    }

    /// Whether the cache has caught up with every write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut by_uid) = self.by_uid.lock() {
            by_uid.remove(uid);
        }
    }
}

/// Writes `status` as the object's status, carrying the resourceVersion
/// the object was read at. `None` on a conflict or when the object is gone:
/// observe again, never overwrite.
pub async fn write_status<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
    status: &K::Status,
    context: &Context,
) -> Result<Option<K>, RecordError> {
    let mut updated = object.clone();
    updated.set_status(status.clone());
    let written = match kubeapi::replace_status(api, &updated).await {
        Ok(StatusWrite::Written(written)) => written,
        Ok(StatusWrite::Conflict | StatusWrite::Gone) => return Ok(None),
        Err(source) => {
            return Err(RecordError::WriteStatus {
                name: object.name_any(),
                source,
            });
        }
    };
    context.written.remember(object, &written);
    context
        .metrics
        .status_writes
        .get_or_create(&KindLabels {
            kind: K::KIND.into(),
        })
        .inc();
    count_transitions::<K>(context, object.status(), status);
    Ok(Some(written))
}

fn count_transitions<K: LifecycleObject>(
    context: &Context,
    old: Option<&K::Status>,
    new: &K::Status,
) {
    let last_old = old
        .and_then(|s| s.history().last())
        .map_or(0, |e| e.sequence);
    for entry in new.history().iter().filter(|e| e.sequence > last_old) {
        if let (Some(from), Some(to)) = (&entry.from, &entry.to) {
            context
                .metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    kind: K::KIND.into(),
                    from: from.to_string(),
                    to: to.to_string(),
                })
                .inc();
        }
    }
}

/// Publishes the planned Events about the object. An Event that cannot be
/// published is logged, never a reason to fail the reconcile.
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
                error = %kubeapi::describe_kube_error(&err),
                reason = event.reason,
                "publishing an Event failed"
            );
        }
    }
}

/// What the one metadata patch of a reconcile changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetadataChange {
    pub add_finalizer: bool,
    pub remove_finalizer: bool,
    /// Labels to set (added or changed).
    pub labels: BTreeMap<String, String>,
}

impl MetadataChange {
    pub fn is_empty(&self) -> bool {
        !self.add_finalizer && !self.remove_finalizer && self.labels.is_empty()
    }
}

/// Makes every metadata change of a reconcile in one JSON patch. The
/// finalizer list is tested before it is replaced, so a concurrent change
/// to it is never overwritten. Returns the object as the API server now has
/// it, or `None` when it is gone.
pub async fn patch_metadata<K: LifecycleObject>(
    api: &Api<K>,
    object: &K,
    change: &MetadataChange,
) -> Result<Option<K>, RecordError> {
    let name = object.name_any();
    let mut operations = Vec::new();
    if change.add_finalizer || change.remove_finalizer {
        let mut finalizers: Vec<String> = object
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if change.add_finalizer {
            finalizers.push(FINALIZER.to_string());
        }
        match object.meta().finalizers.clone() {
            Some(current) => {
                operations.push(serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": current}));
                operations.push(serde_json::json!({"op": "replace", "path": "/metadata/finalizers", "value": finalizers}));
            }
            None => operations.push(
                serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": finalizers}),
            ),
        }
    }
    if !change.labels.is_empty() {
        if object.meta().labels.is_none() {
            operations
                .push(serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {}}));
        }
        for (key, value) in &change.labels {
            // JSON Pointer escapes '~' and '/' in a key.
            let key = key.replace('~', "~0").replace('/', "~1");
            operations.push(serde_json::json!({"op": "add", "path": format!("/metadata/labels/{key}"), "value": value}));
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
        .map_err(|e| RecordError::Metadata {
            name: name.clone(),
            source: kube::Error::SerdeError(e),
        })?;
    match api
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(patched) => Ok(Some(patched)),
        Err(source) if is_not_found(&source) => Ok(None),
        Err(source) => Err(RecordError::Metadata { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Sandbox, SandboxStatus};

    fn sandbox(version: &str, phase: Option<crate::api::SandboxPhase>) -> Sandbox {
        let spec = serde_json::from_value(serde_json::json!({
            "image": "ghcr.io/acme/devbox:1",
            "resources": {"cpu": "1", "memory": "1Gi", "storage": "1Gi"},
        }))
        .unwrap();
        let mut sandbox = Sandbox::new("box", spec);
        sandbox.metadata.uid = Some("uid-1".into());
        sandbox.metadata.resource_version = Some(version.into());
        sandbox.status = phase.map(|phase| SandboxStatus {
            phase: Some(phase),
            ..Default::default()
        });
        sandbox
    }

    #[test]
    fn a_write_is_used_until_the_watch_brings_a_newer_version_then_forgotten() {
        use crate::api::SandboxPhase::{Running, Starting};
        let written = WrittenObjects::default();
        let before = sandbox("1", Some(Starting));
        let after = sandbox("2", Some(Running));
        written.remember(&before, &after);
        // The cache still has the version the write replaced: ours is newer.
        assert_eq!(written.freshest(before.clone()), after);
        written.seen(&before);
        assert_eq!(written.len(), 1, "the replaced version says nothing new");
        // The watch brings our write back: nothing is held any more.
        written.seen(&after);
        assert!(written.is_empty());
        assert_eq!(written.freshest(before.clone()), before);
    }

    #[test]
    fn a_write_the_watch_brought_back_before_its_answer_goes_after_a_while() {
        use crate::api::SandboxPhase::{Running, Starting};
        let written = WrittenObjects::default();
        let start = Instant::now();
        // The watch brought version 2 first: `seen` had nothing to let go.
        written.seen(&sandbox("2", Some(Running)));
        written.remember_at(
            &sandbox("1", Some(Starting)),
            &sandbox("2", Some(Running)),
            start,
        );
        assert_eq!(written.len(), 1);
        // Another object's write, once the first is old enough, sweeps it.
        let mut other = sandbox("8", Some(Starting));
        other.metadata.uid = Some("uid-2".into());
        let mut other_written = sandbox("9", Some(Running));
        other_written.metadata.uid = Some("uid-2".into());
        written.remember_at(&other, &other_written, start + WRITTEN_KEPT);
        assert_eq!(written.len(), 1, "only the fresh write is kept");
        assert_eq!(written.freshest(other.clone()), other_written);
    }
}
