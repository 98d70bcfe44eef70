//! Sending events, and the WebhookDelivery records that carry retries.
//!
//! [`Courier`] makes one signed attempt of one event to one Webhook; the
//! dispatcher's fast path and the record controller below both send through
//! it, so signing, timeouts, the address guard and the per-Webhook bound on
//! attempts in flight are the same for both.
//!
//! The record controller sends each record when it is due (a pure step
//! decides: [`crate::plan::delivery::next_step`]), records the attempt,
//! retries on the Webhook's policy, switches a Webhook off on 410, and lets
//! completed records expire.
//!
//! Order: for one Webhook and one object, a record is sent only once every
//! earlier one (lower sequence) is done, so a receiver sees each object's
//! events in sequence order. When one completes, the next is woken at once.
//!
//! Fairness: each Webhook may have a bounded number of attempts in flight.
//! A record whose Webhook is at its bound steps aside (requeued) instead of
//! holding a reconcile slot, so one slow receiver cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::Context;
use super::events::EventPublisher;
use super::harness::{instrumented_reconcile, retry_after_failure};
use super::webhook::DeliveryLedger;
use crate::api::{DeliveryEvent, Disabled, Webhook, WebhookDelivery, WebhookDeliveryStatus};
use crate::delivery::backoff::Policy;
use crate::delivery::client::{Request, Sender};
use crate::delivery::signing::{SigningKey, signature_header};
use crate::delivery::{self, AttemptResult, Completion};
use crate::plan::delivery::{DeliveryStep, is_pending, next_step, redelivered};
use crate::runtime::kubeapi::{self, StatusWrite, delete_if_present};
use crate::runtime::metrics::{DeliveryLabels, Metrics};

const KIND: &str = "WebhookDelivery";

/// Settings of webhook delivery.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Let endpoints resolve to loopback, link-local and private addresses.
    pub allow_private_addresses: bool,
    /// How long a completed delivery record is kept.
    pub completed_ttl: Duration,
    /// Attempts in flight at once per webhook.
    pub per_endpoint_concurrency: usize,
    /// Delivery records reconciled at once.
    pub concurrency: u16,
}

/// Errors of one delivery record reconcile.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "writing the status of {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "deleting expired delivery {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    Expire {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "switching off webhook {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    Disable {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Secrets are read when an event is signed, never watched (the operator
/// needs only `get` on Secrets), and kept for a few seconds so a burst of
/// deliveries does not read the same Secret a thousand times: concurrent
/// readers of one Secret wait for a single read. A rotated key is in use
/// within [`SecretCache::FRESH_FOR`].
pub struct SecretCache {
    client: Client,
    entries: Mutex<HashMap<(String, String), CachedSecret>>,
    reading: Mutex<HashMap<(String, String), ReadGate>>,
}

/// Held while one Secret is read, so concurrent readers wait for that read.
type ReadGate = Arc<tokio::sync::Mutex<()>>;

/// When a Secret was read, and what it was (`None`: it did not exist).
type CachedSecret = (std::time::Instant, Option<Arc<Secret>>);

impl SecretCache {
    pub const FRESH_FOR: Duration = Duration::from_secs(10);

    pub fn new(client: Client) -> Self {
        Self {
            client,
            entries: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, key: &(String, String)) -> Option<Option<Arc<Secret>>> {
        let (at, secret) = self.entries.lock().ok()?.get(key).cloned()?;
        (at.elapsed() < Self::FRESH_FOR).then_some(secret)
    }

    /// The Secret, or `None` when it does not exist.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(secret) = self.fresh(&key) {
            return Ok(secret);
        }
        // One read per Secret at a time; whoever waited finds it fresh.
        let gate = self
            .reading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _reading = gate.lock().await;
        if let Some(secret) = self.fresh(&key) {
            return Ok(secret);
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(Arc::new);
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, (std::time::Instant::now(), secret.clone()));
        }
        Ok(secret)
    }
}

/// The signing keys a Webhook's Secret holds: the current one, then the
/// previous one while it rotates. The error says what is wrong without
/// showing any key.
pub fn signing_keys(webhook: &Webhook, secret: Option<&Secret>) -> Result<Vec<SigningKey>, String> {
    let reference = &webhook.spec.secret_ref;
    let secret = secret.ok_or_else(|| format!("Secret {} does not exist", reference.name))?;
    let data = secret.data.clone().unwrap_or_default();
    let current = data
        .get(&reference.key)
        .ok_or_else(|| format!("Secret {} has no key {:?}", reference.name, reference.key))?;
    let mut keys = vec![
        SigningKey::parse(&current.0)
            .map_err(|e| format!("Secret {} key {:?}: {e}", reference.name, reference.key))?,
    ];
    if let Some(previous) = data.get(&reference.previous_key)
        && let Ok(key) = SigningKey::parse(&previous.0)
    {
        keys.push(key);
    }
    Ok(keys)
}

