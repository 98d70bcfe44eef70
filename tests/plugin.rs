//! End-to-end tests of the kubectl plugin (`kubectl ctrlplane`), against
//! the real local control plane: each test runs the built
//! `kubectl-ctrlplane` binary the way a user would, with `--kubeconfig` and
//! `-n`, and checks what the operator of its own namespace then does.
//! Every test name contains "plugin", so `hack/test.sh plugin` runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::receiver::{Mode, Receiver};
use common::storage::Storage;
use common::*;
use ctrlplane_operator::api::{
    DeliveryPhase, EventType, Instance, InstancePhase, Sandbox, SandboxPhase, WebhookDelivery,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-ctrlplane");

/// What one run of the plugin did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self, what: &str) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts kubectl's way of failing: exit code 1 and one line on
    /// stderr, `error: ...`; returns the line.
    fn one_line_error(self, what: &str) -> String {
        assert_eq!(self.code, Some(1), "{what}: {self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "{what}: {self:?}");
        assert!(self.stderr.starts_with("error: "), "{what}: {self:?}");
        assert!(self.stdout.is_empty(), "{what}: {self:?}");
        self.stderr.trim_end().to_string()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

fn run(command: &mut Command) -> Run {
    let output = command.output().expect("running kubectl-ctrlplane");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `kubectl-ctrlplane ARGS -n NAMESPACE --kubeconfig <the test control plane>`.
fn plugin(namespace: &str, args: &[&str]) -> Run {
    run(Command::new(PLUGIN)
        .args(args)
        .args(["-n", namespace, "--kubeconfig"])
        .arg(kubeconfig()))
}

/// A directory of the test's own under the temporary directory, removed
/// when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ctrlplane-plugin-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    // Fields drop in this order: the operator stops before the namespace
    // (and what is left in it) is cleaned up.
    _operator: Option<Operator>,
    ns: TestNamespace,
    instances: Api<Instance>,
    sandboxes: Api<Sandbox>,
    deliveries: Api<WebhookDelivery>,
    pods: Api<Pod>,
}

/// A namespace of the test's own, with an operator watching it unless
/// `operator` is false.
async fn fixture(prefix: &str, operator: bool) -> Fixture {
    ensure_crds();
    let ns = TestNamespace::create(prefix);
    let operator =
        operator.then(|| Operator::start_with(&ns.name, &["--allow-private-webhook-addresses"]));
    let client = client().await;
    Fixture {
        instances: Api::namespaced(client.clone(), &ns.name),
        sandboxes: Api::namespaced(client.clone(), &ns.name),
        deliveries: Api::namespaced(client.clone(), &ns.name),
        pods: Api::namespaced(client, &ns.name),
        _operator: operator,
        ns,
    }
}

fn instance_manifest(name: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  image: nginx:1.27\n  replicas: 2\n  ports:\n    - name: http\n      port: 8080\n"
    )
}

fn sandbox_manifest(name: &str, storage_class: &str, extra: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: ghcr.io/acme/devbox:1\n  resources: {{cpu: 500m, memory: 1Gi, storage: 5Gi, storageClassName: {storage_class}}}\n{extra}"
    )
}

fn phase(instance: &Instance) -> Option<InstancePhase> {
    instance.status.as_ref().and_then(|s| s.phase)
}

fn history(instance: &Instance) -> Vec<EventType> {
    instance
        .status
        .as_ref()
        .map(|s| s.history.iter().map(|e| e.type_).collect())
        .unwrap_or_default()
}

fn condition<'a>(
    conditions: &'a [ctrlplane_operator::api::Condition],
    type_: &str,
) -> Option<(&'a str, &'a str)> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| {
        (
            match c.status {
                ctrlplane_operator::api::ConditionStatus::True => "True",
                ctrlplane_operator::api::ConditionStatus::False => "False",
                ctrlplane_operator::api::ConditionStatus::Unknown => "Unknown",
            },
            c.reason.as_str(),
        )
    })
}

fn instance_condition(instance: &Instance, type_: &str) -> Option<(String, String)> {
    let status = instance.status.as_ref()?;
    condition(&status.conditions, type_).map(|(s, r)| (s.to_string(), r.to_string()))
}

fn sandbox_condition(sandbox: &Sandbox, type_: &str) -> Option<(String, String)> {
    let status = sandbox.status.as_ref()?;
    condition(&status.conditions, type_).map(|(s, r)| (s.to_string(), r.to_string()))
}

impl Fixture {
    fn apply(&self, manifest: &str) {
        apply_manifest(&self.ns.name, manifest).expect_success("applying");
    }

    fn ctl(&self, args: &[&str]) -> Run {
        plugin(&self.ns.name, args)
    }

