//! Webhook delivery: signing, the retry schedule, the address guard, the HTTP
//! client, and what an attempt's result means for a delivery. Everything but
//! [`client`] is pure.

pub mod backoff;
pub mod client;
pub mod guard;
pub mod signing;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::api::{DeliveryAttempt, DeliveryEvent, DeliveryPhase, WebhookDeliveryStatus};

/// How many attempts a delivery's status keeps in its log.
pub const ATTEMPT_LOG_LIMIT: usize = 20;

/// The JSON body a receiver gets: `{type, timestamp, data}`.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    timestamp: DateTime<Utc>,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    sequence: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    details: &'a BTreeMap<String, String>,
}

/// The body of an event: the same bytes on every attempt.
pub fn body(event: &DeliveryEvent, namespace: &str) -> Vec<u8> {
    let body = Body {
        type_: event.type_.as_str(),
        timestamp: event.timestamp,
        data: Data {
            kind: &event.subject.kind,
            namespace,
            name: &event.subject.name,
            uid: &event.subject.uid,
            sequence: event.sequence,
            from: event.from.as_deref(),
            to: event.to.as_deref(),
            reason: &event.reason,
            message: &event.message,
            details: &event.details,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// It did not: timeout, refused connection, TLS, or a forbidden address.
    Failed { error: String },
}

/// What an endpoint's answer is, from its status code and headers: the
/// status, and when it asks to be tried again (the first Retry-After
/// header, as delay-seconds or an HTTP date, relative to `now`). A
/// Retry-After that is not UTF-8 or cannot be read is ignored. The body is
/// never read. Pure: the client calls it with what came over the wire.
pub fn answer(status: u16, headers: &http::HeaderMap, now: SystemTime) -> AttemptResult {
    AttemptResult::Answered {
        status,
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| backoff::parse_retry_after(v, now)),
    }
}

/// What the result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the endpoint does not want events any more.
    Gone,
    /// Anything else: try again if the policy allows.
    Retry { retry_after: Option<Duration> },
}

/// 2xx is delivered, 410 is gone, everything else is retried: 429, 502,
/// 503, 504, timeouts and connection errors because they are passing by
/// nature (honouring Retry-After), other answers because a receiver being
/// deployed or misconfigured for a while is common, and the policy bounds it.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result {
        AttemptResult::Answered { status, .. } if (200..300).contains(status) => Verdict::Delivered,
        AttemptResult::Answered { status: 410, .. } => Verdict::Gone,
        AttemptResult::Answered { retry_after, .. } => Verdict::Retry {
            retry_after: *retry_after,
        },
        AttemptResult::Failed { .. } => Verdict::Retry { retry_after: None },
    }
}

/// How a delivery ended, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Delivered,
    /// The endpoint answered 410: the webhook must be switched off.
    Gone,
    /// Every attempt the policy allows failed.
    GaveUp,
}

/// The delivery's status after an attempt, and whether it is over. Pure.
pub fn record_attempt(
    status: &WebhookDeliveryStatus,
    policy: &backoff::Policy,
    result: &AttemptResult,
    started: DateTime<Utc>,
    duration: Duration,
    jitter: f64,
) -> (WebhookDeliveryStatus, Option<Completion>) {
    let mut next = status.clone();
    // Times and counts may hold anything a status can: stop at the ends.
    let finished = crate::plan::saturating_add_std(started, duration);
    next.attempts = next.attempts.saturating_add(1);
    let (code, error) = match result {
        AttemptResult::Answered { status, .. } => (
            Some(i32::from(*status)),
            (!(200..300).contains(status)).then(|| format!("the endpoint answered {status}")),
        ),
        AttemptResult::Failed { error } => (None, Some(error.clone())),
    };
    next.last_status_code = code;
    next.last_error = error.clone();
    next.attempt_log.push(DeliveryAttempt {
        time: started,
        status_code: code,
        error,
        duration_ms: duration.as_millis().try_into().unwrap_or(i64::MAX),
    });
    if next.attempt_log.len() > ATTEMPT_LOG_LIMIT {
        let excess = next.attempt_log.len() - ATTEMPT_LOG_LIMIT;
        next.attempt_log.drain(..excess);
    }
    let completion = match verdict(result) {
        Verdict::Delivered => Some(Completion::Delivered),
        Verdict::Gone => Some(Completion::Gone),
        Verdict::Retry { retry_after } => {
            let failed = u32::try_from(next.attempts).unwrap_or(u32::MAX);
            match backoff::next_delay(policy, failed, retry_after, jitter) {
                Some(delay) => {
                    next.phase = Some(DeliveryPhase::Pending);
                    next.next_attempt_at = Some(crate::plan::saturating_add_std(finished, delay));
                    None
                }
                None => Some(Completion::GaveUp),
            }
        }
    };
    if let Some(completion) = completion {
        next.phase = Some(match completion {
            Completion::Delivered => DeliveryPhase::Succeeded,
            Completion::Gone | Completion::GaveUp => DeliveryPhase::Failed,
        });
        next.next_attempt_at = None;
        next.completed_at = Some(finished);
        if completion == Completion::Gone {
            next.last_error =
                Some("the endpoint answered 410 Gone; the webhook is switched off".into());
        }
    }
    set_conditions(&mut next, completion, finished);
    (next, completion)
}

