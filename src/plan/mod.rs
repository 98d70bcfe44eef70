//! Planning: the pure step of a reconcile. A planner takes the object, what
//! was observed of the world and the time, and decides everything: the next
//! phase, the provider actions, the new status with its conditions, and the
//! lifecycle events. No I/O happens here, so every decision can be tested
//! without a cluster.

pub mod capacity;
pub mod command;
pub mod conditions;
pub mod delivery;
pub mod dispatch;
pub mod history;
pub mod instance;
pub mod sandbox;
pub mod snapshot;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{EventType, HistoryEntry};
use crate::lifecycle::TransitionError;
use conditions::{DesiredCondition, types};

/// The finalizer that holds a deleted object until its children are gone and
/// its final events are dispatched.
pub const FINALIZER: &str = "ctrlplane.dev/cleanup";

/// A Kubernetes Event the reconciler should publish about the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    /// A short CamelCase word, e.g. Started.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

/// What to do with the object's finalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizerAction {
    /// Add it before anything is created.
    Add,
    /// Leave it as it is.
    Keep,
    /// Remove it: cleanup is done. The controller still waits until every
    /// history entry is dispatched before it does.
    Release,
}

/// The finalizer decision of every lifecycle kind.
///
/// A finalizer makes a deletion wait for the operator, and costs two more
/// requests per object (put on, taken off). So an object takes one only for
/// what must happen before it goes (`needed`, see [`finalizer_needed`]);
/// otherwise its children, owned by it, go with it through the garbage
/// collector and a deletion asks nothing of the operator. A finalizer that
/// is on stays on until the object is deleted and `done` (its provider has
/// finished and the engine has dispatched its last events).
pub fn finalizer_action(
    deleting: bool,
    has_finalizer: bool,
    done: bool,
    needed: bool,
) -> FinalizerAction {
    match (deleting, has_finalizer) {
        (true, true) if !done => FinalizerAction::Keep,
        (true, _) => FinalizerAction::Release,
        (false, false) if needed => FinalizerAction::Add,
        (false, _) => FinalizerAction::Keep,
    }
}

/// Whether an object needs the finalizer: its provider must deprovision
/// before the object goes, or a Webhook in its namespace may want its last
/// events (which are recorded, and sent, while the finalizer holds it).
pub fn finalizer_needed(cleanup: crate::provider::Cleanup, webhooks_listen: bool) -> bool {
    cleanup == crate::provider::Cleanup::Deprovision || webhooks_listen
}

/// What a plan asks for when nothing is under way: the engine then waits
/// for news rather than look again at a time (see `lifecycle::next_look`).
pub const REQUEUE_SETTLED: Duration = Duration::from_secs(300);
/// How soon to look again while something is under way. Watches on the
/// children usually bring the next reconcile sooner.
pub const REQUEUE_PROGRESSING: Duration = Duration::from_secs(30);

/// How long a command or a snapshot may name a Sandbox that does not exist
/// before it fails: applied in one go, the command can reach the operator
/// before its Sandbox does.
pub const MISSING_SANDBOX_GRACE: Duration = Duration::from_secs(30);

/// When a Kubernetes object was created, in our own clock type.
pub fn created_at(meta: &ObjectMeta) -> Option<DateTime<Utc>> {
    crate::api::utc_of(meta.creation_timestamp.as_ref()?)
}

