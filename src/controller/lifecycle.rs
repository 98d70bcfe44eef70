//! The lifecycle engine: one reconcile for every kind with a lifecycle.
//!
//! A kind brings three things ([`LifecycleKind`]): how to observe its world
//! (from the providers' caches), its pure planner, and how to act on its
//! provider. The engine does everything else, once, the same way for all:
//!
//! 1. take the freshest copy of the object (our own last write, when the
//!    cache has not caught up with it: see [`super::record::WrittenObjects`]);
//! 2. observe, then plan (pure);
//! 3. one metadata patch when the plan asks for one (the finalizer goes on
//!    before anything is created; labels the object should carry);
//! 4. act through the provider; a failure becomes `Synced=False` with the
//!    error, a Warning Event, and a retry with backoff;
//! 5. record: one status write when the plan decided something, carrying
//!    the resourceVersion it planned from (a conflict means observe again);
//!    a change of progress alone (counts, addresses, how far dispatch has
//!    got) waits up to [`PROGRESS_FOLD`](super::record::PROGRESS_FOLD) to fold into the next one. Then
//!    the Events the plan asked for and the provider's notes;
//! 6. hand the recorded history entries to the webhook [`Dispatcher`], which
//!    sends them without holding the reconcile;
//! 7. for a deleted object: once its last events are dispatched, release the
//!    finalizer. Its children are owned by it and go with it (the garbage
//!    collector), so nothing else waits, unless its provider must
//!    deprovision first.
//!
//! When two kinds seem to need different engines, the difference belongs in
//! the kind's planner.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use kube::api::DeleteParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::controller::Config as ControllerRuntimeConfig;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{debug, info};

use super::Context;
use super::dispatch::Dispatcher;
use super::harness::{instrumented_reconcile, log_loop_result, retry_after_failure};
use super::record::{
    HasHistory, LifecycleObject, MetadataChange, RecordError, patch_metadata, publish, write_status,
};
use crate::plan::conditions::{DesiredCondition, set_condition, types};
use crate::plan::{
    Decision, FinalizerAction, PlannedEvent, REQUEUE_SETTLED, changed_fields, only_progress,
};
use crate::provider::{ActionNote, ProviderError};
use crate::runtime::kubeapi::delete_if_present;

/// What a kind with a lifecycle brings to the engine.
#[async_trait]
pub trait LifecycleKind: LifecycleObject {
    /// What was observed before planning.
    type Observation: Send + Sync;
    /// The provider calls a plan asks for.
    type Acts: Send + Sync;

    /// Observes the object's world, from the providers' caches.
    async fn observe(&self, context: &Context) -> Result<Self::Observation, ProviderError>;

    /// Plans (pure): what the engine records, and what the kind acts on.
    fn plan(
        &self,
        observation: &Self::Observation,
        now: DateTime<Utc>,
    ) -> (Decision<Self::Status>, Self::Acts);

    /// Makes the provider calls; what happened that is worth an Event comes
    /// back as notes.
    async fn act(
        &self,
        context: &Context,
        acts: &Self::Acts,
    ) -> Result<Vec<ActionNote>, ProviderError>;

    /// The object was deleted without a finalizer (see [`farewell`]): what
    /// a provider keeps in memory about it can go. Its children go through
    /// the garbage collector.
    async fn gone(&self, _context: &Context) {}
}

/// Errors of one lifecycle reconcile.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl EngineError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Record(e) => e.metric_label(),
            Self::Provider(e) => e.reason(),
        }
    }
}

/// How soon a reconcile that lost a race (a status write conflicted) looks
/// again: the watch brings the newer object within moments.
const AFTER_CONFLICT: Duration = Duration::from_millis(200);
/// How soon a deleted object whose last events are on their way looks
/// again if the dispatcher does not wake it first.
const RELEASE_RECHECK: Duration = Duration::from_secs(5);

/// The reconcile of every lifecycle kind.
pub async fn reconcile<K: LifecycleKind>(
    object: Arc<K>,
    context: Arc<Context>,
) -> Result<Action, EngineError> {
    let work = run(object.clone(), &context);
    instrumented_reconcile(K::KIND, object.as_ref(), &context, work).await
}

/// Runs the controller of one lifecycle kind in one scope until shutdown:
/// each change its watch brings, and each object `woken` names (a child
/// changed, a webhook send finished, another object's news), is reconciled.
pub async fn run_controller<K: LifecycleKind>(
    objects: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    store: Store<K>,
    woken: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    concurrency: u16,
    context: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::for_stream(objects, store)
        .reconcile_on(woken)
        .with_config(ControllerRuntimeConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, context)
        .for_each(log_loop_result)
        .await;
}

