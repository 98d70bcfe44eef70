//! Benchmark: N Instances through the operator, against a baseline of the
//! same Deployments and Services created by a plain client, in one run.
//!
//!   hack/bench.sh instances [N]      (N defaults to 1000)
//!
//! It needs the local control plane running (hack/bench.sh starts it) and
//! the release build of the operator (hack/bench.sh builds it). It prints
//! wall time, the operator's peak RSS and CPU seconds, the API requests each
//! side made, reconciles per Instance (to Running, and per minute once
//! settled), and the ratio operator/baseline. Nothing here is asserted: the
//! machines are noisy, the figures are for people. The baseline runs again
//! after the operator, and the operator's times are also printed against
//! the mean of both baselines, so a drift of the machine's pace during the
//! run shows (and cancels out) instead of passing for the operator's cost.
//!
//! With `BENCH_FLOOR=1` it also times a floor between the two: the same
//! Deployments and Services, each owned by an Instance, and one status
//! write to each Instance (what a Running Instance carries), all by a plain
//! client. No operator can cost less than the objects it reports on.
//! `BENCH_FLOOR=requests` adds two more: the operator's own requests for
//! each Instance (its server-side applies, two status writes and its
//! Event), sent by a plain client with no watch; and the same with the
//! Starting status folded into the Running one.
//!
//! With `BENCH_PRICES=1` it prices each kind of request an Instance's path
//! sends instead, and runs nothing else: N of each, one kind at a time,
//! with what the control plane spends on them (until it is idle again)
//! against a plain Service create.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

use common::*;
use ctrlplane_operator::api::{EventType, Instance, InstancePhase, InstanceSpec, InstanceStatus};
use ctrlplane_operator::provider::InstanceWorkload;
use ctrlplane_operator::provider::kubernetes::{deployment_for, service_for};
use ctrlplane_operator::runtime::kubeapi::delete_if_present;
use ctrlplane_operator::runtime::metrics::{CountRequestsLayer, Metrics};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};

