//! Benchmark: N SandboxCommands across M running Sandboxes, all created at
//! once, until every one has Succeeded; against a baseline of the same
//! execs (same argv, same stdin) made by a plain client into the same pods,
//! one at a time per pod as the operator runs them, in one run.
//!
//!   hack/bench.sh commands [N] [M]      (N defaults to 200, M to 10)
//!
//! The Sandboxes (and their static volumes) are made ready first and are
//! not timed. Latency is from the moment a command is asked for (the
//! create returned; for the baseline, the exec was queued) to the moment
//! it is seen finished, so both include waiting behind earlier commands of
//! the same Sandbox. Nothing is asserted.

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ctrlplane_operator::api::{CommandPhase, Sandbox, SandboxCommand, SandboxPhase};
use ctrlplane_operator::provider::ExecRequest;
use ctrlplane_operator::provider::pod::{env_block, exec_argv, exit_code};
use ctrlplane_operator::runtime::metrics::{CountRequestsLayer, Metrics};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONCURRENCY: usize = 16;

/// When each command was first seen finished, and how it ended.
type FinishedAt = HashMap<String, (Instant, Option<CommandPhase>)>;
const CLASS: &str = "bench-commands";
const VOLUMES: StaticVolumes = StaticVolumes {
    class: CLASS,
    label: "commands",
};
const NAMESPACE: &str = "bench-commands";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut numbers = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse::<usize>().ok());
    let count = numbers.next().unwrap_or(200);
    let sandbox_count = numbers.next().unwrap_or(10).clamp(1, count.max(1));
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
    println!(
        "bench/commands: N = {count} commands across M = {sandbox_count} Sandboxes, client concurrency {CONCURRENCY}"
    );

    // Not timed: M running Sandboxes from the operator.
    VOLUMES.create(&client, sandbox_count).await?;
    create_namespace(&client, NAMESPACE).await?;
    let port = free_port();
    let mut operator = start_operator(&operator_binary, NAMESPACE, port)?;
    wait_ready(port).await?;
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), NAMESPACE);
    for s in 0..sandbox_count {
        let sandbox: Sandbox = serde_json::from_value(serde_json::json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": sandbox_name(s)},
            "spec": {
                "image": "ghcr.io/acme/devbox:1",
                "resources": {"cpu": "100m", "memory": "128Mi", "storage": "1Gi", "storageClassName": CLASS},
            },
        }))?;
        sandboxes.create(&PostParams::default(), &sandbox).await?;
    }
    wait_until(sandbox_count, Duration::from_secs(600), || async {
        Ok(sandboxes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| s.status.as_ref().and_then(|s| s.phase) == Some(SandboxPhase::Running))
            .count())
    })
    .await?;

    // Baseline: the same execs from a plain client, one at a time per pod.
    let before = metrics.api_request_total();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let per_pod: Vec<Arc<tokio::sync::Mutex<()>>> = (0..sandbox_count)
        .map(|_| Arc::new(tokio::sync::Mutex::new(())))
        .collect();
    let started = Instant::now();
    let baseline_latencies: Vec<Duration> = stream::iter(0..count)
        .map(|i| {
            let (pods, turn) = (pods.clone(), per_pod[i % sandbox_count].clone());
            async move {
                let queued = Instant::now();
                let _turn = turn.lock().await;
                let exit_code = exec_once(&pods, &sandbox_name(i % sandbox_count), i).await?;
                if exit_code != Some(0) {
                    return Err(format!("exec {i} exited {exit_code:?}").into());
                }
                Ok::<_, Box<dyn std::error::Error>>(queued.elapsed())
            }
        })
        .buffer_unordered(count.max(1))
        .try_collect()
        .await?;
    let baseline_wall = started.elapsed();
    let baseline_requests = metrics.api_request_total() - before;
    println!(
        "baseline: {count} execs in {:.1}s, {baseline_requests} API requests",
        baseline_wall.as_secs_f64()
    );

    // The operator: N SandboxCommands created at once.
    wait_quiet(port, Duration::from_secs(3)).await?;
    let scrape_before = scrape(port).await?;
    let cpu_before = cpu_seconds(operator.id());
    let commands: Api<SandboxCommand> = Api::namespaced(client.clone(), NAMESPACE);
    let asked_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let finished_at: Arc<Mutex<FinishedAt>> = Arc::default();
    // Finishing is seen through a watch, as a user's tool would see it.
    let observer = {
        let (commands, finished_at) = (commands.clone(), finished_at.clone());
        tokio::spawn(async move {
            let mut changes = std::pin::pin!(
                watcher(commands, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(Ok(command)) = changes.next().await {
                let phase = command.status.as_ref().and_then(|s| s.phase);
                if phase.is_some_and(CommandPhase::is_finished) {
                    let name = command.metadata.name.clone().unwrap_or_default();
                    finished_at
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert((Instant::now(), phase));
                }
            }
        })
    };
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (commands, asked_at) = (commands.clone(), asked_at.clone());
            async move {
                let command: SandboxCommand = serde_json::from_value(serde_json::json!({
                    "apiVersion": "ctrlplane.dev/v1alpha1",
                    "kind": "SandboxCommand",
                    "metadata": {"name": format!("cmd-{i}")},
                    "spec": {
                        "sandboxRef": {"name": sandbox_name(i % sandbox_count)},
                        "command": argv(i),
                    },
                }))
                .expect("a valid SandboxCommand");
                commands.create(&PostParams::default(), &command).await?;
                asked_at
                    .lock()
                    .unwrap()
                    .insert(format!("cmd-{i}"), Instant::now());
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    wait_until(count, Duration::from_secs(1800), || async {
        Ok(finished_at.lock().unwrap().len())
    })
    .await?;
    let operator_wall = started.elapsed();
    let cpu = cpu_seconds(operator.id()) - cpu_before;
    observer.abort();
    wait_quiet(port, Duration::from_secs(6)).await?;
    let scrape_after = scrape(port).await?;
    let per_command = object_requests(&scrape_before, &scrape_after);
    let reconciles = metric(
        &scrape_after,
        "ctrlplane_reconciles_total{kind=\"SandboxCommand\"}",
    ) - metric(
        &scrape_before,
        "ctrlplane_reconciles_total{kind=\"SandboxCommand\"}",
    );
    let rss = peak_rss_mib(operator.id());
    let (operator_latencies, not_succeeded) = {
        let asked = asked_at.lock().unwrap();
        let finished = finished_at.lock().unwrap();
        let latencies: Vec<Duration> = finished
            .iter()
            .filter_map(|(name, (at, _))| {
                asked
                    .get(name)
                    .map(|asked| at.saturating_duration_since(*asked))
            })
            .collect();
        let failed = finished
            .values()
            .filter(|(_, phase)| *phase != Some(CommandPhase::Succeeded))
            .count();
        (latencies, failed)
    };

    // The namespace goes while the operator still runs: the Sandboxes'
    // finalizers are its to release.
    delete_namespace(&client, NAMESPACE).await?;
    let _ = operator.kill();
    let _ = operator.wait();
    VOLUMES.remove(&client).await?;

    println!();
    if not_succeeded > 0 {
        println!("WARNING: {not_succeeded} commands did not succeed");
    }
    println!("| figure | operator | baseline | ratio |");
    println!("|---|---|---|---|");
    let throughput = |wall: Duration| count as f64 / wall.as_secs_f64();
    println!(
        "| wall time, all {count} done | {:.1}s | {:.1}s | {:.2} |",
        operator_wall.as_secs_f64(),
        baseline_wall.as_secs_f64(),
        operator_wall.as_secs_f64() / baseline_wall.as_secs_f64()
    );
    println!(
        "| commands/s | {:.1} | {:.1} | {:.2} |",
        throughput(operator_wall),
        throughput(baseline_wall),
        throughput(operator_wall) / throughput(baseline_wall)
    );
    for (label, quantile) in [("p50", 0.50), ("p99", 0.99)] {
        let operator = percentile(&operator_latencies, quantile);
        let baseline = percentile(&baseline_latencies, quantile);
        println!(
            "| {label} asked -> finished | {:.0} ms | {:.0} ms | {:.2} |",
            operator.as_secs_f64() * 1000.0,
            baseline.as_secs_f64() * 1000.0,
            operator.as_secs_f64() / baseline.as_secs_f64()
        );
    }
    let operator_requests = per_command.values().sum::<f64>();
    println!(
        "| operator API requests (excluding the benchmark's creates) | {operator_requests} ({:.2} per command) | {baseline_requests} ({:.2} per exec) | - |",
        operator_requests / count as f64,
        baseline_requests as f64 / count as f64
    );
    println!(
        "| reconciles per command | {:.2} | - | - |",
        reconciles / count as f64
    );
    print_per_object("create -> Succeeded", &per_command, count);
    println!(
        "| operator CPU seconds | {cpu:.1} ({:.1} ms per command) | - | - |",
        cpu * 1000.0 / count as f64
    );
    println!("| operator peak RSS | {rss:.1} MiB | - | - |");
    Ok(())
}

fn sandbox_name(s: usize) -> String {
    format!("box-{s}")
}

fn argv(i: usize) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("echo command {i}")]
}

/// One exec as the operator makes it: the same wrapper and stdin.
async fn exec_once(
    pods: &Api<Pod>,
    pod: &str,
    i: usize,
) -> Result<Option<i32>, Box<dyn std::error::Error>> {
    let request = ExecRequest {
        argv: argv(i),
        env: Vec::new(),
        working_dir: None,
        keep_bytes: 32 * 1024,
    };
    let params = AttachParams::default()
        .container("sandbox")
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let mut process = pods.exec(pod, exec_argv(&request), &params).await?;
    if let Some(mut stdin) = process.stdin() {
        stdin.write_all(&env_block(&request.env)).await?;
        stdin.shutdown().await?;
    }
    let status = process.take_status();
    let mut stdout = process.stdout().ok_or("no stdout")?;
    let mut stderr = process.stderr().ok_or("no stderr")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (read_out, read_err) =
        tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    read_out?;
    read_err?;
    let status = match status {
        Some(status) => status.await,
        None => None,
    };
    process.join().await?;
    Ok(Some(exit_code(status.as_ref())))
}

fn percentile(latencies: &[Duration], quantile: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}
