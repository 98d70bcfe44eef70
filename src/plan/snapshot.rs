//! The SandboxSnapshot planner: `plan(&snapshot, &observation, now)`. Pure.
//!
//! A snapshot is taken of its Sandbox's data (for the `pod` provider, a
//! VolumeSnapshot of the Sandbox's claim), and is Ready once the snapshot
//! controller says it can be used. Its finalizer holds it until the volume
//! snapshot behind it is gone, so deleting it deletes that first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::conditions::{self, DesiredCondition, types};
use super::history::{self, NewEvent};
use super::{Decision, FINALIZER, FinalizerAction, announce, synced};
use crate::api::{EventType, SandboxSnapshot, SandboxSnapshotStatus, SnapshotPhase};
use crate::lifecycle::{TransitionError, validate_transition};
use crate::provider::SnapshotObserved;

/// How often a snapshot being taken is looked at, besides the wake-ups
/// its volume snapshot's changes bring.
pub const REQUEUE_PENDING: Duration = Duration::from_secs(10);

/// The Sandbox a snapshot copies, as far as the snapshot cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSource {
    /// Its data's claim, once it has one.
    pub claim: Option<String>,
    pub deleting: bool,
}

/// What the reconciler observed before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotObservation {
    /// Its Sandbox; `None` when it does not exist.
    pub sandbox: Option<SnapshotSource>,
    /// The volume snapshot behind it; `None` when there is none.
    pub observed: Option<SnapshotObserved>,
}

/// What a snapshot's plan asks of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Take the volume snapshot (idempotent).
    Take,
    /// Delete it.
    Delete,
}