/// `at` moved by `by`, stopping at the ends of time: a deadline past what
/// a time can hold is as good as never (and one before it, as long ago).
/// Times and durations come from objects and observations, so adding them
/// must not overflow.
pub fn saturating_add(at: DateTime<Utc>, by: chrono::TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(by)
        .unwrap_or(if by < chrono::TimeDelta::zero() {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// `at` plus a std Duration, stopping at the end of time.
pub fn saturating_add_std(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    saturating_add(
        at,
        chrono::TimeDelta::from_std(by).unwrap_or(chrono::TimeDelta::MAX),
    )
}

/// How much longer an object created at `meta`'s time may wait for what
/// it names to appear, `grace` in all; `None` once the wait is over (or
/// when the creation time is unknown).
pub fn wait_left(meta: &ObjectMeta, grace: Duration, now: DateTime<Utc>) -> Option<Duration> {
    let deadline = saturating_add_std(created_at(meta)?, grace);
    (deadline - now)
        .to_std()
        .ok()
        .filter(|left| !left.is_zero())
}

/// The Kubernetes Event reason for a lifecycle event type.
pub fn event_reason(type_: EventType) -> &'static str {
    use EventType::*;
    match type_ {
        InstanceCreated | SandboxCreated => "Created",
        InstanceStarting | SandboxStarting => "Starting",
        InstanceStarted | SandboxStarted => "Started",
        InstanceStopping => "Stopping",
        InstanceStopped | SandboxStopped => "Stopped",
        InstanceRestarted => "Restarted",
        InstanceFailed | SandboxFailed => "Failed",
        InstanceScaled => "Scaled",
        InstanceSuspended => "Suspended",
        InstanceUnsuspended => "Unsuspended",
        InstanceDeleting => "Deleting",
        InstanceDeleted => "Deleted",
        DeployStarted => "DeployStarted",
        DeploySucceeded => "DeploySucceeded",
        DeployFailed => "DeployFailed",
        DeployRolledBack => "RolledBack",
        HealthPassed => "HealthCheckPassed",
        HealthFailed => "HealthCheckFailed",
        HealthDegraded => "HealthDegraded",
        HealthRecovered => "HealthRecovered",
        HealthHealthy => "Healthy",
        HealthUnhealthy => "Unhealthy",
        SandboxExpired => "Expired",
        SandboxDestroyed => "Destroyed",
        SandboxCommandStarted => "CommandStarted",
        SandboxCommandSucceeded => "CommandSucceeded",
        SandboxCommandFailed => "CommandFailed",
        SandboxSnapshotCreated => "SnapshotCreated",
        SandboxSnapshotReady => "SnapshotReady",
        SandboxSnapshotFailed => "SnapshotFailed",
        SandboxSnapshotDeleted => "SnapshotDeleted",
    }
}

/// Whether a lifecycle event is published as a Warning.
pub fn is_warning(type_: EventType) -> bool {
    use EventType::*;
    matches!(
        type_,
        InstanceFailed
            | DeployFailed
            | DeployRolledBack
            | HealthFailed
            | HealthDegraded
            | HealthUnhealthy
            | SandboxFailed
            | SandboxCommandFailed
            | SandboxSnapshotFailed
    )
}

/// Whether a lifecycle event is also published as a Kubernetes Event.
///
/// Every history entry reaches the webhooks and stays in `status.history`.
/// Kubernetes Events are for a person running `kubectl describe` or `get
/// events`: where the object arrived (running, stopped, deleted), what
/// changed on request (scaled, restarted, a release), and every warning.
/// The steps on the way (created, starting, stopping, deleting) are left to
/// the history: each Event costs a write to the API server, and those steps
/// are followed within moments by the arrival they lead to. So is
/// health.passed, which comes with instance.started and says the same.
pub fn deserves_event(type_: EventType) -> bool {
    use EventType::*;
    !matches!(
        type_,
        InstanceCreated
            | InstanceStarting
            | InstanceStopping
            | InstanceDeleting
            | HealthPassed
            | SandboxCreated
            | SandboxStarting
            | SandboxCommandStarted
            | SandboxSnapshotCreated
    )
}

/// The Kubernetes Event that announces a history entry ("from -> to: why"),
/// when it [deserves one](deserves_event).
pub fn announce(entry: &HistoryEntry) -> Option<PlannedEvent> {
    if !deserves_event(entry.type_) {
        return None;
    }
    let message = match (&entry.from, &entry.to) {
        (Some(from), Some(to)) => format!("{from} -> {to}: {}", entry.message),
        (None, Some(to)) => format!("-> {to}: {}", entry.message),
        _ => entry.message.to_string(),
    };
    Some(PlannedEvent {
        warning: is_warning(entry.type_),
        reason: event_reason(entry.type_).to_string(),
        message,
    })
}

/// What every lifecycle plan decides besides its provider calls: the
/// status to record, the Events, the finalizer, the labels the object
/// itself should carry, whether it deletes itself, and when to look again.
/// The lifecycle engine acts on this the same way for every kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<S> {
    pub status: S,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Duration,
    pub finalizer: FinalizerAction,
    /// Labels the object should carry and does not yet.
    pub labels: Option<BTreeMap<String, String>>,
    /// Delete the object itself (an expired sandbox).
    pub delete_object: bool,
    /// Write the status before acting, and act only if that write went
    /// through: for an act that must happen at most once.
    pub record_first: bool,
}

/// The Synced condition after a plan, and when the plan refused a phase
/// change, the Warning Event that says so, naming both phases.
pub fn synced(refused: Option<&TransitionError>) -> (DesiredCondition, Option<PlannedEvent>) {
    match refused {
        Some(refused) => {
            let message = format!("refused to change phase: {refused}");
            let warning = PlannedEvent {
                warning: true,
                reason: "TransitionRefused".into(),
                message: message.clone(),
            };
            (
                DesiredCondition::new(types::SYNCED, false, "TransitionRefused", message),
                Some(warning),
            )
        }
        None => (
            DesiredCondition::new(
                types::SYNCED,
                true,
                "Reconciled",
                "the last reconcile succeeded",
            ),
            None,
        ),
    }
}

/// Whether `new` differs from `old` only in what reports progress rather
/// than a decision: the named fields (counts, addresses, how far dispatch
/// has got), the messages of conditions whose status and reason stay the
/// same, and history entries trimmed away. A new phase, a new history
/// entry, a condition changing status or reason, or any other field is a
/// decision. Such changes can wait a little to be written together.
pub fn only_progress<S: serde::Serialize>(old: &S, new: &S, progress_fields: &[&str]) -> bool {
    fn essence(status: &serde_json::Value, progress_fields: &[&str]) -> serde_json::Value {
        let mut essence = status.clone();
        if let Some(fields) = essence.as_object_mut() {
            for field in progress_fields {
                fields.remove(*field);
            }
            if let Some(conditions) = fields.get_mut("conditions").and_then(|c| c.as_array_mut()) {
                for condition in conditions.iter_mut() {
                    if let Some(condition) = condition.as_object_mut() {
                        condition.remove("message");
                        condition.remove("lastTransitionTime");
                    }
                }
            }
            // Entries are only ever appended or trimmed from the front: the
            // newest sequence says whether anything was appended.
            let newest = fields
                .get("history")
                .and_then(|h| h.as_array())
                .and_then(|h| h.last())
                .and_then(|e| e.get("sequence"))
                .cloned();
            if let Some(newest) = newest {
                fields.insert("history".into(), newest);
            }
        }
        essence
    }
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return false;
    };
    old != new && essence(&old, progress_fields) == essence(&new, progress_fields)
}

