//! Publishing Kubernetes Events (events.k8s.io/v1).
//!
//! kube's own Recorder folds every repeat of a reason into the first Event of
//! that reason and keeps the first note, so "Stopped -> Starting" would show
//! as the earlier "Provisioning -> Starting". Here the note is part of the
//! key, as in client-go: a repeat of the very same message within the window
//! bumps its series count, anything else is a new Event.
//!
//! Like client-go's spam filter, each object may publish a burst of Normal
//! Events, then one every few minutes: an object flipping back and forth
//! all day would otherwise cost the API server a write each time, for
//! Events nobody reads (its `status.history` and the webhooks have every
//! one). Warnings are never held back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::Mutex;

/// Repeats of one message within this window count into one Event.
const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// Normal Events an object may publish at once (client-go's default).
const NORMAL_BURST: f64 = 25.0;
/// One more Normal Event an object may publish every this long.
const NORMAL_REFILL: Duration = Duration::from_secs(300);
/// How often the maps of recent Events and allowances are swept of what
/// has aged out. Sweeping on every Event would cost time in proportion to
/// every object that published lately, for each Event.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Longest note the API server accepts.
const NOTE_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key<'a> {
    uid: &'a str,
    warning: bool,
    reason: &'a str,
    note: &'a str,
}

impl Key<'_> {
    /// What the map of recent Events is keyed by: a hash of the key rather
    /// than its four strings. Every object that published lately is in
    /// that map, 10,000 at the end of a burst of Instances; a collision of
    /// 64-bit hashes would only count one Event into another's series.
    fn digest(&self) -> u64 {
        crate::runtime::digest(self)
    }
}

/// An Event published lately, for counting repeats into its series. Its
/// namespace is that of the object it is about, and its name is that
/// object's name and `stamp` ([`event_name`]): numbers only, as every
/// object that published lately has one.
struct Seen {
    stamp: u64,
    count: i32,
    at: Instant,
}

/// The name of an Event about the object named `regarding`, told apart
/// from its others by `stamp` (when it was first published, in
/// nanoseconds).
fn event_name(regarding: &str, stamp: u64) -> String {
    let mut object_name = regarding.to_string();
    object_name.truncate(200);
    format!("{object_name}.{stamp:x}")
}

/// Publishes Events on behalf of the operator.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    seen: Mutex<HashMap<u64, Seen>>,
    /// Normal Events each object may still publish, by the digest of its
    /// UID, and when that was counted.
    allowance: std::sync::Mutex<HashMap<u64, (f64, Instant)>>,
    /// When the maps were last swept.
    swept: std::sync::Mutex<Instant>,
}

/// Whether an object may publish one more Normal Event, taking it from its
/// allowance (a token bucket). Pure.
fn take_allowance(allowance: &mut (f64, Instant), now: Instant) -> bool {
    let (tokens, counted) = allowance;
    let refilled = now.duration_since(*counted).as_secs_f64() / NORMAL_REFILL.as_secs_f64();
    *tokens = (*tokens + refilled).min(NORMAL_BURST);
    *counted = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

impl EventPublisher {
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            seen: Mutex::new(HashMap::new()),
            allowance: std::sync::Mutex::new(HashMap::new()),
            swept: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Whether it is time to sweep the maps; if so, the clock restarts.
    fn sweep_due(&self, now: Instant) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*swept) < SWEEP_EVERY {
            return false;
        }
        *swept = now;
        true
    }

    /// Whether a Normal Event about `uid` may go out now.
    fn allowed(&self, uid: &str, now: Instant, sweep: bool) -> bool {
        let mut allowance = self.allowance.lock().unwrap_or_else(|p| p.into_inner());
        if sweep {
            // An object whose allowance has refilled is as one never seen:
            // forget it, so the map holds only objects still refilling.
            allowance.retain(|_, (tokens, counted)| {
                let refilled =
                    now.duration_since(*counted).as_secs_f64() / NORMAL_REFILL.as_secs_f64();
                *tokens + refilled < NORMAL_BURST
            });
        }
        let entry = allowance
            .entry(crate::runtime::digest(uid))
            .or_insert((NORMAL_BURST, now));
        take_allowance(entry, now)
    }

    /// Publishes one Event about `regarding`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let note = truncate(note, NOTE_LIMIT);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let uid = regarding.uid.clone().unwrap_or_default();
        let key = Key {
            uid: &uid,
            warning,
            reason,
            note: &note,
        }
        .digest();
        let now = Instant::now();
        let sweep = self.sweep_due(now);
        if !warning && !self.allowed(&uid, now, sweep) {
            tracing::debug!(
                reason,
                "Normal Event held back: the object published many lately"
            );
            return Ok(());
        }
        // The lock is held only around the map, never across an API call.
        let repeat = {
            let mut seen = self.seen.lock().await;
            if sweep {
                seen.retain(|_, s| now.duration_since(s.at) < SERIES_WINDOW);
            }
            seen.get_mut(&key)
                .filter(|previous| now.duration_since(previous.at) < SERIES_WINDOW)
                .map(|previous| {
                    previous.count += 1;
                    previous.at = now;
                    (previous.stamp, previous.count)
                })
        };
        let regarding_name = regarding.name.as_deref().unwrap_or_default();
        if let Some((stamp, count)) = repeat {
            let name = event_name(regarding_name, stamp);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) }
            });
            let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired or removed: publish it afresh below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let stamp = u64::try_from(Timestamp::now().as_nanosecond()).unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(regarding_name, stamp)),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("Reconcile".into()),
            reason: Some(reason.to_string()),
            note: Some(note),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {}
            // Nothing can be created in a namespace that is going away, and
            // nobody will read an Event there.
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("being terminated") =>
            {
                return Ok(());
            }
            Err(err) => return Err(err),
        }
        self.seen.lock().await.insert(
            key,
            Seen {
                stamp,
                count: 1,
                at: now,
            },
        );
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_may_publish_a_burst_then_one_every_few_minutes() {
        let start = Instant::now();
        let mut allowance = (NORMAL_BURST, start);
        let burst = (0..40)
            .filter(|_| take_allowance(&mut allowance, start))
            .count();
        assert_eq!(burst, 25);
        assert!(!take_allowance(&mut allowance, start + NORMAL_REFILL / 2));
        assert!(take_allowance(
            &mut allowance,
            start + NORMAL_REFILL + Duration::from_secs(1)
        ));
        assert!(!take_allowance(
            &mut allowance,
            start + NORMAL_REFILL + Duration::from_secs(2)
        ));
    }
}