    async fn instance_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Instance) -> bool,
    ) -> Instance {
        let check = &check;
        wait_until(&format!("Instance {name}: {what}"), WAIT, || async move {
            let instance = self.instances.get(name).await.map_err(|e| e.to_string())?;
            if check(&instance) {
                Ok(Some(instance))
            } else {
                Err(format!(
                    "phase {:?}, spec {:?}, conditions {:?}",
                    phase(&instance),
                    (instance.spec.state, instance.spec.replicas),
                    instance
                        .status
                        .as_ref()
                        .map(|s| describe_conditions(&s.conditions))
                ))
            }
        })
        .await
    }

    /// Waits for the phase, once the operator has seen the latest spec.
    async fn instance_phase(&self, name: &str, wanted: InstancePhase) -> Instance {
        self.instance_until(name, &format!("phase {wanted}"), |i| {
            phase(i) == Some(wanted)
                && i.status.as_ref().and_then(|s| s.observed_generation) == i.metadata.generation
        })
        .await
    }

    async fn sandbox_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Sandbox) -> bool,
    ) -> Sandbox {
        let check = &check;
        wait_until(&format!("Sandbox {name}: {what}"), WAIT, || async move {
            let sandbox = self.sandboxes.get(name).await.map_err(|e| e.to_string())?;
            if check(&sandbox) {
                Ok(Some(sandbox))
            } else {
                Err(format!(
                    "phase {:?}, conditions {:?}",
                    sandbox.status.as_ref().and_then(|s| s.phase),
                    sandbox
                        .status
                        .as_ref()
                        .map(|s| describe_conditions(&s.conditions))
                ))
            }
        })
        .await
    }

    async fn sandbox_phase(&self, name: &str, wanted: SandboxPhase) -> Sandbox {
        self.sandbox_until(name, &format!("phase {wanted}"), |s| {
            s.status.as_ref().and_then(|st| st.phase) == Some(wanted)
                && s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        })
        .await
    }

    /// Which spec fields each field manager owns, as "manager/Operation".
    async fn spec_owners(&self, name: &str) -> Vec<(String, Vec<String>)> {
        let instance = self.instances.get(name).await.unwrap();
        instance
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|entry| {
                let fields = entry.fields_v1?.0;
                let spec = fields.get("f:spec")?.as_object()?.clone();
                let mut names: Vec<String> = spec
                    .keys()
                    .filter_map(|k| k.strip_prefix("f:").map(String::from))
                    .collect();
                names.sort();
                Some((
                    format!(
                        "{}/{}",
                        entry.manager.unwrap_or_default(),
                        entry.operation.unwrap_or_default()
                    ),
                    names,
                ))
            })
            .collect()
    }
}

fn owners_of<'a>(owners: &'a [(String, Vec<String>)], manager: &str) -> Option<&'a Vec<String>> {
    owners.iter().find(|(m, _)| m == manager).map(|(_, f)| f)
}

/// kubectl finds `kubectl-ctrlplane` on PATH and runs it as `kubectl
/// ctrlplane`; every command has its own help; an error comes back through
/// kubectl as one line and exit code 1.
#[tokio::test]
async fn kubectl_runs_the_plugin_from_path_and_every_command_has_help() {
    let f = fixture("plugin-path", false).await;
    let bin = TempDir::create("path");
    std::os::unix::fs::symlink(PLUGIN, bin.0.join("kubectl-ctrlplane")).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.0.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let kubectl_with_plugin = |args: &[&str]| {
        run(Command::new(kubectl_binary())
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", kubeconfig()))
    };

    let listed = kubectl_with_plugin(&["plugin", "list"]);
    assert!(
        listed.stdout.contains("kubectl-ctrlplane"),
        "kubectl plugin list: {listed:?}"
    );
    let help = kubectl_with_plugin(&["ctrlplane", "--help"]).ok("kubectl ctrlplane --help");
    assert!(
        help.stdout
            .contains("Usage: kubectl ctrlplane [OPTIONS] <COMMAND>"),
        "{}",
        help.stdout
    );
    for command in [
        "start",
        "stop",
        "restart",
        "suspend",
        "resume",
        "scale",
        "expire",
        "extend",
        "status",
        "history",
        "deliveries",
        "redeliver",
    ] {
        assert!(
            help.stdout.contains(&format!("\n  {command} ")),
            "{command} listed: {}",
            help.stdout
        );
        let own = kubectl_with_plugin(&["ctrlplane", command, "--help"])
            .ok(&format!("kubectl ctrlplane {command} --help"));
        assert!(
            own.stdout
                .contains(&format!("Usage: kubectl ctrlplane {command} ")),
            "{}",
            own.stdout
        );
        assert!(own.stdout.contains("--namespace"), "{}", own.stdout);
    }
    // The exit code and the one line come through kubectl.
    let error = kubectl_with_plugin(&["ctrlplane", "status", "inst/nope", "-n", &f.ns.name])
        .one_line_error("status of a missing Instance through kubectl");
    assert_eq!(error, "error: instances.ctrlplane.dev \"nope\" not found");
    let version = run(Command::new(PLUGIN).arg("--version")).ok("--version");
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );
}