/// The top-level status fields that differ between `old` and `new`, by
/// their serialized names: what a status write changes, for the debug log.
/// Pure.
pub fn changed_fields<S: serde::Serialize>(old: &S, new: &S) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut fields: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|field| old.get(*field) != new.get(*field))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionStatus, InstancePhase, InstanceStatus};
    use chrono::Utc;

    const PROGRESS: &[&str] = &["replicas", "readyReplicas", "dispatchedSeq"];

    #[test]
    fn the_finalizer_goes_on_only_when_needed_and_comes_off_only_when_done() {
        use FinalizerAction::*;
        // (deleting, has it, done, needed) -> action
        let table = [
            ((false, false, false, true), Add),
            ((false, false, false, false), Keep),
            ((false, true, false, false), Keep),
            ((false, true, false, true), Keep),
            ((true, true, false, true), Keep),
            ((true, true, true, true), Release),
            ((true, false, false, true), Release),
            ((true, false, false, false), Release),
        ];
        for ((deleting, has, done, needed), action) in table {
            assert_eq!(
                finalizer_action(deleting, has, done, needed),
                action,
                "deleting={deleting} has={has} done={done} needed={needed}"
            );
        }
        use crate::provider::Cleanup;
        assert!(finalizer_needed(Cleanup::Deprovision, false));
        assert!(finalizer_needed(Cleanup::GarbageCollected, true));
        assert!(!finalizer_needed(Cleanup::GarbageCollected, false));
    }

    fn starting() -> InstanceStatus {
        let mut status = InstanceStatus {
            phase: Some(InstancePhase::Starting),
            ..InstanceStatus::default()
        };
        conditions::set_condition(
            &mut status.conditions,
            DesiredCondition::new(types::READY, false, "Starting", "0 of 2 replicas ready"),
            Some(1),
            Utc::now(),
        );
        history::append(
            &mut status.history,
            0,
            history::NewEvent::new(EventType::InstanceStarting, "Provisioned", ""),
            Utc::now(),
        );
        status
    }

    #[test]
    fn changed_fields_name_what_a_write_changes() {
        let old = starting();
        let mut new = old.clone();
        assert!(changed_fields(&old, &new).is_empty());
        new.ready_replicas = 1;
        new.phase = Some(InstancePhase::Running);
        assert_eq!(changed_fields(&old, &new), ["phase", "readyReplicas"]);
    }

    #[test]
    fn a_grace_past_the_end_of_time_still_waits() {
        // An object created in late 9999 with a grace of 200 million years
        // panicked: `DateTime + TimeDelta` overflowed.
        let meta: ObjectMeta = serde_json::from_value(
            serde_json::json!({"creationTimestamp": "9999-12-30T00:00:00Z"}),
        )
        .unwrap();
        let now = created_at(&meta).unwrap();
        let eons = Duration::from_secs(200_000_000 * 365 * 86400);
        assert!(wait_left(&meta, eons, now).is_some());
        assert!(wait_left(&meta, Duration::MAX, now).is_some());
        assert_eq!(wait_left(&meta, Duration::ZERO, now), None);
        assert_eq!(
            saturating_add(DateTime::<Utc>::MAX_UTC, chrono::TimeDelta::seconds(1)),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            saturating_add(DateTime::<Utc>::MIN_UTC, chrono::TimeDelta::seconds(-1)),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn counts_and_messages_are_progress_and_phases_and_reasons_are_not() {
        let old = starting();
        assert!(
            !only_progress(&old, &old, PROGRESS),
            "no change is no progress"
        );

        let mut counted = old.clone();
        counted.replicas = 2;
        counted.ready_replicas = 1;
        counted.conditions[0].message = "1 of 2 replicas ready".into();
        assert!(only_progress(&old, &counted, PROGRESS));

        let mut running = counted.clone();
        running.phase = Some(InstancePhase::Running);
        assert!(!only_progress(&old, &running, PROGRESS));

        let mut reason = counted.clone();
        reason.conditions[0].reason = "ReplicasNotReady".into();
        assert!(!only_progress(&old, &reason, PROGRESS));

        let mut ready = counted.clone();
        ready.conditions[0].status = ConditionStatus::True;
        assert!(!only_progress(&old, &ready, PROGRESS));

        let mut event = counted.clone();
        history::append(
            &mut event.history,
            0,
            history::NewEvent::new(EventType::InstanceScaled, "Scaled", ""),
            Utc::now(),
        );
        assert!(!only_progress(&old, &event, PROGRESS));

        let mut dispatched = old.clone();
        dispatched.dispatched_seq = 1;
        assert!(only_progress(&old, &dispatched, PROGRESS));
    }
}
