//! No receiver answer makes delivery outcome handling panic.
//!
//! A receiver is anyone's server: any status code, any headers (several
//! Retry-After, bytes that are not UTF-8, huge numbers, dates far in the
//! past or future, junk), any body. Its answer goes through
//! [`answer`](crate::delivery::answer), then
//! [`record_attempt`](crate::delivery::record_attempt) with any earlier
//! status, any retry policy, any start, duration and jitter, then
//! [`next_step`](crate::plan::delivery::next_step) on the result.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::arbitrary::*;
use super::no_panic::config;
use crate::api::{DeliveryPhase, Webhook, WebhookDelivery, WebhookDeliveryStatus};
use crate::delivery::backoff::Policy;
use crate::delivery::{ATTEMPT_LOG_LIMIT, AttemptResult, Completion, answer, record_attempt};
use crate::plan::delivery::{DeliveryStep, next_step};

/// Everything after an attempt: a delivery's recorded status, and its next
/// step, for any of the rest.
struct After<'a> {
    policy: &'a Policy,
    started: DateTime<Utc>,
    took: Duration,
    jitter: f64,
    webhook: Option<&'a Webhook>,
    blocked: bool,
    keep: Duration,
    now: DateTime<Utc>,
}

/// Records `result` on `delivery` and decides its next step; checks that
/// the status holds together: the attempt is counted and logged, the log
/// is bounded, and a next attempt is due exactly while it is Pending.
fn record_and_step(
    delivery: &WebhookDelivery,
    result: &AttemptResult,
    after: &After,
) -> Result<(WebhookDeliveryStatus, Option<Completion>), TestCaseError> {
    let prior = delivery.status.clone().unwrap_or_default();
    let (status, completion) = record_attempt(
        &prior,
        after.policy,
        result,
        after.started,
        after.took,
        after.jitter,
    );
    prop_assert!(status.attempt_log.len() <= ATTEMPT_LOG_LIMIT);
    prop_assert!(!status.attempt_log.is_empty());
    prop_assert_eq!(status.attempts, prior.attempts.saturating_add(1));
    let code = match result {
        AttemptResult::Answered { status, .. } => Some(i32::from(*status)),
        AttemptResult::Failed { .. } => None,
    };
    prop_assert_eq!(status.last_status_code, code);
    let pending = status.phase == Some(DeliveryPhase::Pending);
    prop_assert_eq!(
        status.next_attempt_at.is_some(),
        pending,
        "next attempt {:?} with phase {:?}",
        status.next_attempt_at,
        status.phase
    );
    prop_assert_eq!(completion.is_none(), pending);
    let mut recorded = delivery.clone();
    recorded.status = Some(status.clone());
    let step = next_step(
        &recorded,
        after.webhook,
        after.blocked,
        after.keep,
        after.now,
    );
    if pending {
        prop_assert_ne!(step, DeliveryStep::Expire);
        prop_assert_ne!(step, DeliveryStep::Redeliver);
    } else {
        prop_assert_ne!(step, DeliveryStep::Attempt);
    }
    Ok((status, completion))
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any status and any headers make an answer, with the status as sent
    /// and a Retry-After only when the first such header reads as one;
    /// recorded on any delivery with any policy, start, duration and
    /// jitter, and stepped at any time, nothing panics and the status
    /// holds together.
    #[test]
    fn any_answer_is_recorded_and_stepped_without_panic(
        code in any::<u16>(),
        headers in headers(),
        received in any_system_time(),
        delivery in object::<WebhookDelivery>(Kind::WebhookDelivery),
        webhook in prop::option::of(object::<Webhook>(Kind::Webhook)),
        policy in policy(),
        started in any_datetime(),
        took in any_std_duration(),
        jitter in any_jitter(),
        blocked in any::<bool>(),
        keep in any_std_duration(),
        now in any_datetime(),
    ) {
        let map = header_map(&headers);
        let result = answer(code, &map, received);
        let AttemptResult::Answered { status, retry_after } = &result else {
            return Err(TestCaseError::fail("an answer is Answered"));
        };
        prop_assert_eq!(*status, code);
        if retry_after.is_some() {
            let first = map.get(http::header::RETRY_AFTER);
            prop_assert!(first.is_some_and(|v| v.to_str().is_ok()));
        }
        let after = After { policy: &policy, started, took, jitter, webhook: webhook.as_ref(), blocked, keep, now };
        record_and_step(&delivery, &result, &after)?;
    }

    /// Any attempt result, an error or an answer with any Retry-After up
    /// to Duration::MAX, is recorded and stepped without panic.
    #[test]
    fn any_attempt_result_is_recorded_and_stepped_without_panic(
        result in attempt_result(),
        delivery in object::<WebhookDelivery>(Kind::WebhookDelivery),
        policy in policy(),
        started in any_datetime(),
        took in any_std_duration(),
        jitter in any_jitter(),
        blocked in any::<bool>(),
        keep in any_std_duration(),
        now in any_datetime(),
    ) {
        let after = After { policy: &policy, started, took, jitter, webhook: None, blocked, keep, now };
        record_and_step(&delivery, &result, &after)?;
    }

    /// Retry-After parses or not for any text at any time, and the delay
    /// is decided for any policy, any count of failures and any jitter.
    #[test]
    fn retry_after_and_backoff_never_panic(
        value in retry_after_value(),
        received in any_system_time(),
        policy in policy(),
        failed in prop_oneof![any::<u32>(), 0u32..40],
        retry_after in prop::option::of(any_std_duration()),
        jitter in any_jitter(),
    ) {
        let text = String::from_utf8_lossy(&value);
        let _ = crate::delivery::backoff::parse_retry_after(&text, received);
        let delay = crate::delivery::backoff::next_delay(&policy, failed, retry_after, jitter);
        prop_assert_eq!(delay.is_none(), failed >= policy.max_attempts);
    }
}

