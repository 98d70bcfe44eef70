//! Benchmark: the webhook pipeline itself. A fixed-rate churn of lifecycle
//! events on Instances that already exist, with 0, 1 and 10 Webhooks, at
//! several rates and as fast as it goes, in one run.
//!
//!   hack/bench.sh webhooks [M]      (M Instances to flip, default 200)
//!
//! Each event is a real state change: an Instance with no replicas flips
//! `spec.state` between Running and Stopped, and each flip is two history
//! entries (Stopping and Stopped, or Starting and Started) that the
//! operator records in one status write and sends to every Webhook. With no
//! replicas, nothing else moves: what is measured is recording and
//! delivering, not Deployments.
//!
//! For every (rate, Webhooks) it prints the sustained events/s (recorded and,
//! with Webhooks, delivered to every one of them), p50/p99 from the state
//! change (the history entry's time) to the receiver, the operator's API
//! requests per event beyond the object's own status write, its CPU seconds
//! and peak RSS. The baseline is the same churn with no Webhook: the
//! overhead ratio is its rate over the rate with 1 and with 10 Webhooks, at
//! "as fast as it goes". Nothing is asserted; the figures are for people.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{DateTime, Utc};
use common::*;
use ctrlplane_operator::api::{DesiredState, Instance, InstancePhase, InstanceSpec, Webhook};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Flips in flight at once when going as fast as it goes.
const CONCURRENCY: usize = 16;
/// How long each fixed-rate run drives flips.
const RUN: Duration = Duration::from_secs(15);
/// Events a flip makes.
const EVENTS_PER_FLIP: usize = 2;

/// What the receivers saw: per webhook index, event id → (arrival, event time).
#[derive(Default)]
struct Arrivals {
    seen: BTreeMap<(usize, String), (DateTime<Utc>, DateTime<Utc>)>,
}

async fn start_receiver() -> (String, Arc<Mutex<Arrivals>>) {
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook/{index}", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}/hook"), arrivals)
}

async fn receive(
    State(arrivals): State<Arc<Mutex<Arrivals>>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let now = Utc::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let happened = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str()?.parse::<DateTime<Utc>>().ok())
        .unwrap_or(now);
    arrivals
        .lock()
        .unwrap()
        .seen
        .entry((index, id))
        .or_insert((now, happened));
    "ok"
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else {
        format!("{value:.0} ms")
    }
}

/// The rate a run drives: events per second, or as fast as it goes.
#[derive(Clone, Copy)]
enum Rate {
    Fixed(usize),
    Max,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Fixed(r) => write!(f, "{r}/s"),
            Rate::Max => write!(f, "max"),
        }
    }
}

struct Row {
    rate: Rate,
    webhooks: usize,
    events: usize,
    sustained: f64,
    p50: f64,
    p99: f64,
    extra_per_event: f64,
    requests: BTreeMap<String, f64>,
    cpu: f64,
}

struct Bench {
    client: Client,
    namespace: String,
    port: u16,
    pid: u32,
    instances: Vec<String>,
    /// What each Instance was last flipped to.
    state: Mutex<Vec<DesiredState>>,
    url: String,
    arrivals: Arc<Mutex<Arrivals>>,
}

