//! Helpers the benchmarks share: namespaces, the operator process, its
//! metrics, and what /proc says about a process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

pub async fn create_namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

pub async fn delete_namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    let api = Api::<Namespace>::all(client.clone());
    api.delete(name, &DeleteParams::default()).await?;
    // Wait until it is gone, so the next phase does not share the machine
    // with the namespace controller's clean-up.
    let deadline = Instant::now() + Duration::from_secs(600);
    while api.get_opt(name).await?.is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Deletes every object of `api`'s collection. At 10,000 objects one
/// DELETE of the collection can outlast the API server's request timeout and
/// come back cut short (an incomplete message): what it deleted stays
/// deleted, so it is asked again for the rest, a few times.
pub async fn delete_every<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut attempts = 0;
    loop {
        match api
            .delete_collection(&DeleteParams::default(), &kube::api::ListParams::default())
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if attempts < 5 => {
                attempts += 1;
                eprintln!("deleting the collection was cut short ({error}); asking again");
            }
            Err(error) => return Err(error),
        }
    }
}

/// How many objects `api` still lists, read from a one-item page (the rest
/// is the server's `remainingItemCount`), not a list of them all; a server
/// that leaves the count out while more pages follow is asked for them all.
pub async fn count_left<K>(api: &Api<K>) -> Result<usize, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let page = api.list(&kube::api::ListParams::default().limit(1)).await?;
    let more_pages = page
        .metadata
        .continue_
        .as_deref()
        .is_some_and(|c| !c.is_empty());
    match page.metadata.remaining_item_count {
        Some(more) => Ok(page.items.len() + more.max(0) as usize),
        None if more_pages => Ok(api
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .len()),
        None => Ok(page.items.len()),
    }
}

/// Waits until at least `count` objects of `api` satisfy `ready`, as one
/// watch tells (a LIST, then the changes), within `timeout`.
///
/// Why a watch and not a LIST every half second: a LIST of 1000 Instances
/// with their status is ~4 MB that the API server reads from etcd, decodes
/// and encodes again, and on the two-core machine two a second took a
/// share of the CPU the operator and the control plane were timed on. A
/// watch costs the API server one encode per change, as `kubectl wait`
/// does; both sides of a benchmark wait the same way.
pub async fn wait_watched<K>(
    api: &Api<K>,
    count: usize,
    timeout: Duration,
    ready: impl Fn(&K) -> bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    use std::collections::HashMap;
    let name = |object: &K| object.meta().name.clone().unwrap_or_default();
    // Each object's readiness by name, and how many are ready (kept as the
    // map changes: at 10,000 objects a count per event would add up).
    let mut readiness: HashMap<String, bool> = HashMap::new();
    let mut ready_now = 0usize;
    let mut relisted: HashMap<String, bool> = HashMap::new();
    // A failed watch (a dropped connection, at 10,000 objects) is started
    // again after a pause, and relists: the wait goes on.
    let mut events =
        std::pin::pin!(watcher::watcher(api.clone(), watcher::Config::default()).default_backoff());
    let watching = async {
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    eprintln!("the watch failed ({error}); starting it again");
                    continue;
                }
            };
            match event {
                Event::Init => relisted.clear(),
                Event::InitApply(object) => {
                    relisted.insert(name(&object), ready(&object));
                }
                Event::InitDone => {
                    readiness = std::mem::take(&mut relisted);
                    ready_now = readiness.values().filter(|ready| **ready).count();
                }
                Event::Apply(object) => {
                    let now = ready(&object);
                    let before = readiness.insert(name(&object), now).unwrap_or(false);
                    ready_now = ready_now + usize::from(now) - usize::from(before);
                }
                Event::Delete(object) => {
                    let before = readiness.remove(&name(&object)).unwrap_or(false);
                    ready_now -= usize::from(before);
                }
            }
            if ready_now >= count {
                return Ok(());
            }
        }
        Err::<(), Box<dyn std::error::Error>>("the watch ended".into())
    };
    match tokio::time::timeout(timeout, watching).await {
        Ok(result) => result,
        Err(_) => Err(format!("fewer than {count} ready after {timeout:?}").into()),
    }
}

