//! Webhook dispatch, the I/O half: sending each recorded lifecycle event to
//! the Webhooks that take it, without an API write when it succeeds.
//!
//! The lifecycle engine hands over history entries once they are durably
//! recorded in the object's status ([`Dispatcher::submit`]); handing over
//! never waits. For every (Webhook, object) pair a worker takes the pair's
//! events in sequence order and:
//! - sends the event at once, when the Webhook keeps `Failures` records and
//!   no record of that pair is pending: a 2xx costs no write at all;
//! - otherwise, or when that attempt fails, creates a durable
//!   WebhookDelivery (with the failed attempt in its status) that carries
//!   the retries; later events of the pair queue behind it as records too,
//!   so order per (Webhook, object) holds.
//!
//! An entry is dispatched once every Webhook that takes it has answered 2xx
//! or been handed a record. The engine folds how far that has got into the
//! object's `status.dispatchedSeq` at its next status write
//! ([`Dispatcher::settle`]), or writes it by itself a little later, and a
//! deleted object keeps its finalizer until it is all dispatched. What is
//! known here is only in memory: a crash sends again what was not yet
//! folded into the status, with the same `webhook-id`, so receivers can drop
//! the duplicate. Nothing is lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, warn};

use super::delivery::{Courier, conclude, policy};
use super::events::EventPublisher;
use super::record::HasHistory;
use super::webhook::DeliveryLedger;
use crate::api::{DeliveryRecords, EventSubject, HistoryEntry, Webhook, WebhookDelivery};
use crate::delivery::{self, Completion};
use crate::plan::delivery::{FIRST_ATTEMPT_ANNOTATION, is_pending};
use crate::plan::dispatch::{
    delivery_event, delivery_name, delivery_record, dispatched_through, takers,
};
use crate::runtime::kubeapi::{self, is_conflict, is_namespace_terminating};
use crate::runtime::metrics::Metrics;

/// Wakes a lifecycle object, by namespace and name, so its reconcile folds
/// `dispatchedSeq` into its status or releases its finalizer.
pub type Waker = UnboundedSender<(String, String)>;

/// One (Webhook, object) pair: its events go out one at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pair {
    namespace: String,
    webhook: String,
    uid: String,
}

/// One event on its way to one Webhook.
struct Job {
    subject: EventSubject,
    entry: HistoryEntry,
}

/// How far dispatch has got for one object, in this process.
struct Progress {
    kind: String,
    namespace: String,
    name: String,
    /// The highest sequence handed over.
    handed_over: i64,
    /// Sequences still under way, with how many Webhooks are not done yet.
    under_way: BTreeMap<i64, usize>,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Progress>,
    queues: HashMap<Pair, VecDeque<Job>>,
    /// Records created by a pair's worker that the cache may not show yet:
    /// a later event of the pair must queue behind them.
    recent_records: HashMap<Pair, String>,
}

/// Sends recorded lifecycle events to Webhooks.
pub struct Dispatcher {
    client: Client,
    webhooks: Store<Webhook>,
    deliveries: Store<WebhookDelivery>,
    courier: Arc<Courier>,
    ledger: Arc<DeliveryLedger>,
    metrics: Arc<Metrics>,
    events: Arc<EventPublisher>,
    state: Mutex<State>,
    wakers: Mutex<HashMap<String, Waker>>,
}

