//! Wiring: the watches, the reconcilers that act and record, finalizers and
//! Events. Decisions are made by `plan`; this module does the I/O around them.
//!
//! One set of reflectors and controllers runs per watched namespace (or one
//! for all namespaces). Reconciles wait until every cache of their set is
//! synced, so the first pass after a start sees the whole world before it
//! acts.

pub mod delivery;
pub mod dispatch;
pub mod events;
pub mod instance;
pub mod record;
pub mod sandbox;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::api::{Instance, MANAGED_BY, MANAGED_BY_LABEL, Sandbox, Webhook, WebhookDelivery};
use crate::provider::kubernetes::{self, KubernetesProvider};
use crate::provider::pod::{self, PodProvider};
use crate::provider::{ProviderRegistry, SandboxProviderRegistry};
use crate::runtime::metrics::{ErrorLabels, KindLabels, Metrics};
use tracing::{Instrument, warn};

/// Where a set of controllers looks: every namespace, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// What every reconcile of one scope shares.
pub struct Context {
    pub client: Client,
    pub registry: ProviderRegistry,
    pub sandboxes: SandboxProviderRegistry,
    pub events: events::EventPublisher,
    pub metrics: Arc<Metrics>,
    pub webhooks: Store<Webhook>,
    pub backoff: ErrorBackoff,
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

/// The label selector of every child the operator creates.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// A reflector-backed store plus the stream that feeds it (and the
/// controller, for children).
///
/// `trim` shrinks each object before the store keeps it: every store holds
/// one copy per object for as long as the operator runs, so what is never
/// read is not kept (see [`forget_managed_fields`]).
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    tracker: &Arc<SyncTracker>,
    name: &'static str,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // Tracked after the reflector, so "synced" means the store holds the list.
    let stream = tracker
        .track(
            name,
            reflector::reflector(writer, watcher(api, config).modify(trim).default_backoff()),
        )
        .touched_objects();
    (reader, stream)
}

/// Settings shared by every scope.
#[derive(Clone)]
pub struct ControllerConfig {
    pub default_provider: String,
    pub concurrency: u16,
    pub reporter_instance: String,
    pub delivery: delivery::DeliveryConfig,
}

/// Tells when every watch of a scope has delivered its first full list.
///
/// kube's `Store::wait_until_ready` sits on a oneshot that remembers only the
/// last task waiting on it, and the Controller waits on the same stores: two
/// waiters in different tasks can sleep through the wake-up. So readiness is
/// taken from the watch streams themselves, as they pass their first
/// `InitDone`.
pub struct SyncTracker {
    /// How many watches were handed out by `track`.
    expected: std::sync::atomic::AtomicUsize,
    synced: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    all_synced: tokio::sync::watch::Sender<bool>,
}

impl SyncTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            expected: std::sync::atomic::AtomicUsize::new(0),
            synced: std::sync::Mutex::new(std::collections::HashSet::new()),
            all_synced: tokio::sync::watch::channel(false).0,
        })
    }

    fn mark(&self, watch: &'static str) {
        let Ok(mut synced) = self.synced.lock() else {
            return;
        };
        if synced.insert(watch) {
            tracing::debug!(watch, "cache synced");
            if synced.len() >= self.expected.load(std::sync::atomic::Ordering::SeqCst) {
                self.all_synced.send_replace(true);
            }
        }
    }

    /// Resolves once every watch has synced.
    pub async fn wait(&self) {
        let mut receiver = self.all_synced.subscribe();
        let _ = receiver.wait_for(|synced| *synced).await;
    }

    /// Wraps a watch stream so its first full list marks it synced.
    pub fn track<K, S>(
        self: &Arc<Self>,
        name: &'static str,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static
    where
        K: Send + 'static,
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        self.expected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tracker = self.clone();
        stream.inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tracker.mark(name);
            }
        })
    }
}

