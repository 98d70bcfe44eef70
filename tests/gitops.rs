//! GitOps health, end to end. Argo CD's health checks (the Lua scripts in
//! `deploy/argocd/`, run by a real Lua 5.1 interpreter, the language Argo CD
//! embeds, with only the libraries Argo CD gives them) and kstatus (what
//! Flux's health checks use, through the small Go program in `hack/kstatus/`)
//! read real objects of every kind in every phase: an operator of the test's
//! own drives them there on the local control plane, and each object is taken
//! exactly as the API server returns it.
//!
//! The objects of one kind are driven once per test binary and shared by the
//! Argo CD test and the kstatus test of that kind, so each test says only one
//! thing: what Argo CD shows, or what Flux waits for.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::receiver::{Mode, Receiver};
use common::storage::Storage;
use common::*;
use ctrlplane_operator::api::{Instance, Sandbox, Webhook, WebhookDelivery};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ------------------------------------------------------------------ the tools

/// The Lua 5.1 interpreter: `$CTRLPLANE_LUA`, or `lua5.1` on PATH. Its
/// absence fails the test: a skipped health check proves nothing.
fn lua() -> &'static Path {
    static LUA: OnceLock<PathBuf> = OnceLock::new();
    LUA.get_or_init(|| {
        let lua = std::env::var_os("CTRLPLANE_LUA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("lua5.1"));
        let version = Command::new(&lua).arg("-v").output();
        let banner = version
            .as_ref()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        assert!(
            banner.contains("Lua 5.1"),
            "the Argo CD health checks are tested in Lua 5.1 (the language Argo CD embeds), \
             and {lua:?} is not it ({}). Install Debian's lua5.1 (`apt-get install lua5.1`; \
             .ci/run does), or point CTRLPLANE_LUA at a Lua 5.1 interpreter",
            match &version {
                Ok(_) => banner.trim().to_string(),
                Err(e) => e.to_string(),
            }
        );
        lua
    })
}

/// The kstatus program: `$CTRLPLANE_KSTATUS` (hack/test.sh sets it), or
/// built now by hack/kstatus/build.sh (cached after the first time).
fn kstatus_binary() -> &'static Path {
    static KSTATUS: OnceLock<PathBuf> = OnceLock::new();
    KSTATUS.get_or_init(|| {
        if let Some(path) = std::env::var_os("CTRLPLANE_KSTATUS") {
            return PathBuf::from(path);
        }
        let build = Command::new(repo_root().join("hack/kstatus/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running hack/kstatus/build.sh");
        assert!(
            build.status.success(),
            "hack/kstatus/build.sh failed; it needs Go and the Go module proxy"
        );
        PathBuf::from(String::from_utf8(build.stdout).unwrap().trim())
    })
}