/// `stop`, `scale` and `start` set spec.state and spec.replicas by
/// server-side apply as `kubectl-ctrlplane`: a GitOps tool that applied the
/// rest keeps it, re-applies its manifest without a conflict, and a later
/// command keeps what an earlier one set.
#[tokio::test]
async fn plugin_stops_scales_and_starts_an_instance_beside_a_gitops_tool() {
    let f = fixture("plugin-stop", true).await;
    let gitops = |manifest: &str| {
        kubectl_stdin(
            [
                "apply",
                "--server-side",
                "--field-manager=gitops",
                "-n",
                &f.ns.name,
                "-f",
                "-",
            ],
            manifest,
        )
    };
    // Git holds everything but the replicas, as with an autoscaler.
    let in_git = instance_manifest("web").replace("  replicas: 2\n", "");
    gitops(&in_git).expect_success("the GitOps apply");
    f.instance_phase("web", InstancePhase::Running).await;

    let stopped = f.ctl(&["stop", "inst/web"]).ok("stop");
    assert_eq!(stopped.stdout, "instance.ctrlplane.dev/web stopped\n");
    let instance = f.instance_phase("web", InstancePhase::Stopped).await;
    assert!(history(&instance).contains(&EventType::InstanceStopped));
    let owners = f.spec_owners("web").await;
    assert_eq!(
        owners_of(&owners, "kubectl-ctrlplane/Apply"),
        Some(&vec!["state".to_string()]),
        "{owners:?}"
    );
    assert!(
        owners_of(&owners, "gitops/Apply")
            .is_some_and(|f| f.contains(&"image".to_string()) && !f.contains(&"state".to_string())),
        "{owners:?}"
    );

    // The GitOps tool syncs again: no conflict, and the Instance stays stopped.
    gitops(&in_git).expect_success("the GitOps apply, again");
    // Had Git held spec.state, an apply that is not forced would conflict.
    let fights = gitops(&format!("{in_git}  state: Running\n"));
    assert!(
        !fights.success
            && fights
                .stderr
                .contains("conflict with \"kubectl-ctrlplane\"")
            && fights.stderr.contains(".spec.state"),
        "{fights:?}"
    );
    // Scaling a stopped Instance must not drop spec.state (a server-side
    // apply that left it out would remove it, and it would start).
    let scaled = f
        .ctl(&["scale", "web", "--replicas", "3"])
        .ok("scale while stopped");
    assert_eq!(scaled.stdout, "instance.ctrlplane.dev/web scaled\n");
    let instance = f
        .instance_until("web", "scaled while stopped", |i| {
            i.spec.replicas == 3
                && history(i).contains(&EventType::InstanceScaled)
                && i.status.as_ref().and_then(|s| s.observed_generation) == i.metadata.generation
        })
        .await;
    assert_eq!(phase(&instance), Some(InstancePhase::Stopped));
    assert_eq!(
        instance.spec.state,
        ctrlplane_operator::api::DesiredState::Stopped
    );
    let owners = f.spec_owners("web").await;
    assert_eq!(
        owners_of(&owners, "kubectl-ctrlplane/Apply"),
        Some(&vec!["replicas".to_string(), "state".to_string()]),
        "{owners:?}"
    );
    gitops(&in_git).expect_success("the GitOps apply after scale");
    let instance = f.instances.get("web").await.unwrap();
    assert_eq!(
        (instance.spec.replicas, instance.spec.state),
        (3, ctrlplane_operator::api::DesiredState::Stopped)
    );

    let started = f.ctl(&["start", "instance", "web"]).ok("start");
    assert_eq!(started.stdout, "instance.ctrlplane.dev/web started\n");
    let running = f
        .instance_until("web", "Running with 3 ready replicas", |i| {
            phase(i) == Some(InstancePhase::Running)
                && i.status.as_ref().is_some_and(|s| s.ready_replicas == 3)
        })
        .await;
    assert_eq!(running.spec.replicas, 3);
    // The same start again changes nothing, and says so.
    let again = f.ctl(&["start", "inst/web"]).ok("start again");
    assert_eq!(
        again.stdout,
        "instance.ctrlplane.dev/web started (no change)\n"
    );
    // -o json prints the object written.
    let json = f
        .ctl(&["stop", "web", "-o", "json"])
        .ok("stop -o json")
        .json();
    assert_eq!(json["kind"], "Instance");
    assert_eq!(json["spec"]["state"], "Stopped");
    assert!(json["metadata"].get("managedFields").is_none());
    f.instance_phase("web", InstancePhase::Stopped).await;
}

/// `suspend --reason` stops an Instance with a Suspended condition; `start`
/// does not run it while it is suspended (and says so); `resume` removes
/// spec.suspend and nothing else, and it runs again.
#[tokio::test]
async fn plugin_suspends_and_resumes_an_instance() {
    let f = fixture("plugin-suspend", true).await;
    f.apply(&instance_manifest("web"));
    f.instance_phase("web", InstancePhase::Running).await;

    let suspended = f
        .ctl(&["suspend", "web", "--reason", "invoice 1042 unpaid"])
        .ok("suspend");
    assert_eq!(suspended.stdout, "instance.ctrlplane.dev/web suspended\n");
    let instance = f
        .instance_until("web", "Suspended=True and Stopped", |i| {
            instance_condition(i, "Suspended").is_some_and(|(s, _)| s == "True")
                && phase(i) == Some(InstancePhase::Stopped)
        })
        .await;
    let status = instance.status.clone().unwrap();
    assert_eq!(
        status.suspend_reason.as_deref(),
        Some("invoice 1042 unpaid")
    );
    assert!(status.suspended_at.is_some());
    assert!(history(&instance).contains(&EventType::InstanceSuspended));

    let started = f.ctl(&["start", "inst/web"]).ok("start while suspended");
    assert!(
        started
            .stderr
            .starts_with("warning: web is suspended (\"invoice 1042 unpaid\")"),
        "{started:?}"
    );
    let status = f.ctl(&["status", "inst/web"]).ok("status while suspended");
    assert!(
        status.stdout.contains("invoice 1042 unpaid"),
        "{}",
        status.stdout
    );

    let resumed = f.ctl(&["resume", "inst/web"]).ok("resume");
    assert_eq!(resumed.stdout, "instance.ctrlplane.dev/web resumed\n");
    let instance = f
        .instance_until("web", "resumed and Running", |i| {
            i.spec.suspend.is_none()
                && instance_condition(i, "Suspended").is_some_and(|(s, _)| s == "False")
                && phase(i) == Some(InstancePhase::Running)
        })
        .await;
    assert!(history(&instance).contains(&EventType::InstanceUnsuspended));
    // Nothing else of the spec moved.
    assert_eq!(instance.spec.replicas, 2);
    assert_eq!(instance.spec.image, "nginx:1.27");

    let error = f
        .ctl(&["resume", "web"])
        .one_line_error("resume when not suspended");
    assert_eq!(error, "error: instance.ctrlplane.dev/web is not suspended");
}