/// The retry policy of a Webhook, in the delivery module's units.
pub fn policy(webhook: &Webhook) -> Policy {
    let retry = &webhook.spec.retry_policy;
    Policy {
        max_attempts: u32::try_from(retry.max_attempts).unwrap_or(1).max(1),
        base: Duration::from_secs(u64::try_from(retry.backoff_base_seconds).unwrap_or(1)),
        cap: Duration::from_secs(u64::try_from(retry.backoff_cap_seconds).unwrap_or(1)),
    }
}

/// One attempt, as made.
pub struct Attempt {
    pub result: AttemptResult,
    pub started: DateTime<Utc>,
    pub took: Duration,
}

/// Makes signed attempts, with at most a bounded number in flight per
/// Webhook.
pub struct Courier {
    sender: Sender,
    secrets: SecretCache,
    per_endpoint: usize,
    endpoints: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
    metrics: Arc<Metrics>,
}

impl Courier {
    pub fn new(
        client: Client,
        allow_private_addresses: bool,
        per_endpoint: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sender: Sender::new(allow_private_addresses),
            secrets: SecretCache::new(client),
            per_endpoint: per_endpoint.max(1),
            endpoints: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The bound on attempts in flight to one Webhook.
    pub fn endpoint(&self, namespace: &str, webhook: &str) -> Arc<Semaphore> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .entry((namespace.to_string(), webhook.to_string()))
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
            .clone()
    }

    /// Signs and sends one event. The caller holds a permit of
    /// [`Courier::endpoint`].
    pub async fn attempt(&self, webhook: &Webhook, event: &DeliveryEvent) -> Attempt {
        let namespace = webhook.namespace().unwrap_or_default();
        let started = Utc::now();
        let secret = self
            .secrets
            .get(&namespace, &webhook.spec.secret_ref.name)
            .await
            .map_err(|e| kubeapi::describe_kube_error(&e));
        let (result, took) = match secret.and_then(|s| signing_keys(webhook, s.as_deref())) {
            Err(why) => (
                AttemptResult::Failed {
                    error: format!("cannot sign: {why}"),
                },
                Duration::ZERO,
            ),
            Ok(keys) => {
                let body = delivery::body(event, &namespace);
                let timestamp = started.timestamp();
                let signature = signature_header(&keys, &event.id, timestamp, &body);
                self.sender
                    .send(
                        &Request {
                            url: &webhook.spec.url,
                            timeout: Duration::from_secs(
                                u64::try_from(webhook.spec.timeout_seconds).unwrap_or(10),
                            ),
                            ca_bundle: webhook.spec.ca_bundle.as_deref(),
                            headers: &webhook.spec.headers,
                            id: &event.id,
                            timestamp,
                            signature: &signature,
                        },
                        body,
                    )
                    .await
            }
        };
        Attempt {
            result,
            started,
            took,
        }
    }

    /// Counts an attempt in the metrics: every attempt, whatever path made it.
    pub fn count(&self, completion: Option<Completion>, event: &DeliveryEvent) {
        let outcome = match completion {
            Some(Completion::Delivered) => "succeeded",
            Some(Completion::Gone) => "gone",
            Some(Completion::GaveUp) => "failed",
            None => "retrying",
        };
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                outcome: outcome.into(),
            })
            .inc();
        if completion == Some(Completion::Delivered) {
            let latency = (Utc::now() - event.timestamp).to_std().unwrap_or_default();
            self.metrics.delivery_latency.observe(latency.as_secs_f64());
        }
    }
}

/// The earliest pending record of the same webhook and object before this
/// one, if any.
fn blocked_by(
    deliveries: &Store<WebhookDelivery>,
    delivery: &WebhookDelivery,
) -> Option<Arc<WebhookDelivery>> {
    same_pair(deliveries, delivery)
        .filter(|d| d.spec.event.sequence < delivery.spec.event.sequence)
        .min_by_key(|d| d.spec.event.sequence)
}

/// The next pending record of the same webhook and object after this one.
fn next_in_line(
    deliveries: &Store<WebhookDelivery>,
    delivery: &WebhookDelivery,
) -> Option<Arc<WebhookDelivery>> {
    same_pair(deliveries, delivery)
        .filter(|d| d.spec.event.sequence > delivery.spec.event.sequence)
        .min_by_key(|d| d.spec.event.sequence)
}