// ------------------------------------------------------------- over a socket

/// What the test server answers next.
#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Headers that frame the message or the connection: a receiver that
/// sends them wrong breaks HTTP itself, not our reading of its answer.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

fn reply() -> BoxedStrategy<Reply> {
    let body = prop_oneof![
        4 => any_bytes(),
        1 => (0usize..=4 * 1024 * 1024).prop_map(|n| vec![b'x'; n]),
    ];
    (200u16..=999, headers(), body)
        .prop_map(|(status, headers, body)| {
            // At most 32 KB of headers: a larger head is refused by the
            // client as a transport error, which is not what this tests.
            let mut size = 0;
            let headers = headers
                .into_iter()
                .filter(|(name, _)| !FRAMING.contains(&name.to_ascii_lowercase().as_str()))
                .take_while(|(name, value)| {
                    size += name.len() + value.len() + 4;
                    size <= 32 * 1024
                })
                .collect();
            Reply {
                status,
                headers,
                body,
            }
        })
        .boxed()
}

fn respond(reply: &Reply) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(reply.body.clone()));
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::IM_A_TEAPOT);
    let headers = response.headers_mut();
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// The real delivery client sends to a server on 127.0.0.1 that answers,
/// case after case, any status from 200 to 999, any headers and any body
/// (up to 4 MiB). The client reports the status the server sent, and
/// recording it panics on nothing.
#[test]
fn real_answers_over_loopback_are_recorded_with_the_status_sent() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let next: Arc<Mutex<Reply>> = Arc::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    assert!(address.ip().is_loopback(), "{address}");
    let app = {
        let next = next.clone();
        axum::Router::new().fallback(move || {
            let reply = next.lock().unwrap().clone();
            async move { respond(&reply) }
        })
    };
    let server = runtime.spawn(async move { axum::serve(listener, app).await });

    let sender = crate::delivery::client::Sender::new(true);
    let url = format!("http://{address}/hook");
    let no_headers = BTreeMap::new();
    let policy = Policy {
        max_attempts: 8,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(600),
    };
    let mut runner = TestRunner::new(config(64));
    let outcome = runner.run(
        &(
            reply(),
            object::<WebhookDelivery>(Kind::WebhookDelivery),
            any_jitter(),
        ),
        |(reply, delivery, jitter)| {
            *next.lock().unwrap() = reply.clone();
            let request = crate::delivery::client::Request {
                url: &url,
                timeout: Duration::from_secs(20),
                ca_bundle: None,
                headers: &no_headers,
                id: "evt_1",
                timestamp: 1_700_000_000,
                signature: "v1,c2lnbmF0dXJl",
            };
            let started = Utc::now();
            let (result, took) = runtime.block_on(sender.send(&request, b"{}".to_vec()));
            match &result {
                AttemptResult::Answered { status, .. } => prop_assert_eq!(*status, reply.status),
                AttemptResult::Failed { error } => {
                    return Err(TestCaseError::fail(format!(
                        "status {} was not read: {error}",
                        reply.status
                    )));
                }
            }
            let after = After {
                policy: &policy,
                started,
                took,
                jitter,
                webhook: None,
                blocked: false,
                keep: Duration::from_secs(3600),
                now: started,
            };
            let (status, _) = record_and_step(&delivery, &result, &after)?;
            prop_assert_eq!(status.last_status_code, Some(i32::from(reply.status)));
            Ok(())
        },
    );
    server.abort();
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
