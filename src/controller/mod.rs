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

pub mod command;
pub mod counts;
pub mod delivery;
pub mod dispatch;
pub mod events;
pub mod harness;
pub mod instance;
pub mod lifecycle;
pub mod record;
pub mod sandbox;
pub mod snapshot;
pub mod watches;
pub mod webhook;

use std::sync::Arc;

use futures::future::Either;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

pub use harness::{Context, ErrorBackoff};

use crate::api::{
    Instance, MANAGED_BY, MANAGED_BY_LABEL, Sandbox, SandboxCommand, SandboxSnapshot, Webhook,
    WebhookDelivery,
};
use crate::provider::cached::{CachedDeployment, CachedPod, CachedService};
use crate::provider::kubernetes::{self, KubernetesProvider};
use crate::provider::pod::volume_snapshot::VolumeSnapshot;
use crate::provider::pod::{self, PodProvider};
use crate::provider::shape;
use crate::provider::{
    INSTANCE_LABEL, InstanceProvider, InstanceProviders, SANDBOX_LABEL, SandboxProviders,
};
use crate::runtime::metrics::Metrics;
use command::CommandRunner;
use delivery::Courier;
use dispatch::Dispatcher;
use events::EventPublisher;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use record::WrittenObjects;
use watches::{
    SyncTracker, forget_bookkeeping, keep_metadata_unless_managed, reflect, reflect_shared,
    summarise,
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
    // Our own writes the caches have not caught up with: each kind's watch
    // lets go of a write as soon as it brings a newer version.
    let written = Arc::new(WrittenObjects::default());
    let (instance_deleted, instances_deleted) = futures::channel::mpsc::unbounded();
    let (instances, instance_stream) = reflect(
        scope.api::<Instance>(&client),
        everything.clone(),
        &tracker,
        "instances",
        forget_bookkeeping,
        Some(instance_deleted),
    );
    // Sandboxes, their commands and their snapshots wake one another.
    let mut sandboxes = reflect_shared(
        scope.api::<Sandbox>(&client),
        everything.clone(),
        &tracker,
        "sandboxes",
        forget_bookkeeping,
        3,
    );
    let mut commands = reflect_shared(
        scope.api::<SandboxCommand>(&client),
        everything.clone(),
        &tracker,
        "sandboxcommands",
        forget_bookkeeping,
        3,
    );
    let mut snapshots = reflect_shared(
        scope.api::<SandboxSnapshot>(&client),
        everything.clone(),
        &tracker,
        "sandboxsnapshots",
        forget_bookkeeping,
        2,
    );
    // VolumeSnapshots only where the cluster has the API; without it,
    // SandboxSnapshots say so, and nothing waits for a watch that fails.
    let snapshot_api = client
        .list_api_group_resources(pod::volume_snapshot::API_VERSION)
        .await
        .is_ok();
    if !snapshot_api {
        tracing::info!(
            api = pod::volume_snapshot::API_VERSION,
            "no VolumeSnapshot API in this cluster; SandboxSnapshots cannot be taken"
        );
    }
    let mut volume_snapshots = snapshot_api.then(|| {
        reflect_shared(
            scope.api::<VolumeSnapshot>(&client),
            managed.clone(),
            &tracker,
            "volumesnapshots",
            forget_bookkeeping,
            1,
        )
    });
    // Cluster-wide, read-only: the capacity check needs every node and
    // every pod, whatever namespaces the operator manages.
    let (nodes, node_stream) = reflect(
        Api::<Node>::all(client.clone()),
        everything.clone(),
        &tracker,
        "nodes",
        forget_bookkeeping,
        None,
    );
    let (pod_usage, _, pod_usage_watch) = summarise(
        Api::<CachedPod>::all(client.clone()),
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        &tracker,
        "all-pods",
        pod::pod_usage,
        |_| None::<()>,
    );
    let cluster_watches = futures::future::join(
        node_stream.for_each(|_| futures::future::ready(())),
        pod_usage_watch,
    );

    // What providers and controllers read: one watch each, shared. Children
    // that the operator applies by name (Deployments, Services) are watched
    // whatever their labels, so one of the same name that is not ours is
    // seen in the cache, and never taken over.
    let mut deployments = reflect_shared(
        scope.api::<CachedDeployment>(&client),
        everything.clone(),
        &tracker,
        "deployments",
        |deployment| {
            keep_metadata_unless_managed(deployment);
            if shape::is_managed(deployment) {
                kubernetes::keep_what_the_provider_reads(deployment);
            }
        },
        1,
    );
    let mut services = reflect_shared(
        scope.api::<CachedService>(&client),
        everything.clone(),
        &tracker,
        "services",
        |service| {
            keep_metadata_unless_managed(service);
            shape::keep_what_the_providers_compare(service);
        },
        2,
    );
    // Sandboxes' pods are read whole; of Instances' pods only those with a
    // problem to explain are kept, as that explanation (one Pod per replica
    // of every Instance would otherwise sit in a cache for nothing).
    let mut pods = reflect_shared(
        scope.api::<CachedPod>(&client),
        watcher::Config::default().labels(&format!("{},{SANDBOX_LABEL}", managed_selector())),
        &tracker,
        "pods",
        pod::keep_what_the_provider_reads,
        1,
    );
    let (instance_pods, unready_instance_pods, instance_pods_watch) = summarise(
        scope.api::<CachedPod>(&client),
        watcher::Config::default().labels(&format!("{},{INSTANCE_LABEL}", managed_selector())),
        &tracker,
        "instance-pods",
        kubernetes::pod_health,
        kubernetes::unready_pod_owner,
    );
    let mut claims = reflect_shared(
        scope.api::<PersistentVolumeClaim>(&client),
        managed.clone(),
        &tracker,
        "claims",
        forget_bookkeeping,
        1,
    );
    let mut webhooks = reflect_shared(
        scope.api::<Webhook>(&client),
        everything.clone(),
        &tracker,
        "webhooks",
        forget_bookkeeping,
        4,
    );
    let mut deliveries = reflect_shared(
        scope.api::<WebhookDelivery>(&client),
        everything.clone(),
        &tracker,
        "webhookdeliveries",
        forget_bookkeeping,
        2,
    );

    // Counted while this scope runs; the registration goes with it.
    let _object_counts = counts::register(
        &metrics,
        counts::CountedCaches {
            instances: instances.clone(),
            sandboxes: sandboxes.store.clone(),
            commands: commands.store.clone(),
            snapshots: snapshots.store.clone(),
            webhooks: webhooks.store.clone(),
            deliveries: deliveries.store.clone(),
        },
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
            pods: instance_pods,
        },
        deployments.subscriber(),
        services.subscriber(),
        unready_instance_pods,
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
            pod_usage,
            volume_snapshots: volume_snapshots.as_ref().map(|v| v.store.clone()),
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
    let (runner, commands_ended) = CommandRunner::new();
    let context = Arc::new(Context {
        sandboxes: sandboxes.store.clone(),
        commands: commands.store.clone(),
        snapshots: snapshots.store.clone(),
        runner: Arc::new(runner),
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
        written: written.clone(),
        deferrals: Default::default(),
        caches_synced: caches_synced.clone(),
    });

    // Objects deleted without a finalizer are announced as they go.
    let farewells = {
        let context = context.clone();
        futures::stream::select(
            instances_deleted.map(|i| Either::Left(Arc::new(i))),
            sandboxes.deletions().map(Either::Right),
        )
        .for_each_concurrent(FAREWELLS_AT_ONCE, move |gone| {
            let context = context.clone();
            async move {
                match gone {
                    Either::Left(instance) => {
                        lifecycle::farewell(instance.as_ref(), &context).await
                    }
                    Either::Right(sandbox) => lifecycle::farewell(sandbox.as_ref(), &context).await,
                }
            }
        })
    };

    let instance_controller = instance::controller(
        instance_stream.inspect_ok({
            let written = written.clone();
            move |instance| written.seen(instance)
        }),
        instances.clone(),
        futures::stream::select(
            instances_dispatched,
            to_hold_for_webhooks(webhooks.subscriber(), instances),
        ),
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    // A Sandbox is woken by its commands (to record how they went) and by
    // the snapshot its data starts from.
    let command_store = commands.store.clone();
    let sandbox_store = sandboxes.store.clone();
    let sandbox_wakes = futures::stream::select_all([
        sandboxes_dispatched.boxed(),
        to_hold_for_webhooks(webhooks.subscriber(), sandboxes.store.clone()).boxed(),
        commands
            .subscriber()
            .filter_map(|c| {
                futures::future::ready(
                    c.namespace()
                        .map(|ns| (ns, c.spec.sandbox_ref.name.clone())),
                )
            })
            .boxed(),
        snapshots
            .subscriber()
            .flat_map(move |snapshot| {
                let name = snapshot.name_any();
                futures::stream::iter(named_in_namespace(
                    &sandbox_store,
                    snapshot.namespace(),
                    |s| {
                        s.spec
                            .source
                            .as_ref()
                            .is_some_and(|source| source.snapshot_ref.name == name)
                    },
                ))
            })
            .boxed(),
    ]);
    let sandbox_controller = sandbox::controller(
        sandboxes.subscriber().map({
            let written = written.clone();
            move |s| {
                written.seen(s.as_ref());
                Ok::<_, watcher::Error>(s.as_ref().clone())
            }
        }),
        sandboxes.store.clone(),
        sandbox_wakes,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    // A command is woken when its run ends, when its Sandbox changes (it
    // starts running, stops, goes), and when a command of its Sandbox ends
    // (the next one may start).
    let unfinished_of = {
        let command_store = command_store.clone();
        move |namespace: Option<String>, sandbox: String| {
            let theirs: Vec<ObjectRef<SandboxCommand>> = command_store
                .state()
                .iter()
                .filter(|c| {
                    c.namespace() == namespace
                        && c.spec.sandbox_ref.name == sandbox
                        && !c
                            .status
                            .as_ref()
                            .and_then(|s| s.phase)
                            .is_some_and(|p| p.is_finished())
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect();
            futures::stream::iter(theirs)
        }
    };
    let command_wakes = futures::stream::select_all([
        commands_ended
            .map(|(namespace, name)| ObjectRef::<SandboxCommand>::new(&name).within(&namespace))
            .boxed(),
        sandboxes
            .subscriber()
            .flat_map({
                let unfinished_of = unfinished_of.clone();
                move |sandbox| unfinished_of(sandbox.namespace(), sandbox.name_any())
            })
            .boxed(),
        commands
            .subscriber()
            .filter(|c| {
                let finished = c
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_finished());
                futures::future::ready(finished)
            })
            .flat_map(move |c| unfinished_of(c.namespace(), c.spec.sandbox_ref.name.clone()))
            .boxed(),
    ]);
    // Commands and snapshots need nothing beyond the engine's own wiring.
    let command_controller = lifecycle::run_controller(
        commands.subscriber().map({
            let written = written.clone();
            move |c| {
                written.seen(c.as_ref());
                Ok::<_, watcher::Error>(c.as_ref().clone())
            }
        }),
        commands.store.clone(),
        command_wakes,
        config.concurrency,
        context.clone(),
        shutdown.clone(),
    );
    // A snapshot is woken by its volume snapshot, and by its Sandbox (whose
    // data volume it waits for).
    let snapshot_store = snapshots.store.clone();
    let mut snapshot_wakes: Vec<futures::stream::BoxStream<'static, ObjectRef<SandboxSnapshot>>> = vec![
        sandboxes
            .subscriber()
            .flat_map(move |sandbox| {
                let namespace = sandbox.namespace();
                let name = sandbox.name_any();
                let theirs: Vec<ObjectRef<SandboxSnapshot>> = snapshot_store
                    .state()
                    .iter()
                    .filter(|s| s.namespace() == namespace && s.spec.sandbox_ref.name == name)
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect();
                futures::stream::iter(theirs)
            })
            .boxed(),
    ];
    if let Some(volume_snapshots) = volume_snapshots.as_mut() {
        snapshot_wakes.push(
            volume_snapshots
                .subscriber()
                .filter_map(|v| {
                    futures::future::ready(shape::owner_of(v.as_ref(), "SandboxSnapshot").map(
                        |owner| {
                            ObjectRef::<SandboxSnapshot>::new(&owner.name).within(&owner.namespace)
                        },
                    ))
                })
                .boxed(),
        );
    }
    let snapshot_controller = lifecycle::run_controller(
        snapshots.subscriber().map({
            let written = written.clone();
            move |s| {
                written.seen(s.as_ref());
                Ok::<_, watcher::Error>(s.as_ref().clone())
            }
        }),
        snapshots.store.clone(),
        futures::stream::select_all(snapshot_wakes),
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
    let mut watches = vec![
        farewells.boxed(),
        deployments.watch,
        services.watch,
        pods.watch,
        instance_pods_watch,
        claims.watch,
        webhooks.watch,
        deliveries.watch,
        sandboxes.watch,
        commands.watch,
        snapshots.watch,
    ];
    watches.extend(volume_snapshots.map(|v| v.watch));
    let watches = futures::future::join_all(watches);
    // The controllers end on shutdown; the watches never do.
    tokio::select! {
        _ = async {
            futures::join!(
                instance_controller,
                sandbox_controller,
                command_controller,
                snapshot_controller,
                webhook_controller,
                delivery_controller
            )
        } => {}
        _ = async { futures::join!(watches, cluster_watches) } => {}
    }
}

/// How many Events saying an object is gone are sent at once: a deleted
/// namespace of 10,000 Instances must not open 10,000 requests.
const FAREWELLS_AT_ONCE: usize = 8;

/// Each time a Webhook changes, the objects of `store` in its namespace that
/// hold no finalizer (none was needed: see [`crate::plan::finalizer_needed`]).
/// Woken, they take one now, so that a later deletion waits for their last
/// events to reach the Webhook.
fn to_hold_for_webhooks<K>(
    webhooks: impl futures::Stream<Item = Arc<Webhook>> + Send + 'static,
    store: kube::runtime::reflector::Store<K>,
) -> impl futures::Stream<Item = (String, String)> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    webhooks.flat_map(move |webhook| {
        futures::stream::iter(named_in_namespace(&store, webhook.namespace(), |o| {
            o.meta().deletion_timestamp.is_none()
                && !o.finalizers().iter().any(|f| f == crate::plan::FINALIZER)
        }))
    })
}

/// The namespace and name of each object of `store` in `namespace` that
/// `wanted` accepts: whom a change to something of that namespace wakes.
fn named_in_namespace<K>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: Option<String>,
    wanted: impl Fn(&K) -> bool,
) -> Vec<(String, String)>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == namespace && wanted(o))
        .filter_map(|o| Some((o.namespace()?, o.name_any())))
        .collect()
}
