//! Benchmark: N Sandboxes created at once until all are Running, then all
//! deleted, against a baseline of the same claims and Pods created and
//! deleted by a plain client, in one run.
//!
//!   hack/bench.sh sandboxes [N]      (N defaults to 500)
//!
//! The baseline runs twice, before the operator and after it, and each
//! phase is also printed against the mean of the two: the first run on a
//! freshly started control plane is often the slowest, and the machine's
//! pace moves with the hour.
//!
//! Static PersistentVolumes (3N, in a StorageClass of the benchmark's own)
//! are created first and are not timed. Nothing is asserted.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ctrlplane_operator::api::{Sandbox, SandboxPhase, SandboxSpec};
use ctrlplane_operator::provider::pod::{claim_for, claim_name, pod_for};
use ctrlplane_operator::provider::{RunWanted, SandboxWorkload};
use ctrlplane_operator::runtime::metrics::{CountRequestsLayer, Metrics};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

const CONCURRENCY: usize = 16;
const CLASS: &str = "bench-sandboxes";
const VOLUMES: StaticVolumes = StaticVolumes {
    class: CLASS,
    label: "sandboxes",
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
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
    println!("bench/sandboxes: N = {count}, client concurrency {CONCURRENCY}");
    VOLUMES.create(&client, count * 3).await?;

    // Baseline: the same claims and Pods from a plain client.
    let BaselineRun {
        up: baseline_up,
        down: baseline_down,
        cpu_up: baseline_cpu_up,
        cpu_down: baseline_cpu_down,
        requests: baseline_requests,
    } = baseline_phase(&client, &metrics, count, "bench-sbx-baseline").await?;

    // The operator.
    let operator_ns = "bench-sbx-operator";
    create_namespace(&client, operator_ns).await?;
    let port = free_port();
    let mut operator = start_operator(&operator_binary, operator_ns, port)?;
    wait_ready(port).await?;
    let scrape_before = scrape(port).await?;
    let cpu_before = cpu_seconds(operator.id());
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), operator_ns);
    let cpu_mark = control_plane_cpu();
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let sandboxes = sandboxes.clone();
            async move {
                let sandbox = Sandbox::new(&format!("sbx-{i}"), spec());
                sandboxes
                    .create(&PostParams::default(), &sandbox)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    wait_watched(&sandboxes, count, Duration::from_secs(1800), |sandbox| {
        sandbox.status.as_ref().and_then(|s| s.phase) == Some(SandboxPhase::Running)
    })
    .await?;
    let operator_up = started.elapsed();
    let operator_cpu_up = control_plane_spent(cpu_mark, control_plane_cpu());
    let cpu_up = cpu_seconds(operator.id()) - cpu_before;
    wait_quiet(port, Duration::from_secs(6)).await?;
    let scrape_up = scrape(port).await?;
    let requests_up = metric(&scrape_up, "ctrlplane_kube_api_requests_total");
    let reconciles_up = metric(&scrape_up, "ctrlplane_reconciles_total{kind=\"Sandbox\"}");
    let to_running = object_requests(&scrape_before, &scrape_up);
    let cpu_mark = control_plane_cpu();
    let started = Instant::now();
    // Deleted the way the baseline deletes its pods and claims: one DELETE
    // per object, CONCURRENCY at a time. One DELETE of the collection is
    // served one object after another by the API server (one worker by
    // default): in one run it took 8.3s of a 9.8s deletion, which timed the
    // API server's loop, not the operator.
    stream::iter(0..count)
        .map(|i| {
            let sandboxes = sandboxes.clone();
            async move {
                sandboxes
                    .delete(&format!("sbx-{i}"), &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let deletes_sent = started.elapsed();
    // Deleted means what the baseline's means: the pods and claims are gone
    // too (the garbage collector removes them once their Sandbox is).
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), operator_ns);
    let operator_claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), operator_ns);
    // When each kind was first seen all gone, to tell where deletion waits.
    let gone_at = std::sync::Mutex::new([None::<Duration>; 3]);
    wait_until(count, Duration::from_secs(1800), || async {
        let left = [
            count_left(&sandboxes).await?,
            count_left(&operator_pods).await?,
            count_left(&operator_claims).await?,
        ];
        let mut gone_at = gone_at.lock().expect("not poisoned");
        for (at, left) in gone_at.iter_mut().zip(left) {
            if left == 0 && at.is_none() {
                *at = Some(started.elapsed());
            }
        }
        Ok(count.saturating_sub(left.iter().sum()))
    })
    .await?;
    let operator_down = started.elapsed();
    let operator_cpu_down = control_plane_spent(cpu_mark, control_plane_cpu());
    let [sandboxes_gone, pods_gone, claims_gone] = gone_at
        .into_inner()
        .expect("not poisoned")
        .map(|at| at.unwrap_or(operator_down));
    println!(
        "operator deletion: every DELETE answered after {:.1}s; every Sandbox gone after {:.1}s, every pod after {:.1}s, every claim after {:.1}s",
        deletes_sent.as_secs_f64(),
        sandboxes_gone.as_secs_f64(),
        pods_gone.as_secs_f64(),
        claims_gone.as_secs_f64()
    );
    wait_quiet(port, Duration::from_secs(3)).await?;
    let scrape_down = scrape(port).await?;
    let deletion = object_requests(&scrape_up, &scrape_down);
    let requests = metric(&scrape_down, "ctrlplane_kube_api_requests_total");
    let cpu = cpu_seconds(operator.id()) - cpu_before;
    let rss = peak_rss_mib(operator.id());
    let _ = operator.kill();
    let _ = operator.wait();
    delete_namespace(&client, operator_ns).await?;

    println!();
    println!("| figure | operator | baseline | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, operator: f64, baseline: f64| {
        println!(
            "| {what} | {operator:.1}s | {baseline:.1}s | {:.2} |",
            operator / baseline
        );
    };
    row(
        "all Running (baseline: all pods ready)",
        operator_up.as_secs_f64(),
        baseline_up.as_secs_f64(),
    );
    row(
        "all deleted",
        operator_down.as_secs_f64(),
        baseline_down.as_secs_f64(),
    );
    print_control_plane_row("to all Running", &operator_cpu_up, &baseline_cpu_up);
    print_control_plane_row("to all deleted", &operator_cpu_down, &baseline_cpu_down);
    println!(
        "| API requests, create + delete | {requests} | {baseline_requests} | {:.2} |",
        requests / baseline_requests as f64
    );
    println!("| API requests to all Running | {requests_up} | - | - |");
    println!(
        "| reconciles per Sandbox to Running | {:.2} | - | - |",
        reconciles_up / count as f64
    );
    print_per_object("apply -> Running", &to_running, count);
    print_per_object("deletion", &deletion, count);
    println!(
        "| operator CPU seconds to all Running | {cpu_up:.1} ({:.1} ms per Sandbox) | - | - |",
        cpu_up * 1000.0 / count as f64
    );
    println!(
        "| operator CPU seconds, whole run | {cpu:.1} ({:.1} ms per Sandbox) | - | - |",
        cpu * 1000.0 / count as f64
    );
    println!("| operator peak RSS | {rss:.1} MiB | - | - |");

    // The baseline again, now that the control plane has served both
    // sides, to show how far the machine's pace moved meanwhile.
    let again = baseline_phase(&client, &metrics, count, "bench-sbx-baseline-again").await?;
    print_against_both_baselines("all Running", operator_up, baseline_up, again.up);
    print_against_both_baselines("all deleted", operator_down, baseline_down, again.down);
    print_control_plane_row(
        "to all deleted, the baseline after the operator",
        &operator_cpu_down,
        &again.cpu_down,
    );
    VOLUMES.remove(&client).await?;
    Ok(())
}