impl Bench {
    fn api(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Flips one Instance to the other state.
    async fn flip(&self, i: usize) -> Result<(), kube::Error> {
        let to = {
            let mut state = self.state.lock().unwrap();
            state[i] = match state[i] {
                DesiredState::Running => DesiredState::Stopped,
                DesiredState::Stopped => DesiredState::Running,
            };
            state[i]
        };
        let patch = serde_json::json!({"spec": {"state": to}});
        self.api()
            .patch(
                &self.instances[i],
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
    }

    async fn set_webhooks(&self, count: usize) -> Result<(), Box<dyn std::error::Error>> {
        let api: Api<Webhook> = Api::namespaced(self.client.clone(), &self.namespace);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        wait_until(1, Duration::from_secs(60), || async {
            Ok(usize::from(
                api.list(&ListParams::default()).await?.items.is_empty(),
            ))
        })
        .await?;
        for index in 0..count {
            let webhook: Webhook = serde_json::from_value(serde_json::json!({
                "apiVersion": "ctrlplane.dev/v1alpha1",
                "kind": "Webhook",
                "metadata": {"name": format!("hook-{index}")},
                "spec": {
                    "url": format!("{}/{index}", self.url),
                    "allowInsecureHttp": true,
                    "secretRef": {"name": "signing"},
                },
            }))?;
            api.create(&PostParams::default(), &webhook).await?;
        }
        wait_until(count, Duration::from_secs(60), || async {
            Ok(api
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|w| {
                    w.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == "Ready")
                    })
                })
                .count())
        })
        .await
    }

    /// How many Instances have settled in the state their spec asks for.
    /// (Two flips of one Instance in flight at once may land in either
    /// order, so the spec, not the order they were sent in, is the truth.)
    async fn settled(&self) -> Result<usize, kube::Error> {
        let list = self.api().list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|i| {
                let phase = i.status.as_ref().and_then(|s| s.phase);
                match i.spec.state {
                    DesiredState::Running => phase == Some(InstancePhase::Running),
                    DesiredState::Stopped => phase == Some(InstancePhase::Stopped),
                }
            })
            .count())
    }

    async fn run(&self, rate: Rate, webhooks: usize) -> Result<Row, Box<dyn std::error::Error>> {
        self.set_webhooks(webhooks).await?;
        wait_until(self.instances.len(), Duration::from_secs(600), || {
            self.settled()
        })
        .await?;
        self.arrivals.lock().unwrap().seen.clear();
        let before = scrape(self.port).await?;
        let cpu_before = cpu_seconds(self.pid);
        let started = Instant::now();
        let flips = match rate {
            Rate::Fixed(events_per_second) => {
                let flips_per_second = (events_per_second / EVENTS_PER_FLIP).max(1);
                let total = flips_per_second * RUN.as_secs() as usize;
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / flips_per_second as f64));
                let mut pending = futures::stream::FuturesUnordered::new();
                for n in 0..total {
                    tick.tick().await;
                    pending.push(self.flip(n % self.instances.len()));
                    // Drain what finished, without waiting.
                    while let Some(Some(result)) = futures::FutureExt::now_or_never(pending.next())
                    {
                        result?;
                    }
                }
                while let Some(result) = pending.next().await {
                    result?;
                }
                total
            }
            Rate::Max => {
                // Every Instance flips once per round; as many rounds as the
                // run allows.
                let mut flips = 0;
                while started.elapsed() < RUN {
                    stream::iter(0..self.instances.len())
                        .map(|i| self.flip(i))
                        .buffer_unordered(CONCURRENCY)
                        .try_collect::<()>()
                        .await?;
                    flips += self.instances.len();
                    wait_until(self.instances.len(), Duration::from_secs(600), || {
                        self.settled()
                    })
                    .await?;
                }
                flips
            }
        };
        // Recorded: every flip settled. Two flips of one Instance that land
        // before its reconcile cancel out, so the events are counted as the
        // operator recorded them (one per phase change).
        wait_until(self.instances.len(), Duration::from_secs(600), || {
            self.settled()
        })
        .await?;
        let transitions = |text: &str| metric(text, "ctrlplane_transitions_total");
        let events = (transitions(&scrape(self.port).await?) - transitions(&before)) as usize;
        // Delivered: every event to every Webhook.
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.arrivals.lock().unwrap().seen.len() < events * webhooks {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {} deliveries arrived",
                    self.arrivals.lock().unwrap().seen.len(),
                    events * webhooks
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = started.elapsed();
        let cpu = cpu_seconds(self.pid) - cpu_before;
        // Let the folded dispatchedSeq writes (at most 5s later) land, so
        // they are counted against this run.
        wait_quiet(self.port, Duration::from_secs(6)).await?;
        let after = scrape(self.port).await?;
        let requests = object_requests(&before, &after);
        let status_writes = requests
            .get("update instances/status")
            .copied()
            .unwrap_or(0.0);
        let total: f64 = requests.values().sum();
        // The object's own status write is one per flip; everything else is
        // what the events cost.
        let extra = total - status_writes.min(flips as f64);
        let mut latencies: Vec<f64> = self
            .arrivals
            .lock()
            .unwrap()
            .seen
            .values()
            .map(|(at, happened)| (*at - *happened).num_microseconds().unwrap_or(0) as f64 / 1e3)
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        Ok(Row {
            rate,
            webhooks,
            events,
            sustained: events as f64 / wall.as_secs_f64(),
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            extra_per_event: extra / events as f64,
            requests,
            cpu,
        })
    }
}

