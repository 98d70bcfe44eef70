//! The controllers, and their wiring. Decisions are made by `plan`; this
//! module does the I/O around them:
//! - [`lifecycle`]: the one engine every lifecycle kind runs through, with
//!   [`instance`] and [`sandbox`] bringing what is theirs;
//! - [`dispatch`], [`delivery`], [`webhook`]: lifecycle events to Webhooks;
//! - [`harness`]: what every reconcile runs in; [`watches`]: the caches;
//!   [`record`], [`events`]: status writes and Events; [`counts`]: the
//!   objects in the caches, for `ctrlplane_objects`.
//!
//! This file wires them together for one scope.
//!
//! One set of reflectors and controllers runs per watched namespace (or one
//! for all namespaces). Reconciles wait until every cache of their set is
//! synced, so the first pass after a start sees the whole world before it
//! acts.

pub mod counts;
pub mod delivery;
pub mod dispatch;
pub mod events;
pub mod harness;
pub mod instance;
pub mod lifecycle;
pub mod record;
pub mod sandbox;
pub mod watches;
pub mod webhook;

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

pub use harness::{Context, ErrorBackoff};

use crate::api::{Instance, MANAGED_BY, MANAGED_BY_LABEL, Sandbox, Webhook, WebhookDelivery};
use crate::provider::kubernetes::{self, KubernetesProvider};
use crate::provider::pod::{self, PodProvider};
use crate::provider::{InstanceProvider, InstanceProviders, SandboxProviders};
use crate::runtime::metrics::Metrics;
use delivery::Courier;
use dispatch::Dispatcher;
use events::EventPublisher;
use record::WrittenObjects;
use watches::{
    SyncTracker, forget_managed_fields, keep_metadata_unless_managed, reflect, reflect_shared,
};
use webhook::DeliveryLedger;

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

/// The label selector of every child the operator creates.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Settings shared by every scope.
#[derive(Clone)]
pub struct ControllerConfig {
    pub default_provider: String,
    pub concurrency: u16,
    pub reporter_instance: String,
    pub delivery: delivery::DeliveryConfig,
    /// Instance providers beside `kubernetes`, registered by whoever embeds
    /// the operator (a test registers one of its own).
    pub extra_instance_providers: Vec<Arc<dyn InstanceProvider>>,
}