/// What one baseline phase measured.
struct BaselineRun {
    up: Duration,
    down: Duration,
    cpu_up: (f64, String),
    cpu_down: (f64, String),
    requests: u64,
}

/// The baseline: the same claims and Pods from a plain client in
/// `baseline_ns`, timed until every pod is ready, then deleted one DELETE
/// per object and timed until every pod and claim is gone.
async fn baseline_phase(
    client: &kube::Client,
    metrics: &Metrics,
    count: usize,
    baseline_ns: &str,
) -> Result<BaselineRun, Box<dyn std::error::Error>> {
    create_namespace(client, baseline_ns).await?;
    let before = metrics.api_request_total();
    let cpu_mark = control_plane_cpu();
    let started = Instant::now();
    let hosts = ["kwok-node-0", "kwok-node-1"];
    stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let workload = workload(baseline_ns, i, Some(hosts[i % 2].to_string()));
                let mut claim = claim_for(&workload);
                claim.metadata.owner_references = None;
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), baseline_ns)
                    .create(&PostParams::default(), &claim)
                    .await?;
                let mut pod = pod_for(&workload, hosts[i % 2], hosts[i % 2]);
                pod.metadata.owner_references = None;
                Api::<Pod>::namespaced(client, baseline_ns)
                    .create(&PostParams::default(), &pod)
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), baseline_ns);
    wait_watched(&pods, count, Duration::from_secs(1800), pod_ready).await?;
    let up = started.elapsed();
    let cpu_now = control_plane_cpu();
    let cpu_up = control_plane_spent(cpu_mark, cpu_now);
    let cpu_mark = cpu_now;
    let started = Instant::now();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), baseline_ns);
    stream::iter(0..count)
        .map(|i| {
            let (pods, claims) = (pods.clone(), claims.clone());
            async move {
                pods.delete(&format!("sbx-{i}"), &DeleteParams::default())
                    .await?;
                claims
                    .delete(&claim_name(&format!("sbx-{i}")), &DeleteParams::default())
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    wait_until(count, Duration::from_secs(1800), || async {
        let left = count_left(&pods).await? + count_left(&claims).await?;
        Ok(count.saturating_sub(left))
    })
    .await?;
    let down = started.elapsed();
    let cpu_down = control_plane_spent(cpu_mark, control_plane_cpu());
    let requests = metrics.api_request_total() - before;
    delete_namespace(client, baseline_ns).await?;
    println!(
        "baseline: {count} claims+pods ready after {:.1}s, deleted after {:.1}s, {requests} API requests",
        up.as_secs_f64(),
        down.as_secs_f64()
    );

    Ok(BaselineRun {
        up,
        down,
        cpu_up,
        cpu_down,
        requests,
    })
}

fn spec() -> SandboxSpec {
    serde_json::from_value(serde_json::json!({
        "image": "ghcr.io/acme/devbox:1",
        "resources": {"cpu": "100m", "memory": "128Mi", "storage": "1Gi", "storageClassName": CLASS},
        "state": "Running",
        "expiryPolicy": "Delete",
    }))
    .expect("a valid spec")
}

fn workload(namespace: &str, i: usize, host: Option<String>) -> SandboxWorkload {
    SandboxWorkload {
        namespace: namespace.into(),
        name: format!("sbx-{i}"),
        owner: OwnerReference::default(),
        labels: BTreeMap::new(),
        image: "ghcr.io/acme/devbox:1".into(),
        cpu: "100m".into(),
        memory: "128Mi".into(),
        storage: "1Gi".into(),
        storage_class: Some(CLASS.into()),
        env: Vec::new(),
        ports: Vec::new(),
        run: host.map_or(RunWanted::AsIs, RunWanted::On),
        revision: "bench".into(),
        restore_from: None,
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