/// `value` as a Lua expression that builds the same table Argo CD hands a
/// health script as `obj`: objects and arrays become tables (arrays from
/// index 1), and nulls are left out, as Argo CD's decoder leaves them out.
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (None, Some(f)) => out.push_str(&format!("{f:?}")),
            (None, None) => unreachable!("JSON numbers are i64, u64 or f64"),
        },
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items.iter().filter(|v| !v.is_null()) {
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (key, item) in map.iter().filter(|(_, v)| !v.is_null()) {
                out.push('[');
                lua_string(key, out);
                out.push_str("]=");
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

/// A Lua string literal holding exactly `s`.
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // Three digits always, so a digit after it is not taken in.
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What Argo CD shows for an object: runs `script` on it in Lua 5.1, in an
/// environment cut down to what Argo CD's Lua VM offers a health script (the
/// base, table and package libraries; no string, math, io or debug library,
/// and no string methods). Argo CD also offers a safe os with time and
/// date only; this leaves os out altogether, which can only fail a script
/// Argo CD would run, never pass one it would not.
fn run_health_script(script: &Path, object: &Value) -> Health {
    try_health_script(script, object)
        .unwrap_or_else(|e| panic!("{script:?} failed on {}:\n{e}", describe(object)))
}

/// Like [`run_health_script`], with the script's error as an `Err`.
fn try_health_script(script: &Path, object: &Value) -> Result<Health, String> {
    let mut program = String::from("obj = ");
    lua_literal(object, &mut program);
    program.push_str("\nlocal script = assert(loadfile(");
    lua_string(script.to_str().unwrap(), &mut program);
    program.push_str(
        "))\n\
         string, math, io, os, debug, coroutine = nil, nil, nil, nil, nil, nil\n\
         getmetatable(\"\").__index = nil\n\
         local hs = script()\n\
         if type(hs) ~= \"table\" then error(\"the script returned a \" .. type(hs) .. \", not a table\") end\n\
         print(tostring(hs.status))\n\
         print(type(hs.message))\n\
         print(tostring(hs.message))\n",
    );
    let output = pipe(lua(), &["-"], &program);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.splitn(3, '\n');
    let status = lines.next().unwrap_or_default().to_string();
    let message_type = lines.next().unwrap_or_default().to_string();
    let message = lines
        .next()
        .unwrap_or_default()
        .strip_suffix('\n')
        .unwrap_or_default()
        .to_string();
    if message_type != "string" {
        return Err(format!("the message is a {message_type}, not a string"));
    }
    Ok(Health { status, message })
}

/// What Argo CD shows for an object of ours, from deploy/argocd/.
fn argocd_health(object: &Value) -> Health {
    let kind = object["kind"].as_str().expect("the object has a kind");
    run_health_script(&health_script(kind), object)
}

fn health_script(kind: &str) -> PathBuf {
    repo_root().join(format!("deploy/argocd/ctrlplane.dev/{kind}/health.lua"))
}

/// What kstatus computes for each object, in order.
fn kstatus(objects: &[&Value]) -> Vec<Health> {
    let input = serde_json::to_string(objects).unwrap();
    let output = pipe(kstatus_binary(), &[], &input);
    assert!(
        output.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Health> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Health {
                status: v["status"].as_str().unwrap_or_default().to_string(),
                message: v["message"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    assert_eq!(results.len(), objects.len(), "one answer per object");
    results
}

/// Runs `program` with `args`, `stdin` as its standard input.
fn pipe(program: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    // Written from a thread of its own, so a large input cannot deadlock
    // against a full stdout pipe.
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    status: String,
    message: String,
}

// -------------------------------------------------------------- the objects

/// One real object in a named state.
#[derive(Debug, Clone)]
struct Snapshot {
    state: &'static str,
    object: Value,
}

fn status(object: &Value) -> &Value {
    &object["status"]
}

fn phase(object: &Value) -> Option<&str> {
    status(object)["phase"].as_str()
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    status(object)["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether the condition has this status (True, False) and, unless empty,
/// this reason.
fn has(object: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(object, type_)
        .is_some_and(|c| c["status"] == status && (reason.is_empty() || c["reason"] == reason))
}

/// Whether the operator has not written anything to the object yet.
fn not_seen(object: &Value) -> bool {
    phase(object).is_none() && status(object)["conditions"].is_null()
}

/// Whether the operator has seen the object's current spec.
fn observed(object: &Value) -> bool {
    let generation = object["metadata"]["generation"].as_i64();
    generation.is_some() && status(object)["observedGeneration"].as_i64() == generation
}

/// A one-line account of an object's state, for messages.
fn describe(object: &Value) -> String {
    let conditions: Vec<String> = status(object)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} {}",
                c["type"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default()
            )
        })
        .collect();
    format!(
        "{} {} (generation {}, observed {}, phase {}, {})",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
        object["metadata"]["generation"],
        status(object)["observedGeneration"],
        phase(object).unwrap_or("-"),
        conditions.join(", ")
    )
}

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Instance" => ApiResource::erase::<Instance>(&()),
        "Sandbox" => ApiResource::erase::<Sandbox>(&()),
        "Webhook" => ApiResource::erase::<Webhook>(&()),
        "WebhookDelivery" => ApiResource::erase::<WebhookDelivery>(&()),
        other => panic!("not a kind of ours: {other}"),
    }
}

/// The object as JSON, as the API server returned it (managedFields left
/// out: neither Argo CD's scripts nor kstatus read them).
fn as_json(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    if let Some(metadata) = value["metadata"].as_object_mut() {
        metadata.remove("managedFields");
    }
    value
}

/// One namespace with objects of one kind family, and (once started) an
/// operator of its own.
struct Scene {
    // Fields drop in this order: the operator stops before the namespace
    // (and what is left in it) is cleaned up.
    operator: Option<Operator>,
    ns: TestNamespace,
    client: Client,
    operator_args: &'static [&'static str],
    snapshots: Vec<Snapshot>,
}

impl Scene {
    async fn new(prefix: &str, operator_args: &'static [&'static str]) -> Self {
        ensure_crds();
        let ns = TestNamespace::create(prefix);
        Self {
            operator: None,
            ns,
            client: client().await,
            operator_args,
            snapshots: Vec::new(),
        }
    }

    fn start_operator(&mut self) {
        self.operator = Some(Operator::start_with(&self.ns.name, self.operator_args));
    }

    /// Stops the operator, so that what happens next stays unobserved.
    fn stop_operator(&mut self) {
        if let Some(operator) = self.operator.as_mut() {
            operator.kill();
        }
    }

    fn apply(&self, manifest: &str) {
        apply_manifest(&self.ns.name, manifest).expect_success("applying");
    }

    fn api(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns.name, &api_resource(kind))
    }

    /// Waits until the object is in the state `check` describes, and
    /// returns that very object as the API server returned it.
    async fn wait_state(
        &self,
        what: &str,
        kind: &str,
        name: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let api = self.api(kind);
        let (api, check) = (&api, &check);
        wait_until(&format!("{kind} {name}: {what}"), WAIT, || async move {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                Some(object) => {
                    let value = as_json(&object);
                    if check(&value) {
                        Ok(Some(value))
                    } else {
                        Err(describe(&value))
                    }
                }
                None => Err("not found".into()),
            }
        })
        .await
    }

    /// Waits until the object is in the state `check` describes and keeps
    /// it as `state`.
    async fn capture(
        &mut self,
        state: &'static str,
        kind: &str,
        name: &str,
        check: impl Fn(&Value) -> bool,
    ) {
        let object = self.wait_state(state, kind, name, check).await;
        self.snapshots.push(Snapshot { state, object });
    }

    /// Like [`Scene::capture`], for the WebhookDelivery of a Webhook (their
    /// names are made by the operator).
    async fn capture_delivery(
        &mut self,
        state: &'static str,
        webhook: &str,
        check: impl Fn(&Value) -> bool,
    ) {
        let api = self.api("WebhookDelivery");
        let selector = format!("spec.webhookName={webhook}");
        let (api, check, selector) = (&api, &check, &selector);
        let object = wait_until(
            &format!("the delivery to {webhook}: {state}"),
            WAIT,
            || async move {
                let list = api
                    .list(&ListParams::default().fields(selector))
                    .await
                    .map_err(|e| e.to_string())?;
                let values: Vec<Value> = list.items.iter().map(as_json).collect();
                match values.iter().find(|v| check(v)) {
                    Some(v) => Ok(Some(v.clone())),
                    None => Err(values.iter().map(describe).collect::<Vec<_>>().join("; ")),
                }
            },
        )
        .await;
        self.snapshots.push(Snapshot { state, object });
    }

    /// Marks the pods with this label unready, as a failing readiness probe
    /// would. kwok only acts on Pending pods, so a Running pod keeps what is
    /// written here.
    async fn make_pods_unready(&self, label: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let listed = pods
            .list(&ListParams::default().labels(label))
            .await
            .unwrap();
        assert!(!listed.items.is_empty(), "no pods labelled {label}");
        for pod in listed.items {
            let name = pod.metadata.name.unwrap();
            pods.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(serde_json::json!({"status": {"conditions": [
                    {"type": "Ready", "status": "False", "reason": "ProbeFailed"},
                    {"type": "ContainersReady", "status": "False", "reason": "ProbeFailed"},
                ]}})),
            )
            .await
            .unwrap();
        }
    }

    async fn patch_spec(&self, kind: &str, name: &str, spec: Value) {
        self.api(kind)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// Puts a finalizer of the test's own on the object, so that a deletion
    /// waits as it does when the operator's finalizer holds it (a Webhook in
    /// the namespace, a command still running). Without a reason to wait the
    /// object holds none and is gone at once. The namespace's clean-up takes
    /// it off.
    async fn hold(&self, kind: &str, name: &str) {
        self.api(kind)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({
                    "metadata": {"finalizers": ["ctrlplane.dev/test-hold"]}
                })),
            )
            .await
            .unwrap();
    }

    fn delete(&self, kind: &str, name: &str) {
        kubectl([
            "delete",
            &format!("{}.ctrlplane.dev/{name}", kind.to_lowercase()),
            "-n",
            &self.ns.name,
            "--wait=false",
        ])
        .expect_success("deleting");
    }
}