/// Creates in flight at once, for both sides, like the operator's own
/// reconcile concurrency.
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .or_else(|| std::env::var("BENCH_COUNT").ok()?.parse().ok())
        .unwrap_or(1000);
    let operator_binary = std::env::var("CTRLPLANE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ctrlplane-operator")
        });
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer().await?;
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer {
            metrics: metrics.clone(),
        })
        .build();
    let suffix = format!("{:x}", std::process::id());

    println!("bench/instances: N = {count}, client concurrency {CONCURRENCY}");

    if std::env::var_os("BENCH_PRICES").is_some() {
        return prices(&client, count, &suffix).await;
    }

    // Baseline: the same Deployments and Services, no operator.
    let BaselineRun {
        wall: baseline_wall,
        control_plane: baseline_control_plane,
        requests: baseline_requests,
        deleted: baseline_deleted,
    } = baseline_phase(&client, &metrics, count, &format!("{suffix}-first")).await?;

    let floors = match std::env::var("BENCH_FLOOR").ok().as_deref() {
        None => vec![],
        Some("requests") => vec![
            FloorShape::Least,
            FloorShape::OperatorRequests,
            FloorShape::OperatorRequestsFolded,
        ],
        Some(_) => vec![FloorShape::Least],
    };
    let mut floor_runs = Vec::new();
    for shape in floors {
        floor_runs.push((shape, floor_phase(&client, count, &suffix, shape).await?));
    }

    // The operator.
    let operator_ns = format!("bench-operator-{suffix}");
    create_namespace(&client, &operator_ns).await?;
    let metrics_port = free_port();
    let mut operator = start_operator(&operator_binary, &operator_ns, metrics_port)?;
    wait_ready(metrics_port).await?;
    let scrape_before = scrape(metrics_port).await?;
    let before_cpu = cpu_seconds(operator.id());
    let operator_cpu_before = control_plane_cpu();
    let started = Instant::now();
    let instances: Api<Instance> = Api::namespaced(client.clone(), &operator_ns);
    stream::iter(0..count)
        .map(|i| {
            let instances = instances.clone();
            async move {
                let mut instance = Instance::new(&format!("app-{i}"), instance_spec());
                instance.metadata.labels =
                    Some(BTreeMap::from([("bench".into(), "instances".into())]));
                instances.create(&PostParams::default(), &instance).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .map_ok(|_| ())
        .try_collect::<()>()
        .await?;
    let created = started.elapsed();
    wait_watched(&instances, count, Duration::from_secs(1800), |instance| {
        instance.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Running)
    })
    .await?;
    let operator_wall = started.elapsed();
    let operator_control_plane = control_plane_spent(operator_cpu_before, control_plane_cpu());
    let cpu = cpu_seconds(operator.id()) - before_cpu;
    // Progress folded into later writes lands within seconds: count it.
    wait_quiet(metrics_port, Duration::from_secs(6)).await?;
    let scrape_running = scrape(metrics_port).await?;
    let operator_requests = metric(&scrape_running, "ctrlplane_kube_api_requests_total");
    let reconciles = metric(&scrape_running, "ctrlplane_reconciles_total");
    let status_writes = metric(&scrape_running, "ctrlplane_status_writes_total");
    let to_running = object_requests(&scrape_before, &scrape_running);

    // Settled: how many reconciles per Instance per minute with nothing changing.
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let settled = scrape_metric(metrics_port, "ctrlplane_reconciles_total").await? - reconciles;
    let settled_requests =
        scrape_metric(metrics_port, "ctrlplane_kube_api_requests_total").await? - operator_requests;
    let rss = peak_rss_mib(operator.id());
    let n = count as f64;
    println!(
        "operator: {count} Instances created in {:.1}s, all Running after {:.1}s",
        created.as_secs_f64(),
        operator_wall.as_secs_f64()
    );
    println!();
    println!("| figure | operator | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| wall time to all ready | {:.1}s | {:.1}s | {:.2} |",
        operator_wall.as_secs_f64(),
        baseline_wall.as_secs_f64(),
        operator_wall.as_secs_f64() / baseline_wall.as_secs_f64()
    );
    print_control_plane_row(
        "to all ready",
        &operator_control_plane,
        &baseline_control_plane,
    );
    for (shape, floor) in &floor_runs {
        print_floor_row(
            shape.description(),
            floor,
            (baseline_wall, &baseline_control_plane),
        );
    }
    println!(
        "| API requests (operator: its own, from /metrics; baseline: the plain client's) | {operator_requests} | {baseline_requests} | {:.2} |",
        operator_requests / baseline_requests as f64
    );
    println!(
        "| operator CPU seconds to all Running | {cpu:.1} ({:.1} ms per Instance) | - | - |",
        cpu * 1000.0 / n
    );
    print_per_object("apply -> Running", &to_running, count);
    println!("| operator peak RSS | {rss:.1} MiB | - | - |");
    println!(
        "| reconciles per Instance to Running | {:.2} | - | - |",
        reconciles / n
    );
    println!(
        "| status writes per Instance to Running | {:.2} | - | - |",
        status_writes / n
    );
    println!(
        "| reconciles per Instance per minute, settled | {:.3} | - | - |",
        settled / n / (window.as_secs_f64() / 60.0)
    );
    println!("| API requests per minute, settled | {settled_requests} | - | - |");
    // How long each Instance stayed Starting: what a fold of the Starting
    // status into the Running one could save depends on how many would be
    // ready within the time the Starting write is held back.
    let listed = instances.list(&ListParams::default()).await?;
    print_time_starting(&time_starting(&listed.items));

    // Deleting is timed as well. With no Webhook in the namespace the
    // Instances hold no finalizer: they go at once, their children after
    // them (the garbage collector), and the operator only announces it.
    // The Instances first, so their deletion is counted by the operator
    // still watching them; then the namespace.
    let scrape_settled = scrape(metrics_port).await?;
    let cpu_settled = cpu_seconds(operator.id());
    let deleting = Instant::now();
    delete_every(&instances).await?;
    wait_until(count, Duration::from_secs(1800), || async {
        Ok(count.saturating_sub(count_left(&instances).await?))
    })
    .await?;
    let instances_gone = deleting.elapsed();
    let delete_cpu = cpu_seconds(operator.id()) - cpu_settled;
    wait_quiet(metrics_port, Duration::from_secs(3)).await?;
    let deletion = object_requests(&scrape_settled, &scrape(metrics_port).await?);
    delete_namespace(&client, &operator_ns).await?;
    let deleted = deleting.elapsed();
    let cpu_total = cpu_seconds(operator.id()) - before_cpu;
    let _ = operator.kill();
    let _ = operator.wait();

    println!(
        "| delete all (namespace gone) | {:.1}s | {:.1}s | {:.2} |",
        deleted.as_secs_f64(),
        baseline_deleted.as_secs_f64(),
        deleted.as_secs_f64() / baseline_deleted.as_secs_f64()
    );
    println!(
        "| every Instance gone | {:.1}s | - | - |",
        instances_gone.as_secs_f64()
    );
    print_per_object("deletion", &deletion, count);
    println!(
        "| operator CPU seconds to delete | {delete_cpu:.1} ({:.1} ms per Instance) | - | - |",
        delete_cpu * 1000.0 / n
    );
    println!(
        "| operator CPU seconds, whole run (create, settle, delete) | {cpu_total:.1} ({:.1} ms per Instance) | - | - |",
        cpu_total * 1000.0 / n
    );

    // The baseline again, now that the control plane has served both
    // sides: whatever it gained or lost in the meantime (a larger etcd, a
    // busier hour) shows as the difference between the two baselines.
    let again = baseline_phase(&client, &metrics, count, &format!("{suffix}-again")).await?;
    print_against_both_baselines(
        "wall time to all ready",
        operator_wall,
        baseline_wall,
        again.wall,
    );
    print_against_both_baselines(
        "delete all (namespace gone)",
        deleted,
        baseline_deleted,
        again.deleted,
    );
    print_control_plane_row(
        "to all ready, the baseline after the operator",
        &operator_control_plane,
        &again.control_plane,
    );
    Ok(())
}

/// Seconds from each Instance's `instance.starting` history entry to its
/// `instance.started` one, sorted. Instances without both are left out.
fn time_starting(instances: &[Instance]) -> Vec<f64> {
    let mut seconds: Vec<f64> = instances
        .iter()
        .filter_map(|instance| {
            let history = &instance.status.as_ref()?.history;
            let at = |type_: EventType| {
                history
                    .iter()
                    .find(|entry| entry.type_ == type_)
                    .map(|entry| entry.time)
            };
            let starting = at(EventType::InstanceStarting)?;
            let started = at(EventType::InstanceStarted)?;
            Some((started - starting).num_milliseconds() as f64 / 1000.0)
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    seconds
}

fn print_time_starting(sorted_seconds: &[f64]) {
    let Some(&longest) = sorted_seconds.last() else {
        return;
    };
    let quantile =
        |q: f64| sorted_seconds[((sorted_seconds.len() - 1) as f64 * q).round() as usize];
    let within = |limit: f64| {
        100.0 * sorted_seconds.iter().filter(|&&s| s <= limit).count() as f64
            / sorted_seconds.len() as f64
    };
    println!(
        "| time Starting (instance.starting to instance.started): median, p90, longest | {:.2}s, {:.2}s, {longest:.2}s | - | - |",
        quantile(0.5),
        quantile(0.9),
    );
    println!(
        "| Instances Running within 0.5 s / 1 s / 2 s / 5 s of Starting | {:.0}% / {:.0}% / {:.0}% / {:.0}% | - | - |",
        within(0.5),
        within(1.0),
        within(2.0),
        within(5.0),
    );
}

/// What one baseline phase measured.
struct BaselineRun {
    wall: Duration,
    control_plane: (f64, String),
    requests: u64,
    deleted: Duration,
}

/// The baseline: the same Deployments and Services created by a plain
/// client, timed until their pods are ready, then deleted with their
/// namespace (timed too).
async fn baseline_phase(
    client: &kube::Client,
    metrics: &Metrics,
    count: usize,
    suffix: &str,
) -> Result<BaselineRun, Box<dyn std::error::Error>> {
    let ns = format!("bench-baseline-{suffix}");
    create_namespace(client, &ns).await?;
    let before = metrics.api_request_total();
    let cpu_before = control_plane_cpu();
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let ns = ns.clone();
            async move { make_children(&client, &ns, i, None, Make::Create).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let created = started.elapsed();
    wait_all_available(client, &ns, count).await?;
    let wall = started.elapsed();
    let control_plane = control_plane_spent(cpu_before, control_plane_cpu());
    let requests = metrics.api_request_total() - before;
    println!(
        "baseline: {count} Deployments+Services created in {:.1}s, all pods ready after {:.1}s, {requests} API requests",
        created.as_secs_f64(),
        wall.as_secs_f64()
    );
    let deleting = Instant::now();
    delete_namespace(client, &ns).await?;
    Ok(BaselineRun {
        wall,
        control_plane,
        requests,
        deleted: deleting.elapsed(),
    })
}

/// The table row of a floor against the first baseline: wall time and
/// control plane CPU seconds.
fn print_floor_row(
    what: &str,
    (floor_wall, floor_control_plane): &(Duration, (f64, String)),
    (baseline_wall, baseline_control_plane): (Duration, &(f64, String)),
) {
    println!(
        "| {what}; wall time, control plane CPU seconds | {:.1}s, {:.1} | {:.1}s, {:.1} | {:.2}, {:.2} |",
        floor_wall.as_secs_f64(),
        floor_control_plane.0,
        baseline_wall.as_secs_f64(),
        baseline_control_plane.0,
        floor_wall.as_secs_f64() / baseline_wall.as_secs_f64(),
        floor_control_plane.0 / baseline_control_plane.0,
    );
}

/// What a floor phase sends for each Instance.
#[derive(Clone, Copy, PartialEq)]
enum FloorShape {
    /// The least any operator reporting on these objects can send: the
    /// Deployment and Service created, one status write.
    Least,
    /// The operator's own requests, in its order, with no watch and no
    /// wait between them: the Deployment and Service applied server-side,
    /// the Starting status, the `Started` Event, the Running status. What
    /// this costs beyond [`FloorShape::Least`] is the price of the requests;
    /// what the operator costs beyond this is its watches and its timing.
    OperatorRequests,
    /// The operator's requests with the Starting status folded into the
    /// Running one (one status write, the history unchanged): what that
    /// cut, which changes what users see, would be worth.
    OperatorRequestsFolded,
}

impl FloorShape {
    fn namespace(self, suffix: &str) -> String {
        match self {
            FloorShape::Least => format!("bench-floor-{suffix}"),
            FloorShape::OperatorRequests => format!("bench-floor-requests-{suffix}"),
            FloorShape::OperatorRequestsFolded => format!("bench-floor-folded-{suffix}"),
        }
    }

    fn description(self) -> &'static str {
        match self {
            FloorShape::Least => {
                "floor (BENCH_FLOOR): the Instances, their owned Deployments and Services, one status write each, by a plain client"
            }
            FloorShape::OperatorRequests => {
                "floor with the operator's requests (BENCH_FLOOR=requests): each Instance's Deployment and Service applied, two status writes and an Event, by a plain client with no watch"
            }
            FloorShape::OperatorRequestsFolded => {
                "the same with the Starting status folded into the Running one (BENCH_FLOOR=requests): the applies, the Event, one status write"
            }
        }
    }
}

/// The floor: what the Instances themselves cost the control plane. Each
/// is created, its Deployment and Service are made owned by it, and its
/// status is written (see [`FloorShape`]); then it waits for every
/// Deployment to be available, as the baseline does. Returns the wall time
/// and what the control plane spent.
async fn floor_phase(
    client: &kube::Client,
    count: usize,
    suffix: &str,
    shape: FloorShape,
) -> Result<(Duration, (f64, String)), Box<dyn std::error::Error>> {
    let ns = shape.namespace(suffix);
    create_namespace(client, &ns).await?;
    let cpu_before = control_plane_cpu();
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
                let name = format!("app-{i}");
                let mut instance = instances
                    .create(
                        &PostParams::default(),
                        &Instance::new(&name, instance_spec()),
                    )
                    .await?;
                let owner = instance.controller_owner_ref(&());
                if shape == FloorShape::Least {
                    make_children(&client, &ns, i, owner, Make::Create).await?;
                } else {
                    make_children(&client, &ns, i, owner, Make::ApplyAsOperator).await?;
                    if shape == FloorShape::OperatorRequests {
                        instance.status = Some(starting_status(&ns, &name));
                        instance = instances
                            .replace_status(&name, &PostParams::default(), &instance)
                            .await?;
                    }
                    post_started_event(&client, &instance).await?;
                }
                instance.status = Some(running_status(&ns, &name));
                instances
                    .replace_status(&name, &PostParams::default(), &instance)
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    wait_all_available(client, &ns, count).await?;
    let wall = started.elapsed();
    let spent = control_plane_spent(cpu_before, control_plane_cpu());
    delete_namespace(client, &ns).await?;
    println!(
        "floor ({ns}): {count} Instances with their Deployments and Services, all pods ready after {:.1}s",
        wall.as_secs_f64()
    );
    Ok((wall, spent))
}

/// What one kind of request cost: `count` of them, [`CONCURRENCY`] at a
/// time.
struct Price {
    what: &'static str,
    count: usize,
    wall: Duration,
    /// Control plane CPU seconds, the API server's first, until the
    /// control plane was idle again, less what it spends idle.
    api_server: f64,
    control_plane: f64,
}

impl Price {
    fn per_request_ms(&self) -> (f64, f64) {
        let n = self.count as f64;
        (
            self.api_server * 1000.0 / n,
            self.control_plane * 1000.0 / n,
        )
    }
}

/// The control plane's CPU seconds per second with nothing to do, over
/// `window`: what each price leaves out.
async fn idle_rate(window: Duration) -> (f64, f64) {
    let before = control_plane_cpu();
    tokio::time::sleep(window).await;
    let after = control_plane_cpu();
    let seconds = window.as_secs_f64();
    (
        (after[0] - before[0]) / seconds,
        control_plane_spent(before, after).0 / seconds,
    )
}

/// Sends `count` requests made by `send`, [`CONCURRENCY`] at a time, and
/// waits until the control plane has done what they led to (its CPU, over
/// one second, back to near its idle rate).
async fn price<T, F, Fut>(
    what: &'static str,
    count: usize,
    idle: (f64, f64),
    send: F,
) -> Result<(Price, Vec<T>), Box<dyn std::error::Error>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let before = control_plane_cpu();
    let started = Instant::now();
    let sent: Vec<T> = stream::iter(0..count)
        .map(send)
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let wall = started.elapsed();
    // Idle again: under a tenth of a core above the idle rate for a second.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = control_plane_cpu();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = control_plane_cpu();
        let busy = control_plane_spent(last, now).0;
        last = now;
        if busy < idle.1 + 0.1 || Instant::now() > deadline {
            break;
        }
    }
    let settled = started.elapsed().as_secs_f64();
    let price = Price {
        what,
        count,
        wall,
        api_server: last[0] - before[0] - idle.0 * settled,
        control_plane: control_plane_spent(before, last).0 - idle.1 * settled,
    };
    Ok((price, sent))
}

/// Prices `count` objects of one kind, each built by `object_of` and made
/// in `api`'s namespace the way `how` says.
async fn price_made<K>(
    what: &'static str,
    (count, idle): (usize, (f64, f64)),
    api: &Api<K>,
    object_of: impl Fn(usize) -> K,
    how: Make,
) -> Result<Price, Box<dyn std::error::Error>>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (price, _) = price(what, count, idle, |i| {
        let object = object_of(i);
        async move { make(api, &object, how).await }
    })
    .await?;
    Ok(price)
}

