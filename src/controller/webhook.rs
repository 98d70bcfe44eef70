//! The Webhook reconciler: checks that events can be sent (URL, Secret,
//! address) and keeps the counts of its deliveries in its status.
//!
//! Most deliveries leave no record behind (a 2xx at the first attempt), so
//! the counts are kept as the attempts are made, in a [`DeliveryLedger`]
//! that both the dispatcher's fast path and the record controller add to.
//! Its changes reach the Webhook debounced, so a burst of deliveries costs a
//! handful of status writes, not one per attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::Context;
use super::delivery::{Attempt, SecretCache, signing_keys};
use super::harness::{instrumented_reconcile, retry_after_failure};
use crate::api::{Disabled, LastDelivery, Webhook, WebhookDelivery, WebhookStatus};
use crate::delivery::client::private_ca_roots;
use crate::delivery::guard::forbidden_reason;
use crate::delivery::{AttemptResult, Completion};
use crate::plan::delivery::is_pending;
use crate::plan::webhook::{AttemptEnd, DeliveryTally, WebhookObservation, plan};
use crate::runtime::kubeapi::{self, StatusWrite};
use crate::runtime::metrics::KindLabels;

/// Every Webhook's delivery tally, kept as attempts are made, and a wake-up
/// for its controller when it changes.
pub struct DeliveryLedger {
    /// By (namespace, name): the Webhook's UID and its tally.
    tallies: Mutex<HashMap<(String, String), (String, DeliveryTally)>>,
    wake: mpsc::UnboundedSender<ObjectRef<Webhook>>,
}

impl DeliveryLedger {
    /// A ledger, and the stream of Webhooks whose tally changed.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ObjectRef<Webhook>>) {
        let (wake, woken) = mpsc::unbounded();
        (
            Self {
                tallies: Mutex::new(HashMap::new()),
                wake,
            },
            woken,
        )
    }

    /// Works on a Webhook's tally; a Webhook seen for the first time (or
    /// re-created under its name) starts from what its status says.
    fn with_tally<T>(&self, webhook: &Webhook, change: impl FnOnce(&mut DeliveryTally) -> T) -> T {
        let key = (webhook.namespace().unwrap_or_default(), webhook.name_any());
        let uid = webhook.uid().unwrap_or_default();
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tallies.entry(key).or_insert_with(|| {
            (
                uid.clone(),
                DeliveryTally::from_status(webhook.status.as_ref()),
            )
        });
        if entry.0 != uid {
            *entry = (uid, DeliveryTally::from_status(webhook.status.as_ref()));
        }
        change(&mut entry.1)
    }

    /// Counts an attempt of the delivery `name` (its record's name, or the
    /// name it would have).
    pub fn attempted(
        &self,
        webhook: &Webhook,
        name: &str,
        attempt: &Attempt,
        completion: Option<Completion>,
    ) {
        let status_code = match &attempt.result {
            AttemptResult::Answered { status, .. } => Some(i32::from(*status)),
            AttemptResult::Failed { .. } => None,
        };
        let end = match completion {
            Some(Completion::Delivered) => AttemptEnd::Delivered,
            Some(Completion::Gone | Completion::GaveUp) => AttemptEnd::Failed,
            None => AttemptEnd::Retrying,
        };
        let last = LastDelivery {
            name: name.to_string(),
            time: attempt.started,
            status_code,
            succeeded: end == AttemptEnd::Delivered,
        };
        self.with_tally(webhook, |tally| tally.add(last, end));
        let _ = self.wake.unbounded_send(ObjectRef::from_obj(webhook));
    }

    /// A 410 switched the Webhook off: known here at once, before the
    /// status write comes back through the watch.
    pub fn switched_off(&self, webhook: &Webhook, disabled: Disabled) {
        self.with_tally(webhook, |tally| tally.disabled = Some(disabled));
        let _ = self.wake.unbounded_send(ObjectRef::from_obj(webhook));
    }

    /// Whether the Webhook was switched off for its current URL.
    pub fn is_switched_off(&self, webhook: &Webhook) -> bool {
        self.with_tally(webhook, |tally| {
            tally
                .disabled
                .as_ref()
                .is_some_and(|d| d.url == webhook.spec.url)
        })
    }

    /// The Webhook's tally now.
    pub fn tally(&self, webhook: &Webhook) -> DeliveryTally {
        self.with_tally(webhook, |tally| tally.clone())
    }
}

const KIND: &str = "Webhook";

/// Errors of one Webhook reconcile.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "writing the status of {name}: {}",
        kubeapi::describe_kube_error(source)
    )]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct WebhookContext {
    base: Arc<Context>,
    deliveries: Store<WebhookDelivery>,
    secrets: SecretCache,
    allow_private_addresses: bool,
}

