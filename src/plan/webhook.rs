//! The Webhook's status, decided from what was observed: whether events can
//! be sent (URL, Secret, address, switched on), and what became of its
//! deliveries. Pure.

use chrono::{DateTime, Utc};

use super::conditions::{self, DesiredCondition, types};
use crate::api::{Disabled, LastDelivery, Webhook, WebhookStatus};

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

/// What became of a Webhook's deliveries, counted as every attempt is made
/// (most deliveries leave no record to count afterwards).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryTally {
    pub succeeded: i64,
    pub failed: i64,
    pub consecutive_failures: i64,
    pub last_delivery: Option<LastDelivery>,
    /// Switched off by a 410 Gone, when that is newer than what the status says.
    pub disabled: Option<Disabled>,
}

/// How one attempt ended, for the tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The delivery succeeded with this attempt.
    Delivered,
    /// The attempt failed; the delivery is retried.
    Retrying,
    /// The attempt failed and the delivery failed for good.
    Failed,
}

impl DeliveryTally {
    /// The tally a Webhook's status recorded last: where counting resumes
    /// after the operator starts.
    pub fn from_status(status: Option<&WebhookStatus>) -> Self {
        let status = status.cloned().unwrap_or_default();
        Self {
            succeeded: status.succeeded,
            failed: status.failed,
            consecutive_failures: status.consecutive_failures,
            last_delivery: status.last_delivery,
            disabled: None,
        }
    }

    /// Counts one attempt.
    pub fn add(&mut self, attempt: LastDelivery, end: AttemptEnd) {
        // Counts resume from the status, which may hold anything.
        match end {
            AttemptEnd::Delivered => {
                self.succeeded = self.succeeded.saturating_add(1);
                self.consecutive_failures = 0;
            }
            AttemptEnd::Retrying => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1)
            }
            AttemptEnd::Failed => {
                self.failed = self.failed.saturating_add(1);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        }
        let newer = self
            .last_delivery
            .as_ref()
            .is_none_or(|last| (attempt.time, &attempt.name) >= (last.time, &last.name));
        if newer {
            self.last_delivery = Some(attempt);
        }
    }
}