fn instance(name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  replicas: 1\n{extra}"
    )
}

/// Instances in every phase and condition that tells a health check
/// something.
async fn drive_instances() -> Vec<Snapshot> {
    let mut scene = Scene::new("gitops-inst", &[]).await;
    let nginx = "nginx:1.27";
    // Before any operator runs: as a GitOps tool sees it right after applying.
    scene.apply(&instance("fresh", nginx, ""));
    scene
        .capture(
            "not yet seen by the operator",
            "Instance",
            "fresh",
            not_seen,
        )
        .await;
    scene.start_operator();

    scene.apply(&instance("web", nginx, ""));
    scene.apply(&instance(
        "starting",
        "example.test/neverready:1",
        "  progressDeadlineSeconds: 600\n",
    ));
    scene.apply(&instance(
        "update",
        nginx,
        "  progressDeadlineSeconds: 600\n",
    ));
    scene.apply(&instance("unready", nginx, ""));
    scene.apply(&instance(
        "failed",
        "example.test/crashloop:1",
        "  progressDeadlineSeconds: 5\n",
    ));
    scene.apply(&instance("stopped", nginx, "  state: Stopped\n"));
    scene.apply(&instance(
        "suspended",
        nginx,
        "  suspend: {reason: invoice 1042 unpaid}\n",
    ));
    scene.apply(&instance("elsewhere", nginx, "  provider: kubevirt\n"));

    let running =
        |o: &Value| observed(o) && phase(o) == Some("Running") && has(o, "Ready", "True", "");
    scene
        .capture("Running and Ready", "Instance", "web", running)
        .await;
    scene
        .capture("Starting", "Instance", "starting", |o| {
            observed(o) && phase(o) == Some("Starting")
        })
        .await;

    // A rollout under way: the new image's pods never get ready.
    scene
        .wait_state("Running", "Instance", "update", running)
        .await;
    scene
        .patch_spec(
            "Instance",
            "update",
            serde_json::json!({"image": "example.test/neverready:2"}),
        )
        .await;
    scene
        .capture("Running, rolling out", "Instance", "update", |o| {
            observed(o) && phase(o) == Some("Running") && has(o, "Ready", "False", "Updating")
        })
        .await;

    // A replica that goes unready with no spec change to explain it.
    scene
        .wait_state("Running", "Instance", "unready", running)
        .await;
    scene
        .make_pods_unready("ctrlplane.dev/instance=unready")
        .await;
    scene
        .capture("Running, replicas not ready", "Instance", "unready", |o| {
            observed(o)
                && phase(o) == Some("Running")
                && has(o, "Ready", "False", "ReplicasNotReady")
        })
        .await;

    scene
        .capture("Failed", "Instance", "failed", |o| {
            observed(o) && phase(o) == Some("Failed")
        })
        .await;

    scene
        .capture("Stopped (spec.state)", "Instance", "stopped", |o| {
            observed(o) && phase(o) == Some("Stopped")
        })
        .await;
    scene
        .capture("Stopped, suspended", "Instance", "suspended", |o| {
            observed(o) && phase(o) == Some("Stopped") && has(o, "Suspended", "True", "")
        })
        .await;
    scene
        .capture(
            "unknown provider (Synced=False)",
            "Instance",
            "elsewhere",
            |o| observed(o) && has(o, "Synced", "False", "UnknownProvider"),
        )
        .await;

    // With the operator gone, a spec change and a delete stay unobserved.
    scene.stop_operator();
    scene
        .patch_spec("Instance", "web", serde_json::json!({"replicas": 2}))
        .await;
    scene
        .capture("spec changed, not yet observed", "Instance", "web", |o| {
            o["metadata"]["generation"].as_i64() > status(o)["observedGeneration"].as_i64()
        })
        .await;
    scene.hold("Instance", "stopped").await;
    scene.delete("Instance", "stopped");
    scene
        .capture("being deleted", "Instance", "stopped", |o| {
            o["metadata"].get("deletionTimestamp").is_some()
        })
        .await;
    scene.snapshots
}

