//! Conditions as the Kubernetes API conventions describe them: a list keyed by
//! type, where lastTransitionTime moves only when the status does.

use chrono::{DateTime, Utc};

use crate::api::{Condition, ConditionStatus};

/// The condition types the operator writes.
pub mod types {
    /// Whether the object does what its spec asks, right now.
    pub const READY: &str = "Ready";
    /// Whether the last reconcile went through without an error.
    pub const SYNCED: &str = "Synced";
    /// Whether the Instance is suspended.
    pub const SUSPENDED: &str = "Suspended";
    /// Whether a rollout, scale, start or stop is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Whether a Sandbox has a host with room for it.
    pub const SCHEDULED: &str = "Scheduled";
    /// Whether a Sandbox has reached its expiry.
    pub const EXPIRED: &str = "Expired";
    /// Whether the object is stuck until someone changes something (a
    /// failed rollout, a provider that does not exist, an endpoint that is
    /// gone). The "abnormal-true" condition that Flux's kstatus and other
    /// generic tools read as Failed.
    pub const STALLED: &str = "Stalled";
    /// Whether a command ran to success (as a Job's Complete).
    pub const COMPLETE: &str = "Complete";
    /// Whether a command ended without success (as a Job's Failed).
    pub const FAILED: &str = "Failed";
}

/// The Stalled condition: stuck (`Some((reason, message))`) or not.
pub fn stalled(stuck: Option<(String, String)>) -> DesiredCondition {
    match stuck {
        Some((reason, message)) => DesiredCondition::new(types::STALLED, true, reason, message),
        None => DesiredCondition::new(
            types::STALLED,
            false,
            "NotStalled",
            "nothing stands in the way",
        ),
    }
}

/// What a condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Sets one condition in the list, keeping its lastTransitionTime when its
/// status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: DesiredCondition,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            if existing.status != desired.status {
                existing.last_transition_time = now;
            }
            existing.status = desired.status;
            existing.reason = desired.reason.into();
            existing.message = desired.message.into();
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: desired.type_.into(),
            status: desired.status,
            reason: desired.reason.into(),
            message: desired.message.into(),
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

/// The condition of one type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            DesiredCondition::new(types::READY, false, "Starting", "a"),
            Some(1),
            at(10),
        );
        set_condition(
            &mut list,
            DesiredCondition::new(types::READY, false, "Starting", "b"),
            Some(2),
            at(20),
        );
        assert_eq!(list[0].last_transition_time, at(10));
        assert_eq!(list[0].message, "b");
        assert_eq!(list[0].observed_generation, Some(2));
        set_condition(
            &mut list,
            DesiredCondition::new(types::READY, true, "Running", "c"),
            Some(2),
            at(30),
        );
        assert_eq!(list[0].last_transition_time, at(30));
        assert_eq!(list.len(), 1);
        assert!(is_true(&list, types::READY));
    }
}
