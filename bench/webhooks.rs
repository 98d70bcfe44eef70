//! Benchmark: lifecycle events delivered to webhooks, against two baselines
//! measured in the same run.
//!
//!   hack/bench.sh webhooks [N]      (N events, default 2000)
//!
//! - operator, 1 receiver: N events from Instances in one namespace, one Webhook.
//! - operator, 10 receivers: N events from Instances in ten namespaces, a
//!   Webhook (and receiver) each.
//! - baseline "plain client": the same N signed POSTs sent straight to the
//!   receiver(s) by reqwest, 16 at a time: the HTTP ceiling.
//! - baseline "storage": N bare ConfigMap creates against the API server, 16
//!   at a time: every delivery costs at least one create, so this is the
//!   ceiling the API server puts on deliveries.
//!
//! Latency for the operator is from the state change (the history entry's
//! time) to the request arriving at the receiver; for the plain client, from
//! the send to the arrival. Nothing is asserted; the figures are for people.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chrono::{DateTime, Utc};
#[path = "common.rs"]
mod common;

use common::*;
use ctrlplane_operator::api::{Instance, InstanceSpec};
use ctrlplane_operator::delivery::signing::{SigningKey, signature_header};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::PostParams;
use kube::{Api, Client};

const CONCURRENCY: usize = 16;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What one receiver saw: per request, when it arrived and when its event happened.
#[derive(Default)]
struct Arrivals {
    at: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
}

struct Receiver {
    address: SocketAddr,
    arrivals: Arc<Mutex<Arrivals>>,
}

async fn start_receiver() -> Receiver {
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { address, arrivals }
}

async fn receive(State(arrivals): State<Arc<Mutex<Arrivals>>>, body: Bytes) -> &'static str {
    let now = Utc::now();
    let happened = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        });
    arrivals.lock().unwrap().at.push((now, happened));
    "ok"
}

fn total(receivers: &[Receiver]) -> usize {
    receivers
        .iter()
        .map(|r| r.arrivals.lock().unwrap().at.len())
        .sum()
}