/// `BENCH_PRICES`: what each kind of request of an Instance's path costs
/// the control plane, against a plain Service create. Deployments have no
/// replicas here, so their price is the request and the controllers'
/// bookkeeping, not pods.
async fn prices(
    client: &kube::Client,
    count: usize,
    suffix: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let created_ns = format!("bench-prices-created-{suffix}");
    let applied_ns = format!("bench-prices-applied-{suffix}");
    create_namespace(client, &created_ns).await?;
    create_namespace(client, &applied_ns).await?;
    let idle = idle_rate(Duration::from_secs(5)).await;
    // No owner: the price of the request, not of the garbage collector's
    // bookkeeping for an owner.
    let without_pods = |namespace: &str, i: usize| {
        let mut workload = workload(namespace, i);
        workload.replicas = 0;
        workload
    };
    let service_of = |namespace: &str, i: usize| {
        let mut service = service_for(&without_pods(namespace, i)).expect("one port");
        service.metadata.owner_references = None;
        service
    };
    let deployment_of = |namespace: &str, i: usize| {
        let mut deployment = deployment_for(&without_pods(namespace, i));
        deployment.metadata.owner_references = None;
        deployment
    };
    let create_params = PostParams::default();
    let created_services: Api<Service> = Api::namespaced(client.clone(), &created_ns);
    let applied_services: Api<Service> = Api::namespaced(client.clone(), &applied_ns);
    let created_deployments: Api<Deployment> = Api::namespaced(client.clone(), &created_ns);
    let applied_deployments: Api<Deployment> = Api::namespaced(client.clone(), &applied_ns);
    let instances: Api<Instance> = Api::namespaced(client.clone(), &created_ns);

    // The first requests after the control plane starts cost more (its
    // caches and Go's heap are still growing): a run of Service creates
    // that is not counted goes first, so the baseline does not pay for it.
    let warm_up_ns = format!("bench-prices-warm-up-{suffix}");
    create_namespace(client, &warm_up_ns).await?;
    let warm_up_services: Api<Service> = Api::namespaced(client.clone(), &warm_up_ns);
    price_made(
        "warm-up, not counted",
        (count, idle),
        &warm_up_services,
        |i| service_of(&warm_up_ns, i),
        Make::Create,
    )
    .await?;
    delete_namespace(client, &warm_up_ns).await?;
    service_line(client, suffix).await?;
    let baseline = price_made(
        "Service create (the baseline)",
        (count, idle),
        &created_services,
        |i| service_of(&created_ns, i),
        Make::Create,
    )
    .await?;
    let service_apply = price_made(
        "Service server-side apply",
        (count, idle),
        &applied_services,
        |i| service_of(&applied_ns, i),
        Make::ApplyAsOperator,
    )
    .await?;
    let deployment_create = price_made(
        "Deployment create, no replicas",
        (count, idle),
        &created_deployments,
        |i| deployment_of(&created_ns, i),
        Make::Create,
    )
    .await?;
    let deployment_apply = price_made(
        "Deployment server-side apply, no replicas",
        (count, idle),
        &applied_deployments,
        |i| deployment_of(&applied_ns, i),
        Make::ApplyAsOperator,
    )
    .await?;
    let (instance_create, created) = price("Instance create", count, idle, |i| {
        let instance = Instance::new(&format!("app-{i}"), instance_spec());
        let (api, params) = (&instances, &create_params);
        async move { api.create(params, &instance).await }
    })
    .await?;
    let (starting_write, starting) = price("Instance status write, Starting", count, idle, |i| {
        let mut instance = created[i].clone();
        let name = format!("app-{i}");
        instance.status = Some(starting_status(&created_ns, &name));
        let (api, params) = (&instances, &create_params);
        async move { api.replace_status(&name, params, &instance).await }
    })
    .await?;
    let (running_write, _) = price("Instance status write, Running", count, idle, |i| {
        let mut instance = starting[i].clone();
        let name = format!("app-{i}");
        instance.status = Some(running_status(&created_ns, &name));
        let (api, params) = (&instances, &create_params);
        async move { api.replace_status(&name, params, &instance).await.map(drop) }
    })
    .await?;
    let (event, _) = price(
        "Event create (the operator's Started Event)",
        count,
        idle,
        |i| {
            let instance = &created[i];
            async move { post_started_event(client, instance).await }
        },
    )
    .await?;
    delete_namespace(client, &created_ns).await?;
    delete_namespace(client, &applied_ns).await?;

    let (_, baseline_ms) = baseline.per_request_ms();
    println!(
        "control plane idle: API server {:.3}, all {:.3} CPU seconds per second (left out of each price)",
        idle.0, idle.1
    );
    println!();
    println!(
        "| request (N = {count}, {CONCURRENCY} at a time) | wall time | API server CPU ms per request | control plane CPU ms per request | ratio to a Service create (control plane CPU) |"
    );
    println!("|---|---|---|---|---|");
    let all = [
        &baseline,
        &service_apply,
        &deployment_create,
        &deployment_apply,
        &instance_create,
        &starting_write,
        &running_write,
        &event,
    ];
    for price in all {
        let (api_server_ms, control_plane_ms) = price.per_request_ms();
        println!(
            "| {} | {:.1}s | {api_server_ms:.2} | {control_plane_ms:.2} | {:.2} |",
            price.what,
            price.wall.as_secs_f64(),
            control_plane_ms / baseline_ms
        );
    }
    // The operator's requests for one Instance beyond the least floor's:
    // a second status write, the Event, applies where the floor creates.
    let ms = |price: &Price| price.per_request_ms().1;
    let beyond_floor = ms(&starting_write) + ms(&event) + ms(&service_apply) - ms(&baseline)
        + ms(&deployment_apply)
        - ms(&deployment_create);
    println!(
        "| the operator's requests beyond the least floor's, per Instance: the Starting write {:.2}, the Event {:.2}, the two applies beyond creates {:.2} | - | - | {beyond_floor:.2} | {:.2} |",
        ms(&starting_write),
        ms(&event),
        ms(&service_apply) - ms(&baseline) + ms(&deployment_apply) - ms(&deployment_create),
        beyond_floor / baseline_ms
    );
    Ok(())
}