/// A reflector whose store and changes two controllers share: one watch,
/// two subscribers. The returned future drives the watch; poll it.
///
/// kube's own shared reflector (`reflect_shared`) does not pass deletions on
/// to its subscribers (kube-rs/kube#1590), so a controller waiting for a
/// child to go (a stopped sandbox's pod, a deleted delivery) would not wake
/// up until its next timed requeue. Here every change the watch reports,
/// deletions included, goes to both subscribers, after the store has taken
/// it in.
#[allow(clippy::type_complexity)]
fn reflect_shared2<K>(
    api: Api<K>,
    config: watcher::Config,
    tracker: &Arc<SyncTracker>,
    name: &'static str,
) -> (
    Store<K>,
    UnboundedReceiver<Arc<K>>,
    UnboundedReceiver<Arc<K>>,
    futures::future::BoxFuture<'static, ()>,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    // Unbounded: the subscribers are controllers, which only turn each
    // object into a queued reconcile, so they keep up; a bounded channel
    // would stall the watch (and the store) behind the slower of the two.
    let (first_sender, first) = futures::channel::mpsc::unbounded();
    let (second_sender, second) = futures::channel::mpsc::unbounded();
    let watch = tracker
        .track(
            name,
            reflector::reflector(
                writer,
                watcher(api, config)
                    .modify(forget_managed_fields)
                    .default_backoff(),
            ),
        )
        .for_each(move |event| {
            if let Err(error) = &event {
                // The watcher retries with backoff; say why it has to.
                tracing::warn!(watch = name, %error, "watch failed; retrying");
            }
            if let Some(object) = changed_object(event) {
                let object = Arc::new(object);
                // A closed channel means its controller has shut down.
                let _ = first_sender.unbounded_send(object.clone());
                let _ = second_sender.unbounded_send(object);
            }
            futures::future::ready(())
        })
        .boxed();
    (store, first, second, watch)
}

/// Drops `metadata.managedFields` from a cached object. Nothing here reads
/// them, and they are often the larger part of a Deployment's or Pod's
/// metadata. A write of a cached copy is unaffected: an update without
/// managedFields keeps the server's.
pub fn forget_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The object a watch event is about, if it is a change to pass on. Objects
/// of an initial list (or a relist after a lost watch) count too: what
/// changed while the watch was down is only seen that way.
fn changed_object<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Option<K> {
    match event {
        Ok(watcher::Event::Apply(object))
        | Ok(watcher::Event::Delete(object))
        | Ok(watcher::Event::InitApply(object)) => Some(object),
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        Err(_) => None,
    }
}

