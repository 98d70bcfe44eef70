//! Shared harness for the end-to-end tests: they run against the real local
//! control plane that `hack/test.sh` starts (see docs/local-control-plane.md),
//! through the same kubectl and API a user would use.
//!
//! Every test gets its own namespace ([`TestNamespace`]) and removes it when it
//! ends, pass or fail. Waiting is always on a condition with a deadline.

#![allow(dead_code)]

pub mod controlplane;
pub mod receiver;
pub mod storage;
pub mod tenant_manager;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::Client;

/// The repository root, where `crds/`, `samples/` and `tests/fixtures/` live.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig of the local control plane. The tests refuse to run without
/// one rather than pass by skipping: start it with `hack/test.sh`, or with
/// `hack/controlplane.sh up` and `eval "$(hack/controlplane.sh env)"`.
pub fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("KUBECONFIG").map(PathBuf::from).expect(
        "KUBECONFIG is not set: these tests need the local control plane. \
         Run them with hack/test.sh, or start it with `hack/controlplane.sh up` \
         and `eval \"$(hack/controlplane.sh env)\"`",
    );
    assert!(
        path.exists(),
        "KUBECONFIG points at {path:?}, which does not exist"
    );
    path
}

/// The kubectl to use: `$KUBECTL`, or the first on PATH (hack/test.sh puts the
/// pinned one first).
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// The outcome of one kubectl command.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    fn from_output(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn expect_success(self, what: &str) -> Self {
        assert!(
            self.success,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs kubectl against the local control plane.
pub fn kubectl<I, S>(args: I) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("kubectl could not be started; is the pinned kubectl on PATH?");
    KubectlOutput::from_output(output)
}

/// Runs kubectl with `stdin` as its standard input.
pub fn kubectl_stdin<I, S>(args: I, stdin: &str) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::Write;
    let mut child = Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl could not be started; is the pinned kubectl on PATH?");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("writing to kubectl");
    KubectlOutput::from_output(child.wait_with_output().expect("waiting for kubectl"))
}

/// `kubectl apply --server-side -n NAMESPACE -f -` of one manifest.
pub fn apply_manifest(namespace: &str, manifest: &str) -> KubectlOutput {
    kubectl_stdin(
        ["apply", "--server-side", "-n", namespace, "-f", "-"],
        manifest,
    )
}

/// A client for the local control plane.
pub async fn client() -> Client {
    kubeconfig();
    Client::try_default()
        .await
        .expect("could not build a client from KUBECONFIG")
}