fn spec() -> InstanceSpec {
    serde_json::from_value(serde_json::json!({
        "image": "nginx:1.27",
        "replicas": 0,
        "state": "Running",
    }))
    .expect("a valid spec")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let operator_binary = std::env::var("CTRLPLANE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/ctrlplane-operator")
        });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let namespace = format!("bench-wh-{:x}", std::process::id());
    create_namespace(&client, &namespace).await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "signing"}, "stringData": {"secret": SECRET}
    }))?;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    let port = free_port();
    let mut operator = std::process::Command::new(&operator_binary)
        .args([
            "run",
            "--namespace",
            &namespace,
            "--log-level",
            "warn",
            "--allow-private-webhook-addresses",
        ])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    wait_ready(port).await?;
    let (url, arrivals) = start_receiver().await;
    let instances: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
    let api: Api<Instance> = Api::namespaced(client.clone(), &namespace);
    stream::iter(instances.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &Instance::new(&name, spec()))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let bench = Bench {
        client: client.clone(),
        namespace: namespace.clone(),
        port,
        pid: operator.id(),
        state: Mutex::new(vec![DesiredState::Running; count]),
        instances,
        url,
        arrivals,
    };
    println!(
        "bench/webhooks: {count} Instances with no replicas flip spec.state; {} s per fixed-rate run; 2 events per flip",
        RUN.as_secs()
    );
    let mut rows = Vec::new();
    for rate in [
        Rate::Fixed(50),
        Rate::Fixed(100),
        Rate::Fixed(200),
        Rate::Max,
    ] {
        for webhooks in [0, 1, 10] {
            let row = bench.run(rate, webhooks).await?;
            println!(
                "  {rate:>6} x {webhooks:>2} webhooks: {} events, {:.0} events/s, p50 {} p99 {}, {:.2} requests/event beyond the status write {:?}",
                row.events,
                row.sustained,
                ms(row.p50),
                ms(row.p99),
                row.extra_per_event,
                row.requests
            );
            rows.push(row);
        }
    }
    let rss = peak_rss_mib(operator.id());
    let _ = operator.kill();
    let _ = operator.wait();
    delete_namespace(&client, &namespace).await?;

    println!();
    println!(
        "| rate | webhooks | events | sustained events/s | p50 | p99 | requests/event beyond the status write | operator CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.1} |",
            row.rate,
            row.webhooks,
            row.events,
            row.sustained,
            ms(row.p50),
            ms(row.p99),
            row.extra_per_event,
            row.cpu
        );
    }
    let at_max = |webhooks: usize| {
        rows.iter()
            .find(|r| matches!(r.rate, Rate::Max) && r.webhooks == webhooks)
            .map_or(f64::NAN, |r| r.sustained)
    };
    println!();
    println!(
        "overhead ratio at max rate (events/s without webhooks / with): 1 webhook {:.2}, 10 webhooks {:.2}",
        at_max(0) / at_max(1),
        at_max(0) / at_max(10)
    );
    println!("operator peak RSS over the whole run: {rss:.1} MiB");
    Ok(())
}
