//! What a WebhookDelivery record calls for next. Pure.
//!
//! A record exists for a delivery that needed a retry, failed, or (with a
//! Webhook's `deliveryRecords: All`) for every delivery. Its next step
//! depends on its phase, its Webhook, the records of the same object before
//! it, and the time; the attempt itself and what its result means are
//! decided by `crate::delivery`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::dispatch::webhook_accepts;
use crate::api::{DeliveryPhase, Webhook, WebhookDelivery, WebhookDeliveryStatus};

/// The annotation that asks for a completed delivery to be sent again
/// (`kubectl ctrlplane redeliver`), with the time it was asked. A request
/// newer than the record's completion makes it Pending again, with a fresh
/// count of attempts; its attempt log is kept.
pub const REDELIVER_ANNOTATION: &str = "ctrlplane.dev/redeliver-requested-at";

/// The next step of a delivery record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStep {
    /// Completed, and asked to be sent again: make it Pending.
    Redeliver,
    /// Completed and kept long enough: delete the record.
    Expire,
    /// Nothing to do for this long (its retry is not due, its time to
    /// expire has not come, or an earlier event of the same object goes
    /// first).
    Wait(Duration),
    /// Nothing to do until something changes: its Webhook is switched off
    /// (switching it on wakes it) or gone (its records go with it).
    Park,
    /// Make an attempt now.
    Attempt,
}

/// The annotation on a record whose first attempt was made before it was
/// created (the dispatcher's fast path), with the attempt's time. Until its
/// status says so (the write that follows the create), the record waits
/// rather than being sent a second time at once.
pub const FIRST_ATTEMPT_ANNOTATION: &str = "ctrlplane.dev/first-attempt-at";
/// How long a record waits for that status before it is sent anyway (the
/// status write was lost, say, to a crash).
pub const FIRST_ATTEMPT_GRACE: Duration = Duration::from_secs(10);

/// How soon a delivery that waits behind an earlier one of the same object
/// looks again if the earlier one's completion does not wake it first.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(2);

/// Whether a delivery is still to be made.
pub fn is_pending(delivery: &WebhookDelivery) -> bool {
    delivery
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| p == DeliveryPhase::Pending)
}

/// A completed record made Pending again, as a redelivery asks: a fresh
/// count of attempts, due now; what happened before stays in its log.
pub fn redelivered(status: &WebhookDeliveryStatus, now: DateTime<Utc>) -> WebhookDeliveryStatus {
    let mut again = WebhookDeliveryStatus {
        phase: Some(DeliveryPhase::Pending),
        attempts: 0,
        next_attempt_at: None,
        completed_at: None,
        ..status.clone()
    };
    crate::delivery::set_conditions(&mut again, None, now);
    again
}

