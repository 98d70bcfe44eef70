//! The Webhook reconciler: checks that events can be sent (URL, Secret,
//! address) and keeps the counts of its deliveries in its status. Delivery
//! changes reach it debounced, so a burst of deliveries costs a handful of
//! status writes, not one per attempt.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::Context;
use super::delivery::{SecretCache, signing_keys};
use crate::api::{Webhook, WebhookDelivery, WebhookStatus};
use crate::delivery::client::private_ca_roots;
use crate::delivery::guard::forbidden_reason;
use crate::plan::webhook::{WebhookObservation, plan};
use crate::runtime::metrics::KindLabels;

const KIND: &str = "Webhook";

/// Errors of one Webhook reconcile.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "writing the status of {name}: {}",
        crate::runtime::describe_kube_error(source)
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
pub async fn controller(
    webhooks: impl futures::Stream<Item = Arc<Webhook>> + Send + 'static,
    store: Store<Webhook>,
    delivery_changes: impl futures::Stream<Item = Arc<WebhookDelivery>> + Send + 'static,
    deliveries: Store<WebhookDelivery>,
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
    super::retry_after_failure(KIND, webhook.as_ref(), "WriteStatus", error, &context.base)
}

async fn reconcile(
    webhook: Arc<Webhook>,
    context: Arc<WebhookContext>,
) -> Result<Action, WebhookError> {
    let work = reconcile_inner(webhook.clone(), context.clone());
    super::instrumented_reconcile(KIND, webhook.as_ref(), &context.base, work).await
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
        .map_err(|e| {
            format!(
                "reading the Secret: {}",
                crate::runtime::describe_kube_error(&e)
            )
        })
        .and_then(|s| signing_keys(&webhook, s.as_deref()).map(|_| ()));
    let address = check_address(&webhook.spec.url, context.allow_private_addresses).await;
    let ca_bundle = match &webhook.spec.ca_bundle {
        Some(bundle) => private_ca_roots(bundle)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let all = context.deliveries.state();
    let mine: Vec<&WebhookDelivery> = all
        .iter()
        .filter(|d| {
            d.spec.webhook_name == name && d.namespace().as_deref() == Some(namespace.as_str())
        })
        .map(|d| d.as_ref())
        .collect();

    // plan
    let status = plan(
        &webhook,
        &mine,
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
    match api
        .replace_status(&webhook.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
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
        Err(kube::Error::Api(response)) if response.code == 409 || response.code == 404 => Ok(()),
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