/// Decides what should happen to a snapshot. Pure.
pub fn plan(
    snapshot: &SandboxSnapshot,
    observation: &SnapshotObservation,
    now: DateTime<Utc>,
) -> (Decision<SandboxSnapshotStatus>, Option<SnapshotAction>) {
    let generation = snapshot.metadata.generation;
    let deleting = snapshot.metadata.deletion_timestamp.is_some();
    let has_finalizer = snapshot.finalizers().iter().any(|f| f == FINALIZER);
    let mut status = snapshot.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut refused: Option<TransitionError> = None;
    let mut action = None;
    let mut record = |status: &mut SandboxSnapshotStatus, event: NewEvent| {
        let entry = history::append(&mut status.history, status.dispatched_seq, event, now);
        events.extend(announce(&entry));
    };
    let mut move_to = |status: &mut SandboxSnapshotStatus,
                       to: SnapshotPhase,
                       type_: EventType,
                       reason: &str,
                       message: String| {
        let from = status.phase;
        if let Some(from) = from
            && let Err(error) = validate_transition(from, to)
        {
            refused = Some(error);
            return;
        }
        status.phase = Some(to);
        record(
            status,
            NewEvent::new(type_, reason, message).transition(from, to),
        );
    };
    let name = snapshot.name_any();
    let sandbox_name = snapshot.spec.sandbox_ref.name.clone();
    if let Some(observed) = &observation.observed {
        status.volume_snapshot_name = Some(observed.name.clone());
        status.ready_to_use = observed.ready_to_use;
        status.restore_size = observed.restore_size.clone().map(Quantity);
        status.creation_time = observed.creation_time;
        status.error = observed.error.clone();
        if observed.source_claim.is_some() {
            status.source_claim = observed.source_claim.clone();
        }
    }
    let mut waiting: Option<String> = None;
    let finalizer = if deleting {
        if observation.observed.is_some() {
            action = Some(SnapshotAction::Delete);
            FinalizerAction::Keep
        } else {
            if has_finalizer {
                record(
                    &mut status,
                    NewEvent::new(
                        EventType::SandboxSnapshotDeleted,
                        "Deleted",
                        format!("snapshot {name} and its volume snapshot are gone"),
                    ),
                );
            }
            FinalizerAction::Release
        }
    } else {
        if status.phase.is_none() {
            move_to(
                &mut status,
                SnapshotPhase::Pending,
                EventType::SandboxSnapshotCreated,
                "Created",
                format!("taking a snapshot of sandbox {sandbox_name}"),
            );
        }
        match (status.phase, &observation.observed) {
            (Some(SnapshotPhase::Pending), None) => match &observation.sandbox {
                None if super::wait_left(&snapshot.metadata, super::MISSING_SANDBOX_GRACE, now)
                    .is_some() =>
                {
                    waiting = Some(format!("waiting for sandbox {sandbox_name} to exist"));
                }
                None => move_to(
                    &mut status,
                    SnapshotPhase::Failed,
                    EventType::SandboxSnapshotFailed,
                    "SandboxNotFound",
                    format!("sandbox {sandbox_name} does not exist"),
                ),
                Some(source) if source.claim.is_none() => {
                    waiting = Some(format!("sandbox {sandbox_name} has no data volume yet"));
                }
                Some(_) => action = Some(SnapshotAction::Take),
            },
            (Some(SnapshotPhase::Pending), Some(observed)) => {
                if let Some(error) = &observed.error {
                    move_to(
                        &mut status,
                        SnapshotPhase::Failed,
                        EventType::SandboxSnapshotFailed,
                        "SnapshotFailed",
                        error.clone(),
                    );
                } else if observed.ready_to_use {
                    move_to(
                        &mut status,
                        SnapshotPhase::Ready,
                        EventType::SandboxSnapshotReady,
                        "ReadyToUse",
                        format!("snapshot of sandbox {sandbox_name} is ready to use"),
                    );
                } else {
                    waiting = Some("the volume snapshot is being taken".into());
                }
            }
            (Some(SnapshotPhase::Ready), None) => move_to(
                &mut status,
                SnapshotPhase::Failed,
                EventType::SandboxSnapshotFailed,
                "VolumeSnapshotGone",
                "its volume snapshot was deleted".into(),
            ),
            (Some(SnapshotPhase::Ready), Some(observed)) => {
                if let Some(error) = &observed.error {
                    move_to(
                        &mut status,
                        SnapshotPhase::Failed,
                        EventType::SandboxSnapshotFailed,
                        "SnapshotFailed",
                        error.clone(),
                    );
                }
            }
            _ => {}
        }
        if has_finalizer {
            FinalizerAction::Keep
        } else {
            FinalizerAction::Add
        }
    };
    let failed_message = status
        .history
        .iter()
        .rev()
        .find(|e| e.type_ == EventType::SandboxSnapshotFailed)
        .map(|e| (e.reason.to_string(), e.message.to_string()));
    let ready = match status.phase {
        Some(SnapshotPhase::Ready) => DesiredCondition::new(
            types::READY,
            true,
            "ReadyToUse",
            "a Sandbox can start from it",
        ),
        Some(SnapshotPhase::Failed) => {
            let (reason, message) = failed_message.clone().unwrap_or_default();
            DesiredCondition::new(types::READY, false, reason, message)
        }
        _ => DesiredCondition::new(
            types::READY,
            false,
            "Pending",
            waiting.unwrap_or_else(|| "the volume snapshot is being taken".into()),
        ),
    };
    conditions::set_condition(&mut status.conditions, ready, generation, now);
    let stuck =
        (status.phase == Some(SnapshotPhase::Failed)).then(|| failed_message.unwrap_or_default());
    conditions::set_condition(
        &mut status.conditions,
        conditions::stalled(stuck),
        generation,
        now,
    );
    let (synced, warning) = synced(refused.as_ref());
    events.extend(warning);
    conditions::set_condition(&mut status.conditions, synced, generation, now);
    history::trim(&mut status.history, status.dispatched_seq);
    status.observed_generation = generation;
    let requeue_after = if status.phase == Some(SnapshotPhase::Pending) || deleting {
        REQUEUE_PENDING
    } else {
        super::REQUEUE_SETTLED
    };
    let decision = Decision {
        status,
        events,
        requeue_after,
        finalizer,
        labels: None,
        delete_object: false,
        record_first: false,
    };
    (decision, action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SandboxReference, SandboxSnapshotSpec};
    use crate::plan::MISSING_SANDBOX_GRACE;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
    }

    fn snapshot() -> SandboxSnapshot {
        let mut snapshot = SandboxSnapshot::new(
            "snap",
            SandboxSnapshotSpec {
                sandbox_ref: SandboxReference { name: "box".into() },
                volume_snapshot_class_name: None,
            },
        );
        snapshot.metadata.generation = Some(1);
        snapshot.metadata.finalizers = Some(vec![FINALIZER.into()]);
        snapshot
    }

    fn source() -> Option<SnapshotSource> {
        Some(SnapshotSource {
            claim: Some("box-data".into()),
            deleting: false,
        })
    }

    fn volume(ready: bool, error: Option<&str>) -> Option<SnapshotObserved> {
        Some(SnapshotObserved {
            name: "snap".into(),
            ready_to_use: ready,
            restore_size: ready.then(|| "1Gi".into()),
            creation_time: ready.then(t0),
            error: error.map(str::to_string),
            source_claim: Some("box-data".into()),
            terminating: false,
        })
    }

    fn step(
        snapshot: &mut SandboxSnapshot,
        observed: Option<SnapshotObserved>,
    ) -> Option<SnapshotAction> {
        let (decision, action) = plan(
            snapshot,
            &SnapshotObservation {
                sandbox: source(),
                observed,
            },
            t0(),
        );
        snapshot.status = Some(decision.status);
        action
    }

    fn types_of(snapshot: &SandboxSnapshot) -> Vec<EventType> {
        snapshot
            .status
            .as_ref()
            .unwrap()
            .history
            .iter()
            .map(|e| e.type_)
            .collect()
    }

    #[test]
    fn a_snapshot_is_taken_then_ready_with_its_size() {
        let mut snapshot = snapshot();
        assert_eq!(step(&mut snapshot, None), Some(SnapshotAction::Take));
        assert_eq!(
            snapshot.status.as_ref().unwrap().phase,
            Some(SnapshotPhase::Pending)
        );
        assert_eq!(step(&mut snapshot, volume(false, None)), None);
        step(&mut snapshot, volume(true, None));
        let status = snapshot.status.clone().unwrap();
        assert_eq!(status.phase, Some(SnapshotPhase::Ready));
        assert!(status.ready_to_use);
        assert_eq!(status.restore_size, Some(Quantity("1Gi".into())));
        assert_eq!(status.creation_time, Some(t0()));
        assert_eq!(
            types_of(&snapshot),
            [
                EventType::SandboxSnapshotCreated,
                EventType::SandboxSnapshotReady
            ]
        );
    }

    #[test]
    fn a_missing_sandbox_is_waited_for_briefly_then_fails_the_snapshot() {
        let mut young = snapshot();
        young.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(t0().timestamp()).unwrap(),
            ));
        let missing = SnapshotObservation {
            sandbox: None,
            observed: None,
        };
        let (decision, action) = plan(&young, &missing, t0() + chrono::Duration::seconds(5));
        assert_eq!(action, None);
        assert_eq!(decision.status.phase, Some(SnapshotPhase::Pending));
        assert!(decision.requeue_after <= MISSING_SANDBOX_GRACE);
        let (decision, _) = plan(&young, &missing, t0() + chrono::Duration::seconds(31));
        assert_eq!(decision.status.phase, Some(SnapshotPhase::Failed));
        let ready = conditions::find(&decision.status.conditions, types::READY).unwrap();
        assert_eq!(ready.reason, "SandboxNotFound");
    }

    #[test]
    fn an_error_of_the_snapshot_controller_fails_it_and_says_why() {
        let mut snapshot = snapshot();
        step(&mut snapshot, None);
        step(&mut snapshot, volume(false, Some("no space left")));
        let status = snapshot.status.clone().unwrap();
        assert_eq!(status.phase, Some(SnapshotPhase::Failed));
        let stalled = conditions::find(&status.conditions, types::STALLED).unwrap();
        assert_eq!(stalled.message, "no space left");
        assert_eq!(status.error.as_deref(), Some("no space left"));
    }

    #[test]
    fn deleting_it_deletes_its_volume_snapshot_first() {
        let mut snapshot = snapshot();
        step(&mut snapshot, None);
        step(&mut snapshot, volume(true, None));
        snapshot.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let (decision, action) = plan(
            &snapshot,
            &SnapshotObservation {
                sandbox: source(),
                observed: volume(true, None),
            },
            t0(),
        );
        assert_eq!(action, Some(SnapshotAction::Delete));
        assert_eq!(decision.finalizer, FinalizerAction::Keep);
        let (decision, action) = plan(
            &snapshot,
            &SnapshotObservation {
                sandbox: source(),
                observed: None,
            },
            t0(),
        );
        assert_eq!(action, None);
        assert_eq!(decision.finalizer, FinalizerAction::Release);
        assert_eq!(
            decision.status.history.last().map(|e| e.type_),
            Some(EventType::SandboxSnapshotDeleted)
        );
    }

    proptest! {
        /// Whatever is observed: no plan holds a move the table forbids, and
        /// planning again on its own result changes nothing.
        #[test]
        fn snapshot_plans_keep_to_the_table_and_settle(
            phase in proptest::option::of(proptest::sample::select(<SnapshotPhase as crate::lifecycle::Lifecycle>::ALL.to_vec())),
            observed in proptest::option::of((any::<bool>(), any::<bool>())),
            sandbox in proptest::option::of(any::<bool>()),
        ) {
            let mut snapshot = snapshot();
            snapshot.status = phase.map(|phase| SandboxSnapshotStatus { phase: Some(phase), ..Default::default() });
            let observation = SnapshotObservation {
                sandbox: sandbox.map(|claim| SnapshotSource { claim: claim.then(|| "box-data".into()), deleting: false }),
                observed: observed.and_then(|(ready, error)| volume(ready, error.then_some("broken"))),
            };
            let (first, _) = plan(&snapshot, &observation, t0());
            for pair in first.status.history.windows(1) {
                if let (Some(from), Some(to)) = (&pair[0].from, &pair[0].to) {
                    prop_assert_ne!(from, to);
                }
            }
            if let (Some(from), Some(to)) = (phase, first.status.phase)
                && from != to
            {
                prop_assert!(validate_transition(from, to).is_ok(), "{from} -> {to}");
            }
            snapshot.status = Some(first.status.clone());
            let (second, _) = plan(&snapshot, &observation, t0());
            prop_assert_eq!(second.status, first.status);
        }
    }
}