/// Installs the checked-in CRDs once per test binary and waits until they are
/// Established, so tests do not depend on each other's order.
pub fn ensure_crds() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let crds = repo_root().join("crds");
        let apply = kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "--force-conflicts".as_ref(),
            "--field-manager=ctrlplane-tests".as_ref(),
            "-f".as_ref(),
            crds.as_os_str(),
        ]);
        if !apply.success {
            return Err(format!("applying crds/ failed: {}", apply.stderr));
        }
        let wait = kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/instances.ctrlplane.dev",
            "crd/sandboxes.ctrlplane.dev",
            "crd/webhooks.ctrlplane.dev",
            "crd/webhookdeliveries.ctrlplane.dev",
            "crd/sandboxcommands.ctrlplane.dev",
            "crd/sandboxsnapshots.ctrlplane.dev",
        ]);
        if !wait.success {
            return Err(format!("CRDs did not become Established: {}", wait.stderr));
        }
        // Established does not mean the schemas are published in the OpenAPI
        // document yet, which `kubectl explain` and typed apply rely on.
        let deadline = Instant::now() + Duration::from_secs(60);
        for kind in [
            "instance",
            "sandbox",
            "webhook",
            "webhookdelivery",
            "sandboxcommand",
            "sandboxsnapshot",
        ] {
            loop {
                let explain = kubectl(["explain", kind]);
                if explain.success {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "`kubectl explain {kind}` never worked: {}",
                        explain.stderr
                    ));
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// A namespace of one test's own, deleted when the test ends (also on panic).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>`, labelled as a test namespace.
    pub fn create(prefix: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let suffix = format!(
            "{:x}{:x}{:x}",
            std::process::id() % 0xfff,
            nanos % 0xffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut prefix: String = prefix
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        prefix.truncate(40);
        let name = format!("{}-{suffix}", prefix.trim_end_matches('-'));
        kubectl(["create", "namespace", &name]).expect_success("creating the test namespace");
        kubectl(["label", "namespace", &name, "ctrlplane.dev/test=true"])
            .expect_success("labelling the test namespace");
        Self { name }
    }
}

impl TestNamespace {
    /// Takes charge of a namespace something else made (the operator, for a
    /// project), so it is removed when the test ends like one of its own.
    pub fn adopt(name: &str) -> Self {
        Self { name: name.into() }
    }

    /// Takes our finalizers off whatever is left in the namespace. Called
    /// once the test's operator is gone: nothing would release them, and the
    /// namespace would stay Terminating for ever.
    fn release_finalizers(&self) {
        let kubectl = |args: &[&str]| {
            Command::new(kubectl_binary())
                .arg("--kubeconfig")
                .arg(kubeconfig())
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
        };
        let Some(listed) = kubectl(&[
            "get",
            "instances.ctrlplane.dev,sandboxes.ctrlplane.dev,webhooks.ctrlplane.dev,webhookdeliveries.ctrlplane.dev,sandboxcommands.ctrlplane.dev,sandboxsnapshots.ctrlplane.dev",
            "-n",
            &self.name,
            "-o",
            "json",
        ]) else {
            return;
        };
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&listed.stdout) else {
            return;
        };
        let held = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| {
                item["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
            });
        for item in held {
            let resource = format!(
                "{}.ctrlplane.dev/{}",
                item["kind"].as_str().unwrap_or_default().to_lowercase(),
                item["metadata"]["name"].as_str().unwrap_or_default()
            );
            kubectl(&[
                "patch",
                &resource,
                "-n",
                &self.name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        self.release_finalizers();
        // Do not wait: the namespace controller finishes the job.
        let _ = Command::new(kubectl_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// The Helm chart.
pub fn chart() -> PathBuf {
    repo_root().join("deploy/helm/ctrlplane-operator")
}

/// helm from the control-plane cache (hack/test.sh puts it on PATH).
pub fn helm<I, S>(args: I) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let binary = std::env::var_os("HELM").unwrap_or_else(|| "helm".into());
    let output = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("helm could not be started; it is built by hack/controlplane.sh build");
    KubectlOutput::from_output(output)
}

/// How often [`wait_until`] checks its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long the helpers below wait for what the operator or a controller
/// writes after the step a test waited for: generous, because a loaded
/// machine delays every write, and only a failure ever waits it out.
const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Checks `check` until it returns `Ok(Some(_))`, or panics after `timeout`
/// naming what was awaited and the last answer.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        ticker.tick().await;
        let last = match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => "condition not met yet".to_string(),
            Err(err) => err,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
    }
}

/// Waits until `kubectl get events` in `namespace`, narrowed by the field
/// `selector` and printed with `output` (extra kubectl arguments, such as
/// `-o jsonpath=...`), shows every one of `wanted`, and returns what it
/// printed. The operator publishes an Event after the status write or the
/// deletion it tells of, so seeing those is no proof the Event exists yet.
pub async fn wait_for_events(
    namespace: &str,
    selector: &str,
    output: &[&str],
    wanted: &[&str],
) -> String {
    let what = format!("Events {wanted:?} ({selector})");
    wait_until(&what, FOLLOW_UP_TIMEOUT, || async {
        let mut args = vec![
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            selector,
        ];
        args.extend_from_slice(output);
        let events = kubectl(args);
        if !events.success {
            return Err(events.stderr);
        }
        if wanted.iter().all(|w| events.stdout.contains(w)) {
            Ok(Some(events.stdout))
        } else {
            Err(events.stdout)
        }
    })
    .await
}

/// Waits until claim `name` in `namespace` reads Bound. A Sandbox can be
/// Running first: the scheduler places its pod once the volume controller
/// has bound the claim's volume, and that controller writes the claim's
/// phase in a later update of its own.
pub async fn wait_claim_bound(
    namespace: &str,
    name: &str,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    let claims: kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        kube::Api::namespaced(client().await, namespace);
    wait_until(
        &format!("claim {name} Bound"),
        FOLLOW_UP_TIMEOUT,
        || async {
            let claim = claims.get(name).await.map_err(|e| e.to_string())?;
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            Ok(bound.then_some(claim))
        },
    )
    .await
}

/// Reads the `# expect-field:` and `# expect-text:` lines of a fixture.
pub fn fixture_expectations(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("# expect-field:")
                .or_else(|| line.strip_prefix("# expect-text:"))
        })
        .map(|s| s.trim().to_string())
        .collect()
}

/// An operator process of the test's own, watching only the test's
/// namespace, with its own metrics port and log file. Killed when dropped.
pub struct Operator {
    child: Option<std::process::Child>,
    /// The kubeconfig it runs with; the admin one unless given.
    kubeconfig: PathBuf,
    pub namespace: String,
    pub metrics_address: std::net::SocketAddr,
    pub log_path: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables set for it, beside the harness's own.
    env: Vec<(String, String)>,
}

impl Operator {
    /// Starts the operator for `namespace` and waits until it is ready.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    pub fn start_with(namespace: &str, extra_args: &[&str]) -> Self {
        Self::start_as(namespace, &kubeconfig(), extra_args)
    }

    /// Starts it with another kubeconfig (another identity).
    pub fn start_as(namespace: &str, kubeconfig: &Path, extra_args: &[&str]) -> Self {
        Self::start_as_with_env(namespace, kubeconfig, extra_args, &[])
    }

    /// Starts it with another kubeconfig and these environment variables
    /// (`POD_NAME` names a replica for leader election).
    pub fn start_as_with_env(
        namespace: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log_dir = std::env::temp_dir().join("ctrlplane-operator-tests");
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut operator = Self {
            child: None,
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.to_string(),
            metrics_address: free_local_address(),
            log_path: log_dir.join(format!("{namespace}-{}.log", free_local_address().port())),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ctrlplane-operator"))
            .args([
                "run",
                "--namespace",
                &self.namespace,
                "--log-format",
                "json",
            ])
            .arg("--metrics-address")
            .arg(self.metrics_address.to_string())
            .args(&self.extra_args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "CTRLPLANE_LOG_LEVEL",
                std::env::var("CTRLPLANE_TEST_LOG_LEVEL")
                    .unwrap_or_else(|_| "info,ctrlplane_operator=debug".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the operator");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until /readyz answers 200 (caches synced).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the operator exited with {status}; log: {:?}",
                    self.log_path
                );
            }
            if http_get(self.metrics_address, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the operator never became ready; log: {:?}",
                self.log_path
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs (the same one for as long as it has not
    /// been restarted).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process, as `kill -SIG` would.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the operator runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Starts it again after [`Operator::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The operator's /metrics text.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_address, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One counter or gauge from /metrics: the sum of every series whose
    /// line starts with `prefix` (a metric name with or without labels).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The requests the operator made about single objects, by "verb
    /// resource": every verb but list and watch, which each watch makes for
    /// all objects at once, whatever their number.
    pub fn object_requests(&self) -> std::collections::BTreeMap<String, f64> {
        let mut requests = std::collections::BTreeMap::new();
        for line in self
            .metrics()
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
    }

    /// Waits until the operator has made no request and run no reconcile
    /// for `window`: whatever it was doing has run its course. Polls once a
    /// second; panics after `timeout`.
    pub async fn wait_quiet(&self, window: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let reading = || {
            (
                self.metric("ctrlplane_kube_api_requests_total"),
                self.metric("ctrlplane_reconciles_total"),
            )
        };
        let mut last = reading();
        let mut quiet_since = Instant::now();
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            every_second.tick().await;
            let now = reading();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= window {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the operator never went quiet for {window:?} within {timeout:?}"
            );
        }
    }

    /// Waits until this operator process has reconciled at least one
    /// `kind` and has then gone quiet for `window`: after a restart, what
    /// looking at the objects again leads to has been done. (Quiet alone
    /// is not enough: a process still starting up is quiet too.)
    pub async fn wait_looked_again(&self, kind: &str, window: Duration, timeout: Duration) {
        let series = format!("ctrlplane_reconciles_total{{kind=\"{kind}\"}}");
        wait_until(
            &format!("a {kind} reconciled by this operator process"),
            timeout,
            || async {
                let reconciles = self.metric(&series);
                if reconciles >= 1.0 {
                    Ok(Some(()))
                } else {
                    Err(format!("{reconciles} reconciles"))
                }
            },
        )
        .await;
        self.wait_quiet(window, timeout).await;
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An address on loopback that nothing listens on right now.
pub fn free_local_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A plain HTTP/1.1 GET; `None` when nothing answers.
pub fn http_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Conditions as one line each, "Type=Status Reason: message", for a wait's
/// progress report.
pub fn describe_conditions(conditions: &[ctrlplane_operator::api::Condition]) -> Vec<String> {
    conditions
        .iter()
        .map(|c| format!("{}={:?} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect()
}

/// Asserts an Instance's history has no gaps and no repeats: nothing was
/// recorded twice or skipped.
pub fn assert_history_gapless(instance: &ctrlplane_operator::api::Instance) {
    let status = instance.status.as_ref().expect("the Instance has a status");
    let sequences: Vec<i64> = status.history.iter().map(|e| e.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{}: {sequences:?}",
        instance.metadata.name.as_deref().unwrap_or_default()
    );
}

/// Requests made between two readings of [`Operator::object_requests`].
pub fn requests_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(key, count)| (key.clone(), count - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, count)| *count > 0.0)
        .collect()
}

/// The names of the objects `kubectl get RESOURCE --field-selector SELECTOR`
/// lists in a namespace, or the API server's refusal.
pub fn field_selected(
    namespace: &str,
    resource: &str,
    selector: &str,
) -> Result<std::collections::BTreeSet<String>, String> {
    let listed = kubectl([
        "get",
        resource,
        "-n",
        namespace,
        "--field-selector",
        selector,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    if !listed.success {
        return Err(listed.stderr);
    }
    Ok(listed.stdout.split_whitespace().map(String::from).collect())
}
