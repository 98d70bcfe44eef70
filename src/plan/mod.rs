//! Planning: the pure step of a reconcile. A planner takes the object, what
//! was observed of the world and the time, and decides everything: the next
//! phase, the provider actions, the new status with its conditions, and the
//! lifecycle events. No I/O happens here, so every decision can be tested
//! without a cluster.

pub mod capacity;
pub mod conditions;
pub mod dispatch;
pub mod history;
pub mod instance;
pub mod sandbox;
pub mod webhook;

use std::time::Duration;

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

/// How soon to look again when nothing else happens.
pub const REQUEUE_SETTLED: Duration = Duration::from_secs(300);
/// How soon to look again while something is under way. Watches on the
/// children usually bring the next reconcile sooner.
pub const REQUEUE_PROGRESSING: Duration = Duration::from_secs(30);

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
        HealthHealthy => "Healthy",
        HealthUnhealthy => "Unhealthy",
        SandboxExpired => "Expired",
        SandboxDestroyed => "Destroyed",
    }
}

/// Whether a lifecycle event is published as a Warning.
pub fn is_warning(type_: EventType) -> bool {
    use EventType::*;
    matches!(
        type_,
        InstanceFailed | DeployFailed | DeployRolledBack | HealthUnhealthy | SandboxFailed
    )
}

/// The Kubernetes Event that announces a history entry: "from -> to: why".
pub fn announce(entry: &HistoryEntry) -> PlannedEvent {
    let message = match (&entry.from, &entry.to) {
        (Some(from), Some(to)) => format!("{from} -> {to}: {}", entry.message),
        (None, Some(to)) => format!("-> {to}: {}", entry.message),
        _ => entry.message.clone(),
    };
    PlannedEvent {
        warning: is_warning(entry.type_),
        reason: event_reason(entry.type_).to_string(),
        message,
    }
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