/// `restart` sets spec.restartedAt: every replica is replaced once and the
/// history says instance.restarted.
#[tokio::test]
async fn plugin_restarts_an_instance_and_every_replica_is_replaced() {
    let f = fixture("plugin-restart", true).await;
    f.apply(&instance_manifest("web"));
    f.instance_until("web", "Running and Ready", |i| {
        phase(i) == Some(InstancePhase::Running)
            && instance_condition(i, "Ready").is_some_and(|(s, _)| s == "True")
    })
    .await;
    let before: Vec<String> = f
        .pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.uid())
        .collect();
    assert_eq!(before.len(), 2);

    let restarted = f.ctl(&["restart", "inst/web"]).ok("restart");
    assert_eq!(restarted.stdout, "instance.ctrlplane.dev/web restarted\n");
    let instance = f
        .instance_until("web", "restarted and Running", |i| {
            history(i).contains(&EventType::InstanceRestarted)
                && phase(i) == Some(InstancePhase::Running)
                && i.status.as_ref().and_then(|s| s.restarted_at) == i.spec.restarted_at
                && i.status.as_ref().is_some_and(|s| s.ready_replicas == 2)
        })
        .await;
    let asked = instance.spec.restarted_at.unwrap();
    assert!((Utc::now() - asked).num_seconds() < 120, "{asked}");
    wait_until("every replica replaced", WAIT, || async {
        let pods = f
            .pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let live: Vec<String> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.uid())
            .collect();
        Ok((live.len() == 2 && live.iter().all(|uid| !before.contains(uid))).then_some(()))
    })
    .await;
}

/// `status` shows phase, conditions, children, endpoints and the last five
/// history entries; `history` every entry; `-o json|yaml` the raw objects;
/// `-o wide` more columns.
#[tokio::test]
async fn plugin_shows_status_and_history_of_an_instance() {
    let f = fixture("plugin-status", true).await;
    f.apply(&instance_manifest("web"));
    f.instance_phase("web", InstancePhase::Running).await;
    // At least seven entries: created, starting, started, stopping,
    // stopped, starting, started.
    f.ctl(&["stop", "web"]).ok("stop");
    f.instance_phase("web", InstancePhase::Stopped).await;
    f.ctl(&["start", "web"]).ok("start");
    let instance = f
        .instance_until("web", "Running again", |i| {
            phase(i) == Some(InstancePhase::Running)
                && history(i).contains(&EventType::InstanceStopped)
                && instance_condition(i, "Ready").is_some_and(|(s, _)| s == "True")
        })
        .await;
    let entries = history(&instance).len();
    assert!(entries >= 7, "{:?}", history(&instance));

    let status = f.ctl(&["status", "web"]).ok("status").stdout;
    for wanted in [
        "Name:           web\n",
        &format!("Namespace:      {}\n", f.ns.name),
        "Kind:           Instance\n",
        "Phase:          Running\n",
        "Replicas:       2 desired, 2 ready\n",
        "Conditions:\n  TYPE ",
        "Children:\n  KIND ",
        "Deployment   web    2/2 ready",
        "Service      web    ClusterIP",
        &format!("http   http://web.{}.svc.cluster.local:8080", f.ns.name),
        &format!("History (last 5 of {entries}; `kubectl ctrlplane history inst/web` shows all):"),
        "instance.stopping",
    ] {
        assert!(status.contains(wanted), "{wanted:?} in:\n{status}");
    }
    let ready = status
        .lines()
        .find(|l| l.trim_start().starts_with("Ready "))
        .unwrap_or_default();
    assert!(ready.contains("True"), "{status}");
    // The last five entries, not the first two.
    assert!(!status.contains("instance.created"), "{status}");
    assert!(!status.contains("LAST-TRANSITION"));

    let wide = f
        .ctl(&["status", "web", "-o", "wide"])
        .ok("status -o wide")
        .stdout;
    assert!(
        wide.contains("LAST-TRANSITION") && wide.contains("OWNED"),
        "{wide}"
    );

    let list = f
        .ctl(&["status", "inst/web", "-o", "json"])
        .ok("status -o json")
        .json();
    assert_eq!(list["kind"], "List");
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Instance", "Deployment", "Service"]);
    assert_eq!(list["items"][0]["status"]["phase"], "Running");
    let yaml = f
        .ctl(&["status", "web", "-o", "yaml"])
        .ok("status -o yaml")
        .stdout;
    let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(parsed["items"][0]["metadata"]["name"], "web");

    let table = f.ctl(&["history", "inst/web"]).ok("history").stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        entries + 1,
        "a header and every entry:\n{table}"
    );
    assert!(lines[0].starts_with("SEQ   TIME"), "{table}");
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains("instance.created"),
        "{table}"
    );
    assert!(
        lines[2].contains("instance.starting") && lines[2].contains("Provisioning -> Starting"),
        "{table}"
    );
    assert!(
        lines[entries].starts_with(&format!("{entries} ")),
        "{table}"
    );
    let entries = f
        .ctl(&["history", "web", "-o", "json"])
        .ok("history -o json")
        .json();
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(instance.status.unwrap().history.len())
    );
    assert_eq!(entries[0]["type"], "instance.created");
    let wide = f
        .ctl(&["history", "web", "-o", "wide"])
        .ok("history -o wide")
        .stdout;
    assert!(wide.lines().next().unwrap().ends_with("DETAILS"), "{wide}");
}

