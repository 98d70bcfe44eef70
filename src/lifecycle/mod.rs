//! The lifecycle tables: the only place that decides whether a state change is
//! allowed. Pure: no I/O, no clock, no Kubernetes types.
//!
//! Every status write that changes an object's phase goes through
//! [`validate_transition`]. A refused transition is never written; the caller
//! turns the [`TransitionError`] into a condition and a Warning Event that name
//! both states.

use std::fmt;

use crate::api::{CommandPhase, InstancePhase, SandboxPhase, SnapshotPhase};

/// A kind whose phase moves through a transition table.
pub trait Lifecycle: Copy + Eq + fmt::Debug + fmt::Display + 'static {
    /// The kind's name, used in messages ("Instance", "Sandbox").
    const KIND: &'static str;
    /// Every phase, in table order.
    const ALL: &'static [Self];
    /// The phases this one may move to. Empty for a terminal phase.
    fn allowed_next(self) -> &'static [Self];

    fn is_terminal(self) -> bool {
        self.allowed_next().is_empty()
    }
}

/// A state change that the table forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} may not move from {from} to {to}")]
pub struct TransitionError {
    pub kind: &'static str,
    pub from: String,
    pub to: String,
}

/// Checks one state change against the kind's table.
///
/// Staying in the same phase is not a transition, so `from == to` is refused
/// too: a planner that has nothing to change must not ask.
pub fn validate_transition<S: Lifecycle>(from: S, to: S) -> Result<(), TransitionError> {
    if from.allowed_next().contains(&to) {
        Ok(())
    } else {
        Err(TransitionError {
            kind: S::KIND,
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

impl Lifecycle for InstancePhase {
    const KIND: &'static str = "Instance";
    const ALL: &'static [Self] = &[
        Self::Provisioning,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
        Self::Destroying,
        Self::Destroyed,
    ];

    fn allowed_next(self) -> &'static [Self] {
        use InstancePhase::*;
        match self {
            Provisioning => &[Starting, Failed, Destroying],
            Starting => &[Running, Failed],
            Running => &[Stopping, Failed, Destroying],
            Stopping => &[Stopped, Failed],
            Stopped => &[Starting, Destroying],
            Failed => &[Starting, Destroying],
            Destroying => &[Destroyed, Failed],
            Destroyed => &[],
        }
    }
}

impl Lifecycle for SandboxPhase {
    const KIND: &'static str = "Sandbox";
    const ALL: &'static [Self] = &[
        Self::Created,
        Self::Starting,
        Self::Running,
        Self::Stopped,
        Self::Error,
        Self::Destroyed,
    ];

    /// Why each row is what it is:
    /// - Created: the claim exists, no Pod yet (waiting for capacity, or asked
    ///   to stay stopped). It may start, be stopped before it ever ran, fail
    ///   (the claim cannot be made) or be deleted.
    /// - Starting: a Pod exists and is not ready yet. A stop or a delete may
    ///   arrive before it is ready.
    /// - Running: the Pod is ready.
    /// - Stopped: the Pod is gone, the claim (the data) is kept.
    /// - Error: the Pod failed or cannot start. A fixed spec or a restart
    ///   request starts it again; a stop keeps its data.
    /// - Destroyed: Pod and claim are gone; terminal.
    fn allowed_next(self) -> &'static [Self] {
        use SandboxPhase::*;
        match self {
            Created => &[Starting, Stopped, Error, Destroyed],
            Starting => &[Running, Stopped, Error, Destroyed],
            Running => &[Stopped, Error, Destroyed],
            Stopped => &[Starting, Destroyed],
            Error => &[Starting, Stopped, Destroyed],
            Destroyed => &[],
        }
    }
}

impl Lifecycle for CommandPhase {
    const KIND: &'static str = "SandboxCommand";
    const ALL: &'static [Self] = &[
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
    ];

    /// Why each row is what it is:
    /// - Pending: waiting for its Sandbox to run and for the commands before
    ///   it. It starts, or fails without running (its Sandbox was deleted or
    ///   stopped, or it could not be started).
    /// - Running: recorded as started, before it was started, so it runs at
    ///   most once. It exits (Succeeded or Failed), runs out of time
    ///   (TimedOut), or is interrupted (Failed, reason Interrupted).
    /// - Succeeded, Failed, TimedOut: it has ended; terminal.
    fn allowed_next(self) -> &'static [Self] {
        use CommandPhase::*;
        match self {
            Pending => &[Running, Failed],
            Running => &[Succeeded, Failed, TimedOut],
            Succeeded | Failed | TimedOut => &[],
        }
    }
}

impl Lifecycle for SnapshotPhase {
    const KIND: &'static str = "SandboxSnapshot";
    const ALL: &'static [Self] = &[Self::Pending, Self::Ready, Self::Failed];