/// Runs the Webhook controller of one scope until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn controller(
    webhooks: impl futures::Stream<Item = Arc<Webhook>> + Send + 'static,
    store: Store<Webhook>,
    delivery_changes: impl futures::Stream<Item = Arc<WebhookDelivery>> + Send + 'static,
    deliveries: Store<WebhookDelivery>,
    tally_changes: impl futures::Stream<Item = ObjectRef<Webhook>> + Send + 'static,
    base: Arc<Context>,
    allow_private_addresses: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(WebhookContext {
        secrets: SecretCache::new(base.client.clone()),
        base,
        deliveries,
        allow_private_addresses,
    });
    let owner = |delivery: Arc<WebhookDelivery>| {
        delivery
            .namespace()
            .map(|ns| ObjectRef::<Webhook>::new(&delivery.spec.webhook_name).within(&ns))
    };
    Controller::for_shared_stream(webhooks, store)
        .watches_shared_stream(delivery_changes, owner)
        .reconcile_on(tally_changes)
        .with_config(
            ControllerRuntimeConfig::default()
                .debounce(Duration::from_secs(1))
                .concurrency(4),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(
    webhook: Arc<Webhook>,
    error: &WebhookError,
    context: Arc<WebhookContext>,
) -> Action {
    retry_after_failure(KIND, webhook.as_ref(), "WriteStatus", error, &context.base)
}

async fn reconcile(
    webhook: Arc<Webhook>,
    context: Arc<WebhookContext>,
) -> Result<Action, WebhookError> {
    let work = reconcile_inner(webhook.clone(), context.clone());
    instrumented_reconcile(KIND, webhook.as_ref(), &context.base, work).await
}

async fn reconcile_inner(
    webhook: Arc<Webhook>,
    context: Arc<WebhookContext>,
) -> Result<Action, WebhookError> {
    let namespace = webhook.namespace().unwrap_or_default();
    let name = webhook.name_any();

    // observe
    let secret = context
        .secrets
        .get(&namespace, &webhook.spec.secret_ref.name)
        .await
        .map_err(|e| format!("reading the Secret: {}", kubeapi::describe_kube_error(&e)))
        .and_then(|s| signing_keys(&webhook, s.as_deref()).map(|_| ()));
    let address = check_address(&webhook.spec.url, context.allow_private_addresses).await;
    let ca_bundle = match &webhook.spec.ca_bundle {
        Some(bundle) => private_ca_roots(bundle)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let pending = context
        .deliveries
        .state()
        .iter()
        .filter(|d| {
            d.spec.webhook_name == name
                && d.namespace().as_deref() == Some(namespace.as_str())
                && is_pending(d)
        })
        .count() as i64;
    let tally = context.base.ledger.tally(&webhook);

    // plan
    let status = plan(
        &webhook,
        pending,
        &tally,
        &WebhookObservation {
            secret,
            address,
            ca_bundle,
        },
        Utc::now(),
    );

    // record
    if Some(&status) != webhook.status.as_ref() {
        write_status(&webhook, status, &context).await?;
    }
    // Addresses and Secrets change without telling us: look again now and then.
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn write_status(
    webhook: &Webhook,
    status: WebhookStatus,
    context: &WebhookContext,
) -> Result<(), WebhookError> {
    let api: Api<Webhook> = Api::namespaced(
        context.base.client.clone(),
        &webhook.namespace().unwrap_or_default(),
    );
    let mut updated = webhook.clone();
    updated.status = Some(status);
    match kubeapi::replace_status(&api, &updated).await {
        Ok(StatusWrite::Written(_)) => {
            context
                .base
                .metrics
                .status_writes
                .get_or_create(&KindLabels { kind: KIND.into() })
                .inc();
            Ok(())
        }
        // Someone wrote first (a 410 switching it off, or a spec change):
        // the watch brings a fresh copy and another reconcile.
        Ok(StatusWrite::Conflict | StatusWrite::Gone) => Ok(()),
        Err(source) => Err(WebhookError::WriteStatus {
            name: webhook.name_any(),
            source,
        }),
    }
}

/// Whether the URL's host resolves to addresses the guard allows. The
/// delivery client checks again at every connection; this is what the
/// Webhook's Ready condition tells people in advance.
async fn check_address(url: &str, allow_private: bool) -> Result<(), String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("spec.url is not a valid URL: {e}"))?;
    let host = url.host_str().ok_or("spec.url has no host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(address) => vec![address],
        Err(_) => {
            let lookup = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
            lookup.map(|a| a.ip()).collect()
        }
    };
    if allow_private {
        return Ok(());
    }
    for address in &addresses {
        if let Some(reason) = forbidden_reason(*address) {
            return Err(format!(
                "{host} resolves to {address}, which is {reason}; webhooks may not reach internal networks unless the operator runs with --allow-private-webhook-addresses"
            ));
        }
    }
    Ok(())
}
