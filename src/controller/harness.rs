//! The harness every reconcile of every kind runs in: the shared context,
//! waiting for the caches, the in-flight gauge, a span naming the object,
//! reconcile counts and durations, and the per-object backoff after a
//! failure. What a kind does inside it is its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use tracing::{Instrument, warn};

use super::command::CommandRunner;
use super::delivery::Courier;
use super::dispatch::Dispatcher;
use super::events::EventPublisher;
use super::record::{Deferrals, WrittenObjects};
use super::webhook::DeliveryLedger;
use crate::api::{Sandbox, SandboxCommand, SandboxSnapshot, Webhook};
use crate::provider::{InstanceProviders, SandboxProviders};
use crate::runtime::metrics::{ErrorLabels, KindLabels, Metrics};

/// What every reconcile of one scope shares.
pub struct Context {
    pub client: Client,
    pub instance_providers: InstanceProviders,
    pub sandbox_providers: SandboxProviders,
    pub events: Arc<EventPublisher>,
    pub metrics: Arc<Metrics>,
    pub webhooks: Store<Webhook>,
    pub sandboxes: Store<Sandbox>,
    pub commands: Store<SandboxCommand>,
    pub snapshots: Store<SandboxSnapshot>,
    /// Runs SandboxCommands, and knows which run in this process.
    pub runner: Arc<CommandRunner>,
    /// Sends lifecycle events to the Webhooks that take them.
    pub dispatcher: Arc<Dispatcher>,
    /// Makes signed attempts, for the dispatcher and the delivery records.
    pub courier: Arc<Courier>,
    /// Every Webhook's delivery counts.
    pub ledger: Arc<DeliveryLedger>,
    pub backoff: ErrorBackoff,
    /// The objects this operator wrote last, for reconciles that start
    /// before the watch has brought the write back.
    pub written: Arc<WrittenObjects>,
    /// Changes of progress alone waiting to be written.
    pub deferrals: Deferrals,
    /// Resolves once every cache of the scope has synced.
    pub caches_synced: futures::future::Shared<BoxFuture<'static, ()>>,
}

/// Counts a reconcile as in flight for as long as it lives.
pub struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    pub fn start(metrics: &Metrics, kind: &str) -> Self {
        let gauge = metrics
            .in_flight
            .get_or_create(&crate::runtime::metrics::KindLabels { kind: kind.into() })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs one reconcile of `object` with what every kind shares around its own
/// `work`: it waits for the caches, counts itself in flight, runs in a span
/// naming the object (so every log line of it does), counts the reconcile and
/// its duration, and resets the object's error backoff when it succeeds.
pub async fn instrumented_reconcile<K, E>(
    kind: &'static str,
    object: &K,
    base: &Context,
    work: impl std::future::Future<Output = Result<Action, E>>,
) -> Result<Action, E>
where
    K: Resource<DynamicType = ()>,
{
    base.caches_synced.clone().await;
    let _in_flight = InFlight::start(&base.metrics, kind);
    let span = tracing::info_span!(
        "reconcile",
        kind,
        namespace = object.meta().namespace.as_deref().unwrap_or_default(),
        object = object.meta().name.as_deref().unwrap_or_default()
    );
    let started = Instant::now();
    let result = work.instrument(span).await;
    if result.is_ok() {
        base.backoff.succeeded(&ObjectRef::from_obj(object).erase());
    }
    let labels = KindLabels { kind: kind.into() };
    base.metrics.reconciles.get_or_create(&labels).inc();
    base.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// What every kind does when a reconcile fails: say so in the log, count it
/// by kind and reason, and look at the object again after its own backoff.
pub fn retry_after_failure<K>(
    kind: &'static str,
    object: &K,
    reason: &str,
    error: &dyn std::fmt::Display,
    base: &Context,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    warn!(
        kind,
        namespace = object.meta().namespace.as_deref().unwrap_or_default(),
        name = object.meta().name.as_deref().unwrap_or_default(),
        error = %error,
        "reconcile failed"
    );
    base.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            kind: kind.into(),
            reason: reason.into(),
        })
        .inc();
    Action::requeue(base.backoff.failed(&ObjectRef::from_obj(object).erase()))
}

/// Per-object exponential backoff for reconciles that fail: 1s, 2s, 4s, ...
/// up to 5 minutes, reset by the first success. A fixed retry interval would
/// turn a thousand failing objects into a request storm.
#[derive(Default)]
pub struct ErrorBackoff {
    failures: std::sync::Mutex<
        std::collections::HashMap<
            kube::runtime::reflector::ObjectRef<kube::core::DynamicObject>,
            u32,
        >,
    >,
}

impl ErrorBackoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    /// Records a failure and returns how long to wait before the next try.
    pub fn failed(
        &self,
        object: &kube::runtime::reflector::ObjectRef<kube::core::DynamicObject>,
    ) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Self::MAX;
        };
        let count = failures.entry(object.clone()).or_insert(0);
        *count = count.saturating_add(1);
        Self::FIRST
            .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
            .min(Self::MAX)
    }

    /// Forgets an object's failures.
    pub fn succeeded(
        &self,
        object: &kube::runtime::reflector::ObjectRef<kube::core::DynamicObject>,
    ) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }
}

/// What every controller does with each result of its loop: a failed
/// reconcile was already logged and counted by its error policy; the rest
/// (an object gone before its turn came) is only worth a debug line.
pub fn log_loop_result<T, E: std::fmt::Display>(
    result: Result<T, E>,
) -> futures::future::Ready<()> {
    if let Err(error) = result {
        tracing::debug!(%error, "controller loop");
    }
    futures::future::ready(())
}