fn same_pair<'a>(
    deliveries: &Store<WebhookDelivery>,
    delivery: &'a WebhookDelivery,
) -> impl Iterator<Item = Arc<WebhookDelivery>> + 'a {
    deliveries.state().into_iter().filter(move |d| {
        d.namespace() == delivery.namespace()
            && d.spec.webhook_name == delivery.spec.webhook_name
            && d.spec.event.subject.uid == delivery.spec.event.subject.uid
            && is_pending(d)
    })
}

/// What the record controller shares.
pub struct DeliveryContext {
    pub base: Arc<Context>,
    pub config: DeliveryConfig,
    pub deliveries: Store<WebhookDelivery>,
    wake: mpsc::UnboundedSender<ObjectRef<WebhookDelivery>>,
}

/// Runs the record controller of one scope until shutdown.
pub async fn controller(
    deliveries: impl futures::Stream<Item = Arc<WebhookDelivery>> + Send + 'static,
    store: Store<WebhookDelivery>,
    webhook_changes: impl futures::Stream<Item = Arc<Webhook>> + Send + 'static,
    base: Arc<Context>,
    config: DeliveryConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (wake, woken) = mpsc::unbounded();
    let context = Arc::new(DeliveryContext {
        base,
        config: config.clone(),
        deliveries: store.clone(),
        wake,
    });
    // A webhook that changes (switched back on, new URL, new policy) wakes
    // its pending records.
    let pending_of = {
        let store = store.clone();
        move |webhook: Arc<Webhook>| {
            let name = webhook.name_any();
            let namespace = webhook.namespace();
            store
                .state()
                .into_iter()
                .filter(|d| {
                    d.spec.webhook_name == name && d.namespace() == namespace && is_pending(d)
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    Controller::for_shared_stream(deliveries, store)
        .watches_shared_stream(webhook_changes, pending_of)
        .reconcile_on(woken)
        .with_config(ControllerRuntimeConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(
    delivery: Arc<WebhookDelivery>,
    error: &DeliveryError,
    context: Arc<DeliveryContext>,
) -> Action {
    retry_after_failure(KIND, delivery.as_ref(), "Delivery", error, &context.base)
}

async fn reconcile(
    delivery: Arc<WebhookDelivery>,
    context: Arc<DeliveryContext>,
) -> Result<Action, DeliveryError> {
    let work = reconcile_inner(&delivery, &context);
    instrumented_reconcile(KIND, delivery.as_ref(), &context.base, work).await
}

async fn reconcile_inner(
    delivery: &WebhookDelivery,
    context: &DeliveryContext,
) -> Result<Action, DeliveryError> {
    let namespace = delivery.namespace().unwrap_or_default();
    let name = delivery.name_any();
    let api: Api<WebhookDelivery> = Api::namespaced(context.base.client.clone(), &namespace);
    let webhook = context
        .base
        .webhooks
        .get(&ObjectRef::new(&delivery.spec.webhook_name).within(&namespace));
    let blocked = blocked_by(&context.deliveries, delivery).is_some();
    let step = next_step(
        delivery,
        webhook.as_deref(),
        blocked,
        context.config.completed_ttl,
        Utc::now(),
    );
    let webhook = match (step, webhook) {
        (DeliveryStep::Redeliver, _) => {
            info!(delivery = name, "sending again, as asked");
            let again = redelivered(&delivery.status.clone().unwrap_or_default(), Utc::now());
            write_delivery_status(&api, delivery, again).await?;
            return Ok(Action::await_change());
        }
        (DeliveryStep::Expire, _) => {
            delete_if_present(&api, &name, &Default::default())
                .await
                .map_err(|source| DeliveryError::Expire { name, source })?;
            return Ok(Action::await_change());
        }
        (DeliveryStep::Wait(wait), _) => return Ok(Action::requeue(wait)),
        (DeliveryStep::Park, _) | (DeliveryStep::Attempt, None) => {
            return Ok(Action::await_change());
        }
        (DeliveryStep::Attempt, Some(webhook)) => webhook,
    };

    // One webhook may not take every slot.
    let courier = &context.base.courier;
    let endpoint = courier.endpoint(&namespace, &webhook.name_any());
    let Ok(_permit) = endpoint.try_acquire() else {
        return Ok(Action::requeue(Duration::from_millis(250)));
    };
    let event = &delivery.spec.event;
    let attempt = courier.attempt(&webhook, event).await;
    let status = delivery.status.clone().unwrap_or_default();
    let (next, completion) = delivery::record_attempt(
        &status,
        &policy(&webhook),
        &attempt.result,
        attempt.started,
        attempt.took,
        fastrand::f64(),
    );
    courier.count(completion, event);
    let written = write_delivery_status(&api, delivery, next.clone()).await?;
    context
        .base
        .ledger
        .attempted(&webhook, &name, &attempt, completion);
    if let Some(completion) = completion {
        let base = &context.base;
        conclude(
            &base.client,
            &base.events,
            &base.ledger,
            &webhook,
            &name,
            &next,
            completion,
        )
        .await?;
        if let Some(next) = next_in_line(&context.deliveries, delivery) {
            let _ = context
                .wake
                .unbounded_send(ObjectRef::from_obj(next.as_ref()));
        }
        if !written {
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        return Ok(Action::requeue(context.config.completed_ttl));
    }
    info!(
        delivery = name,
        attempts = next.attempts,
        error = next.last_error.as_deref().unwrap_or(""),
        "delivery attempt failed; retrying"
    );
    let wait = next
        .next_attempt_at
        .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
        .unwrap_or(Duration::from_secs(1));
    Ok(Action::requeue(wait))
}

/// What a delivery that ended for good leaves behind: a 410 switches its
/// Webhook off; a delivery that failed every attempt gets a Warning Event on
/// the record (when there is one) and on the Webhook.
pub async fn conclude(
    client: &Client,
    events: &EventPublisher,
    ledger: &DeliveryLedger,
    webhook: &Webhook,
    delivery_name: &str,
    status: &WebhookDeliveryStatus,
    completion: Completion,
) -> Result<(), DeliveryError> {
    let namespace = webhook.namespace().unwrap_or_default();
    match completion {
        Completion::Gone => disable_webhook(client, events, ledger, webhook, delivery_name).await,
        Completion::GaveUp => {
            let message = format!(
                "delivery {delivery_name} to {} failed after {} attempts: {}",
                webhook.spec.url,
                status.attempts,
                status.last_error.clone().unwrap_or_default()
            );
            let record = ObjectReference {
                api_version: Some(WebhookDelivery::api_version(&()).into_owned()),
                kind: Some(WebhookDelivery::kind(&()).into_owned()),
                name: Some(delivery_name.to_string()),
                namespace: Some(namespace),
                ..ObjectReference::default()
            };
            publish(events, &record, true, "DeliveryFailed", &message).await;
            publish(
                events,
                &webhook.object_ref(&()),
                true,
                "DeliveryFailed",
                &message,
            )
            .await;
            Ok(())
        }
        Completion::Delivered => Ok(()),
    }
}

/// Replaces a record's status with the resourceVersion read. `Ok(false)`
/// on a conflict: the attempt happened and will be made again (at least
/// once).
async fn write_delivery_status(
    api: &Api<WebhookDelivery>,
    delivery: &WebhookDelivery,
    status: WebhookDeliveryStatus,
) -> Result<bool, DeliveryError> {
    let mut updated = delivery.clone();
    updated.status = Some(status);
    match kubeapi::replace_status(api, &updated).await {
        Ok(StatusWrite::Written(_)) => Ok(true),
        Ok(StatusWrite::Conflict | StatusWrite::Gone) => Ok(false),
        Err(source) => Err(DeliveryError::WriteStatus {
            name: delivery.name_any(),
            source,
        }),
    }
}

/// 410 Gone: the webhook is switched off for its URL, said in its status and
/// an Event.
async fn disable_webhook(
    client: &Client,
    events: &EventPublisher,
    ledger: &DeliveryLedger,
    webhook: &Webhook,
    delivery_name: &str,
) -> Result<(), DeliveryError> {
    let namespace = webhook.namespace().unwrap_or_default();
    let api: Api<Webhook> = Api::namespaced(client.clone(), &namespace);
    let message = format!(
        "{} answered 410 Gone to {delivery_name}; no more events are sent to it. Change spec.url, or delete and re-create the Webhook, to switch it back on",
        webhook.spec.url,
    );
    let disabled = Disabled {
        reason: "EndpointGone".into(),
        message: message.clone(),
        time: Utc::now(),
        url: webhook.spec.url.clone(),
    };
    let patch = serde_json::json!({ "status": { "disabled": disabled } });
    api.patch_status(
        &webhook.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| DeliveryError::Disable {
        name: webhook.name_any(),
        source,
    })?;
    ledger.switched_off(webhook, disabled);
    publish(
        events,
        &webhook.object_ref(&()),
        true,
        "EndpointGone",
        &message,
    )
    .await;
    Ok(())
}

async fn publish(
    events: &EventPublisher,
    reference: &ObjectReference,
    warning: bool,
    reason: &str,
    message: &str,
) {
    if let Err(err) = events.publish(reference, warning, reason, message).await {
        warn!(error = %kubeapi::describe_kube_error(&err), reason, "publishing an Event failed");
    }
}