/// The Webhook's new status, from its tally and the number of its delivery
/// records still pending.
pub fn plan(
    webhook: &Webhook,
    pending: i64,
    tally: &DeliveryTally,
    observed: &WebhookObservation,
    now: DateTime<Utc>,
) -> WebhookStatus {
    let mut status = webhook.status.clone().unwrap_or_default();
    let generation = webhook.metadata.generation;
    if let Some(disabled) = &tally.disabled {
        status.disabled = Some(disabled.clone());
    }
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
    // Switched off by its endpoint: nothing is sent until its URL changes.
    let stuck = status
        .disabled
        .as_ref()
        .map(|d| (d.reason.clone(), d.message.clone()));
    conditions::set_condition(
        &mut status.conditions,
        conditions::stalled(stuck),
        generation,
        now,
    );

    status.succeeded = tally.succeeded;
    status.failed = tally.failed;
    status.pending = pending;
    status.consecutive_failures = tally.consecutive_failures;
    status.last_delivery = tally.last_delivery.clone();
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeliveryRecords, Disabled, RetryPolicy, WebhookSecretRef, WebhookSpec};

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
                delivery_records: DeliveryRecords::Failures,
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

    fn ok() -> WebhookObservation {
        WebhookObservation {
            secret: Ok(()),
            address: Ok(()),
            ca_bundle: Ok(()),
        }
    }

    fn attempt(name: &str, secs: i64, code: Option<i32>) -> LastDelivery {
        LastDelivery {
            name: name.into(),
            time: at(secs),
            status_code: code,
            succeeded: code.is_some_and(|c| (200..300).contains(&c)),
        }
    }

    #[test]
    fn counts_and_the_last_attempt_come_from_the_tally() {
        let mut tally = DeliveryTally::default();
        tally.add(attempt("a", 1, Some(500)), AttemptEnd::Retrying);
        tally.add(attempt("a", 2, Some(200)), AttemptEnd::Delivered);
        tally.add(attempt("c", 0, Some(500)), AttemptEnd::Failed);
        tally.add(attempt("b", 3, Some(503)), AttemptEnd::Retrying);
        tally.add(attempt("b", 4, None), AttemptEnd::Retrying);
        let status = plan(&webhook("https://h.example.com/"), 1, &tally, &ok(), at(10));
        assert_eq!((status.succeeded, status.failed, status.pending), (1, 1, 1));
        assert_eq!(status.consecutive_failures, 3);
        let last = status.last_delivery.unwrap();
        assert_eq!(
            (last.name.as_str(), last.status_code, last.succeeded),
            ("b", None, false)
        );
        assert!(conditions::is_true(&status.conditions, types::READY));
    }

    #[test]
    fn counts_resumed_at_i64_max_stay_there() {
        // A Webhook whose status.succeeded (or failed, consecutiveFailures)
        // was i64::MAX panicked on its next attempt: attempt to add with
        // overflow.
        let mut hook = webhook("https://h.example.com/");
        hook.status = Some(WebhookStatus {
            succeeded: i64::MAX,
            failed: i64::MAX,
            consecutive_failures: i64::MAX,
            ..WebhookStatus::default()
        });
        let mut tally = DeliveryTally::from_status(hook.status.as_ref());
        tally.add(attempt("x", 5, Some(500)), AttemptEnd::Failed);
        tally.add(attempt("y", 6, Some(500)), AttemptEnd::Retrying);
        assert_eq!(
            (tally.failed, tally.consecutive_failures),
            (i64::MAX, i64::MAX)
        );
        tally.add(attempt("z", 7, Some(204)), AttemptEnd::Delivered);
        assert_eq!((tally.succeeded, tally.consecutive_failures), (i64::MAX, 0));
    }

    #[test]
    fn counting_resumes_from_the_status_after_a_restart() {
        let mut hook = webhook("https://h.example.com/");
        hook.status = Some(WebhookStatus {
            succeeded: 40,
            failed: 2,
            ..WebhookStatus::default()
        });
        let mut tally = DeliveryTally::from_status(hook.status.as_ref());
        tally.add(attempt("x", 5, Some(204)), AttemptEnd::Delivered);
        let status = plan(&hook, 0, &tally, &ok(), at(10));
        assert_eq!((status.succeeded, status.failed), (41, 2));
    }

    #[test]
    fn ready_says_what_stands_in_the_way() {
        let hook = webhook("https://h.example.com/");
        let missing = WebhookObservation {
            secret: Err("Secret signing does not exist".into()),
            address: Ok(()),
            ca_bundle: Ok(()),
        };
        let status = plan(&hook, 0, &DeliveryTally::default(), &missing, at(0));
        let ready = conditions::find(&status.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("SecretNotUsable", "Secret signing does not exist")
        );

        let bad_bundle = WebhookObservation {
            ca_bundle: Err("spec.caBundle holds no usable PEM certificate".into()),
            ..ok()
        };
        let status = plan(&hook, 0, &DeliveryTally::default(), &bad_bundle, at(0));
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
        let status = plan(&inactive, 0, &DeliveryTally::default(), &ok(), at(0));
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
        let status = plan(&hook, 0, &DeliveryTally::default(), &ok(), at(1));
        assert!(status.disabled.is_some());
        assert_eq!(
            conditions::find(&status.conditions, types::READY)
                .unwrap()
                .reason,
            "EndpointGone"
        );
        hook.spec.url = "https://new.example.com/".into();
        let status = plan(&hook, 0, &DeliveryTally::default(), &ok(), at(2));
        assert!(status.disabled.is_none());
        assert!(conditions::is_true(&status.conditions, types::READY));
    }
}