/// An Instance whose new image failed and that Auto rollback returned to
/// the last good release: in a scene of its own, so that its test alone
/// depends on the rollback working.
async fn drive_rolled_back_instance() -> Vec<Snapshot> {
    let mut scene = Scene::new("gitops-rollback", &[]).await;
    scene.start_operator();
    scene.apply(&instance(
        "rollback",
        "nginx:1.27",
        "  progressDeadlineSeconds: 5\n  rollback: Auto\n",
    ));
    let running =
        |o: &Value| observed(o) && phase(o) == Some("Running") && has(o, "Ready", "True", "");
    scene
        .wait_state("Running", "Instance", "rollback", running)
        .await;
    scene
        .patch_spec(
            "Instance",
            "rollback",
            serde_json::json!({"image": "example.test/crashloop:2"}),
        )
        .await;
    let outcome = scene
        .wait_state("rolled back (or Failed)", "Instance", "rollback", |o| {
            (running(o) && has(o, "Progressing", "False", "RolledBack"))
                || (observed(o) && phase(o) == Some("Failed"))
        })
        .await;
    assert_eq!(
        phase(&outcome),
        Some("Running"),
        "the rollback itself was judged failed, so there is no rolled-back Instance to read: {}; \
         releases {}",
        describe(&outcome),
        status(&outcome)["releases"]
    );
    scene.snapshots.push(Snapshot {
        state: "Running, rolled back",
        object: outcome,
    });
    scene.snapshots
}

fn sandbox(name: &str, class: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  resources: {{cpu: 500m, memory: 1Gi, storage: 5Gi, storageClassName: {class}}}\n{extra}"
    )
}

/// Sandboxes in every phase and condition that tells a health check
/// something.
async fn drive_sandboxes() -> Vec<Snapshot> {
    let mut scene = Scene::new("gitops-sbx", &[]).await;
    let storage = Storage::create(&scene.ns.name, 10);
    let class = storage.class.clone();
    let devbox = "ghcr.io/acme/devbox:1";
    scene.apply(&sandbox("fresh", &class, devbox, ""));
    scene
        .capture("not yet seen by the operator", "Sandbox", "fresh", not_seen)
        .await;
    scene.start_operator();

    let expires_at =
        (Utc::now() + chrono::Duration::seconds(5)).to_rfc3339_opts(SecondsFormat::Secs, true);
    scene.apply(&sandbox("box", &class, devbox, ""));
    scene.apply(&sandbox("unready", &class, devbox, ""));
    scene.apply(&sandbox(
        "noclaim",
        &format!("{class}-without-volumes"),
        devbox,
        "",
    ));
    scene.apply(&sandbox("big", &class, devbox, "").replace("cpu: 500m", "cpu: \"500\""));
    scene.apply(&sandbox(
        "starting",
        &class,
        "example.test/neverready:1",
        "",
    ));
    scene.apply(&sandbox(
        "broken",
        &class,
        "example.test/imagepullerror:1",
        "",
    ));
    scene.apply(&sandbox("stopped", &class, devbox, "  state: Stopped\n"));
    scene.apply(&sandbox(
        "expired",
        &class,
        devbox,
        &format!("  expiresAt: \"{expires_at}\"\n  expiryPolicy: Stop\n"),
    ));
    scene.apply(&sandbox(
        "elsewhere",
        &class,
        devbox,
        "  provider: kubevirt\n",
    ));

    let running =
        |o: &Value| observed(o) && phase(o) == Some("Running") && has(o, "Ready", "True", "");
    scene
        .capture("Running and Ready", "Sandbox", "box", running)
        .await;
    scene
        .capture(
            "Starting, waiting for a volume",
            "Sandbox",
            "noclaim",
            |o| {
                observed(o)
                    && phase(o) == Some("Starting")
                    && has(o, "Ready", "False", "WaitingForClaim")
            },
        )
        .await;
    scene
        .capture("Created, waiting for room", "Sandbox", "big", |o| {
            observed(o)
                && phase(o) == Some("Created")
                && has(o, "Scheduled", "False", "InsufficientCapacity")
        })
        .await;
    scene
        .capture("Starting", "Sandbox", "starting", |o| {
            observed(o) && phase(o) == Some("Starting")
        })
        .await;

    scene
        .wait_state("Running", "Sandbox", "unready", running)
        .await;
    scene
        .make_pods_unready("ctrlplane.dev/sandbox=unready")
        .await;
    scene
        .capture("Running, pod not ready", "Sandbox", "unready", |o| {
            observed(o) && phase(o) == Some("Running") && has(o, "Ready", "False", "")
        })
        .await;

    scene
        .capture("Error", "Sandbox", "broken", |o| {
            observed(o) && phase(o) == Some("Error")
        })
        .await;
    scene
        .capture("Stopped (spec.state)", "Sandbox", "stopped", |o| {
            observed(o) && phase(o) == Some("Stopped")
        })
        .await;
    scene
        .capture("Stopped, expired", "Sandbox", "expired", |o| {
            observed(o) && phase(o) == Some("Stopped") && has(o, "Expired", "True", "")
        })
        .await;
    scene
        .capture(
            "unknown provider (Synced=False)",
            "Sandbox",
            "elsewhere",
            |o| observed(o) && has(o, "Synced", "False", "UnknownProvider"),
        )
        .await;

    scene.stop_operator();
    scene
        .patch_spec("Sandbox", "box", serde_json::json!({"state": "Stopped"}))
        .await;
    scene
        .capture("spec changed, not yet observed", "Sandbox", "box", |o| {
            o["metadata"]["generation"].as_i64() > status(o)["observedGeneration"].as_i64()
        })
        .await;
    scene.hold("Sandbox", "stopped").await;
    scene.delete("Sandbox", "stopped");
    scene
        .capture("being deleted", "Sandbox", "stopped", |o| {
            o["metadata"].get("deletionTimestamp").is_some()
        })
        .await;
    let snapshots = std::mem::take(&mut scene.snapshots);
    // The operator and the namespace go first, then the volumes.
    drop(scene);
    drop(storage);
    snapshots
}

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  allowInsecureHttp: true\n  secretRef:\n    name: signing\n{extra}"
    )
}

