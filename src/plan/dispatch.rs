//! Webhook dispatch, the deciding half. Pure.
//!
//! Each undispatched history entry goes to every matching, active Webhook
//! in the object's namespace. An entry is dispatched once every one of them
//! has answered 2xx or been handed a durable WebhookDelivery; `dispatchedSeq`
//! then moves past it. A delivery record's name is derived from the webhook,
//! the object's UID and the sequence, so creating it twice is harmless, and
//! the event id a receiver sees is the same on every attempt, so a crash that
//! sends an event again is one receivers can drop.

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
/// `*` takes all, `prefix.*` takes every type under the prefix
/// (`sandbox.*` takes `sandbox.command.started` too), otherwise exact names
/// and their deprecated aliases (`health.healthy` takes health.recovered,
/// `health.unhealthy` health.degraded and health.failed).
pub fn event_matches(filter: &[String], type_: EventType) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| {
            f == "*"
                || f == type_.as_str()
                || type_.filter_aliases().contains(&f.as_str())
                || f.strip_suffix(".*").is_some_and(|prefix| {
                    type_
                        .as_str()
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
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
        // A valid name is ASCII, but a stored one need not be: cut at a
        // character boundary.
        let mut keep = KEEP;
        while !webhook.is_char_boundary(keep) {
            keep -= 1;
        }
        format!(
            "{}-{:08x}",
            webhook[..keep].trim_end_matches(['-', '.']),
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

/// The Webhooks among `webhooks` that take an entry.
pub fn takers<'a>(webhooks: &[&'a Webhook], entry: &HistoryEntry) -> Vec<&'a Webhook> {
    webhooks
        .iter()
        .copied()
        .filter(|w| webhook_accepts(w) && event_matches(&w.spec.events, entry.type_))
        .collect()
}

/// The event a history entry becomes on the wire.
pub fn delivery_event(subject: &EventSubject, entry: &HistoryEntry) -> DeliveryEvent {
    DeliveryEvent {
        id: event_id(&subject.uid, entry.sequence),
        type_: entry.type_,
        timestamp: entry.time,
        subject: subject.clone(),
        sequence: entry.sequence,
        from: entry.from.as_ref().map(String::from),
        to: entry.to.as_ref().map(String::from),
        reason: entry.reason.to_string(),
        message: entry.message.to_string(),
        details: entry.details.clone(),
    }
}

/// The durable record of one event to one Webhook, owned by the Webhook (so
/// deleting it removes its records).
pub fn delivery_record(webhook: &Webhook, event: DeliveryEvent) -> WebhookDelivery {
    let webhook_name = webhook.name_any();
    let mut delivery = WebhookDelivery::new(
        &delivery_name(&webhook_name, &event.subject.uid, event.sequence),
        WebhookDeliverySpec {
            webhook_name: webhook_name.clone(),
            event,
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
    delivery
}

/// How far dispatch has got for one object: the highest sequence such that
/// every history entry up to it is dispatched. An entry is dispatched when
/// it is at or below `known` (the persisted `dispatchedSeq`, or what this
/// process has seen finish), or when it was handed over and nothing of it
/// is still under way, or when no Webhook takes it at all.
pub fn dispatched_through(
    history: &[HistoryEntry],
    known: i64,
    handed_over: i64,
    under_way: impl Fn(i64) -> bool,
    taken: impl Fn(&HistoryEntry) -> bool,
) -> i64 {
    let mut through = known;
    for entry in history.iter().filter(|e| e.sequence > known) {
        let done = if entry.sequence <= handed_over {
            !under_way(entry.sequence)
        } else {
            !taken(entry)
        };
        if !done {
            break;
        }
        through = entry.sequence;
    }
    through
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
        assert!(event_matches(
            &filter(&["sandbox.*"]),
            SandboxCommandStarted
        ));
        assert!(event_matches(
            &filter(&["sandbox.command.*"]),
            SandboxCommandFailed
        ));
        assert!(!event_matches(
            &filter(&["sandbox.command.*"]),
            SandboxStarted
        ));
        assert!(!event_matches(
            &filter(&["sandbox.snap.*"]),
            SandboxSnapshotReady
        ));
    }

    #[test]
    fn health_filters_take_their_own_name_the_family_and_the_deprecated_aliases() {
        use EventType::*;
        let health = [HealthPassed, HealthFailed, HealthDegraded, HealthRecovered];
        let takes = |f: &str| -> Vec<EventType> {
            health
                .into_iter()
                .filter(|t| event_matches(&filter(&[f]), *t))
                .collect()
        };
        assert_eq!(takes("health.passed"), [HealthPassed]);
        assert_eq!(takes("health.failed"), [HealthFailed]);
        assert_eq!(takes("health.degraded"), [HealthDegraded]);
        assert_eq!(takes("health.recovered"), [HealthRecovered]);
        assert_eq!(takes("health.*"), health);
        // The earlier names, for one more release.
        assert_eq!(takes("health.healthy"), [HealthRecovered]);
        assert_eq!(takes("health.unhealthy"), [HealthFailed, HealthDegraded]);
        assert!(!event_matches(&filter(&["instance.*"]), HealthDegraded));
        // Entries recorded under the earlier names still reach their filters.
        assert!(event_matches(&filter(&["health.healthy"]), HealthHealthy));
        assert!(event_matches(&filter(&["health.*"]), HealthUnhealthy));
        assert!(!event_matches(&filter(&["health.passed"]), HealthHealthy));
    }

    fn entry(sequence: i64, type_: EventType) -> HistoryEntry {
        HistoryEntry {
            sequence,
            type_,
            from: None,
            to: None,
            reason: "Test".into(),
            message: Default::default(),
            details: Default::default(),
            time: chrono::Utc::now(),
        }
    }

    #[test]
    fn dispatch_moves_past_entries_that_are_done_or_taken_by_nobody() {
        use EventType::*;
        let history = [
            entry(1, InstanceCreated),
            entry(2, InstanceStarting),
            entry(3, InstanceStarted),
            entry(4, DeployFailed),
        ];
        let only_deploy = |e: &HistoryEntry| e.type_.family() == "deploy";
        // Nothing handed over: entries nobody takes pass, the first taken stops it.
        assert_eq!(
            dispatched_through(&history, 0, 0, |_| false, only_deploy),
            3
        );
        // Everything taken and handed over, the third still under way.
        assert_eq!(dispatched_through(&history, 1, 4, |s| s == 3, |_| true), 2);
        // Handed over and finished.
        assert_eq!(dispatched_through(&history, 1, 4, |_| false, |_| true), 4);
        // Known dispatched beyond the history (trimmed): stays.
        assert_eq!(dispatched_through(&history, 9, 0, |_| true, |_| true), 9);
    }

    proptest::proptest! {
        /// Dispatch never moves past an entry that a Webhook takes and that
        /// was not handed over, nor past one still under way.
        #[test]
        fn dispatch_never_skips_an_undelivered_entry(
            taken in proptest::collection::vec(proptest::bool::ANY, 0..20),
            known in 0i64..20,
            handed in 0i64..25,
            busy in proptest::collection::vec(0i64..25, 0..5),
        ) {
            let history: Vec<_> = (1..=taken.len() as i64)
                .map(|s| entry(s, EventType::InstanceScaled))
                .collect();
            let through = dispatched_through(
                &history,
                known,
                handed,
                |s| busy.contains(&s),
                |e| taken[(e.sequence - 1) as usize],
            );
            proptest::prop_assert!(through >= known);
            for e in history.iter().filter(|e| e.sequence > known && e.sequence <= through) {
                let delivered = if e.sequence <= handed {
                    !busy.contains(&e.sequence)
                } else {
                    !taken[(e.sequence - 1) as usize]
                };
                proptest::prop_assert!(delivered, "moved past {}", e.sequence);
            }
        }
    }

    #[test]
    fn a_long_webhook_name_with_multibyte_characters_is_cut_at_a_character() {
        // "a" then 'é' over and over panicked: byte 60 is inside an 'é'.
        let name = format!("a{}", "é".repeat(40));
        let cut = delivery_name(&name, "uid", 1);
        assert!(cut.starts_with(&format!("a{}-", "é".repeat(29))), "{cut}");
        assert!(cut.ends_with("-uid-1"), "{cut}");
        let emoji = format!("aa{}", "😀".repeat(20));
        assert!(delivery_name(&emoji, "uid", 1).starts_with("aa"));
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