/// Decides a record's next step.
///
/// - `webhook`: its Webhook, if it still exists;
/// - `blocked`: an earlier event of the same object to the same Webhook is
///   still pending, and goes first;
/// - `keep_completed`: how long a completed record is kept.
pub fn next_step(
    delivery: &WebhookDelivery,
    webhook: Option<&Webhook>,
    blocked: bool,
    keep_completed: Duration,
    now: DateTime<Utc>,
) -> DeliveryStep {
    let status = delivery.status.clone().unwrap_or_default();
    let annotation = |key: &str| {
        delivery
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    if !is_pending(delivery) {
        let asked_again = annotation(REDELIVER_ANNOTATION);
        if let (Some(asked), Some(completed)) = (asked_again, status.completed_at)
            && asked > completed
        {
            return DeliveryStep::Redeliver;
        }
        let completed = status.completed_at.unwrap_or(now);
        let expires = super::saturating_add_std(completed, keep_completed);
        return if expires <= now {
            DeliveryStep::Expire
        } else {
            DeliveryStep::Wait((expires - now).to_std().unwrap_or_default())
        };
    }
    let Some(webhook) = webhook else {
        return DeliveryStep::Park;
    };
    if delivery.status.is_none()
        && let Some(at) = annotation(FIRST_ATTEMPT_ANNOTATION)
    {
        let grace_ends = super::saturating_add_std(at, FIRST_ATTEMPT_GRACE);
        if grace_ends > now {
            return DeliveryStep::Wait((grace_ends - now).to_std().unwrap_or_default());
        }
    }
    if !webhook_accepts(webhook) {
        return DeliveryStep::Park;
    }
    if blocked {
        return DeliveryStep::Wait(BLOCKED_RECHECK);
    }
    match status.next_attempt_at {
        Some(due) if due > now => DeliveryStep::Wait((due - now).to_std().unwrap_or_default()),
        _ => DeliveryStep::Attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        DeliveryEvent, DeliveryRecords, EventSubject, EventType, RetryPolicy, WebhookDeliverySpec,
        WebhookDeliveryStatus, WebhookSecretRef, WebhookSpec,
    };
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
    }

    fn webhook(active: bool) -> Webhook {
        Webhook::new(
            "hooks",
            WebhookSpec {
                url: "https://hooks.example.com/x".into(),
                allow_insecure_http: false,
                secret_ref: WebhookSecretRef {
                    name: "signing".into(),
                    key: "secret".into(),
                    previous_key: "previous-secret".into(),
                },
                events: Vec::new(),
                active,
                timeout_seconds: 10,
                retry_policy: RetryPolicy::default(),
                delivery_records: DeliveryRecords::Failures,
                ca_bundle: None,
                headers: Default::default(),
            },
        )
    }

    fn delivery(status: Option<WebhookDeliveryStatus>) -> WebhookDelivery {
        let mut delivery = WebhookDelivery::new(
            "hooks-uid-1",
            WebhookDeliverySpec {
                webhook_name: "hooks".into(),
                event: DeliveryEvent {
                    id: "evt_uid_1".into(),
                    type_: EventType::InstanceStarted,
                    timestamp: t0(),
                    subject: EventSubject {
                        kind: "Instance".into(),
                        name: "web".into(),
                        uid: "uid".into(),
                    },
                    sequence: 1,
                    from: None,
                    to: None,
                    reason: "Test".into(),
                    message: String::new(),
                    details: Default::default(),
                },
            },
        );
        delivery.status = status;
        delivery
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn a_new_record_is_attempted_at_once() {
        let step = next_step(&delivery(None), Some(&webhook(true)), false, DAY, t0());
        assert_eq!(step, DeliveryStep::Attempt);
    }

    #[test]
    fn a_retry_waits_until_it_is_due() {
        let pending = delivery(Some(WebhookDeliveryStatus {
            phase: Some(DeliveryPhase::Pending),
            attempts: 1,
            next_attempt_at: Some(t0() + chrono::Duration::seconds(30)),
            ..Default::default()
        }));
        let step = next_step(&pending, Some(&webhook(true)), false, DAY, t0());
        assert_eq!(step, DeliveryStep::Wait(Duration::from_secs(30)));
        let later = t0() + chrono::Duration::seconds(30);
        let step = next_step(&pending, Some(&webhook(true)), false, DAY, later);
        assert_eq!(step, DeliveryStep::Attempt);
    }

    #[test]
    fn a_switched_off_or_missing_webhook_parks_and_an_earlier_event_goes_first() {
        let new = delivery(None);
        assert_eq!(
            next_step(&new, Some(&webhook(false)), false, DAY, t0()),
            DeliveryStep::Park
        );
        assert_eq!(next_step(&new, None, false, DAY, t0()), DeliveryStep::Park);
        assert_eq!(
            next_step(&new, Some(&webhook(true)), true, DAY, t0()),
            DeliveryStep::Wait(BLOCKED_RECHECK)
        );
    }

    #[test]
    fn a_record_made_after_a_first_attempt_waits_for_its_status() {
        let mut record = delivery(None);
        record.metadata.annotations =
            Some([(FIRST_ATTEMPT_ANNOTATION.to_string(), t0().to_rfc3339())].into());
        assert_eq!(
            next_step(&record, Some(&webhook(true)), false, DAY, t0()),
            DeliveryStep::Wait(FIRST_ATTEMPT_GRACE)
        );
        // The status never came: it is sent anyway.
        let later = t0() + chrono::Duration::from_std(FIRST_ATTEMPT_GRACE).unwrap();
        assert_eq!(
            next_step(&record, Some(&webhook(true)), false, DAY, later),
            DeliveryStep::Attempt
        );
    }

    #[test]
    fn a_failed_record_asked_to_be_sent_again_is_pending_with_fresh_attempts() {
        let mut failed = delivery(Some(WebhookDeliveryStatus {
            phase: Some(DeliveryPhase::Failed),
            attempts: 8,
            completed_at: Some(t0()),
            last_error: Some("the endpoint answered 500".into()),
            ..Default::default()
        }));
        let asked =
            |at: DateTime<Utc>| Some([(REDELIVER_ANNOTATION.to_string(), at.to_rfc3339())].into());
        // Asked before it failed: an old request, already served.
        failed.metadata.annotations = asked(t0() - chrono::Duration::seconds(5));
        assert_ne!(
            next_step(&failed, Some(&webhook(true)), false, DAY, t0()),
            DeliveryStep::Redeliver
        );
        failed.metadata.annotations = asked(t0() + chrono::Duration::seconds(5));
        let later = t0() + chrono::Duration::seconds(6);
        assert_eq!(
            next_step(&failed, Some(&webhook(true)), false, DAY, later),
            DeliveryStep::Redeliver
        );
        let again = redelivered(failed.status.as_ref().unwrap(), later);
        assert_eq!(
            (again.phase, again.attempts),
            (Some(DeliveryPhase::Pending), 0)
        );
        assert_eq!(
            again.last_error.as_deref(),
            Some("the endpoint answered 500")
        );
        failed.status = Some(again);
        assert_eq!(
            next_step(&failed, Some(&webhook(true)), false, DAY, later),
            DeliveryStep::Attempt
        );
    }

    #[test]
    fn a_record_completed_at_the_end_of_time_is_kept_without_overflow() {
        // completedAt at DateTime::MAX_UTC, kept a day, panicked:
        // `DateTime + TimeDelta` overflowed.
        let end = DateTime::<Utc>::MAX_UTC;
        let done = delivery(Some(WebhookDeliveryStatus {
            phase: Some(DeliveryPhase::Succeeded),
            attempts: 1,
            completed_at: Some(end),
            ..Default::default()
        }));
        assert!(matches!(
            next_step(&done, Some(&webhook(true)), false, DAY, t0()),
            DeliveryStep::Wait(_)
        ));
        assert_eq!(
            next_step(&done, Some(&webhook(true)), false, DAY, end),
            DeliveryStep::Expire
        );
        // Kept for longer than chrono can count: kept, not expired at once.
        let done_now = delivery(Some(WebhookDeliveryStatus {
            phase: Some(DeliveryPhase::Failed),
            completed_at: Some(t0()),
            ..Default::default()
        }));
        assert!(matches!(
            next_step(&done_now, None, false, Duration::MAX, t0()),
            DeliveryStep::Wait(_)
        ));
    }

    #[test]
    fn a_completed_record_expires_after_its_time() {
        let done = delivery(Some(WebhookDeliveryStatus {
            phase: Some(DeliveryPhase::Succeeded),
            attempts: 2,
            completed_at: Some(t0()),
            ..Default::default()
        }));
        let keep = Duration::from_secs(60);
        assert_eq!(
            next_step(&done, Some(&webhook(true)), false, keep, t0()),
            DeliveryStep::Wait(keep)
        );
        let later = t0() + chrono::Duration::seconds(60);
        assert_eq!(
            next_step(&done, None, false, keep, later),
            DeliveryStep::Expire
        );
    }

    proptest! {
        /// A completed record is never attempted again, and a pending one is
        /// never expired.
        #[test]
        fn completed_records_are_never_sent_and_pending_ones_never_expire(
            phase in prop_oneof![Just(None), Just(Some(DeliveryPhase::Pending)), Just(Some(DeliveryPhase::Succeeded)), Just(Some(DeliveryPhase::Failed))],
            active in any::<bool>(),
            has_webhook in any::<bool>(),
            blocked in any::<bool>(),
            due_in in -100i64..100,
            completed_ago in 0i64..200,
            keep in 0u64..150,
        ) {
            let record = delivery(Some(WebhookDeliveryStatus {
                phase,
                next_attempt_at: Some(t0() + chrono::Duration::seconds(due_in)),
                completed_at: Some(t0() - chrono::Duration::seconds(completed_ago)),
                ..Default::default()
            }));
            let hook = webhook(active);
            let step = next_step(&record, has_webhook.then_some(&hook), blocked, Duration::from_secs(keep), t0());
            if is_pending(&record) {
                prop_assert_ne!(step, DeliveryStep::Expire);
            } else {
                prop_assert_ne!(step, DeliveryStep::Attempt);
            }
            if step == DeliveryStep::Attempt {
                prop_assert!(active && has_webhook && !blocked && due_in <= 0);
            }
        }
    }
}