struct WebhookSnapshots {
    webhooks: Vec<Snapshot>,
    deliveries: Vec<Snapshot>,
}

/// Webhooks in every state, and a WebhookDelivery in every phase, from real
/// receivers on loopback that answer 200, 500 and 410.
async fn drive_webhooks() -> WebhookSnapshots {
    let mut scene = Scene::new("gitops-wh", &["--allow-private-webhook-addresses"]).await;
    let accepting = Receiver::start(&[SECRET]).await;
    let failing = Receiver::start(&[SECRET]).await;
    failing.set_mode(Mode::Answer(500));
    let gone = Receiver::start(&[SECRET]).await;
    gone.set_mode(Mode::Answer(410));
    scene.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"
    ));
    let created = "  events: [\"instance.created\"]\n";
    scene.apply(&webhook(
        "fresh",
        &accepting.url(),
        "  events: [\"instance.deleted\"]\n",
    ));
    scene
        .capture("not yet seen by the operator", "Webhook", "fresh", not_seen)
        .await;
    scene.start_operator();

    // A healthy receiver leaves no record unless the Webhook asks for one.
    scene.apply(&webhook(
        "hooks",
        &accepting.url(),
        &format!("{created}  deliveryRecords: All\n"),
    ));
    scene.apply(&webhook(
        "paused",
        &accepting.url(),
        &format!("{created}  active: false\n"),
    ));
    scene.apply(
        &webhook("nosecret", &accepting.url(), created).replace("name: signing", "name: not-there"),
    );
    scene.apply(&webhook("gone", &gone.url(), created));
    scene.apply(&webhook(
        "failing",
        &failing.url(),
        &format!("{created}  retryPolicy: {{maxAttempts: 1}}\n"),
    ));
    scene.apply(&webhook(
        "retrying",
        &failing.url(),
        &format!(
            "{created}  retryPolicy: {{maxAttempts: 5, backoffBaseSeconds: 3600, backoffCapSeconds: 3600}}\n"
        ),
    ));
    let ready = |o: &Value| observed(o) && has(o, "Ready", "True", "");
    for name in ["hooks", "gone", "failing", "retrying"] {
        scene.wait_state("Ready", "Webhook", name, ready).await;
    }
    // One event, to every Webhook that is on.
    scene.apply(&instance("web", "nginx:1.27", ""));

    scene.capture("Ready", "Webhook", "hooks", ready).await;
    scene
        .capture("inactive (spec.active false)", "Webhook", "paused", |o| {
            observed(o) && has(o, "Ready", "False", "Inactive")
        })
        .await;
    scene
        .capture("Secret missing", "Webhook", "nosecret", |o| {
            observed(o) && has(o, "Ready", "False", "SecretNotUsable")
        })
        .await;
    scene
        .capture("switched off after 410 Gone", "Webhook", "gone", |o| {
            observed(o)
                && !status(o)["disabled"].is_null()
                && has(o, "Ready", "False", "EndpointGone")
        })
        .await;

    scene
        .capture_delivery("Succeeded", "hooks", |o| phase(o) == Some("Succeeded"))
        .await;
    scene
        .capture_delivery("Pending, retrying", "retrying", |o| {
            phase(o) == Some("Pending") && status(o)["attempts"].as_i64() >= Some(1)
        })
        .await;
    scene
        .capture_delivery("Failed after its last attempt", "failing", |o| {
            phase(o) == Some("Failed")
        })
        .await;
    scene
        .capture_delivery("Failed, endpoint gone", "gone", |o| {
            phase(o) == Some("Failed")
        })
        .await;

    scene.stop_operator();
    scene
        .patch_spec("Webhook", "hooks", serde_json::json!({"timeoutSeconds": 5}))
        .await;
    scene
        .capture("spec changed, not yet observed", "Webhook", "hooks", |o| {
            o["metadata"]["generation"].as_i64() > status(o)["observedGeneration"].as_i64()
        })
        .await;
    let (deliveries, webhooks) = std::mem::take(&mut scene.snapshots)
        .into_iter()
        .partition(|s| s.object["kind"] == "WebhookDelivery");
    WebhookSnapshots {
        webhooks,
        deliveries,
    }
}