    /// Why each row is what it is:
    /// - Pending: being taken. It becomes ready, or fails.
    /// - Ready: a Sandbox can start from it. It fails if its volume snapshot
    ///   goes or reports an error.
    /// - Failed: terminal; take another.
    fn allowed_next(self) -> &'static [Self] {
        use SnapshotPhase::*;
        match self {
            Pending => &[Ready, Failed],
            Ready => &[Failed],
            Failed => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Instance table as shared/DESIGN.md gives it, written out pair by pair
    /// so that a change to the code has to be a change to this list too.
    const INSTANCE_ALLOWED: &[(&str, &str)] = &[
        ("Provisioning", "Starting"),
        ("Provisioning", "Failed"),
        ("Provisioning", "Destroying"),
        ("Starting", "Running"),
        ("Starting", "Failed"),
        ("Running", "Stopping"),
        ("Running", "Failed"),
        ("Running", "Destroying"),
        ("Stopping", "Stopped"),
        ("Stopping", "Failed"),
        ("Stopped", "Starting"),
        ("Stopped", "Destroying"),
        ("Failed", "Starting"),
        ("Failed", "Destroying"),
        ("Destroying", "Destroyed"),
        ("Destroying", "Failed"),
    ];

    const SANDBOX_ALLOWED: &[(&str, &str)] = &[
        ("Created", "Starting"),
        ("Created", "Stopped"),
        ("Created", "Error"),
        ("Created", "Destroyed"),
        ("Starting", "Running"),
        ("Starting", "Stopped"),
        ("Starting", "Error"),
        ("Starting", "Destroyed"),
        ("Running", "Stopped"),
        ("Running", "Error"),
        ("Running", "Destroyed"),
        ("Stopped", "Starting"),
        ("Stopped", "Destroyed"),
        ("Error", "Starting"),
        ("Error", "Stopped"),
        ("Error", "Destroyed"),
    ];

    const COMMAND_ALLOWED: &[(&str, &str)] = &[
        ("Pending", "Running"),
        ("Pending", "Failed"),
        ("Running", "Succeeded"),
        ("Running", "Failed"),
        ("Running", "TimedOut"),
    ];

    const SNAPSHOT_ALLOWED: &[(&str, &str)] = &[
        ("Pending", "Ready"),
        ("Pending", "Failed"),
        ("Ready", "Failed"),
    ];

    /// Every ordered pair, allowed or not, checked against the expected list.
    fn check_every_pair<S: Lifecycle>(allowed: &[(&str, &str)]) {
        let mut checked = 0;
        for &from in S::ALL {
            for &to in S::ALL {
                let expected = allowed
                    .iter()
                    .any(|&(f, t)| f == from.to_string() && t == to.to_string());
                match validate_transition(from, to) {
                    Ok(()) => assert!(expected, "{from} -> {to} is allowed but should not be"),
                    Err(err) => {
                        assert!(!expected, "{from} -> {to} is refused but should be allowed");
                        assert_eq!(err.from, from.to_string());
                        assert_eq!(err.to, to.to_string());
                        let message = err.to_string();
                        assert!(
                            message.contains(&from.to_string())
                                && message.contains(&to.to_string()),
                            "the error must name both states: {message}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, S::ALL.len() * S::ALL.len());
    }

    #[test]
    fn instance_table_every_pair() {
        check_every_pair::<InstancePhase>(INSTANCE_ALLOWED);
    }

    #[test]
    fn sandbox_table_every_pair() {
        check_every_pair::<SandboxPhase>(SANDBOX_ALLOWED);
    }

    #[test]
    fn command_table_every_pair() {
        check_every_pair::<CommandPhase>(COMMAND_ALLOWED);
    }

    #[test]
    fn snapshot_table_every_pair() {
        check_every_pair::<SnapshotPhase>(SNAPSHOT_ALLOWED);
    }

    #[test]
    fn a_command_ends_once_and_a_failed_snapshot_stays_failed() {
        for phase in CommandPhase::ALL {
            assert_eq!(phase.is_terminal(), phase.is_finished(), "{phase}");
        }
        assert!(SnapshotPhase::Failed.is_terminal());
    }

    #[test]
    fn only_destroyed_is_terminal() {
        for s in InstancePhase::ALL {
            assert_eq!(s.is_terminal(), *s == InstancePhase::Destroyed, "{s}");
        }
        for s in SandboxPhase::ALL {
            assert_eq!(s.is_terminal(), *s == SandboxPhase::Destroyed, "{s}");
        }
    }

    #[test]
    fn error_names_kind_and_both_states() {
        let err = validate_transition(InstancePhase::Stopped, InstancePhase::Running).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Instance may not move from Stopped to Running"
        );
    }

    #[test]
    fn every_phase_is_reachable_from_the_first() {
        fn reachable<S: Lifecycle>() {
            let mut seen = vec![S::ALL[0]];
            let mut i = 0;
            while i < seen.len() {
                for next in seen[i].allowed_next() {
                    if !seen.contains(next) {
                        seen.push(*next);
                    }
                }
                i += 1;
            }
            assert_eq!(
                seen.len(),
                S::ALL.len(),
                "unreachable phases in the {} table",
                S::KIND
            );
        }
        reachable::<InstancePhase>();
        reachable::<SandboxPhase>();
        reachable::<CommandPhase>();
        reachable::<SnapshotPhase>();
    }
}