pub async fn wait_until<F, Fut>(
    count: usize,
    timeout: Duration,
    mut done: F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, kube::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let ready = done().await?;
        if ready >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready} of {count} ready after {timeout:?}").into());
        }
    }
}

/// Starts the operator under test. Its log level is `warn` unless
/// `CTRLPLANE_BENCH_LOG_LEVEL` says otherwise (for instance
/// `warn,ctrlplane_operator::controller::lifecycle=debug` to see what each
/// status write changes); the log goes to the benchmark's stderr.
pub fn start_operator(binary: &PathBuf, namespace: &str, port: u16) -> std::io::Result<Child> {
    let level = std::env::var("CTRLPLANE_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    Command::new(binary)
        .args(["run", "--namespace", namespace, "--log-level", &level])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

pub async fn wait_ready(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_get(port, "/readyz")
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the operator did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn scrape(port: u16) -> std::io::Result<String> {
    Ok(http_get(port, "/metrics").await?.1)
}

pub async fn scrape_metric(port: u16, name: &str) -> std::io::Result<f64> {
    Ok(metric(&scrape(port).await?, name))
}

/// The sum of every series of one metric.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime of a process, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The local control plane's processes, by the name the kernel gives them
/// (/proc/<pid>/comm, cut at 15 characters), in the order they are printed.
const CONTROL_PLANE: [&str; 5] = [
    "kube-apiserver",
    "etcd",
    "kube-controller",
    "kube-scheduler",
    "kwok",
];

/// CPU seconds each process of the benchmark's control plane has used so
/// far, in [`CONTROL_PLANE`]'s order. Only processes whose command line
/// names the control plane's state directory count, so another control
/// plane on the machine (the tests', a developer's) is not mixed in. On a
/// two-core machine every component shares, what a phase costs them is
/// what slows it down, and CPU seconds are less noisy than wall time.
pub fn control_plane_cpu() -> [f64; 5] {
    let mut seconds = [0.0; 5];
    let Ok(state_dir) = std::env::var("CTRLPLANE_STATE_DIR") else {
        return seconds;
    };
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Some(slot) = CONTROL_PLANE.iter().position(|name| *name == comm.trim()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&state_dir) {
            seconds[slot] += cpu_seconds(pid);
        }
    }
    seconds
}

/// What the control plane spent between two readings of
/// [`control_plane_cpu`]: the total, and the parts as "API server 43.8,
/// etcd 6.9, ...".
pub fn control_plane_spent(before: [f64; 5], after: [f64; 5]) -> (f64, String) {
    const LABELS: [&str; 5] = [
        "API server",
        "etcd",
        "controller manager",
        "scheduler",
        "kwok",
    ];
    let spent: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let parts = LABELS
        .iter()
        .zip(&spent)
        .map(|(label, s)| format!("{label} {s:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    (spent.iter().sum(), parts)
}

/// The table row of what the control plane spent in a phase on each side.
pub fn print_control_plane_row(what: &str, operator: &(f64, String), baseline: &(f64, String)) {
    println!(
        "| control plane CPU seconds {what} (API server, etcd, controller manager, scheduler, kwok) | {:.1} ({}) | {:.1} ({}) | {:.2} |",
        operator.0,
        operator.1,
        baseline.0,
        baseline.1,
        operator.0 / baseline.0
    );
}

/// The table row of a phase timed against a baseline run twice, once before
/// the operator and once after it. The machine's pace moves with the hour
/// (a baseline alone has moved from 21 s to 28 s between runs); the mean of a
/// baseline on either side of the operator holds a ratio that such a drift
/// does not move, and the two baselines side by side show how large it was.
pub fn print_against_both_baselines(
    what: &str,
    operator: Duration,
    first: Duration,
    again: Duration,
) {
    let mean = (first.as_secs_f64() + again.as_secs_f64()) / 2.0;
    println!(
        "| {what}, against the mean of the baseline before the operator ({:.1}s) and after it ({:.1}s, {:.2} of the first) | {:.1}s | {mean:.1}s | {:.2} |",
        first.as_secs_f64(),
        again.as_secs_f64(),
        again.as_secs_f64() / first.as_secs_f64(),
        operator.as_secs_f64(),
        operator.as_secs_f64() / mean
    );
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// VmHWM: the peak resident set size, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Waits until the operator's API request count has not moved for `window`:
/// whatever it was doing has run its course.
pub async fn wait_quiet(port: u16, window: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = scrape_metric(port, "ctrlplane_kube_api_requests_total").await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = scrape_metric(port, "ctrlplane_kube_api_requests_total").await?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= window {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the operator never went quiet".into());
        }
    }
}

/// Requests about single objects between two scrapes of /metrics, by "verb
/// resource": every verb but list and watch, which a watch makes once for
/// all objects.
pub fn object_requests(before: &str, after: &str) -> std::collections::BTreeMap<String, f64> {
    let read = |text: &str| {
        let mut requests = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("ctrlplane_kube_api_requests_total{"))
        {
            let label = |name: &str| line.split(&format!("{name}=\"")).nth(1)?.split('"').next();
            let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
                continue;
            };
            if verb == "list" || verb == "watch" {
                continue;
            }
            let count: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *requests.entry(format!("{verb} {resource}")).or_insert(0.0) += count;
        }
        requests
    };
    let (before, after) = (read(before), read(after));
    after
        .into_iter()
        .map(|(k, v)| (k.clone(), v - before.get(&k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Prints requests per object, by verb and resource.
pub fn print_per_object(
    what: &str,
    requests: &std::collections::BTreeMap<String, f64>,
    objects: usize,
) {
    let total: f64 = requests.values().sum();
    let parts: Vec<String> = requests
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", v / objects as f64))
        .collect();
    println!(
        "| API requests per object, {what} | {:.2} ({}) | - | - |",
        total / objects as f64,
        parts.join(", ")
    );
}

/// A StorageClass of the benchmark's own with static PersistentVolumes in
/// it: nothing in the local control plane provisions volumes. Not timed.
pub struct StaticVolumes {
    pub class: &'static str,
    /// The `bench` label every volume carries, to remove them together.
    pub label: &'static str,
}

impl StaticVolumes {
    /// Creates `count` volumes and waits until the volume controller has
    /// marked every one Available, so that its work on them is not timed in
    /// the first phase that follows (it cost the first baseline of
    /// `sandboxes` ~6 s of its ~15 s).
    pub async fn create(
        &self,
        client: &Client,
        count: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        use futures::{StreamExt, TryStreamExt, stream};
        use k8s_openapi::api::core::v1::PersistentVolume;
        use k8s_openapi::api::storage::v1::StorageClass;
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": self.class},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        }))
        .expect("a StorageClass");
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await?;
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        stream::iter(0..count)
            .map(|i| {
                let volumes = volumes.clone();
                let name = format!("{}-pv-{i}", self.class);
                let volume: PersistentVolume = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {"bench": self.label}},
                    "spec": {
                        "capacity": {"storage": "2Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": self.class,
                        "hostPath": {"path": format!("/tmp/{name}")},
                    }
                }))
                .expect("a PersistentVolume");
                async move {
                    volumes
                        .create(&PostParams::default(), &volume)
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(16)
            .try_collect::<()>()
            .await?;
        wait_watched(&volumes, count, Duration::from_secs(600), |volume| {
            volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available")
        })
        .await
    }

    pub async fn remove(&self, client: &Client) -> Result<(), kube::Error> {
        use k8s_openapi::api::core::v1::PersistentVolume;
        use k8s_openapi::api::storage::v1::StorageClass;
        Api::<PersistentVolume>::all(client.clone())
            .delete_collection(
                &DeleteParams::default(),
                &kube::api::ListParams::default().labels(&format!("bench={}", self.label)),
            )
            .await?;
        Api::<StorageClass>::all(client.clone())
            .delete(self.class, &DeleteParams::default())
            .await?;
        Ok(())
    }
}