/// Each kind's objects, driven once per test binary and shared by its tests.
async fn instances() -> &'static [Snapshot] {
    static CELL: OnceCell<Vec<Snapshot>> = OnceCell::const_new();
    CELL.get_or_init(drive_instances).await
}

async fn sandboxes() -> &'static [Snapshot] {
    static CELL: OnceCell<Vec<Snapshot>> = OnceCell::const_new();
    CELL.get_or_init(drive_sandboxes).await
}

async fn webhooks() -> &'static WebhookSnapshots {
    static CELL: OnceCell<WebhookSnapshots> = OnceCell::const_new();
    CELL.get_or_init(drive_webhooks).await
}

// ---------------------------------------------------------- the expectations

/// What one state must read as: in Argo CD (status, and a piece of the
/// message; empty means only that there is one), and in kstatus.
struct Expected {
    state: &'static str,
    argocd: &'static str,
    argocd_message: &'static str,
    kstatus: &'static str,
}

const fn row(
    state: &'static str,
    argocd: &'static str,
    argocd_message: &'static str,
    kstatus: &'static str,
) -> Expected {
    Expected {
        state,
        argocd,
        argocd_message,
        kstatus,
    }
}

// kstatus reads Failed only from a Stalled=True condition, and InProgress for
// an object the operator has not seen only when status.observedGeneration is
// there to compare (a schema default of 0): the "Failed" cells below and the
// "not yet seen" ones, and every WebhookDelivery cell but Succeeded (kstatus
// reads an object without conditions as Current), need the operator to write
// those (see docs/gitops.md).

#[rustfmt::skip]
const INSTANCE: &[Expected] = &[
    row("not yet seen by the operator",    "Progressing", "Waiting for the operator", "InProgress"),
    row("Running and Ready",               "Healthy",     "1 of 1 replicas ready",    "Current"),
    row("Starting",                        "Progressing", "",                         "InProgress"),
    row("Running, rolling out",            "Progressing", "",                         "InProgress"),
    row("Running, replicas not ready",     "Degraded",    "",                         "InProgress"),
    row("Failed",                          "Degraded",    "CrashLoopBackOff",         "Failed"),
    row("Stopped (spec.state)",            "Healthy",     "spec.state is Stopped",    "InProgress"),
    row("Stopped, suspended",              "Suspended",   "invoice 1042 unpaid",      "InProgress"),
    row("unknown provider (Synced=False)", "Degraded",    "UnknownProvider",          "Failed"),
    row("spec changed, not yet observed",  "Progressing", "observe generation 2",     "InProgress"),
    row("being deleted",                   "Progressing", "Pending deletion",         "Terminating"),
];

#[rustfmt::skip]
const ROLLED_BACK_INSTANCE: &[Expected] = &[
    row("Running, rolled back", "Degraded", "failed and was rolled back", "Current"),
];

#[rustfmt::skip]
const SANDBOX: &[Expected] = &[
    row("not yet seen by the operator",    "Progressing", "Waiting for the operator",            "InProgress"),
    row("Running and Ready",               "Healthy",     "",                                    "Current"),
    row("Starting, waiting for a volume",  "Progressing", "to bind to a PersistentVolume",       "InProgress"),
    row("Created, waiting for room",       "Progressing", "the most any eligible host has free", "InProgress"),
    row("Starting",                        "Progressing", "",                                    "InProgress"),
    row("Running, pod not ready",          "Degraded",    "",                                    "InProgress"),
    row("Error",                           "Degraded",    "ImagePullBackOff",                    "Failed"),
    row("Stopped (spec.state)",            "Healthy",     "its data is kept",                    "InProgress"),
    row("Stopped, expired",                "Suspended",   "",                                    "InProgress"),
    row("unknown provider (Synced=False)", "Degraded",    "UnknownProvider",                     "Failed"),
    row("spec changed, not yet observed",  "Progressing", "observe generation 2",                "InProgress"),
    row("being deleted",                   "Progressing", "Pending deletion",                    "Terminating"),
];

#[rustfmt::skip]
const WEBHOOK: &[Expected] = &[
    row("not yet seen by the operator",   "Progressing", "Waiting for the operator", "InProgress"),
    row("Ready",                          "Healthy",     "events are sent to",       "Current"),
    row("inactive (spec.active false)",   "Suspended",   "spec.active is false",     "InProgress"),
    row("Secret missing",                 "Degraded",    "SecretNotUsable",          "InProgress"),
    row("switched off after 410 Gone",    "Degraded",    "EndpointGone",             "Failed"),
    row("spec changed, not yet observed", "Progressing", "observe generation 2",     "InProgress"),
];

#[rustfmt::skip]
const WEBHOOK_DELIVERY: &[Expected] = &[
    row("Succeeded",                     "Healthy",     "delivered to hooks after 1 attempt(s)",          "Current"),
    row("Pending, retrying",             "Progressing", "the last: HTTP 500",                             "InProgress"),
    row("Failed after its last attempt", "Degraded",    "failed to failing after 1 attempt(s): HTTP 500", "Failed"),
    row("Failed, endpoint gone",         "Degraded",    "HTTP 410",                                       "Failed"),
];

