//! The WebhookDelivery reconciler: sends each delivery when it is due, records
//! the attempt, retries on the webhook's policy, switches a webhook off on
//! 410, and lets completed deliveries expire.
//!
//! Order: for one webhook and one object, a delivery is sent only once every
//! earlier one (lower sequence) is done, so a receiver sees each object's
//! events in sequence order. When one completes, the next is woken at once.
//!
//! Fairness: each webhook may have a bounded number of attempts in flight. A
//! delivery whose webhook is at its bound steps aside (requeued) instead of
//! holding a reconcile slot, so one slow receiver cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::Context;
use crate::api::{DeliveryPhase, Disabled, Webhook, WebhookDelivery, WebhookDeliveryStatus};
use crate::delivery::backoff::Policy;
use crate::delivery::client::{Request, Sender};
use crate::delivery::signing::{SigningKey, signature_header};
use crate::delivery::{self, AttemptResult, Completion};
use crate::runtime::metrics::DeliveryLabels;

const KIND: &str = "WebhookDelivery";

/// Settings of webhook delivery.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Let endpoints resolve to loopback, link-local and private addresses.
    pub allow_private_addresses: bool,
    /// How long a completed delivery is kept.
    pub completed_ttl: Duration,
    /// Attempts in flight at once per webhook.
    pub per_endpoint_concurrency: usize,
    /// Deliveries reconciled at once.
    pub concurrency: u16,
}

/// Errors of one delivery reconcile.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "writing the status of {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "deleting expired delivery {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Expire {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "switching off webhook {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Disable {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the delivery reconciler shares.
pub struct DeliveryContext {
    pub base: Arc<Context>,
    pub config: DeliveryConfig,
    pub deliveries: Store<WebhookDelivery>,
    pub sender: Sender,
    pub secrets: SecretCache,
    in_flight: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
    wake: mpsc::UnboundedSender<ObjectRef<WebhookDelivery>>,
}

/// Secrets are read when a delivery is signed, never watched (the operator
/// needs only `get` on Secrets), and kept for a moment so a burst of
/// deliveries does not read the same Secret a thousand times. A rotated key
/// is in use within [`SecretCache::FRESH_FOR`].
pub struct SecretCache {
    client: kube::Client,
    entries: Mutex<HashMap<(String, String), CachedSecret>>,
}

/// When a Secret was read, and what it was (`None`: it did not exist).
type CachedSecret = (std::time::Instant, Option<Arc<Secret>>);

impl SecretCache {
    pub const FRESH_FOR: Duration = Duration::from_secs(2);

    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The Secret, or `None` when it does not exist.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, secret)) = self.entries.lock().ok().and_then(|e| e.get(&key).cloned())
            && at.elapsed() < Self::FRESH_FOR
        {
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

fn is_pending(delivery: &WebhookDelivery) -> bool {
    delivery
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| p == DeliveryPhase::Pending)
}

/// The earliest pending delivery of the same webhook and object, if it is
/// not this one.
fn blocked_by(
    deliveries: &Store<WebhookDelivery>,
    delivery: &WebhookDelivery,
) -> Option<Arc<WebhookDelivery>> {
    let event = &delivery.spec.event;
    deliveries
        .state()
        .into_iter()
        .filter(|d| {
            d.namespace() == delivery.namespace()
                && d.spec.webhook_name == delivery.spec.webhook_name
                && d.spec.event.subject.uid == event.subject.uid
                && d.spec.event.sequence < event.sequence
                && is_pending(d)
        })
        .min_by_key(|d| d.spec.event.sequence)
}

/// The next pending delivery of the same webhook and object after this one.
fn next_in_line(
    deliveries: &Store<WebhookDelivery>,
    delivery: &WebhookDelivery,
) -> Option<Arc<WebhookDelivery>> {
    let event = &delivery.spec.event;
    deliveries
        .state()
        .into_iter()
        .filter(|d| {
            d.namespace() == delivery.namespace()
                && d.spec.webhook_name == delivery.spec.webhook_name
                && d.spec.event.subject.uid == event.subject.uid
                && d.spec.event.sequence > event.sequence
                && is_pending(d)
        })
        .min_by_key(|d| d.spec.event.sequence)
}