/// What every lifecycle kind does when a reconcile fails.
pub fn error_policy<K: LifecycleKind>(
    object: Arc<K>,
    error: &EngineError,
    context: Arc<Context>,
) -> Action {
    retry_after_failure(
        K::KIND,
        object.as_ref(),
        error.metric_label(),
        error,
        &context,
    )
}

async fn run<K: LifecycleKind>(object: Arc<K>, context: &Context) -> Result<Action, EngineError> {
    let object = context.written.freshest(object.as_ref().clone());
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(context.client.clone(), &namespace);

    // observe, plan
    let observation = object.observe(context).await?;
    let (mut decision, acts) = object.plan(&observation, Utc::now());

    // The finalizer goes on before anything is created, so nothing can be
    // left behind by a delete that races the first reconcile.
    let change = MetadataChange {
        add_finalizer: decision.finalizer == FinalizerAction::Add,
        remove_finalizer: false,
        labels: decision.labels.clone().unwrap_or_default(),
    };
    let object = if change.is_empty() {
        object
    } else {
        match patch_metadata(&api, &object, &change).await? {
            Some(patched) => patched,
            None => return Ok(Action::await_change()),
        }
    };

    // An act that must happen at most once (a command's start) is
    // recorded first, and happens only if that write went through: a
    // reconcile that lost the race does not act.
    let object = if decision.record_first {
        let Some(written) = record(&api, &object, &mut decision, context).await? else {
            return Ok(Action::requeue(AFTER_CONFLICT));
        };
        decision.events.clear();
        written
    } else {
        object
    };

    // act
    match object.act(context, &acts).await {
        Ok(notes) => decision
            .events
            .extend(notes.into_iter().map(|note| PlannedEvent {
                warning: note.warning,
                reason: note.reason,
                message: note.message,
            })),
        Err(ProviderError::NamespaceTerminating { .. }) => {
            // Not a fault of the object, and Events cannot be created in a
            // terminating namespace: wait quietly for its deletion.
            debug!("namespace is terminating; waiting for the object's deletion");
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Err(error) => {
            // The status still records what happened, with the error in
            // Synced; the error then retries the reconcile with backoff.
            set_condition(
                decision.status.conditions_mut(),
                DesiredCondition::new(types::SYNCED, false, error.reason(), error.to_string()),
                object.meta().generation,
                Utc::now(),
            );
            decision.events.push(PlannedEvent {
                warning: true,
                reason: error.reason().to_string(),
                message: error.to_string(),
            });
            record(&api, &object, &mut decision, context).await?;
            return Err(error.into());
        }
    }

    if object.meta().deletion_timestamp.is_some() && decision.finalizer == FinalizerAction::Release
    {
        return release(&api, &object, &decision, context).await;
    }

    let Some(written) = record(&api, &object, &mut decision, context).await? else {
        return Ok(Action::requeue(AFTER_CONFLICT));
    };
    if decision.delete_object {
        info!("deleting the object, as its plan decided");
        delete_if_present(&api, &written.name_any(), &DeleteParams::default())
            .await
            .map_err(|source| RecordError::Delete {
                name: written.name_any(),
                source,
            })?;
        return Ok(Action::await_change());
    }
    // One line per reconcile at debug level, inside the reconcile span.
    debug!(
        requeue_after_secs = decision.requeue_after.as_secs(),
        "reconciled"
    );
    Ok(next_look(decision.requeue_after))
}

/// When to look at an object again if nothing wakes it first. A settled
/// object (nothing under way asked for an earlier look) waits for news: its
/// own watch and its children's bring every change that matters, and what
/// depends on time (a deadline, an expiry, a retry, progress waiting to be
/// written) asks for its own, earlier look. A timed look at every settled
/// object would cost a reconcile each, and at 10,000 objects ~5 MB of
/// scheduled wake-ups held for it.
fn next_look(requeue_after: Duration) -> Action {
    if requeue_after >= REQUEUE_SETTLED {
        Action::await_change()
    } else {
        Action::requeue(requeue_after)
    }
}

/// The record step: the status write (when something changed), the Events,
/// and the hand-over of recorded history entries to the dispatcher. `None`
/// when the write conflicted.
async fn record<K: LifecycleKind>(
    api: &Api<K>,
    object: &K,
    decision: &mut Decision<K::Status>,
    context: &Context,
) -> Result<Option<K>, RecordError> {
    let old = object.status().cloned().unwrap_or_default();
    let subject = Dispatcher::subject(object);
    let namespace = object.namespace().unwrap_or_default();
    // Entries already dispatched, and entries no webhook takes, are marked
    // so in this write.
    context
        .dispatcher
        .settle(&subject, &namespace, &mut decision.status);
    let uid = object.uid().unwrap_or_default();
    // A decision is written at once; progress alone (counts, addresses,
    // dispatch) waits a little, to fold into the next write.
    let write = if decision.status == old {
        false
    } else if only_progress(&old, &decision.status, K::PROGRESS_FIELDS) {
        match context.deferrals.wait_left(&uid) {
            Some(left) => {
                decision.requeue_after = decision.requeue_after.min(left);
                false
            }
            None => true,
        }
    } else {
        true
    };
    if write && tracing::enabled!(tracing::Level::DEBUG) {
        debug!(
            changed = ?changed_fields(&old, &decision.status),
            "writing status"
        );
    }
    let written = if write {
        match write_status(api, object, &decision.status, context).await? {
            Some(written) => {
                context.deferrals.written(&uid);
                written
            }
            None => return Ok(None),
        }
    } else {
        object.clone()
    };
    publish(context, object, &decision.events).await;
    // Only entries that are durably recorded are sent.
    if let Some(status) = written.status() {
        context.dispatcher.submit(&subject, &namespace, status);
    }
    Ok(Some(written))
}

/// A deleted object whose provider is done: once its last history entries
/// are dispatched (sent, or handed to a durable delivery record), its
/// Events go out and the finalizer is released. Nothing is written to its
/// status, which is about to go with it; the entries are the plan's own,
/// the same on every try, so a crash in between sends them again with the
/// same ids rather than losing them.
async fn release<K: LifecycleKind>(
    api: &Api<K>,
    object: &K,
    decision: &Decision<K::Status>,
    context: &Context,
) -> Result<Action, EngineError> {
    let subject = Dispatcher::subject(object);
    let namespace = object.namespace().unwrap_or_default();
    let mut status = decision.status.clone();
    context.dispatcher.settle(&subject, &namespace, &mut status);
    context.dispatcher.submit(&subject, &namespace, &status);
    let last = status.history().last().map_or(0, |e| e.sequence);
    if status.dispatched_seq() < last {
        debug!(
            dispatched = status.dispatched_seq(),
            last, "waiting for the last events to be dispatched"
        );
        return Ok(Action::requeue(RELEASE_RECHECK));
    }
    publish(context, object, &decision.events).await;
    let change = MetadataChange {
        remove_finalizer: true,
        ..MetadataChange::default()
    };
    patch_metadata(api, object, &change).await?;
    let uid = object.uid().unwrap_or_default();
    context.written.forget(&uid);
    context.dispatcher.forget(&uid);
    info!("finalizer released; the object is gone");
    Ok(Action::await_change())
}

/// The watch reported `object` deleted. One deleted through the finalizer
/// was announced by [`release`]. One deleted without it (none was needed:
/// [`crate::plan::finalizer_action`]) was gone before the operator heard of
/// it; its children, owned by it, go with it through the garbage collector.
/// Its end is still announced, with an Event (one request, which nothing
/// waits for), and what the operator kept about it is let go.
pub async fn farewell<K: LifecycleKind>(object: &K, context: &Context) {
    let uid = object.uid().unwrap_or_default();
    context.written.forget(&uid);
    context.dispatcher.forget(&uid);
    context.deferrals.written(&uid);
    // A deletion that waited for a finalizer marked the object first.
    if object.meta().deletion_timestamp.is_some() {
        return;
    }
    object.gone(context).await;
    let message = format!(
        "the {} was deleted; what it owned goes with it (the garbage collector)",
        K::KIND
    );
    let reference = object.object_ref(&());
    if let Err(error) = context
        .events
        .publish(&reference, false, K::GONE_REASON, &message)
        .await
    {
        // Best effort: when a whole namespace goes, its objects go with it
        // and no Event can be created there any more.
        debug!(
            error = %crate::runtime::kubeapi::describe_kube_error(&error),
            "the Event saying the object is gone was not published"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_object_waits_for_news_and_one_under_way_is_looked_at_again() {
        assert_eq!(next_look(REQUEUE_SETTLED), Action::await_change());
        let under_way = Duration::from_secs(30);
        assert_eq!(next_look(under_way), Action::requeue(under_way));
    }
}