fn latencies(receivers: &[Receiver]) -> Vec<f64> {
    let mut all: Vec<f64> = receivers
        .iter()
        .flat_map(|r| {
            r.arrivals
                .lock()
                .unwrap()
                .at
                .iter()
                .filter_map(|(at, happened)| {
                    happened.map(|h| (*at - h).num_microseconds().unwrap_or(0) as f64 / 1000.0)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort_by(|a, b| a.total_cmp(b));
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A latency for the table; "-" where there is none (bare creates).
fn milliseconds(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else {
        format!("{value:.1} ms")
    }
}

struct Figures {
    label: String,
    count: usize,
    wall: Duration,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let operator_binary = std::env::var("CTRLPLANE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ctrlplane-operator")
        });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    println!("bench/webhooks: N = {count} events, client concurrency {CONCURRENCY}");
    let mut figures = Vec::new();

    // Baseline: the storage ceiling.
    create_namespace(&client, "bench-ceiling").await?;
    let started = Instant::now();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-ceiling");
    stream::iter(0..count)
        .map(|i| {
            let api = config_maps.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": format!("c-{i}")}, "data": {"event": "x"}})).unwrap();
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let storage = Figures {
        label: "baseline: bare object creates".into(),
        count,
        wall: started.elapsed(),
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    };
    delete_namespace(&client, "bench-ceiling").await?;

    // Baseline: the plain client, to one and to ten receivers.
    for receivers_count in [1usize, 10] {
        let receivers: Vec<Receiver> =
            futures::future::join_all((0..receivers_count).map(|_| start_receiver())).await;
        let http = reqwest::Client::builder().build()?;
        let key = SigningKey::parse(SECRET.as_bytes())?;
        let key = Arc::new(key);
        let sent_at = Arc::new(Mutex::new(BTreeMap::new()));
        let started = Instant::now();
        stream::iter(0..count)
            .map(|i| {
                let http = http.clone();
                let key = key.clone();
                let url = format!("http://{}/hook", receivers[i % receivers_count].address);
                let sent_at = sent_at.clone();
                async move {
                    let now = Utc::now();
                    let body = serde_json::to_vec(&serde_json::json!({
                        "type": "instance.started", "timestamp": now, "data": {"sequence": i}
                    }))
                    .unwrap();
                    let id = format!("evt_{i}");
                    let signature =
                        signature_header(std::slice::from_ref(&key), &id, now.timestamp(), &body);
                    sent_at.lock().unwrap().insert(i, now);
                    http.post(url)
                        .header("webhook-id", id)
                        .header("webhook-timestamp", now.timestamp().to_string())
                        .header("webhook-signature", signature)
                        .body(body)
                        .send()
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let wall = started.elapsed();
        let lat = latencies(&receivers);
        figures.push(Figures {
            label: format!("baseline: plain client, {receivers_count} receiver(s)"),
            count,
            wall,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        });
    }

    // The operator, watching every namespace.
    let metrics_port = free_port();
    let mut operator = Command::new(&operator_binary)
        .args([
            "run",
            "--log-level",
            "warn",
            "--allow-private-webhook-addresses",
        ])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_ready(metrics_port).await?;
    for receivers_count in [1usize, 10] {
        let receivers: Vec<Receiver> =
            futures::future::join_all((0..receivers_count).map(|_| start_receiver())).await;
        let namespaces: Vec<String> = (0..receivers_count)
            .map(|i| format!("bench-wh{receivers_count}-{i}"))
            .collect();
        for (namespace, receiver) in namespaces.iter().zip(&receivers) {
            create_namespace(&client, namespace).await?;
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "signing"}, "stringData": {"secret": SECRET}
            }))?;
            Api::<Secret>::namespaced(client.clone(), namespace)
                .create(&PostParams::default(), &secret)
                .await?;
            apply_webhook(namespace, &format!("http://{}/hook", receiver.address))?;
        }
        // Every Instance makes three events: created, starting, started.
        let instances = count.div_ceil(3);
        let events = instances * 3;
        let started = Instant::now();
        stream::iter(0..instances)
            .map(|i| {
                let api: Api<Instance> =
                    Api::namespaced(client.clone(), &namespaces[i % receivers_count]);
                async move {
                    let instance = Instance::new(&format!("app-{i}"), instance_spec());
                    api.create(&PostParams::default(), &instance)
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        while total(&receivers) < events {
            if Instant::now() > deadline {
                return Err(
                    format!("only {} of {events} events arrived", total(&receivers)).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wall = started.elapsed();
        let lat = latencies(&receivers);
        figures.push(Figures {
            label: format!("operator: {receivers_count} receiver(s)"),
            count: events,
            wall,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        });
        for namespace in &namespaces {
            delete_namespace(&client, namespace).await?;
        }
    }
    let rss = peak_rss_mib(operator.id());
    let cpu = cpu_seconds(operator.id());
    let requests = scrape_metric(metrics_port, "ctrlplane_kube_api_requests_total").await?;
    let _ = operator.kill();
    let _ = operator.wait();

    println!();
    println!("| run | events | wall | deliveries/s | p50 latency | p99 latency |");
    println!("|---|---|---|---|---|---|");
    for f in figures.iter().chain(std::iter::once(&storage)) {
        println!(
            "| {} | {} | {:.1}s | {:.0} | {} | {} |",
            f.label,
            f.count,
            f.wall.as_secs_f64(),
            f.rate(),
            milliseconds(f.p50_ms),
            milliseconds(f.p99_ms)
        );
    }
    println!();
    println!(
        "operator peak RSS: {rss:.1} MiB, CPU {cpu:.1}s, API requests {requests:.0} (both runs)"
    );
    let by = |label: &str| figures.iter().find(|f| f.label == label).unwrap();
    for receivers_count in [1, 10] {
        let operator = by(&format!("operator: {receivers_count} receiver(s)"));
        let plain = by(&format!(
            "baseline: plain client, {receivers_count} receiver(s)"
        ));
        println!(
            "{receivers_count} receiver(s): operator/plain-client throughput {:.3}, operator/storage-ceiling throughput {:.3}",
            operator.rate() / plain.rate(),
            operator.rate() / storage.rate()
        );
    }
    Ok(())
}

fn instance_spec() -> InstanceSpec {
    serde_json::from_value(serde_json::json!({
        "image": "nginx:1.27",
        "replicas": 0,
        "state": "Running",
        "rollback": "Manual",
        "progressDeadlineSeconds": 600,
    }))
    .expect("a valid spec")
}

fn apply_webhook(namespace: &str, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manifest = format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\nspec:\n  url: {url}\n  allowInsecureHttp: true\n  secretRef:\n    name: signing\n"
    );
    let mut child = Command::new("kubectl")
        .args(["apply", "--server-side", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(manifest.as_bytes())?;
    if !child.wait()?.success() {
        return Err("applying the Webhook failed".into());
    }
    Ok(())
}
