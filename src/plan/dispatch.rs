//! Which WebhookDeliveries a lifecycle history calls for. Pure.
//!
//! Each undispatched history entry becomes one delivery per matching, active
//! Webhook in the object's namespace. A delivery's name is derived from the
//! webhook, the object's UID and the sequence, so creating it twice is
//! harmless and a crash between creating deliveries and recording
//! `dispatchedSeq` re-creates instead of losing.

use std::hash::{Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::{
    DeliveryEvent, EventSubject, EventType, HistoryEntry, MANAGED_BY, MANAGED_BY_LABEL, Webhook,
    WebhookDelivery, WebhookDeliverySpec,
};

/// The label on a delivery that names its webhook.
pub const WEBHOOK_LABEL: &str = "ctrlplane.dev/webhook";

/// Whether a webhook's event filter takes an event type: empty takes all,
/// `*` takes all, `family.*` takes the family, otherwise exact names.
pub fn event_matches(filter: &[String], type_: EventType) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| {
            f == "*"
                || f == type_.as_str()
                || f.strip_suffix(".*")
                    .is_some_and(|family| family == type_.family())
        })
}

/// Whether a webhook receives events now: switched on in spec, and not
/// switched off by the operator for its current URL.
pub fn webhook_accepts(webhook: &Webhook) -> bool {
    let disabled = webhook
        .status
        .as_ref()
        .and_then(|s| s.disabled.as_ref())
        .is_some_and(|d| d.url == webhook.spec.url);
    webhook.spec.active && !disabled
}

/// The delivery's name: readable, unique per (webhook, object, sequence),
/// and a valid object name whatever the webhook's name.
pub fn delivery_name(webhook: &str, uid: &str, sequence: i64) -> String {
    const KEEP: usize = 60;
    let prefix = if webhook.len() <= KEEP {
        webhook.to_string()
    } else {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        webhook.hash(&mut hasher);
        format!(
            "{}-{:08x}",
            webhook[..KEEP].trim_end_matches(['-', '.']),
            hasher.finish() as u32
        )
    };
    format!("{prefix}-{uid}-{sequence}")
}

/// The id a receiver sees in the webhook-id header: the same for every
/// attempt and every webhook of one event.
pub fn event_id(uid: &str, sequence: i64) -> String {
    format!("evt_{}_{sequence}", uid.replace('-', ""))
}

/// The deliveries for every entry past `dispatched`, for every webhook that
/// takes it.
pub fn deliveries_for(
    subject: &EventSubject,
    history: &[HistoryEntry],
    dispatched: i64,
    webhooks: &[&Webhook],
) -> Vec<WebhookDelivery> {
    let mut deliveries = Vec::new();
    for entry in history.iter().filter(|e| e.sequence > dispatched) {
        for webhook in webhooks {
            if !webhook_accepts(webhook) || !event_matches(&webhook.spec.events, entry.type_) {
                continue;
            }
            let webhook_name = webhook.name_any();
            let mut delivery = WebhookDelivery::new(
                &delivery_name(&webhook_name, &subject.uid, entry.sequence),
                WebhookDeliverySpec {
                    webhook_name: webhook_name.clone(),
                    event: DeliveryEvent {
                        id: event_id(&subject.uid, entry.sequence),
                        type_: entry.type_,
                        timestamp: entry.time,
                        subject: subject.clone(),
                        sequence: entry.sequence,
                        from: entry.from.clone(),
                        to: entry.to.clone(),
                        reason: entry.reason.clone(),
                        message: entry.message.clone(),
                        details: entry.details.clone(),
                    },
                },
            );
            delivery.metadata = ObjectMeta {
                namespace: webhook.namespace(),
                labels: Some(
                    [
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                        (WEBHOOK_LABEL.to_string(), webhook_name.clone()),
                    ]
                    .into(),
                ),
                // The webhook owns its deliveries: deleting it removes them.
                owner_references: Some(vec![OwnerReference {
                    api_version: Webhook::api_version(&()).into_owned(),
                    kind: Webhook::kind(&()).into_owned(),
                    name: webhook_name,
                    uid: webhook.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..delivery.metadata
            };
            deliveries.push(delivery);
        }
    }
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_match_exact_names_families_and_everything() {
        use EventType::*;
        assert!(event_matches(&[], InstanceStarted));
        assert!(event_matches(&filter(&["*"]), SandboxExpired));
        assert!(event_matches(&filter(&["instance.*"]), InstanceScaled));
        assert!(!event_matches(&filter(&["instance.*"]), DeployFailed));
        assert!(event_matches(&filter(&["deploy.failed"]), DeployFailed));
        assert!(!event_matches(&filter(&["deploy.failed"]), DeploySucceeded));
        assert!(event_matches(
            &filter(&["sandbox.*", "deploy.failed"]),
            DeployFailed
        ));
    }

    #[test]
    fn delivery_names_are_deterministic_unique_and_valid() {
        let uid = "0a1b2c3d-0000-4000-8000-000000000000";
        assert_eq!(delivery_name("hooks", uid, 7), format!("hooks-{uid}-7"));
        assert_eq!(
            delivery_name("hooks", uid, 7),
            delivery_name("hooks", uid, 7)
        );
        assert_ne!(
            delivery_name("hooks", uid, 7),
            delivery_name("hooks", uid, 8)
        );
        let long_a = format!("{}a", "x".repeat(70));
        let long_b = format!("{}b", "x".repeat(70));
        let a = delivery_name(&long_a, uid, i64::MAX);
        assert_ne!(a, delivery_name(&long_b, uid, i64::MAX));
        assert!(a.len() <= 253, "{a}");
    }
}