/// Runs the delivery controller of one scope until shutdown.
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
        sender: Sender::new(config.allow_private_addresses),
        secrets: SecretCache::new(base.client.clone()),
        base,
        config: config.clone(),
        deliveries: store.clone(),
        in_flight: Mutex::new(HashMap::new()),
        wake,
    });
    // A webhook that changes (switched back on, new URL, new policy) wakes
    // its pending deliveries.
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
    super::retry_after_failure(KIND, delivery.as_ref(), "Delivery", error, &context.base)
}

async fn reconcile(
    delivery: Arc<WebhookDelivery>,
    context: Arc<DeliveryContext>,
) -> Result<Action, DeliveryError> {
    let work = reconcile_inner(&delivery, &context);
    super::instrumented_reconcile(KIND, delivery.as_ref(), &context.base, work).await
}

async fn reconcile_inner(
    delivery: &WebhookDelivery,
    context: &DeliveryContext,
) -> Result<Action, DeliveryError> {
    let namespace = delivery.namespace().unwrap_or_default();
    let name = delivery.name_any();
    let api: Api<WebhookDelivery> = Api::namespaced(context.base.client.clone(), &namespace);
    let now = Utc::now();
    let status = delivery.status.clone().unwrap_or_default();

    if !is_pending(delivery) {
        // Completed: keep it for the TTL, then let it go.
        let completed = status.completed_at.unwrap_or(now);
        let expires = completed
            + chrono::Duration::from_std(context.config.completed_ttl).unwrap_or_default();
        if expires <= now {
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(source) => return Err(DeliveryError::Expire { name, source }),
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(
            (expires - now).to_std().unwrap_or_default(),
        ));
    }

    let webhook = context
        .base
        .webhooks
        .get(&ObjectRef::new(&delivery.spec.webhook_name).within(&namespace));
    let Some(webhook) = webhook else {
        // Its webhook is gone; garbage collection removes the delivery.
        return Ok(Action::await_change());
    };
    if !crate::plan::dispatch::webhook_accepts(&webhook) {
        // Paused until the webhook is switched back on (which wakes it).
        return Ok(Action::await_change());
    }
    if blocked_by(&context.deliveries, delivery).is_some() {
        // An earlier event of the same object goes first; its completion
        // wakes this one.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if let Some(due) = status.next_attempt_at
        && due > now
    {
        return Ok(Action::requeue((due - now).to_std().unwrap_or_default()));
    }

    // One webhook may not take every slot.
    let semaphore = {
        let mut in_flight = context.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight
            .entry((namespace.clone(), webhook.name_any()))
            .or_insert_with(|| Arc::new(Semaphore::new(context.config.per_endpoint_concurrency)))
            .clone()
    };
    let Ok(_permit) = semaphore.try_acquire() else {
        return Ok(Action::requeue(Duration::from_millis(250)));
    };

    let policy = policy(&webhook);
    let started = Utc::now();
    let secret = context
        .secrets
        .get(&namespace, &webhook.spec.secret_ref.name)
        .await
        .map_err(|e| crate::runtime::describe_kube_error(&e));
    let (result, took) = match secret.and_then(|s| signing_keys(&webhook, s.as_deref())) {
        Err(why) => (
            AttemptResult::Failed {
                error: format!("cannot sign: {why}"),
            },
            Duration::ZERO,
        ),
        Ok(keys) => {
            let body = delivery::body(&delivery.spec.event, &namespace);
            let timestamp = started.timestamp();
            let signature = signature_header(&keys, &delivery.spec.event.id, timestamp, &body);
            context
                .sender
                .send(
                    &Request {
                        url: &webhook.spec.url,
                        timeout: Duration::from_secs(
                            u64::try_from(webhook.spec.timeout_seconds).unwrap_or(10),
                        ),
                        ca_bundle: webhook.spec.ca_bundle.as_deref(),
                        headers: &webhook.spec.headers,
                        id: &delivery.spec.event.id,
                        timestamp,
                        signature: &signature,
                    },
                    body,
                )
                .await
        }
    };
    let jitter = fastrand::f64();
    let (next, completion) =
        delivery::record_attempt(&status, &policy, &result, started, took, jitter);
    let outcome = match completion {
        Some(Completion::Delivered) => "succeeded",
        Some(Completion::Gone) => "gone",
        Some(Completion::GaveUp) => "failed",
        None => "retrying",
    };
    context
        .base
        .metrics
        .deliveries
        .get_or_create(&DeliveryLabels {
            outcome: outcome.into(),
        })
        .inc();
    if completion == Some(Completion::Delivered) {
        let latency = (Utc::now() - delivery.spec.event.timestamp)
            .to_std()
            .unwrap_or_default();
        context
            .base
            .metrics
            .delivery_latency
            .observe(latency.as_secs_f64());
    }

    let written = write_status(&api, delivery, next.clone()).await?;
    let reference = delivery.object_ref(&());
    match completion {
        Some(Completion::Gone) => {
            disable_webhook(context, &webhook, delivery).await?;
        }
        Some(Completion::GaveUp) => {
            let message = format!(
                "{} to {} failed after {} attempts: {}",
                delivery.spec.event.type_,
                webhook.spec.url,
                next.attempts,
                next.last_error.clone().unwrap_or_default()
            );
            publish(context, &reference, true, "DeliveryFailed", &message).await;
            publish(
                context,
                &webhook.object_ref(&()),
                true,
                "DeliveryFailed",
                &message,
            )
            .await;
        }
        _ => {}
    }
    if completion.is_some() {
        if let Some(next) = next_in_line(&context.deliveries, delivery) {
            let _ = context
                .wake
                .unbounded_send(ObjectRef::from_obj(next.as_ref()));
        }
        if !written {
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        let ttl = context.config.completed_ttl;
        return Ok(Action::requeue(ttl));
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

/// Replaces the status with the resourceVersion we read. `Ok(false)` on a
/// conflict: the attempt happened and will be made again (at least once).
async fn write_status(
    api: &Api<WebhookDelivery>,
    delivery: &WebhookDelivery,
    status: WebhookDeliveryStatus,
) -> Result<bool, DeliveryError> {
    let mut updated = delivery.clone();
    updated.status = Some(status);
    match api
        .replace_status(&delivery.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 409 || response.code == 404 => {
            Ok(false)
        }
        Err(source) => Err(DeliveryError::WriteStatus {
            name: delivery.name_any(),
            source,
        }),
    }
}

/// 410 Gone: the webhook is switched off for its URL, said in its status and
/// an Event.
async fn disable_webhook(
    context: &DeliveryContext,
    webhook: &Webhook,
    delivery: &WebhookDelivery,
) -> Result<(), DeliveryError> {
    let namespace = webhook.namespace().unwrap_or_default();
    let api: Api<Webhook> = Api::namespaced(context.base.client.clone(), &namespace);
    let message = format!(
        "{} answered 410 Gone to {}; no more events are sent to it. Change spec.url, or delete and re-create the Webhook, to switch it back on",
        webhook.spec.url,
        delivery.name_any()
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
    publish(
        context,
        &webhook.object_ref(&()),
        true,
        "EndpointGone",
        &message,
    )
    .await;
    Ok(())
}

async fn publish(
    context: &DeliveryContext,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    message: &str,
) {
    if let Err(err) = context
        .base
        .events
        .publish(reference, warning, reason, message)
        .await
    {
        warn!(error = %crate::runtime::describe_kube_error(&err), reason, "publishing an Event failed");
    }
}
