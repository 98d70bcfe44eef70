//! The Webhook's status, decided from what was observed: whether events can
//! be sent (URL, Secret, address, switched on), and what became of its
//! deliveries. Pure.

use chrono::{DateTime, Utc};

use super::conditions::{self, DesiredCondition, types};
use crate::api::{DeliveryPhase, LastDelivery, Webhook, WebhookDelivery, WebhookStatus};

/// What the reconciler observed about a Webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookObservation {
    /// Whether its Secret holds a usable signing key, or why not. Never the key.
    pub secret: Result<(), String>,
    /// Whether its URL's host resolves to an allowed address, or why not.
    pub address: Result<(), String>,
    /// Whether `spec.caBundle` (when set) holds a certificate TLS can use, or why not.
    pub ca_bundle: Result<(), String>,
}

/// The Webhook's new status.
pub fn plan(
    webhook: &Webhook,
    deliveries: &[&WebhookDelivery],
    observed: &WebhookObservation,
    now: DateTime<Utc>,
) -> WebhookStatus {
    let mut status = webhook.status.clone().unwrap_or_default();
    let generation = webhook.metadata.generation;
    // A new URL switches a webhook that answered 410 back on.
    if status
        .disabled
        .as_ref()
        .is_some_and(|d| d.url != webhook.spec.url)
    {
        status.disabled = None;
    }

    let ready = if let Some(disabled) = &status.disabled {
        DesiredCondition::new(
            types::READY,
            false,
            disabled.reason.clone(),
            disabled.message.clone(),
        )
    } else if !webhook.spec.active {
        DesiredCondition::new(
            types::READY,
            false,
            "Inactive",
            "spec.active is false; no events are sent",
        )
    } else if let Err(why) = &observed.secret {
        DesiredCondition::new(types::READY, false, "SecretNotUsable", why.clone())
    } else if let Err(why) = &observed.address {
        DesiredCondition::new(types::READY, false, "AddressNotAllowed", why.clone())
    } else if let Err(why) = &observed.ca_bundle {
        DesiredCondition::new(types::READY, false, "CaBundleNotUsable", why.clone())
    } else {
        DesiredCondition::new(
            types::READY,
            true,
            "Ready",
            format!("events are sent to {}", webhook.spec.url),
        )
    };
    conditions::set_condition(&mut status.conditions, ready, generation, now);

    let phase = |d: &&&WebhookDelivery| d.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    status.succeeded = deliveries
        .iter()
        .filter(|d| phase(d) == DeliveryPhase::Succeeded)
        .count() as i64;
    status.failed = deliveries
        .iter()
        .filter(|d| phase(d) == DeliveryPhase::Failed)
        .count() as i64;
    status.pending = deliveries
        .iter()
        .filter(|d| phase(d) == DeliveryPhase::Pending)
        .count() as i64;

    // Every recorded attempt, newest first.
    let mut attempts: Vec<(DateTime<Utc>, String, Option<i32>, bool)> = deliveries
        .iter()
        .flat_map(|d| {
            let name = d.metadata.name.clone().unwrap_or_default();
            d.status
                .iter()
                .flat_map(|s| s.attempt_log.iter())
                .map(move |a| {
                    let ok = a.status_code.is_some_and(|c| (200..300).contains(&c));
                    (a.time, name.clone(), a.status_code, ok)
                })
        })
        .collect();
    attempts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    if let Some((time, name, status_code, succeeded)) = attempts.first().cloned() {
        status.last_delivery = Some(LastDelivery {
            name,
            time,
            status_code,
            succeeded,
        });
    }
    status.consecutive_failures = attempts.iter().take_while(|a| !a.3).count() as i64;
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        DeliveryAttempt, DeliveryEvent, Disabled, EventSubject, EventType, RetryPolicy,
        WebhookDeliverySpec, WebhookDeliveryStatus, WebhookSecretRef, WebhookSpec,
    };

    fn webhook(url: &str) -> Webhook {
        let mut webhook = Webhook::new(
            "hooks",
            WebhookSpec {
                url: url.into(),
                allow_insecure_http: false,
                secret_ref: WebhookSecretRef {
                    name: "signing".into(),
                    key: "secret".into(),
                    previous_key: "previous-secret".into(),
                },
                events: Vec::new(),
                active: true,
                timeout_seconds: 10,
                retry_policy: RetryPolicy::default(),
                ca_bundle: None,
                headers: Default::default(),
            },
        );
        webhook.metadata.generation = Some(1);
        webhook
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn delivery(name: &str, phase: DeliveryPhase, codes: &[(i64, Option<i32>)]) -> WebhookDelivery {
        let mut d = WebhookDelivery::new(
            name,
            WebhookDeliverySpec {
                webhook_name: "hooks".into(),
                event: DeliveryEvent {
                    id: "evt".into(),
                    type_: EventType::InstanceStarted,
                    timestamp: at(0),
                    subject: EventSubject {
                        kind: "Instance".into(),
                        name: "web".into(),
                        uid: "u".into(),
                    },
                    sequence: 1,
                    from: None,
                    to: None,
                    reason: "r".into(),
                    message: String::new(),
                    details: Default::default(),
                },
            },
        );
        d.status = Some(WebhookDeliveryStatus {
            phase: Some(phase),
            attempts: codes.len() as i32,
            attempt_log: codes
                .iter()
                .map(|(t, code)| DeliveryAttempt {
                    time: at(*t),
                    status_code: *code,
                    error: None,
                    duration_ms: 1,
                })
                .collect(),
            ..WebhookDeliveryStatus::default()
        });
        d
    }

    fn ok() -> WebhookObservation {
        WebhookObservation {
            secret: Ok(()),
            address: Ok(()),
            ca_bundle: Ok(()),
        }
    }

    #[test]
    fn counts_and_the_last_attempts_are_derived_from_the_deliveries() {
        let a = delivery(
            "a",
            DeliveryPhase::Succeeded,
            &[(1, Some(500)), (2, Some(200))],
        );
        let b = delivery("b", DeliveryPhase::Pending, &[(3, Some(503)), (4, None)]);
        let c = delivery("c", DeliveryPhase::Failed, &[(0, Some(500))]);
        let status = plan(
            &webhook("https://h.example.com/"),
            &[&a, &b, &c],
            &ok(),
            at(10),
        );
        assert_eq!((status.succeeded, status.failed, status.pending), (1, 1, 1));
        assert_eq!(status.consecutive_failures, 2);
        let last = status.last_delivery.unwrap();
        assert_eq!(
            (last.name.as_str(), last.status_code, last.succeeded),
            ("b", None, false)
        );
        assert!(conditions::is_true(&status.conditions, types::READY));
    }

    #[test]
    fn ready_says_what_stands_in_the_way() {
        let hook = webhook("https://h.example.com/");
        let missing = WebhookObservation {
            secret: Err("Secret signing does not exist".into()),
            address: Ok(()),
            ca_bundle: Ok(()),
        };
        let status = plan(&hook, &[], &missing, at(0));
        let ready = conditions::find(&status.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("SecretNotUsable", "Secret signing does not exist")
        );

        let bad_bundle = WebhookObservation {
            ca_bundle: Err("spec.caBundle holds no usable PEM certificate".into()),
            ..ok()
        };
        let status = plan(&hook, &[], &bad_bundle, at(0));
        let ready = conditions::find(&status.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            (
                "CaBundleNotUsable",
                "spec.caBundle holds no usable PEM certificate"
            )
        );

        let mut inactive = hook.clone();
        inactive.spec.active = false;
        let status = plan(&inactive, &[], &ok(), at(0));
        assert_eq!(
            conditions::find(&status.conditions, types::READY)
                .unwrap()
                .reason,
            "Inactive"
        );
    }

    #[test]
    fn a_gone_endpoint_stays_off_until_the_url_changes() {
        let mut hook = webhook("https://old.example.com/");
        hook.status = Some(WebhookStatus {
            disabled: Some(Disabled {
                reason: "EndpointGone".into(),
                message: "answered 410".into(),
                time: at(0),
                url: "https://old.example.com/".into(),
            }),
            ..WebhookStatus::default()
        });
        let status = plan(&hook, &[], &ok(), at(1));
        assert!(status.disabled.is_some());
        assert_eq!(
            conditions::find(&status.conditions, types::READY)
                .unwrap()
                .reason,
            "EndpointGone"
        );
        hook.spec.url = "https://new.example.com/".into();
        let status = plan(&hook, &[], &ok(), at(2));
        assert!(status.disabled.is_none());
        assert!(conditions::is_true(&status.conditions, types::READY));
    }
}