/// Checks every state of `expected` against what `read` makes of its
/// snapshot, and fails once with a table of every state, so one run shows
/// the whole picture.
fn assert_reads(
    what: &str,
    snapshots: &[Snapshot],
    expected: &[Expected],
    want: impl Fn(&Expected) -> (&'static str, Option<&'static str>),
    read: impl Fn(&[&Value]) -> Vec<Health>,
) {
    let by_state: BTreeMap<&str, &Snapshot> = snapshots.iter().map(|s| (s.state, s)).collect();
    let states: Vec<&str> = expected.iter().map(|e| e.state).collect();
    assert_eq!(
        by_state
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        states.iter().copied().collect(),
        "every captured state has an expectation and the other way round"
    );
    let objects: Vec<&Value> = expected.iter().map(|e| &by_state[e.state].object).collect();
    let got = read(&objects);
    let mut table = String::new();
    let mut wrong = 0;
    for ((e, object), health) in expected.iter().zip(&objects).zip(&got) {
        let (status, message) = want(e);
        let ok = health.status == status
            && message.is_none_or(|m| !health.message.is_empty() && health.message.contains(m));
        if !ok {
            wrong += 1;
        }
        table.push_str(&format!(
            "{} {:<34} {:<12} (want {:<12}{}) {}\n      object: {}\n",
            if ok { "  " } else { "XX" },
            e.state,
            health.status,
            status,
            match message {
                Some(m) if !m.is_empty() => format!(", message with {m:?}"),
                _ => String::new(),
            },
            health.message,
            describe(object),
        ));
    }
    println!("{what}:\n{table}");
    assert!(
        wrong == 0,
        "{what}: {wrong} state(s) read wrong (marked XX in the table printed above)"
    );
}

fn assert_argocd(what: &str, snapshots: &[Snapshot], expected: &[Expected]) {
    assert_reads(
        what,
        snapshots,
        expected,
        |e| (e.argocd, Some(e.argocd_message)),
        |objects| objects.iter().map(|o| argocd_health(o)).collect(),
    );
}

fn assert_kstatus(what: &str, snapshots: &[Snapshot], expected: &[Expected]) {
    assert_reads(what, snapshots, expected, |e| (e.kstatus, None), kstatus);
}

// ----------------------------------------------------------------- the tests

#[tokio::test]
async fn gitops_argocd_health_of_instances_in_every_phase() {
    lua();
    assert_argocd("Argo CD health of Instances", instances().await, INSTANCE);
}

/// Argo CD calls a rolled-back Instance Degraded (the image in Git is not
/// what runs); kstatus, which reads only Ready, calls it Current.
#[tokio::test]
async fn gitops_a_rolled_back_instance_is_degraded_in_argocd_and_current_in_kstatus() {
    lua();
    kstatus_binary();
    let snapshots = drive_rolled_back_instance().await;
    assert_argocd(
        "Argo CD health of a rolled-back Instance",
        &snapshots,
        ROLLED_BACK_INSTANCE,
    );
    assert_kstatus(
        "kstatus of a rolled-back Instance",
        &snapshots,
        ROLLED_BACK_INSTANCE,
    );
}

#[tokio::test]
async fn gitops_argocd_health_of_sandboxes_in_every_phase() {
    lua();
    assert_argocd("Argo CD health of Sandboxes", sandboxes().await, SANDBOX);
}

#[tokio::test]
async fn gitops_argocd_health_of_webhooks_in_every_state() {
    lua();
    assert_argocd(
        "Argo CD health of Webhooks",
        &webhooks().await.webhooks,
        WEBHOOK,
    );
}

#[tokio::test]
async fn gitops_argocd_health_of_webhook_deliveries_in_every_phase() {
    lua();
    assert_argocd(
        "Argo CD health of WebhookDeliveries",
        &webhooks().await.deliveries,
        WEBHOOK_DELIVERY,
    );
}

#[tokio::test]
async fn gitops_kstatus_of_instances_in_every_phase() {
    kstatus_binary();
    assert_kstatus("kstatus of Instances", instances().await, INSTANCE);
}

#[tokio::test]
async fn gitops_kstatus_of_sandboxes_in_every_phase() {
    kstatus_binary();
    assert_kstatus("kstatus of Sandboxes", sandboxes().await, SANDBOX);
}

#[tokio::test]
async fn gitops_kstatus_of_webhooks_in_every_state() {
    kstatus_binary();
    assert_kstatus("kstatus of Webhooks", &webhooks().await.webhooks, WEBHOOK);
}

#[tokio::test]
async fn gitops_kstatus_of_webhook_deliveries_in_every_phase() {
    kstatus_binary();
    assert_kstatus(
        "kstatus of WebhookDeliveries",
        &webhooks().await.deliveries,
        WEBHOOK_DELIVERY,
    );
}