/// Runs every controller of one scope until `shutdown` resolves: Instances,
/// Webhooks and WebhookDeliveries.
pub async fn run_scope(
    client: Client,
    scope: Scope,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    on_synced: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let managed = watcher::Config::default().labels(&managed_selector());
    // Every watch handed out below counts; all must sync before reconciling.
    let tracker = SyncTracker::new();
    let (deployments, deployment_stream) = reflect(
        scope.api::<Deployment>(&client),
        managed.clone(),
        &tracker,
        "deployments",
        forget_managed_fields,
    );
    let (claims, claim_stream) = reflect(
        scope.api::<PersistentVolumeClaim>(&client),
        managed.clone(),
        &tracker,
        "claims",
        forget_managed_fields,
    );
    let (instances, instance_stream) = reflect(
        scope.api::<Instance>(&client),
        watcher::Config::default(),
        &tracker,
        "instances",
        forget_managed_fields,
    );
    let (sandboxes, sandbox_stream) = reflect(
        scope.api::<Sandbox>(&client),
        watcher::Config::default(),
        &tracker,
        "sandboxes",
        forget_managed_fields,
    );
    // Cluster-wide, read-only: the capacity check needs every node and
    // every pod, whatever namespaces the operator manages.
    let (nodes, node_stream) = reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        &tracker,
        "nodes",
        forget_managed_fields,
    );
    let (all_pods, all_pod_stream) = reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        &tracker,
        "all-pods",
        pod::keep_what_capacity_needs,
    );
    let cluster_watches = futures::future::join(
        node_stream.for_each(|_| futures::future::ready(())),
        all_pod_stream.for_each(|_| futures::future::ready(())),
    );

    // Read by several controllers: one watch each, shared.
    let (pods, pods_for_instances, pods_for_sandboxes, pod_watch) =
        reflect_shared2(scope.api::<Pod>(&client), managed.clone(), &tracker, "pods");
    let (services, services_for_instances, services_for_sandboxes, service_watch) = reflect_shared2(
        scope.api::<Service>(&client),
        managed.clone(),
        &tracker,
        "services",
    );
    let (
        webhooks,
        webhooks_for_webhook_controller,
        webhooks_for_delivery_controller,
        webhook_watch,
    ) = reflect_shared2(
        scope.api::<Webhook>(&client),
        watcher::Config::default(),
        &tracker,
        "webhooks",
    );
    let (
        deliveries,
        deliveries_for_delivery_controller,
        deliveries_for_webhook_controller,
        delivery_watch,
    ) = reflect_shared2(
        scope.api::<WebhookDelivery>(&client),
        watcher::Config::default(),
        &tracker,
        "webhookdeliveries",
    );

    let caches_synced = {
        let tracker = tracker.clone();
        async move {
            tracker.wait().await;
            on_synced();
        }
        .boxed()
        .shared()
    };

    let mut registry = ProviderRegistry::new(config.default_provider.clone());
    registry.register(Arc::new(KubernetesProvider::new(
        client.clone(),
        kubernetes::Caches {
            deployments: deployments.clone(),
            services: services.clone(),
            pods: pods.clone(),
        },
    )));
    let mut sandbox_registry = SandboxProviderRegistry::new(pod::NAME);
    sandbox_registry.register(Arc::new(PodProvider::new(
        client.clone(),
        pod::Caches {
            pods: pods.clone(),
            claims,
            services: services.clone(),
            nodes,
            all_pods,
        },
    )));
    let events = events::EventPublisher::new(
        client.clone(),
        "ctrlplane-operator",
        config.reporter_instance.clone(),
    );
    let context = Arc::new(Context {
        client: client.clone(),
        registry,
        sandboxes: sandbox_registry,
        events,
        metrics,
        webhooks: webhooks.clone(),
        backoff: ErrorBackoff::default(),
        caches_synced: caches_synced.clone(),
    });

    let instance_controller = instance::controller(
        instance_stream,
        instances,
        deployment_stream,
        services_for_instances,
        pods_for_instances,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    let sandbox_controller = sandbox::controller(
        sandbox_stream,
        sandboxes,
        pods_for_sandboxes,
        services_for_sandboxes,
        claim_stream,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    let webhook_controller = webhook::controller(
        webhooks_for_webhook_controller,
        webhooks,
        deliveries_for_webhook_controller,
        deliveries.clone(),
        context.clone(),
        config.delivery.allow_private_addresses,
        shutdown.clone(),
    );
    let delivery_controller = delivery::controller(
        deliveries_for_delivery_controller,
        deliveries,
        webhooks_for_delivery_controller,
        context,
        config.delivery.clone(),
        shutdown,
    );
    tokio::spawn(caches_synced);
    // The controllers end on shutdown; the shared watches never do.
    tokio::select! {
        _ = async { futures::join!(instance_controller, sandbox_controller, webhook_controller, delivery_controller) } => {}
        _ = async { futures::join!(webhook_watch, delivery_watch, pod_watch, service_watch, cluster_watches) } => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn named(name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object
    }

    #[test]
    fn deletions_reach_the_subscribers_of_a_shared_watch() {
        let name = |event| changed_object::<ConfigMap>(event).and_then(|o| o.metadata.name);
        assert_eq!(
            name(Ok(watcher::Event::Delete(named("gone")))).as_deref(),
            Some("gone")
        );
        assert_eq!(
            name(Ok(watcher::Event::Apply(named("new")))).as_deref(),
            Some("new")
        );
        assert_eq!(
            name(Ok(watcher::Event::InitApply(named("listed")))).as_deref(),
            Some("listed")
        );
        assert_eq!(name(Ok(watcher::Event::Init)), None);
        assert_eq!(name(Ok(watcher::Event::InitDone)), None);
    }
}