/// `stop`, `start` and `restart` of a Sandbox, and its `status` with its
/// pod, claim and Service.
#[tokio::test]
async fn plugin_stops_starts_restarts_and_shows_a_sandbox() {
    let f = fixture("plugin-sbx", true).await;
    let storage = Storage::create(&f.ns.name, 1);
    f.apply(&sandbox_manifest(
        "box",
        &storage.class,
        "  ports:\n    - {name: ssh, port: 2222}\n",
    ));
    f.sandbox_phase("box", SandboxPhase::Running).await;
    wait_claim_bound(&f.ns.name, "box-data").await;

    let status = f.ctl(&["status", "sbx/box"]).ok("status").stdout;
    for wanted in [
        "Kind:           Sandbox\n",
        "Phase:          Running\n",
        "Pod                     box        Running, ready",
        "PersistentVolumeClaim   box-data   Bound",
        "Service                 box        ClusterIP",
        &format!("ssh    box.{}.svc.cluster.local:2222", f.ns.name),
        "sandbox.started",
    ] {
        assert!(status.contains(wanted), "{wanted:?} in:\n{status}");
    }
    let list = f
        .ctl(&["status", "box", "-o", "json"])
        .ok("status -o json")
        .json();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["Sandbox", "Pod", "PersistentVolumeClaim", "Service"]
    );

    let first_pod = f.pods.get("box").await.unwrap().uid();
    let stopped = f.ctl(&["stop", "sbx/box"]).ok("stop");
    assert_eq!(stopped.stdout, "sandbox.ctrlplane.dev/box stopped\n");
    f.sandbox_phase("box", SandboxPhase::Stopped).await;
    assert!(f.pods.get_opt("box").await.unwrap().is_none(), "no pod");
    let status = f.ctl(&["status", "box"]).ok("status when stopped").stdout;
    assert!(
        !status.contains("Pod    ") && status.contains("PersistentVolumeClaim   box-data"),
        "the claim is kept, the pod is gone:\n{status}"
    );

    f.ctl(&["start", "sandbox", "box"]).ok("start");
    f.sandbox_phase("box", SandboxPhase::Running).await;
    let second_pod = f.pods.get("box").await.unwrap().uid();
    assert_ne!(second_pod, first_pod);

    let restarted = f.ctl(&["restart", "sbx/box"]).ok("restart");
    assert_eq!(restarted.stdout, "sandbox.ctrlplane.dev/box restarted\n");
    f.sandbox_until("box", "restarted and Running", |s| {
        let status = s.status.as_ref();
        status.and_then(|st| st.restarted_at) == s.spec.restarted_at
            && status.and_then(|st| st.phase) == Some(SandboxPhase::Running)
    })
    .await;
    wait_until("a new pod", WAIT, || async {
        let pod = f.pods.get_opt("box").await.map_err(|e| e.to_string())?;
        Ok(pod
            .filter(|p| p.uid() != second_pod && p.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await;
}

fn deadline(sandbox: &Sandbox) -> Option<DateTime<Utc>> {
    sandbox.status.as_ref().and_then(|s| s.expires_at)
}

/// `extend --ttl` moves the deadline to now + D in the field the Sandbox
/// uses; `expire` makes it expire now (expiryPolicy Stop: Stopped,
/// Expired=True); extending it again brings it back.
#[tokio::test]
async fn plugin_extends_and_expires_a_sandbox() {
    let f = fixture("plugin-expiry", true).await;
    let storage = Storage::create(&f.ns.name, 1);
    f.apply(&sandbox_manifest(
        "box",
        &storage.class,
        "  ttlSeconds: 600\n  expiryPolicy: Stop\n",
    ));
    let running = f.sandbox_phase("box", SandboxPhase::Running).await;
    let first = deadline(&running).unwrap();

    let before = Utc::now();
    let extended = f.ctl(&["extend", "box", "--ttl", "2h"]).ok("extend");
    let after = Utc::now();
    assert!(
        extended
            .stdout
            .starts_with("sandbox.ctrlplane.dev/box extended: expires at "),
        "{}",
        extended.stdout
    );
    let sandbox = f
        .sandbox_until("box", "the deadline moved", |s| {
            deadline(s).is_some_and(|d| d > first)
        })
        .await;
    let moved = deadline(&sandbox).unwrap();
    let two_hours = chrono::Duration::hours(2);
    assert!(
        moved >= before + two_hours - chrono::Duration::seconds(1)
            && moved <= after + two_hours + chrono::Duration::seconds(1),
        "{moved} is about {} + 2h",
        before
    );
    // It uses ttlSeconds, so ttlSeconds moved, counted from creation.
    assert!(sandbox.spec.expires_at.is_none());
    assert!(sandbox.spec.ttl_seconds.unwrap() > 7200);

    let expired = f.ctl(&["expire", "sbx/box"]).ok("expire");
    assert!(
        expired
            .stdout
            .starts_with("sandbox.ctrlplane.dev/box expired (expiryPolicy Stop"),
        "{}",
        expired.stdout
    );
    let sandbox = f
        .sandbox_until("box", "Expired=True and Stopped", |s| {
            sandbox_condition(s, "Expired")
                .is_some_and(|(st, r)| st == "True" && r == "ExpiredStop")
                && s.status.as_ref().and_then(|st| st.phase) == Some(SandboxPhase::Stopped)
        })
        .await;
    assert!(sandbox.spec.ttl_seconds.is_none(), "ttlSeconds went");
    assert!(sandbox.spec.expires_at.is_some_and(|at| at <= Utc::now()));
    assert!(
        sandbox
            .status
            .as_ref()
            .unwrap()
            .history
            .iter()
            .any(|e| e.type_ == EventType::SandboxExpired)
    );

    // Now it has an expiry time: extending moves that, and it runs again.
    let before = Utc::now();
    f.ctl(&["extend", "sandbox/box", "--ttl", "1h30m"])
        .ok("extend after expiry");
    let sandbox = f
        .sandbox_until("box", "extended past its expiry and Running", |s| {
            sandbox_condition(s, "Expired").is_some_and(|(st, r)| st == "False" && r == "Extended")
                && s.status.as_ref().and_then(|st| st.phase) == Some(SandboxPhase::Running)
        })
        .await;
    let moved = deadline(&sandbox).unwrap();
    let ninety = chrono::Duration::minutes(90);
    assert!(
        moved >= before + ninety - chrono::Duration::seconds(1)
            && moved <= Utc::now() + ninety + chrono::Duration::seconds(1),
        "{moved}"
    );
    assert_eq!(sandbox.spec.expires_at, Some(moved));
    assert!(sandbox.spec.ttl_seconds.is_none());
}

/// `deliveries` lists the WebhookDelivery records (one Webhook's, or only
/// Failed ones); `redeliver` sends a completed one again, and `redeliver
/// --failed` every Failed one of a Webhook.
#[tokio::test]
async fn plugin_lists_deliveries_and_redelivers_them() {
    let f = fixture("plugin-deliveries", true).await;
    let failing = Receiver::start(&[SECRET]).await;
    failing.set_mode(Mode::Answer(500));
    let audit = Receiver::start(&[SECRET]).await;
    f.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"
    ));
    let webhook = |name: &str, url: &str, extra: &str| {
        format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n  events: [\"instance.*\"]\n{extra}"
        )
    };
    f.apply(&webhook(
        "hooks",
        &failing.url(),
        "  retryPolicy: {maxAttempts: 1, backoffBaseSeconds: 1, backoffCapSeconds: 1}\n",
    ));
    f.apply(&webhook("audit", &audit.url(), "  deliveryRecords: All\n"));
    for name in ["hooks", "audit"] {
        wait_until(&format!("Webhook {name} Ready"), WAIT, || async {
            let out = kubectl([
                "get",
                "wh",
                name,
                "-n",
                &f.ns.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            Ok((out.stdout == "True").then_some(()))
        })
        .await;
    }
    f.apply(&instance_manifest("web"));
    f.instance_phase("web", InstancePhase::Running).await;
    // created, starting, started: three events, each Failed at hooks and
    // Succeeded at audit.
    let by_phase = |items: &[WebhookDelivery], webhook: &str, wanted: DeliveryPhase| {
        items
            .iter()
            .filter(|d| {
                d.spec.webhook_name == webhook
                    && d.status.as_ref().and_then(|s| s.phase) == Some(wanted)
            })
            .count()
    };
    wait_until("three Failed and three Succeeded records", WAIT, || async {
        let items = f
            .deliveries
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        let counts = (
            by_phase(&items, "hooks", DeliveryPhase::Failed),
            by_phase(&items, "audit", DeliveryPhase::Succeeded),
        );
        if counts == (3, 3) {
            Ok(Some(()))
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;

    let all = f.ctl(&["deliveries"]).ok("deliveries").stdout;
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 7, "a header and six records:\n{all}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "WEBHOOK",
            "EVENT",
            "OBJECT",
            "PHASE",
            "ATTEMPTS",
            "CODE",
            "LAST-ERROR"
        ],
        "{all}"
    );
    // Sorted by webhook, then sequence: audit first.
    assert!(lines[1].contains(" audit ") && lines[1].contains("instance.created"));
    assert!(lines[4].contains(" hooks ") && lines[4].contains("instance.created"));
    assert!(
        lines[4].contains("instance/web") && lines[4].contains("Failed"),
        "{all}"
    );
    assert!(lines[4].contains(" 500 "), "the last code: {all}");

    let only_hooks = f
        .ctl(&["deliveries", "hooks"])
        .ok("deliveries hooks")
        .stdout;
    assert_eq!(only_hooks.lines().count(), 4, "{only_hooks}");
    assert!(!only_hooks.contains(" audit "), "{only_hooks}");
    let failed = f
        .ctl(&["deliveries", "--failed"])
        .ok("deliveries --failed")
        .stdout;
    assert_eq!(failed.lines().count(), 4, "{failed}");
    assert!(
        failed.lines().skip(1).all(|l| l.contains("Failed")),
        "{failed}"
    );
    let none = f
        .ctl(&["deliveries", "audit", "--failed"])
        .ok("deliveries audit --failed");
    assert_eq!(none.stdout, "");
    assert_eq!(
        none.stderr,
        format!("No resources found in {} namespace.\n", f.ns.name)
    );
    let json = f
        .ctl(&["deliveries", "--failed", "hooks", "-o", "json"])
        .ok("deliveries -o json")
        .json();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|d| d["status"]["phase"] == "Failed"
        && d["status"]["lastStatusCode"] == 500
        && d["kind"] == "WebhookDelivery"));
    let wide = f
        .ctl(&["deliveries", "-o", "wide"])
        .ok("deliveries -o wide")
        .stdout;
    assert!(wide.lines().next().unwrap().ends_with("AGE"), "{wide}");

    // The endpoint is fixed; one record first, then every other Failed one.
    failing.set_mode(Mode::Accept);
    let first = items[0]["metadata"]["name"].as_str().unwrap().to_string();
    let asked = f.ctl(&["redeliver", &first]).ok("redeliver one");
    assert_eq!(
        asked.stdout,
        format!("webhookdelivery.ctrlplane.dev/{first} redelivery requested\n")
    );
    let redelivered = wait_until("the record to succeed", WAIT, || async {
        let d = f.deliveries.get(&first).await.map_err(|e| e.to_string())?;
        Ok(
            (d.status.as_ref().and_then(|s| s.phase) == Some(DeliveryPhase::Succeeded))
                .then_some(d),
        )
    })
    .await;
    let status = redelivered.status.unwrap();
    assert_eq!(status.attempts, 1, "a fresh count of attempts");
    assert_eq!(status.last_status_code, Some(200));
    assert_eq!(status.attempt_log.len(), 2, "the failed attempt is kept");
    assert!(
        redelivered
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ctrlplane.dev/redeliver-requested-at")
    );

    let asked = f
        .ctl(&["redeliver", "--failed", "wh/hooks"])
        .ok("redeliver --failed");
    assert_eq!(asked.stdout.lines().count(), 2, "{}", asked.stdout);
    assert!(
        asked
            .stdout
            .lines()
            .all(|l| l.ends_with(" redelivery requested") && !l.contains(&first)),
        "{}",
        asked.stdout
    );
    wait_until("every hooks record to succeed", WAIT, || async {
        let items = f
            .deliveries
            .list(&ListParams::default().fields("spec.webhookName=hooks"))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let succeeded = by_phase(&items, "hooks", DeliveryPhase::Succeeded);
        if succeeded == 3 {
            Ok(Some(()))
        } else {
            Err(format!("{succeeded} of 3 Succeeded"))
        }
    })
    .await;
    let types: Vec<String> = failing.accepted().into_iter().map(|r| r.type_).collect();
    for wanted in ["instance.created", "instance.starting", "instance.started"] {
        assert!(types.iter().any(|t| t == wanted), "{types:?}");
    }
    assert!(failing.accepted().iter().all(|r| r.verified_with == [0]));

    let nothing = f
        .ctl(&["redeliver", "--failed", "hooks"])
        .ok("redeliver --failed with none failed");
    assert_eq!(nothing.stdout, "");
    assert!(
        nothing
            .stderr
            .starts_with("No Failed deliveries of webhook.ctrlplane.dev/hooks"),
        "{nothing:?}"
    );
}

/// Failures are one line on stderr and exit code 1, for the API server's
/// refusals and the plugin's own.
#[tokio::test]
async fn plugin_errors_are_one_line_with_exit_code_1() {
    let f = fixture("plugin-errors", false).await;
    f.apply(&instance_manifest("twin"));
    f.apply(&sandbox_manifest("twin", "standard", ""));
    f.apply(&instance_manifest("web"));
    f.apply(&sandbox_manifest("forever", "standard", ""));
    f.apply(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: WebhookDelivery\nmetadata:\n  name: on-its-way\nspec:\n  webhookName: hooks\n  event:\n    id: msg_1\n    type: instance.created\n    timestamp: \"2026-11-27T08:00:00Z\"\n    subject: {kind: Instance, name: web, uid: u-1}\n    sequence: 1\n    reason: Created\n",
    );
    let ns = f.ns.name.as_str();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["stop", "inst/nope"],
            "error: instances.ctrlplane.dev \"nope\" not found".into(),
        ),
        (
            vec!["stop", "nope"],
            format!("error: no Instance or Sandbox named \"nope\" in namespace \"{ns}\""),
        ),
        (
            vec!["status", "twin"],
            format!(
                "error: \"twin\" is both an Instance and a Sandbox in namespace \"{ns}\": say which, as inst/twin or sbx/twin"
            ),
        ),
        (
            vec!["suspend", "sbx/twin", "--reason", "x"],
            "error: suspend does not apply to Sandboxes: use inst (Instance)".into(),
        ),
        (
            vec!["stop", "deploy/web"],
            "error: unknown resource type \"deploy\" for stop: use inst (Instance) or sbx (Sandbox)"
                .into(),
        ),
        (
            vec!["scale", "web", "--replicas", "5000"],
            "error: Instance.ctrlplane.dev \"web\" is invalid: spec.replicas: Invalid value: 5000: spec.replicas in body should be less than or equal to 1000".into(),
        ),
        (
            vec!["extend", "forever", "--ttl", "1h"],
            "error: sandbox.ctrlplane.dev/forever has neither spec.ttlSeconds nor spec.expiresAt: it does not expire, so there is nothing to extend".into(),
        ),
        (
            vec!["extend", "forever", "--ttl", "5x"],
            "error: invalid value '5x' for '--ttl <D>': invalid duration \"5x\": unknown unit \"x\" (for example 90s, 30m, 2h or 1h30m)".into(),
        ),
        (
            vec!["suspend", "web"],
            "error: the following required arguments were not provided: --reason <REASON>".into(),
        ),
        (
            vec!["redeliver", "whd/on-its-way"],
            "error: webhookdelivery.ctrlplane.dev/on-its-way is Pending: it is still being delivered (attempt 0 so far); only a Succeeded or Failed delivery can be sent again".into(),
        ),
        (
            vec!["deliveries", "nope"],
            "error: webhooks.ctrlplane.dev \"nope\" not found".into(),
        ),
        (
            vec!["resume", "web"],
            "error: instance.ctrlplane.dev/web is not suspended".into(),
        ),
        (
            vec!["status", "web", "--context", "nowhere"],
            "error: context \"nowhere\" does not exist in the kubeconfig".into(),
        ),
    ];
    for (args, expected) in cases {
        let line = f.ctl(&args).one_line_error(&args.join(" "));
        assert_eq!(line, expected, "{args:?}");
    }
    // Nothing of the spec was touched by the failures.
    let web = f.instances.get("web").await.unwrap();
    assert_eq!(web.spec.replicas, 2);
    assert!(web.spec.suspend.is_none());
}

