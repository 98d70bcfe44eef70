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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

use common::*;
use ctrlplane_operator::api::{Instance, InstancePhase, InstanceSpec, InstanceStatus};
use ctrlplane_operator::provider::InstanceWorkload;
use ctrlplane_operator::provider::kubernetes::{deployment_for, service_for};
use ctrlplane_operator::runtime::metrics::{CountRequestsLayer, Metrics};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
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

    // Baseline: the same Deployments and Services, no operator.
    let BaselineRun {
        wall: baseline_wall,
        control_plane: baseline_control_plane,
        requests: baseline_requests,
        deleted: baseline_deleted,
    } = baseline_phase(&client, &metrics, count, &format!("{suffix}-first")).await?;

    let floor = if std::env::var_os("BENCH_FLOOR").is_some() {
        Some(floor_phase(&client, count, &suffix).await?)
    } else {
        None
    };

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
    if let Some((floor_wall, floor_control_plane)) = &floor {
        println!(
            "| floor (BENCH_FLOOR): the Instances, their owned Deployments and Services, one status write each, by a plain client; wall time, control plane CPU seconds | {:.1}s, {:.1} | {:.1}s, {:.1} | {:.2}, {:.2} |",
            floor_wall.as_secs_f64(),
            floor_control_plane.0,
            baseline_wall.as_secs_f64(),
            baseline_control_plane.0,
            floor_wall.as_secs_f64() / baseline_wall.as_secs_f64(),
            floor_control_plane.0 / baseline_control_plane.0,
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
            async move { create_children(&client, &ns, i, None).await }
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

/// The floor: what the Instances themselves cost the control plane. Each
/// is created, its Deployment and Service are created owned by it, and its
/// status is written once, as a Running Instance's reads; then it waits for
/// every Deployment to be available, as the baseline does. Returns the wall
/// time and what the control plane spent.
async fn floor_phase(
    client: &kube::Client,
    count: usize,
    suffix: &str,
) -> Result<(Duration, (f64, String)), Box<dyn std::error::Error>> {
    let ns = format!("bench-floor-{suffix}");
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
                create_children(&client, &ns, i, instance.controller_owner_ref(&())).await?;
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
        "floor: {count} Instances with their Deployments and Services, all pods ready after {:.1}s",
        wall.as_secs_f64()
    );
    Ok((wall, spent))
}

/// Creates workload `i`'s Deployment and Service in `namespace` as a plain
/// client would, owned by `owner` when there is one.
async fn create_children(
    client: &kube::Client,
    namespace: &str,
    i: usize,
    owner: Option<OwnerReference>,
) -> Result<(), kube::Error> {
    let workload = workload(namespace, i);
    let owners = owner.map(|owner| vec![owner]);
    let mut deployment = deployment_for(&workload);
    deployment.metadata.owner_references = owners.clone();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await?;
    if let Some(mut service) = service_for(&workload) {
        service.metadata.owner_references = owners;
        Api::<Service>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &service)
            .await?;
    }
    Ok(())
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