/// What [`service_line`] creates.
#[derive(Clone, Copy)]
enum LineKind {
    /// The baseline: an object with no allocation of its own.
    ConfigMap,
    Service,
    /// A Service with no cluster IP: the same object, without the allocator.
    HeadlessService,
}

impl LineKind {
    fn description(self) -> &'static str {
        match self {
            LineKind::ConfigMap => "ConfigMap (the baseline)",
            LineKind::Service => "Service with a cluster IP",
            LineKind::HeadlessService => "headless Service",
        }
    }
}

/// How many creates per second the API server takes with one in flight
/// and with [`CONCURRENCY`] in flight: ConfigMaps (the baseline), Services
/// with a cluster IP, and headless Services. Why: the API server allocates
/// a Service's cluster IP under one lock held across the write of its
/// IPAddress object, so every Service create of the cluster waits in one
/// line, and more in flight only makes the line longer. That line paces
/// the baseline and the operator alike.
async fn service_line(
    client: &kube::Client,
    suffix: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    const COUNT: usize = 300;
    let namespace = format!("bench-service-line-{suffix}");
    create_namespace(client, &namespace).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let create = |kind: LineKind, name: String| {
        let (config_maps, services) = (config_maps.clone(), services.clone());
        async move {
            let params = PostParams::default();
            let cluster_ip = match kind {
                LineKind::ConfigMap => {
                    let mut config_map = ConfigMap::default();
                    config_map.metadata.name = Some(name);
                    return config_maps.create(&params, &config_map).await.map(drop);
                }
                LineKind::Service => None,
                LineKind::HeadlessService => Some("None"),
            };
            let service: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "clusterIP": cluster_ip,
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                },
            }))
            .expect("a Service");
            services.create(&params, &service).await.map(drop)
        }
    };
    let delete = |kind: LineKind, name: String| {
        let (config_maps, services) = (config_maps.clone(), services.clone());
        async move {
            let params = DeleteParams::default();
            match kind {
                LineKind::ConfigMap => delete_if_present(&config_maps, &name, &params).await,
                _ => delete_if_present(&services, &name, &params).await,
            }
            .map(drop)
        }
    };
    println!(
        "| create ({COUNT} each) | per second, 1 in flight | per second, {CONCURRENCY} in flight | {CONCURRENCY} in flight against 1 |"
    );
    println!("|---|---|---|---|");
    for kind in [
        LineKind::ConfigMap,
        LineKind::Service,
        LineKind::HeadlessService,
    ] {
        let mut rates = [0.0; 2];
        for (slot, in_flight) in [1, CONCURRENCY].into_iter().enumerate() {
            let name = |i: usize| format!("line-{in_flight}-{i}");
            let started = Instant::now();
            stream::iter(0..COUNT)
                .map(|i| create(kind, name(i)))
                .buffer_unordered(in_flight)
                .try_collect::<()>()
                .await?;
            rates[slot] = COUNT as f64 / started.elapsed().as_secs_f64();
            // Each measure starts from an empty namespace.
            stream::iter(0..COUNT)
                .map(|i| delete(kind, name(i)))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<()>()
                .await?;
        }
        println!(
            "| {} | {:.0} | {:.0} | {:.2} |",
            kind.description(),
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
    println!();
    delete_namespace(client, &namespace).await?;
    Ok(())
}

/// Applies `object` server-side with the operator's field manager, forced,
/// as its providers do.
async fn apply_as_operator<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(ctrlplane_operator::provider::shape::FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(drop)
}

/// Posts the `Started` Event the operator publishes for `instance`.
async fn post_started_event(client: &kube::Client, instance: &Instance) -> Result<(), kube::Error> {
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let namespace = instance.metadata.namespace.clone().unwrap_or_default();
    let name = instance.metadata.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Reconcile".into()),
        reason: Some("Started".into()),
        note: Some("1 of 1 replicas ready".into()),
        type_: Some("Normal".into()),
        regarding: Some(instance.object_ref(&())),
        reporting_controller: Some("ctrlplane.dev/operator".into()),
        reporting_instance: Some("bench".into()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

/// How a plain client makes an object.
#[derive(Clone, Copy, PartialEq)]
enum Make {
    Create,
    /// Server-side, as the operator's providers do.
    ApplyAsOperator,
}

/// Makes workload `i`'s Deployment and Service in `namespace` as a plain
/// client would, owned by `owner` when there is one.
async fn make_children(
    client: &kube::Client,
    namespace: &str,
    i: usize,
    owner: Option<OwnerReference>,
    how: Make,
) -> Result<(), kube::Error> {
    let workload = workload(namespace, i);
    let owners = owner.map(|owner| vec![owner]);
    let mut deployment = deployment_for(&workload);
    deployment.metadata.owner_references = owners.clone();
    make(
        &Api::namespaced(client.clone(), namespace),
        &deployment,
        how,
    )
    .await?;
    if let Some(mut service) = service_for(&workload) {
        service.metadata.owner_references = owners;
        make(&Api::namespaced(client.clone(), namespace), &service, how).await?;
    }
    Ok(())
}

/// Makes `object` the way `how` says.
async fn make<K>(api: &Api<K>, object: &K, how: Make) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match how {
        Make::Create => api.create(&PostParams::default(), object).await.map(drop),
        Make::ApplyAsOperator => apply_as_operator(api, object).await,
    }
}

/// Waits, on one watch, until `count` Deployments in `namespace` have
/// their pods ready.
async fn wait_all_available(
    client: &kube::Client,
    namespace: &str,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    wait_watched(
        &Api::<Deployment>::namespaced(client.clone(), namespace),
        count,
        Duration::from_secs(1800),
        deployment_available,
    )
    .await
}

/// The status the operator writes first for an Instance of
/// [`instance_spec`]: Starting, its workload applied and no replica ready.
fn starting_status(namespace: &str, name: &str) -> InstanceStatus {
    let mut status = running_status(namespace, name);
    status.phase = Some(InstancePhase::Starting);
    status.ready_replicas = 0;
    status.history.truncate(2);
    status.dispatched_seq = 2;
    status
}

/// The status the operator writes for a Running Instance of
/// [`instance_spec`], as read from the local control plane.
fn running_status(namespace: &str, name: &str) -> InstanceStatus {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": status, "reason": reason,
            "message": message, "observedGeneration": 1, "lastTransitionTime": now})
    };
    let entry =
        |sequence: u64, from: Option<&str>, to: &str, type_: &str, reason: &str, message: &str| {
            let mut entry = serde_json::json!({"sequence": sequence, "to": to, "type": type_,
            "reason": reason, "message": message, "time": now});
            if let Some(from) = from {
                entry["from"] = from.into();
            }
            entry
        };
    let release = serde_json::json!({"version": 1, "image": "nginx:1.27", "outcome": "Succeeded", "createdAt": now});
    serde_json::from_value(serde_json::json!({
        "phase": "Running",
        "observedGeneration": 1,
        "replicas": 1,
        "readyReplicas": 1,
        "selector": format!("ctrlplane.dev/instance={name}"),
        "appliedScale": {"replicas": 1, "cpu": "10m", "memory": "16Mi"},
        "providerRef": {"provider": "kubernetes", "kind": "Deployment", "name": name},
        "endpoints": [{"name": "http", "url": format!("http://{name}.{namespace}.svc.cluster.local:8080")}],
        "conditions": [
            condition("Ready", "True", "Running", "1 of 1 replicas ready"),
            condition("Progressing", "False", "Complete", "the workload matches the spec"),
            condition("Suspended", "False", "NotSuspended", "spec.suspend is not set"),
            condition("Synced", "True", "Reconciled", "the last reconcile succeeded"),
            condition("Stalled", "False", "NotStalled", "nothing stands in the way"),
        ],
        "history": [
            entry(1, None, "Provisioning", "instance.created", "Created", "the Instance was created"),
            entry(2, Some("Provisioning"), "Starting", "instance.starting", "Provisioned", "the workload is created; starting it"),
            entry(3, Some("Starting"), "Running", "instance.started", "ReplicasReady", "1 of 1 replicas ready"),
        ],
        "dispatchedSeq": 3,
        "currentRelease": release,
        "releases": [release],
    }))
    .expect("a valid InstanceStatus")
}

fn workload(namespace: &str, i: usize) -> InstanceWorkload {
    let spec = instance_spec();
    InstanceWorkload {
        namespace: namespace.into(),
        name: format!("app-{i}"),
        owner: OwnerReference::default(),
        labels: BTreeMap::from([("bench".into(), "instances".into())]),
        image: spec.image,
        replicas: spec.replicas,
        resources: spec.resources,
        env: spec.env,
        ports: spec.ports,
        health_check: spec.health_check,
        region: spec.region,
        restart_token: None,
        progress_deadline_seconds: spec.progress_deadline_seconds,
    }
}

fn instance_spec() -> InstanceSpec {
    serde_json::from_value(serde_json::json!({
        "image": "nginx:1.27",
        "replicas": 1,
        "resources": {"cpu": "10m", "memory": "16Mi"},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "state": "Running",
        "rollback": "Manual",
        "progressDeadlineSeconds": 600,
    }))
    .expect("a valid spec")
}

fn deployment_available(deployment: &Deployment) -> bool {
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= want
}