/// Runs every controller of one scope until `shutdown` resolves: Instances,
/// Sandboxes, Webhooks and WebhookDeliveries.
pub async fn run_scope(
    client: Client,
    scope: Scope,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    on_synced: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let managed = watcher::Config::default().labels(&managed_selector());
    let everything = watcher::Config::default();
    // Every watch handed out below counts; all must sync before reconciling.
    let tracker = SyncTracker::new();
    let (instances, instance_stream) = reflect(
        scope.api::<Instance>(&client),
        everything.clone(),
        &tracker,
        "instances",
        forget_managed_fields,
    );
    let (sandboxes, sandbox_stream) = reflect(
        scope.api::<Sandbox>(&client),
        everything.clone(),
        &tracker,
        "sandboxes",
        forget_managed_fields,
    );
    // Cluster-wide, read-only: the capacity check needs every node and
    // every pod, whatever namespaces the operator manages.
    let (nodes, node_stream) = reflect(
        Api::<Node>::all(client.clone()),
        everything.clone(),
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

    // What providers and controllers read: one watch each, shared. Children
    // that the operator applies by name (Deployments, Services) are watched
    // whatever their labels, so one of the same name that is not ours is
    // seen in the cache, and never taken over.
    let mut deployments = reflect_shared(
        scope.api::<Deployment>(&client),
        everything.clone(),
        &tracker,
        "deployments",
        keep_metadata_unless_managed,
        1,
    );
    let mut services = reflect_shared(
        scope.api::<Service>(&client),
        everything.clone(),
        &tracker,
        "services",
        keep_metadata_unless_managed,
        2,
    );
    let mut pods = reflect_shared(
        scope.api::<Pod>(&client),
        managed.clone(),
        &tracker,
        "pods",
        forget_managed_fields,
        2,
    );
    let mut claims = reflect_shared(
        scope.api::<PersistentVolumeClaim>(&client),
        managed.clone(),
        &tracker,
        "claims",
        forget_managed_fields,
        1,
    );
    let mut webhooks = reflect_shared(
        scope.api::<Webhook>(&client),
        everything.clone(),
        &tracker,
        "webhooks",
        forget_managed_fields,
        2,
    );
    let mut deliveries = reflect_shared(
        scope.api::<WebhookDelivery>(&client),
        everything.clone(),
        &tracker,
        "webhookdeliveries",
        forget_managed_fields,
        2,
    );

    // Counted while this scope runs; the registration goes with it.
    let _object_counts = counts::register(
        &metrics,
        instances.clone(),
        sandboxes.clone(),
        webhooks.store.clone(),
        deliveries.store.clone(),
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

    let mut instance_providers = InstanceProviders::new(config.default_provider.clone());
    instance_providers.register(Arc::new(KubernetesProvider::new(
        client.clone(),
        kubernetes::Caches {
            deployments: deployments.store.clone(),
            services: services.store.clone(),
            pods: pods.store.clone(),
        },
        deployments.subscriber(),
        services.subscriber(),
        pods.subscriber(),
    )));
    for provider in &config.extra_instance_providers {
        instance_providers.register(provider.clone());
    }
    let mut sandbox_providers = SandboxProviders::new(pod::NAME);
    sandbox_providers.register(Arc::new(PodProvider::new(
        client.clone(),
        pod::Caches {
            pods: pods.store.clone(),
            claims: claims.store.clone(),
            services: services.store.clone(),
            nodes,
            all_pods,
        },
        pods.subscriber(),
        services.subscriber(),
        claims.subscriber(),
    )));

    let events = Arc::new(EventPublisher::new(
        client.clone(),
        "ctrlplane-operator",
        config.reporter_instance.clone(),
    ));
    let courier = Arc::new(Courier::new(
        client.clone(),
        config.delivery.allow_private_addresses,
        config.delivery.per_endpoint_concurrency,
        metrics.clone(),
    ));
    let (ledger, tally_changes) = DeliveryLedger::new();
    let ledger = Arc::new(ledger);
    let dispatcher = Arc::new(Dispatcher::new(
        client.clone(),
        webhooks.store.clone(),
        deliveries.store.clone(),
        courier.clone(),
        ledger.clone(),
        events.clone(),
        metrics.clone(),
    ));
    let (instance_waker, instances_dispatched) = futures::channel::mpsc::unbounded();
    dispatcher.register("Instance", instance_waker);
    let (sandbox_waker, sandboxes_dispatched) = futures::channel::mpsc::unbounded();
    dispatcher.register("Sandbox", sandbox_waker);
    let context = Arc::new(Context {
        client: client.clone(),
        instance_providers,
        sandbox_providers,
        events,
        metrics,
        webhooks: webhooks.store.clone(),
        dispatcher,
        courier,
        ledger,
        backoff: ErrorBackoff::default(),
        written: WrittenObjects::default(),
        deferrals: Default::default(),
        caches_synced: caches_synced.clone(),
    });

    let instance_controller = instance::controller(
        instance_stream,
        instances,
        instances_dispatched,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    let sandbox_controller = sandbox::controller(
        sandbox_stream,
        sandboxes,
        sandboxes_dispatched,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    let webhook_controller = webhook::controller(
        webhooks.subscriber(),
        webhooks.store.clone(),
        deliveries.subscriber(),
        deliveries.store.clone(),
        tally_changes,
        context.clone(),
        config.delivery.allow_private_addresses,
        shutdown.clone(),
    );
    let delivery_controller = delivery::controller(
        deliveries.subscriber(),
        deliveries.store.clone(),
        webhooks.subscriber(),
        context,
        config.delivery.clone(),
        shutdown,
    );
    tokio::spawn(caches_synced);
    let watches = futures::future::join_all([
        deployments.watch,
        services.watch,
        pods.watch,
        claims.watch,
        webhooks.watch,
        deliveries.watch,
    ]);
    // The controllers end on shutdown; the watches never do.
    tokio::select! {
        _ = async { futures::join!(instance_controller, sandbox_controller, webhook_controller, delivery_controller) } => {}
        _ = async { futures::join!(watches, cluster_watches) } => {}
    }
}