impl Dispatcher {
    pub fn new(
        client: Client,
        webhooks: Store<Webhook>,
        deliveries: Store<WebhookDelivery>,
        courier: Arc<Courier>,
        ledger: Arc<DeliveryLedger>,
        events: Arc<EventPublisher>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            webhooks,
            deliveries,
            courier,
            ledger,
            metrics,
            events,
            state: Mutex::new(State::default()),
            wakers: Mutex::new(HashMap::new()),
        }
    }

    /// Registers how to wake objects of `kind`.
    pub fn register(&self, kind: &str, waker: Waker) {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers.insert(kind.to_string(), waker);
        }
    }

    /// The object an event is about.
    pub fn subject<K: Resource<DynamicType = ()>>(object: &K) -> EventSubject {
        EventSubject {
            kind: K::kind(&()).into_owned(),
            name: object.meta().name.clone().unwrap_or_default(),
            uid: object.meta().uid.clone().unwrap_or_default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Webhooks in a namespace.
    fn webhooks_in(&self, namespace: &str) -> Vec<Arc<Webhook>> {
        self.webhooks
            .state()
            .into_iter()
            .filter(|w| w.namespace().as_deref() == Some(namespace))
            .collect()
    }

    /// Whether the namespace has a Webhook. Its objects then hold their
    /// finalizer, so that their last events are sent before they go. Any
    /// Webhook counts, whatever its filter or state: one switched off or
    /// filtering today may take events tomorrow, and an object must already
    /// hold its finalizer when it is deleted.
    pub fn has_webhooks(&self, namespace: &str) -> bool {
        self.webhooks
            .state()
            .iter()
            .any(|w| w.namespace().as_deref() == Some(namespace))
    }

    /// Moves `status.dispatchedSeq` as far as dispatch has got: past what
    /// this process has seen finish, and past entries no Webhook takes.
    /// The bounded history is trimmed with it.
    pub fn settle(&self, subject: &EventSubject, namespace: &str, status: &mut impl HasHistory) {
        let webhooks = self.webhooks_in(namespace);
        let webhooks: Vec<&Webhook> = webhooks.iter().map(|w| w.as_ref()).collect();
        let (handed_over, under_way) = {
            let state = self.state();
            match state.objects.get(&subject.uid) {
                Some(progress) => (progress.handed_over, progress.under_way.clone()),
                None => (0, BTreeMap::new()),
            }
        };
        let through = dispatched_through(
            status.history(),
            status.dispatched_seq(),
            handed_over,
            |sequence| under_way.contains_key(&sequence),
            |entry| {
                !takers(&webhooks, entry).is_empty() && !self.all_switched_off(&webhooks, entry)
            },
        );
        status.set_dispatched_seq(through);
        crate::plan::history::trim(status.history_mut(), through);
    }

    /// Whether every Webhook that would take an entry was switched off by a
    /// 410 this process has seen, before the cache shows it.
    fn all_switched_off(&self, webhooks: &[&Webhook], entry: &HistoryEntry) -> bool {
        takers(webhooks, entry)
            .iter()
            .all(|w| self.ledger.is_switched_off(w))
    }

    /// Hands over the recorded entries past `status.dispatchedSeq` that
    /// were not handed over yet. Never waits.
    pub fn submit(
        self: &Arc<Self>,
        subject: &EventSubject,
        namespace: &str,
        status: &impl HasHistory,
    ) {
        let webhooks = self.webhooks_in(namespace);
        let webhooks: Vec<&Webhook> = webhooks.iter().map(|w| w.as_ref()).collect();
        let mut started = Vec::new();
        {
            let mut state = self.state();
            let from = state
                .objects
                .get(&subject.uid)
                .map_or(0, |p| p.handed_over)
                .max(status.dispatched_seq());
            let mut jobs = Vec::new();
            let mut under_way = Vec::new();
            let mut last_handed_over = None;
            for entry in status.history().iter().filter(|e| e.sequence > from) {
                let takers: Vec<String> = takers(&webhooks, entry)
                    .into_iter()
                    .filter(|w| !self.ledger.is_switched_off(w))
                    .map(|w| w.name_any())
                    .collect();
                if !takers.is_empty() {
                    under_way.push((entry.sequence, takers.len()));
                }
                last_handed_over = Some(entry.sequence);
                for webhook in takers {
                    jobs.push((
                        Pair {
                            namespace: namespace.to_string(),
                            webhook,
                            uid: subject.uid.clone(),
                        },
                        Job {
                            subject: subject.clone(),
                            entry: entry.clone(),
                        },
                    ));
                }
            }
            // An object whose entries no Webhook takes needs no record
            // here: `settle` passes such entries by itself. At 10,000
            // Instances in a namespace without Webhooks that is ~0.3 KB
            // each kept for nothing.
            if let Some(last) = last_handed_over
                && (!jobs.is_empty() || state.objects.contains_key(&subject.uid))
            {
                let progress =
                    state
                        .objects
                        .entry(subject.uid.clone())
                        .or_insert_with(|| Progress {
                            kind: subject.kind.clone(),
                            namespace: namespace.to_string(),
                            name: subject.name.clone(),
                            handed_over: 0,
                            under_way: BTreeMap::new(),
                        });
                progress.under_way.extend(under_way);
                progress.handed_over = last;
            }
            for (pair, job) in jobs {
                let queue = state.queues.entry(pair.clone()).or_default();
                let idle = queue.is_empty();
                queue.push_back(job);
                if idle {
                    started.push(pair);
                }
            }
        }
        for pair in started {
            let dispatcher = self.clone();
            tokio::spawn(async move { dispatcher.work(pair).await });
        }
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, uid: &str) {
        let mut state = self.state();
        let idle = state
            .objects
            .get(uid)
            .is_some_and(|p| p.under_way.is_empty());
        if idle {
            state.objects.remove(uid);
        }
    }

    /// A pair's worker: its events, one at a time, in order, until none is
    /// left.
    async fn work(self: Arc<Self>, pair: Pair) {
        loop {
            let job = {
                let mut state = self.state();
                match state.queues.get(&pair).and_then(|q| q.front()) {
                    Some(job) => Job {
                        subject: job.subject.clone(),
                        entry: job.entry.clone(),
                    },
                    None => {
                        state.queues.remove(&pair);
                        state.recent_records.remove(&pair);
                        return;
                    }
                }
            };
            self.deliver(&pair, &job).await;
            let woken = {
                let mut state = self.state();
                if let Some(queue) = state.queues.get_mut(&pair) {
                    queue.pop_front();
                }
                self.done(&mut state, &job)
            };
            if let Some((kind, namespace, name)) = woken {
                self.wake(&kind, namespace, name);
            }
        }
    }

    /// One Webhook is done with one entry. Returns the object to wake when
    /// that moved how far its dispatch has got.
    fn done(&self, state: &mut State, job: &Job) -> Option<(String, String, String)> {
        let progress = state.objects.get_mut(&job.subject.uid)?;
        let before = progress.under_way.keys().next().copied();
        if let Some(left) = progress.under_way.get_mut(&job.entry.sequence) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                progress.under_way.remove(&job.entry.sequence);
            }
        }
        let after = progress.under_way.keys().next().copied();
        (before != after).then(|| {
            (
                progress.kind.clone(),
                progress.namespace.clone(),
                progress.name.clone(),
            )
        })
    }

    fn wake(&self, kind: &str, namespace: String, name: String) {
        let waker = self.wakers.lock().ok().and_then(|w| w.get(kind).cloned());
        if let Some(waker) = waker {
            let _ = waker.unbounded_send((namespace, name));
        }
    }

    /// Whether a record of the pair is still pending: in the cache, or
    /// just created here and not in the cache yet.
    fn pair_has_pending_record(&self, pair: &Pair) -> bool {
        let in_cache = self.deliveries.state().iter().any(|d| {
            d.namespace().as_deref() == Some(pair.namespace.as_str())
                && d.spec.webhook_name == pair.webhook
                && d.spec.event.subject.uid == pair.uid
                && is_pending(d)
        });
        if in_cache {
            return true;
        }
        let recent = self.state().recent_records.get(pair).cloned();
        recent.is_some_and(|name| {
            self.deliveries
                .get(&ObjectRef::new(&name).within(&pair.namespace))
                .is_none()
        })
    }

    /// Delivers one event to one Webhook: sent at once, or handed to a
    /// durable record. Returns once one of the two has happened.
    async fn deliver(&self, pair: &Pair, job: &Job) {
        let Some(webhook) = self
            .webhooks
            .get(&ObjectRef::new(&pair.webhook).within(&pair.namespace))
        else {
            // Deleted since: nobody is left to deliver to.
            return;
        };
        if !crate::plan::dispatch::webhook_accepts(&webhook)
            || self.ledger.is_switched_off(&webhook)
        {
            return;
        }
        let event = delivery_event(&job.subject, &job.entry);
        let keep_all = webhook.spec.delivery_records == DeliveryRecords::All;
        if keep_all || self.pair_has_pending_record(pair) {
            self.hand_to_record(pair, &webhook, delivery_record(&webhook, event), None)
                .await;
            return;
        }
        let endpoint = self.courier.endpoint(&pair.namespace, &pair.webhook);
        let attempt = {
            let _permit = endpoint.acquire().await;
            self.courier.attempt(&webhook, &event).await
        };
        let (status, completion) = delivery::record_attempt(
            &Default::default(),
            &policy(&webhook),
            &attempt.result,
            attempt.started,
            attempt.took,
            fastrand::f64(),
        );
        self.courier.count(completion, &event);
        let name = delivery_name(&pair.webhook, &pair.uid, job.entry.sequence);
        self.ledger.attempted(&webhook, &name, &attempt, completion);
        if completion == Some(Completion::Delivered) {
            debug!(delivery = name, "delivered at the first attempt");
            return;
        }
        // It needs a retry, or failed for good (410, or a policy of one
        // attempt): a record says so and carries what is left.
        let mut record = delivery_record(&webhook, event);
        record.metadata.annotations = Some(
            [(
                FIRST_ATTEMPT_ANNOTATION.to_string(),
                attempt.started.to_rfc3339(),
            )]
            .into(),
        );
        self.hand_to_record(pair, &webhook, record, Some(status.clone()))
            .await;
        if let Some(completion) = completion {
            let concluded = conclude(
                &self.client,
                &self.events,
                &self.ledger,
                &webhook,
                &name,
                &status,
                completion,
            )
            .await;
            if let Err(error) = concluded {
                warn!(%error, "concluding a failed delivery");
            }
        }
    }

    /// Creates a record (and writes its first attempt, when there was one),
    /// retrying until it exists: only then is the event handed over. A
    /// namespace being deleted takes its Webhooks with it; the event has
    /// nowhere left to go and is let go (counted).
    async fn hand_to_record(
        &self,
        pair: &Pair,
        webhook: &Webhook,
        record: WebhookDelivery,
        status: Option<crate::api::WebhookDeliveryStatus>,
    ) {
        let api: Api<WebhookDelivery> = Api::namespaced(self.client.clone(), &pair.namespace);
        let name = record.name_any();
        let mut wait = Duration::from_secs(1);
        let created = loop {
            match api.create(&PostParams::default(), &record).await {
                Ok(created) => break Some(created),
                // Made before a crash, or by an earlier try: it is there.
                Err(error) if is_conflict(&error) => break None,
                Err(error) if is_namespace_terminating(&error) => {
                    self.metrics.events_dropped.inc();
                    debug!(
                        delivery = name,
                        "namespace is being deleted; its webhooks go with it"
                    );
                    return;
                }
                Err(error) => {
                    warn!(
                        delivery = name,
                        error = %kubeapi::describe_kube_error(&error),
                        "creating a delivery record failed; trying again"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                    if self
                        .webhooks
                        .get(&ObjectRef::new(&webhook.name_any()).within(&pair.namespace))
                        .is_none()
                    {
                        return;
                    }
                }
            }
        };
        // A record still to be sent: later events of the pair queue behind
        // it, also before the cache shows it.
        let pending = status.as_ref().is_none_or(|s| {
            s.phase
                .is_none_or(|p| p == crate::api::DeliveryPhase::Pending)
        });
        if pending {
            self.state()
                .recent_records
                .insert(pair.clone(), name.clone());
        }
        if let (Some(mut created), Some(status)) = (created, status) {
            created.status = Some(status);
            if let Err(error) = kubeapi::replace_status(&api, &created).await {
                // The record exists, so the event is safe; it is attempted
                // again without the first attempt in its log.
                warn!(
                    delivery = name,
                    error = %kubeapi::describe_kube_error(&error),
                    "recording the first attempt failed"
                );
            }
        }
    }
}