/// A delivery's Ready and Stalled conditions, from where it stands.
pub fn set_conditions(
    status: &mut WebhookDeliveryStatus,
    completion: Option<Completion>,
    now: DateTime<Utc>,
) {
    use crate::plan::conditions::{self, DesiredCondition, types};
    let attempts = status.attempts;
    let error = status.last_error.clone().unwrap_or_default();
    let (ready, stuck) = match completion {
        Some(Completion::Delivered) => (
            DesiredCondition::new(
                types::READY,
                true,
                "Succeeded",
                format!("delivered after {attempts} attempt(s)"),
            ),
            None,
        ),
        Some(Completion::Gone) => (
            DesiredCondition::new(types::READY, false, "EndpointGone", error.clone()),
            Some(("EndpointGone".to_string(), error)),
        ),
        Some(Completion::GaveUp) => {
            let message = format!("failed after {attempts} attempt(s): {error}");
            (
                DesiredCondition::new(types::READY, false, "Failed", message.clone()),
                Some(("Failed".to_string(), message)),
            )
        }
        None => {
            let next = status
                .next_attempt_at
                .map(|at| format!("; the next attempt is due at {}", at.to_rfc3339()))
                .unwrap_or_default();
            let message = if attempts == 0 {
                "not attempted yet".to_string()
            } else {
                format!("attempt {attempts} failed: {error}{next}")
            };
            (
                DesiredCondition::new(types::READY, false, "Pending", message),
                None,
            )
        }
    };
    conditions::set_condition(&mut status.conditions, ready, None, now);
    conditions::set_condition(
        &mut status.conditions,
        conditions::stalled(stuck),
        None,
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EventSubject, EventType};

    fn policy() -> backoff::Policy {
        backoff::Policy {
            max_attempts: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn answered(status: u16) -> AttemptResult {
        AttemptResult::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn verdicts_follow_the_status_code() {
        assert_eq!(verdict(&answered(200)), Verdict::Delivered);
        assert_eq!(verdict(&answered(204)), Verdict::Delivered);
        assert_eq!(verdict(&answered(410)), Verdict::Gone);
        for code in [301, 400, 404, 429, 500, 502, 503, 504] {
            assert!(
                matches!(verdict(&answered(code)), Verdict::Retry { .. }),
                "{code}"
            );
        }
        assert_eq!(
            verdict(&AttemptResult::Answered {
                status: 429,
                retry_after: Some(Duration::from_secs(7))
            }),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            verdict(&AttemptResult::Failed {
                error: "timed out".into()
            }),
            Verdict::Retry { retry_after: None }
        ));
    }

    #[test]
    fn an_answer_takes_the_first_readable_retry_after_and_ignores_junk() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = http::HeaderMap::new();
        assert_eq!(answer(503, &headers, now), answered(503));
        headers.append("retry-after", http::HeaderValue::from_static("7"));
        headers.append("retry-after", http::HeaderValue::from_static("99"));
        assert_eq!(
            answer(429, &headers, now),
            AttemptResult::Answered {
                status: 429,
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let mut junk = http::HeaderMap::new();
        junk.append(
            "retry-after",
            http::HeaderValue::from_bytes(b"\xff\xfe30").unwrap(),
        );
        assert_eq!(answer(503, &junk, now), answered(503));
    }

    #[test]
    fn failures_are_retried_then_given_up_and_every_attempt_is_recorded() {
        let mut status = WebhookDeliveryStatus::default();
        let mut completions = Vec::new();
        for i in 0..3 {
            let (next, completion) = record_attempt(
                &status,
                &policy(),
                &answered(500),
                at(i * 10),
                Duration::from_millis(5),
                0.0,
            );
            status = next;
            completions.push(completion);
        }
        assert_eq!(completions, [None, None, Some(Completion::GaveUp)]);
        assert_eq!(status.attempts, 3);
        assert_eq!(status.phase, Some(DeliveryPhase::Failed));
        assert_eq!(status.last_status_code, Some(500));
        assert_eq!(status.attempt_log.len(), 3);
        assert!(status.next_attempt_at.is_none() && status.completed_at.is_some());
    }

    #[test]
    fn a_retry_is_scheduled_after_the_backoff_or_retry_after() {
        let (status, completion) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &policy(),
            &AttemptResult::Answered {
                status: 503,
                retry_after: Some(Duration::from_secs(42)),
            },
            at(0),
            Duration::ZERO,
            0.0,
        );
        assert_eq!(completion, None);
        assert_eq!(status.phase, Some(DeliveryPhase::Pending));
        assert_eq!(status.next_attempt_at, Some(at(42)));
    }

    #[test]
    fn success_and_gone_complete_the_delivery() {
        let (ok, completion) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &policy(),
            &answered(200),
            at(0),
            Duration::ZERO,
            0.5,
        );
        assert_eq!(
            (completion, ok.phase),
            (Some(Completion::Delivered), Some(DeliveryPhase::Succeeded))
        );
        assert_eq!(ok.last_error, None);
        let (gone, completion) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &policy(),
            &answered(410),
            at(0),
            Duration::ZERO,
            0.5,
        );
        assert_eq!(
            (completion, gone.phase),
            (Some(Completion::Gone), Some(DeliveryPhase::Failed))
        );
    }

    #[test]
    fn an_attempt_at_the_end_of_time_is_recorded_there() {
        // An attempt started at DateTime::MAX_UTC (or lasting Duration::MAX,
        // or retried after one) panicked: `DateTime + TimeDelta` overflowed.
        let end = DateTime::<Utc>::MAX_UTC;
        let (status, completion) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &policy(),
            &answered(500),
            end,
            Duration::from_secs(1),
            0.5,
        );
        assert_eq!(completion, None);
        assert_eq!(status.next_attempt_at, Some(end));
        let (status, _) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &policy(),
            &answered(200),
            at(0),
            Duration::MAX,
            0.5,
        );
        assert_eq!(status.completed_at, Some(end));
        let huge = backoff::Policy {
            max_attempts: 3,
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        let (status, _) = record_attempt(
            &WebhookDeliveryStatus::default(),
            &huge,
            &answered(500),
            at(0),
            Duration::ZERO,
            0.5,
        );
        assert_eq!(status.next_attempt_at, Some(end));
        // A status that counted i32::MAX attempts stays there.
        let many = WebhookDeliveryStatus {
            attempts: i32::MAX,
            ..WebhookDeliveryStatus::default()
        };
        let (status, completion) =
            record_attempt(&many, &policy(), &answered(500), at(0), Duration::ZERO, 0.5);
        assert_eq!(status.attempts, i32::MAX);
        assert_eq!(completion, Some(Completion::GaveUp));
    }

    #[test]
    fn the_attempt_log_is_bounded() {
        let mut status = WebhookDeliveryStatus::default();
        let many = backoff::Policy {
            max_attempts: 100,
            ..policy()
        };
        for i in 0..30 {
            status = record_attempt(&status, &many, &answered(500), at(i), Duration::ZERO, 0.0).0;
        }
        assert_eq!(status.attempts, 30);
        assert_eq!(status.attempt_log.len(), ATTEMPT_LOG_LIMIT);
        assert_eq!(status.attempt_log.last().unwrap().time, at(29));
    }

    #[test]
    fn the_body_has_type_timestamp_and_data() {
        let event = DeliveryEvent {
            id: "evt_1".into(),
            type_: EventType::InstanceStarted,
            timestamp: at(0),
            subject: EventSubject {
                kind: "Instance".into(),
                name: "web".into(),
                uid: "u-1".into(),
            },
            sequence: 3,
            from: Some("Starting".into()),
            to: Some("Running".into()),
            reason: "ReplicasReady".into(),
            message: "2 of 2 replicas ready".into(),
            details: BTreeMap::new(),
        };
        let body: serde_json::Value = serde_json::from_slice(&body(&event, "team-a")).unwrap();
        assert_eq!(body["type"], "instance.started");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"]["namespace"], "team-a");
        assert_eq!(body["data"]["sequence"], 3);
        assert_eq!(body["data"]["from"], "Starting");
        assert_eq!(body["data"]["uid"], "u-1");
    }
}