/// The harness hands a script the object unchanged: awkward strings, numbers
/// and nulls arrive as Argo CD would hand them over.
#[test]
fn gitops_lua_harness_passes_objects_through_unchanged() {
    let dir = std::env::temp_dir().join(format!("ctrlplane-gitops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("echo.lua");
    std::fs::write(
        &script,
        "local hs = {}\n\
         hs.status = \"Healthy\"\n\
         local n = 0\n\
         for _, v in ipairs(obj.list) do n = n + 1 end\n\
         hs.message = obj.text .. \"|\" .. obj.number * 2 .. \"|\" .. tostring(obj.gone) .. \"|\" .. n .. \"|\" .. tostring(obj.flag)\n\
         return hs\n",
    )
    .unwrap();
    let text = "quote \" backslash \\ newline \n tab \t bell \u{7} nul-ish \u{1} digits after \u{1}23 ünïcödé ]] ]=]";
    let object = serde_json::json!({
        "text": text,
        "number": 21,
        "gone": null,
        "list": [1, null, 2, {"a": null}],
        "flag": false,
    });
    let health = run_health_script(&script, &object);
    assert_eq!(health.status, "Healthy");
    assert_eq!(health.message, format!("{text}|42|nil|3|false"));

    // No more than Argo CD offers: a script that reaches for the string
    // library, a string method or os fails here as it would there.
    for (name, call) in [
        ("library", "string.upper(obj.text)"),
        ("method", "obj.text:upper()"),
        ("os", "os.getenv(\"HOME\")"),
    ] {
        let script = dir.join(format!("{name}.lua"));
        std::fs::write(
            &script,
            format!("return {{status = \"Healthy\", message = {call}}}\n"),
        )
        .unwrap();
        assert!(
            try_health_script(&script, &object).is_err(),
            "{call} must fail, as in Argo CD"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Each health script, run on no status at all and on a phase it does not
/// know, answers rather than fails: Argo CD shows a script error as Unknown
/// with a Lua stack trace.
#[test]
fn gitops_argocd_scripts_answer_for_any_object() {
    for kind in KINDS {
        let bare = serde_json::json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x", "generation": 1},
            "spec": {},
        });
        assert_eq!(argocd_health(&bare).status, "Progressing", "{kind}");
        let mut odd = bare.clone();
        odd["status"] = serde_json::json!({
            "observedGeneration": 1,
            "phase": "Sideways",
            "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Odd", "message": ""}],
        });
        let health = argocd_health(&odd);
        assert!(
            ["Unknown", "Progressing"].contains(&health.status.as_str())
                && !health.message.is_empty(),
            "{kind}: {health:?}"
        );
    }
}

const KINDS: [&str; 4] = ["Instance", "Sandbox", "Webhook", "WebhookDelivery"];

fn health_key(kind: &str) -> String {
    format!("resource.customizations.health.ctrlplane.dev_{kind}")
}

/// Where the Argo CD health checks are documented.
const GITOPS_PAGE: &str = "docs/gitops.md";

/// deploy/argocd/argocd-cm.yaml carries each script exactly as it is in
/// deploy/argocd/ctrlplane.dev/<Kind>/health.lua, under the key Argo CD
/// reads, and [`GITOPS_PAGE`] shows the Instance one in full and names the
/// others.
#[test]
fn gitops_argocd_cm_and_docs_carry_the_health_scripts() {
    let path = repo_root().join("deploy/argocd/argocd-cm.yaml");
    let cm: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let data = cm["data"].as_object().expect("argocd-cm.yaml has data");
    assert_eq!(
        data.len(),
        KINDS.len(),
        "one entry per kind: {:?}",
        data.keys()
    );
    let page = std::fs::read_to_string(repo_root().join(GITOPS_PAGE))
        .unwrap_or_else(|e| panic!("reading {GITOPS_PAGE}: {e}"));
    for kind in KINDS {
        let script = std::fs::read_to_string(health_script(kind)).unwrap();
        assert_eq!(
            data.get(&health_key(kind)).and_then(Value::as_str),
            Some(script.as_str()),
            "{path:?} must carry {:?} as it is under {}",
            health_script(kind),
            health_key(kind)
        );
        assert!(
            page.contains(&health_key(kind)),
            "{GITOPS_PAGE} does not name {}",
            health_key(kind)
        );
    }
    let instance = std::fs::read_to_string(health_script("Instance")).unwrap();
    let body: String = instance
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".into()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        page.contains(&format!("  {}: |\n{body}", health_key("Instance"))),
        "the argocd-cm snippet in {GITOPS_PAGE} must carry deploy/argocd/ctrlplane.dev/Instance/health.lua as it is"
    );
    // The command the next test runs is the one both pages tell people to run.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for (name, text) in [("README.md", &readme), (GITOPS_PAGE, &page)] {
        assert!(
            text.contains(ARGOCD_CM_PATCH),
            "{name} must show `{ARGOCD_CM_PATCH}`"
        );
    }
}

/// How the docs tell people to install the health checks.
const ARGOCD_CM_PATCH: &str =
    "kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm.yaml";

/// The documented command (README and docs/gitops.md) merges the entries
/// into an existing argocd-cm, on the real API server, and leaves what was
/// there.
#[test]
fn gitops_argocd_cm_patch_merges_into_an_existing_configmap() {
    let ns = TestNamespace::create("gitops-argocd-cm");
    kubectl([
        "create",
        "configmap",
        "argocd-cm",
        "-n",
        &ns.name,
        "--from-literal=url=https://argocd.example.com",
    ])
    .expect_success("creating argocd-cm");
    let patch = repo_root().join("deploy/argocd/argocd-cm.yaml");
    kubectl([
        "-n".as_ref(),
        ns.name.as_ref(),
        "patch".as_ref(),
        "configmap".as_ref(),
        "argocd-cm".as_ref(),
        "--patch-file".as_ref(),
        patch.as_os_str(),
    ])
    .expect_success("kubectl patch --patch-file deploy/argocd/argocd-cm.yaml");
    let got = kubectl([
        "get",
        "configmap",
        "argocd-cm",
        "-n",
        &ns.name,
        "-o",
        "json",
    ])
    .expect_success("reading argocd-cm");
    let got: Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(got["data"]["url"], "https://argocd.example.com");
    for kind in KINDS {
        let script = std::fs::read_to_string(health_script(kind)).unwrap();
        assert_eq!(
            got["data"][health_key(kind)].as_str(),
            Some(script.as_str()),
            "{kind}"
        );
    }
}