/// The kubeconfig is found and read as kubectl reads it: `--kubeconfig`,
/// `$KUBECONFIG`, `~/.kube/config`; `--context`; the namespace from `-n`,
/// else the context's.
#[tokio::test]
async fn plugin_finds_kubeconfig_context_and_namespace_as_kubectl_does() {
    let f = fixture("plugin-kubeconfig", false).await;
    f.apply(&instance_manifest("web"));
    let home = TempDir::create("home");
    std::fs::create_dir_all(home.0.join(".kube")).unwrap();
    let copy = home.0.join(".kube").join("config");
    std::fs::copy(kubeconfig(), &copy).unwrap();
    // A second context, on the same cluster and user, in the test's namespace.
    let config = |args: &[&str]| {
        run(Command::new(kubectl_binary())
            .args(["config", "--kubeconfig"])
            .arg(&copy)
            .args(args))
        .ok(&format!("kubectl config {args:?}"))
        .stdout
    };
    let cluster = config(&["view", "-o", "jsonpath={.contexts[0].context.cluster}"]);
    let user = config(&["view", "-o", "jsonpath={.contexts[0].context.user}"]);
    config(&[
        "set-context",
        "plugin-test",
        &format!("--cluster={cluster}"),
        &format!("--user={user}"),
        &format!("--namespace={}", f.ns.name),
    ]);
    let name_of =
        |run: Run| run.ok("status -o json").json()["items"][0]["metadata"]["namespace"].clone();
    let plugin_with = |args: &[&str], env: &[(&str, &Path)]| {
        let mut command = Command::new(PLUGIN);
        command.args(args).env_remove("KUBECONFIG");
        for (key, value) in env {
            command.env(key, value);
        }
        run(&mut command)
    };

    // --kubeconfig and --context: the context's namespace, no -n needed.
    let found = plugin_with(
        &[
            "status",
            "inst/web",
            "-o",
            "json",
            "--context",
            "plugin-test",
            "--kubeconfig",
            copy.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(name_of(found), f.ns.name.as_str());
    // $KUBECONFIG.
    let found = plugin_with(
        &[
            "status",
            "inst/web",
            "-o",
            "json",
            "--context",
            "plugin-test",
        ],
        &[("KUBECONFIG", &copy)],
    );
    assert_eq!(name_of(found), f.ns.name.as_str());
    // ~/.kube/config, with its current-context.
    config(&["use-context", "plugin-test"]);
    let found = plugin_with(&["status", "web", "-o", "json"], &[("HOME", &home.0)]);
    assert_eq!(name_of(found), f.ns.name.as_str());
    // -n wins over the context's namespace.
    let error = plugin_with(
        &["status", "inst/web", "-n", "default"],
        &[("HOME", &home.0)],
    )
    .one_line_error("status in another namespace");
    assert_eq!(error, "error: instances.ctrlplane.dev \"web\" not found");
    // No kubeconfig anywhere: one line too.
    let nowhere = TempDir::create("empty-home");
    let error =
        plugin_with(&["status", "web"], &[("HOME", &nowhere.0)]).one_line_error("no kubeconfig");
    assert!(error.contains("kubeconfig"), "{error}");
}
