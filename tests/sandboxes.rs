//! End-to-end tests of Sandboxes on the pod provider, against the real
//! control plane: claims bound to static volumes, pods on kwok nodes,
//! expiry, placement and capacity.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use common::receiver::Receiver;
use common::storage::Storage;
use common::*;
use ctrlplane_operator::api::{EventType, Sandbox, SandboxPhase};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

const WAIT: Duration = Duration::from_secs(120);

/// A small kwok host of the test's own, tainted for sandboxes only. Removed
/// when dropped.
struct SmallHost {
    name: String,
}

impl SmallHost {
    fn create(namespace: &str, cpu: &str) -> Self {
        let name = format!("small-{namespace}");
        let manifest = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: {name}\n    type: kwok-small\n    pool: {namespace}\nspec:\n  taints:\n  - {{key: ctrlplane.dev/sandbox-host, value: \"true\", effect: NoSchedule}}\nstatus:\n  allocatable: {{cpu: \"{cpu}\", memory: 16Gi, pods: \"110\"}}\n  capacity: {{cpu: \"{cpu}\", memory: 16Gi, pods: \"110\"}}\n"
        );
        kubectl_stdin(["apply", "--server-side", "-f", "-"], &manifest)
            .expect_success("creating the small host");
        kubectl([
            "wait",
            "--for=condition=Ready",
            &format!("node/{name}"),
            "--timeout=60s",
        ])
        .expect_success("the small host to be Ready");
        Self { name }
    }
}

impl Drop for SmallHost {
    fn drop(&mut self) {
        let _ = kubectl([
            "delete",
            "node",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

struct Fixture {
    // Fields drop in this order: the operator stops before the namespace
    // (and what is left in it) is cleaned up.
    operator: Operator,
    ns: TestNamespace,
    storage: Storage,
    sandboxes: Api<Sandbox>,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    services: Api<Service>,
}

async fn fixture(prefix: &str, volumes: usize) -> Fixture {
    ensure_crds();
    let ns = TestNamespace::create(prefix);
    let storage = Storage::create(&ns.name, volumes);
    let operator = Operator::start_with(&ns.name, &["--allow-private-webhook-addresses"]);
    let client = client().await;
    Fixture {
        sandboxes: Api::namespaced(client.clone(), &ns.name),
        pods: Api::namespaced(client.clone(), &ns.name),
        claims: Api::namespaced(client.clone(), &ns.name),
        services: Api::namespaced(client, &ns.name),
        operator,
        storage,
        ns,
    }
}

impl Fixture {
    fn manifest(&self, name: &str, extra: &str) -> String {
        format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: ghcr.io/acme/devbox:1\n  resources: {{cpu: 500m, memory: 1Gi, storage: 5Gi, storageClassName: {}}}\n  agentId: agent-a1\n  jobId: job-7\n{extra}",
            self.storage.class
        )
    }

    fn apply(&self, name: &str, extra: &str) {
        apply_manifest(&self.ns.name, &self.manifest(name, extra))
            .expect_success("applying the Sandbox");
    }

    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Sandbox) -> bool) -> Sandbox {
        let check = &check;
        wait_until(&format!("Sandbox {name}: {what}"), WAIT, || async move {
            match self
                .sandboxes
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(s) if check(&s) => Ok(Some(s)),
                Some(s) => Err(format!(
                    "phase {:?}, conditions {:?}",
                    s.status.as_ref().and_then(|s| s.phase),
                    s.status
                        .as_ref()
                        .map(|st| describe_conditions(&st.conditions))
                )),
                None => Err("not found".into()),
            }
        })
        .await
    }

    async fn wait_phase(&self, name: &str, phase: SandboxPhase) -> Sandbox {
        self.wait_for(name, &format!("phase {phase}"), |s| {
            s.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    async fn wait_gone(&self, name: &str) {
        wait_until(&format!("Sandbox {name} to be gone"), WAIT, || async {
            Ok(self
                .sandboxes
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
                .then_some(()))
        })
        .await;
    }

    /// Waits until a gone Sandbox's pod, claim and Service are gone too:
    /// they are owned by it, and the garbage collector removes them.
    async fn wait_children_gone(&self, name: &str) {
        let claim = format!("{name}-data");
        let claim = &claim;
        wait_until(
            &format!("the children of {name} to be gone"),
            WAIT,
            || async {
                let pod = self.pods.get_opt(name).await.map_err(|e| e.to_string())?;
                let claim = self
                    .claims
                    .get_opt(claim)
                    .await
                    .map_err(|e| e.to_string())?;
                let service = self
                    .services
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((pod.is_none() && claim.is_none() && service.is_none()).then_some(()))
            },
        )
        .await;
    }

    async fn patch(&self, name: &str, spec: serde_json::Value) {
        self.sandboxes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }
}

fn history(sandbox: &Sandbox) -> Vec<EventType> {
    sandbox
        .status
        .as_ref()
        .map(|s| s.history.iter().map(|e| e.type_).collect())
        .unwrap_or_default()
}

fn condition(sandbox: &Sandbox, type_: &str) -> (String, String, String) {
    sandbox
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| {
            (
                serde_json::to_value(c.status)
                    .unwrap()
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                c.reason.to_string(),
                c.message.to_string(),
            )
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_sandbox_runs_with_an_ip_a_host_its_claim_and_its_labels() {
    let f = fixture("sbx-create", 1).await;
    f.apply("box", "  ports:\n    - {name: ssh, port: 2222}\n");
    let running = f.wait_phase("box", SandboxPhase::Running).await;
    let status = running.status.clone().unwrap();
    assert!(status.pod_ip.is_some(), "a running sandbox has an IP");
    assert!(
        status
            .host
            .as_deref()
            .is_some_and(|h| h.starts_with("kwok-node-"))
    );
    assert!(status.started_at.is_some());
    assert_eq!(condition(&running, "Ready").0, "True");
    assert_eq!(condition(&running, "Scheduled").0, "True");
    assert_eq!(
        history(&running),
        [
            EventType::SandboxCreated,
            EventType::SandboxStarting,
            EventType::SandboxStarted
        ]
    );

    wait_claim_bound(&f.ns.name, "box-data").await;
    let pod = f.pods.get("box").await.unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        spec.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert_eq!(
        spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "box-data"
    );
    assert_eq!(pod.owner_references()[0].uid, running.uid().unwrap());
    assert!(
        f.services.get_opt("box").await.unwrap().is_some(),
        "a Service for its ports"
    );

    // Agent and job are labels too, on the Sandbox and its pod.
    let by_agent = kubectl([
        "get",
        "sbx",
        "-n",
        &f.ns.name,
        "-l",
        "ctrlplane.dev/agent-id=agent-a1",
        "-o",
        "name",
    ])
    .expect_success("kubectl get sbx -l");
    assert_eq!(by_agent.stdout.trim(), "sandbox.ctrlplane.dev/box");
    let by_job = kubectl([
        "get",
        "sbx",
        "-n",
        &f.ns.name,
        "-l",
        "ctrlplane.dev/job-id=job-7",
        "-o",
        "name",
    ])
    .expect_success("kubectl get sbx -l");
    assert_eq!(by_job.stdout.trim(), "sandbox.ctrlplane.dev/box");
    assert_eq!(
        pod.labels()
            .get("ctrlplane.dev/agent-id")
            .map(String::as_str),
        Some("agent-a1")
    );
    let table = kubectl(["get", "sbx", "-n", &f.ns.name]).expect_success("kubectl get sbx");
    assert!(
        table.stdout.contains("Running") && table.stdout.contains("kwok-node-"),
        "{}",
        table.stdout
    );
}

/// Server-side filters: `kubectl get sbx --field-selector` on spec.image,
/// spec.agentId, spec.jobId, spec.state and status.phase lists exactly the
/// matching Sandboxes; the API server does the filtering (no operator runs).
#[tokio::test]
async fn field_selectors_pick_sandboxes_by_image_agent_job_state_and_phase() {
    ensure_crds();
    let ns = TestNamespace::create("sbx-fields");
    let manifest = |name: &str, spec: &str| {
        format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  resources: {{cpu: 500m, memory: 1Gi, storage: 5Gi}}\n{spec}"
        )
    };
    for (name, spec) in [
        (
            "a",
            "  image: ghcr.io/acme/devbox:1\n  agentId: agent-1\n  jobId: job-1\n",
        ),
        (
            "b",
            "  image: ghcr.io/acme/devbox:1\n  agentId: agent-1\n  jobId: job-2\n  state: Stopped\n",
        ),
        (
            "c",
            "  image: ghcr.io/acme/devbox:2\n  agentId: agent-2\n  jobId: job-3\n",
        ),
        ("d", "  image: ghcr.io/acme/devbox:2\n"),
    ] {
        apply_manifest(&ns.name, &manifest(name, spec)).expect_success("applying a Sandbox");
    }
    for (name, phase) in [("a", "Running"), ("b", "Stopped"), ("c", "Error")] {
        kubectl([
            "patch",
            "sandbox",
            name,
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"phase":"{phase}"}}}}"#),
        ])
        .expect_success("writing a phase");
    }
    let names =
        |list: &[&str]| -> BTreeSet<String> { list.iter().map(|s| s.to_string()).collect() };
    for (selector, expected) in [
        ("spec.image=ghcr.io/acme/devbox:1", names(&["a", "b"])),
        ("spec.image=ghcr.io/acme/devbox:2", names(&["c", "d"])),
        ("spec.agentId=agent-1", names(&["a", "b"])),
        ("spec.agentId=", names(&["d"])),
        ("spec.jobId=job-3", names(&["c"])),
        ("spec.state=Stopped", names(&["b"])),
        ("spec.state=Running", names(&["a", "c", "d"])),
        ("status.phase=Running", names(&["a"])),
        ("status.phase=Error", names(&["c"])),
        ("status.phase=", names(&["d"])),
        ("spec.agentId=agent-1,status.phase!=Stopped", names(&["a"])),
        (
            "spec.image=ghcr.io/acme/devbox:2,spec.jobId!=job-3",
            names(&["d"]),
        ),
    ] {
        assert_eq!(
            field_selected(&ns.name, "sandboxes", selector).unwrap(),
            expected,
            "--field-selector {selector}"
        );
    }
    let client = client().await;
    let sandboxes: Api<Sandbox> = Api::namespaced(client, &ns.name);
    let listed = sandboxes
        .list(&ListParams::default().fields("spec.agentId=agent-1,spec.state=Running"))
        .await
        .unwrap();
    let listed: Vec<String> = listed.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(listed, ["a"]);
    let refused = field_selected(&ns.name, "sandboxes", "spec.ttlSeconds=60").unwrap_err();
    assert!(
        refused.contains("field label not supported: spec.ttlSeconds"),
        "{refused}"
    );
}

#[tokio::test]
async fn stop_keeps_the_claim_and_start_runs_again_on_it() {
    let f = fixture("sbx-stop", 1).await;
    f.apply("box", "");
    f.wait_phase("box", SandboxPhase::Running).await;
    let claim = f.claims.get("box-data").await.unwrap();
    let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
    let first_pod = f.pods.get("box").await.unwrap().uid();

    f.patch("box", serde_json::json!({"state": "Stopped"}))
        .await;
    let stopped = f.wait_phase("box", SandboxPhase::Stopped).await;
    assert!(
        f.pods.get_opt("box").await.unwrap().is_none(),
        "no pod while stopped"
    );
    assert_eq!(
        f.claims.get("box-data").await.unwrap().uid(),
        claim.uid(),
        "the claim is kept"
    );
    assert!(stopped.status.as_ref().unwrap().pod_ip.is_none());

    f.patch("box", serde_json::json!({"state": "Running"}))
        .await;
    f.wait_phase("box", SandboxPhase::Running).await;
    let pod = f.pods.get("box").await.unwrap();
    assert_ne!(pod.uid(), first_pod, "a new pod");
    let again = f.claims.get("box-data").await.unwrap();
    assert_eq!(again.uid(), claim.uid());
    assert_eq!(
        again.spec.and_then(|s| s.volume_name),
        volume,
        "on the same volume"
    );
}

#[tokio::test]
async fn expiry_with_delete_removes_the_sandbox_and_everything_it_had() {
    let f = fixture("sbx-exp-del", 1).await;
    f.apply(
        "box",
        "  expiryPolicy: Delete\n  ports:\n    - {name: ssh, port: 2222}\n",
    );
    f.wait_phase("box", SandboxPhase::Running).await;
    // The deadline is set once it runs, so it has everything to lose when it
    // expires: set at creation, a slow start could outlast it.
    let at = (Utc::now() + chrono::Duration::seconds(8))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    f.patch("box", serde_json::json!({"expiresAt": at})).await;
    f.wait_gone("box").await;
    f.wait_children_gone("box").await;
    // The Events are published after the status and the deletion they tell of.
    wait_for_events(
        &f.ns.name,
        "involvedObject.name=box,involvedObject.kind=Sandbox",
        &[],
        &["Expired", "Destroyed"],
    )
    .await;
}

#[tokio::test]
async fn expiry_with_stop_fires_once_across_an_operator_restart_just_before_the_deadline() {
    let mut f = fixture("sbx-exp-stop", 1).await;
    let deadline = Utc::now() + chrono::Duration::seconds(12);
    let at = deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    f.apply(
        "box",
        &format!("  expiresAt: \"{at}\"\n  expiryPolicy: Stop\n"),
    );
    f.wait_phase("box", SandboxPhase::Running).await;
    // Down shortly before the deadline, back just before it.
    f.operator.kill();
    let until_just_before = (deadline - Utc::now() - chrono::Duration::seconds(2))
        .to_std()
        .unwrap_or_default();
    // How long the operator is down is what this test is about.
    tokio::time::sleep(until_just_before).await;
    f.operator.restart();
    let stopped = f.wait_phase("box", SandboxPhase::Stopped).await;
    let (status, reason, _) = condition(&stopped, "Expired");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ExpiredStop"));
    assert!(
        f.claims.get_opt("box-data").await.unwrap().is_some(),
        "Stop keeps the data"
    );
    // Restarted again after the expiry: it does not fire a second time,
    // checked once the restarted operator has looked at the Sandbox and
    // done whatever that led to.
    f.operator.restart();
    f.operator
        .wait_looked_again("Sandbox", Duration::from_secs(5), WAIT)
        .await;
    let later = f.sandboxes.get("box").await.unwrap();
    let expired = history(&later)
        .iter()
        .filter(|t| **t == EventType::SandboxExpired)
        .count();
    assert_eq!(expired, 1, "sandbox.expired exactly once");
    assert_eq!(later.status.unwrap().phase, Some(SandboxPhase::Stopped));
}

#[tokio::test]
async fn a_ttl_expires_and_extending_it_before_the_deadline_postpones_it() {
    let f = fixture("sbx-ttl", 2).await;
    // The shortest TTL the API allows, with policy Stop.
    f.apply("ttl", "  ttlSeconds: 60\n  expiryPolicy: Stop\n");
    // Another one, extended before its deadline. The deadline is well
    // within the ttl one's 60 s, so the test takes no longer for it, and it
    // is extended as soon as the operator has planned for it, not once it
    // runs: a slow start could outlast the deadline.
    let first_deadline = Utc::now() + chrono::Duration::seconds(30);
    let at = first_deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    f.apply(
        "extended",
        &format!("  expiresAt: \"{at}\"\n  expiryPolicy: Delete\n"),
    );
    f.wait_for("extended", "its first deadline planned for", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.expires_at)
            .map(|t| t.timestamp())
            == Some(first_deadline.timestamp())
    })
    .await;
    let later = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    f.patch("extended", serde_json::json!({"expiresAt": later}))
        .await;
    f.wait_phase("extended", SandboxPhase::Running).await;

    let ttl = f.wait_phase("ttl", SandboxPhase::Stopped).await;
    let status = ttl.status.clone().unwrap();
    let created = ttl
        .metadata
        .creation_timestamp
        .clone()
        .unwrap()
        .0
        .as_second();
    assert_eq!(status.expires_at.map(|t| t.timestamp()), Some(created + 60));
    assert_eq!(condition(&ttl, "Expired").0, "True");
    // By now the first deadline of the extended one has long passed.
    assert!(Utc::now() > first_deadline + chrono::Duration::seconds(1));
    let extended = f.sandboxes.get("extended").await.unwrap();
    assert_eq!(
        extended.status.as_ref().unwrap().phase,
        Some(SandboxPhase::Running)
    );
    assert_eq!(condition(&extended, "Expired").0, "False");
    assert!(!history(&extended).contains(&EventType::SandboxExpired));
}

#[tokio::test]
async fn pinned_placement_runs_on_that_host() {
    let f = fixture("sbx-pin", 1).await;
    f.apply("box", "  placement:\n    host: kwok-node-1\n");
    let running = f.wait_phase("box", SandboxPhase::Running).await;
    assert_eq!(running.status.unwrap().host.as_deref(), Some("kwok-node-1"));
    let pod = f.pods.get("box").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("kwok-node-1"));
}

#[tokio::test]
async fn an_oversize_request_waits_with_a_clear_condition_and_starts_once_room_frees() {
    let f = fixture("sbx-room", 2).await;
    let host = SmallHost::create(&f.ns.name, "4");
    let placement = format!("  placement:\n    nodeSelector: {{pool: {}}}\n", f.ns.name);
    let big = |name: &str| f.manifest(name, &placement).replace("cpu: 500m", "cpu: 3");
    apply_manifest(&f.ns.name, &big("first")).expect_success("first");
    let first = f.wait_phase("first", SandboxPhase::Running).await;
    assert_eq!(
        first.status.unwrap().host.as_deref(),
        Some(host.name.as_str())
    );

    apply_manifest(&f.ns.name, &big("second")).expect_success("second");
    let waiting = f
        .wait_for("second", "Scheduled=False", |s| {
            condition(s, "Scheduled").1 == "InsufficientCapacity"
        })
        .await;
    let (_, _, message) = condition(&waiting, "Scheduled");
    assert!(
        message.contains("asked for 3 CPU") && message.contains(&format!("1 CPU ({})", host.name)),
        "the condition says what was asked and the most free: {message}"
    );
    assert_eq!(
        waiting.status.as_ref().unwrap().phase,
        Some(SandboxPhase::Created)
    );
    assert!(
        f.pods.get_opt("second").await.unwrap().is_none(),
        "no Pending pod left behind"
    );

    f.sandboxes
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    let second = f.wait_phase("second", SandboxPhase::Running).await;
    assert_eq!(
        second.status.unwrap().host.as_deref(),
        Some(host.name.as_str())
    );
}

#[tokio::test]
async fn an_image_that_cannot_start_is_an_error_until_it_is_fixed() {
    let f = fixture("sbx-error", 1).await;
    apply_manifest(
        &f.ns.name,
        &f.manifest("box", "")
            .replace("ghcr.io/acme/devbox:1", "example.test/imagepullerror:1"),
    )
    .expect_success("applying");
    let failed = f.wait_phase("box", SandboxPhase::Error).await;
    let (_, reason, message) = condition(&failed, "Ready");
    assert_eq!(reason, "Error");
    assert!(message.contains("ImagePullBackOff"), "{message}");
    assert!(history(&failed).contains(&EventType::SandboxFailed));
    f.patch("box", serde_json::json!({"image": "ghcr.io/acme/devbox:2"}))
        .await;
    let fixed = f.wait_phase("box", SandboxPhase::Running).await;
    let path: Vec<String> = fixed
        .status
        .unwrap()
        .history
        .iter()
        .filter_map(|e| e.to.as_ref().map(String::from))
        .collect();
    assert!(
        path.ends_with(&["Error".into(), "Starting".into(), "Running".into()]),
        "{path:?}"
    );
}

#[tokio::test]
async fn deleting_a_sandbox_removes_its_pod_claim_and_service() {
    let f = fixture("sbx-delete", 1).await;
    f.apply("box", "  ports:\n    - {name: http, port: 8080}\n");
    f.wait_phase("box", SandboxPhase::Running).await;
    f.sandboxes
        .delete("box", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_gone("box").await;
    f.wait_children_gone("box").await;
}

#[tokio::test]
async fn a_webhook_receives_the_sandbox_events() {
    let f = fixture("sbx-webhook", 1).await;
    let receiver = Receiver::start(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).await;
    apply_manifest(
        &f.ns.name,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )
    .expect_success("secret");
    apply_manifest(
        &f.ns.name,
        &format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\nspec:\n  url: {}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n  events: [\"sandbox.*\"]\n",
            receiver.url()
        ),
    )
    .expect_success("webhook");
    // The webhook must be in the cache before the first event.
    wait_until("the webhook to be Ready", WAIT, || async {
        let out = kubectl([
            "get",
            "wh",
            "hooks",
            "-n",
            &f.ns.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        Ok((out.stdout == "True").then_some(()))
    })
    .await;
    f.apply("box", "");
    f.wait_phase("box", SandboxPhase::Running).await;
    f.patch("box", serde_json::json!({"state": "Stopped"}))
        .await;
    f.wait_phase("box", SandboxPhase::Stopped).await;
    f.sandboxes
        .delete("box", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_gone("box").await;
    let types = wait_until("the sandbox events", WAIT, || async {
        let types: BTreeSet<String> = receiver.accepted().into_iter().map(|r| r.type_).collect();
        let wanted = [
            "sandbox.created",
            "sandbox.started",
            "sandbox.stopped",
            "sandbox.destroyed",
        ];
        if wanted.iter().all(|w| types.contains(*w)) {
            Ok(Some(types))
        } else {
            Err(format!("{types:?}"))
        }
    })
    .await;
    assert!(types.iter().all(|t| t.starts_with("sandbox.")));
    assert!(receiver.accepted().iter().all(|r| r.verified_with == [0]));
    let sequences: Vec<i64> = receiver.accepted().iter().map(|r| r.sequence).collect();
    let mut sorted = sequences.clone();
    sorted.sort();
    assert_eq!(sequences, sorted, "in sequence order");
    let pods = f.pods.list(&ListParams::default()).await.unwrap();
    assert!(pods.items.is_empty());
}

/// The budget of one Sandbox (issue 10): from apply to Running at most six
/// requests of its own and three reconciles; after a restart, nothing to
/// change costs nothing; deletion at most four requests.
#[tokio::test]
async fn one_sandbox_stays_within_its_budget_of_api_requests_and_reconciles() {
    const QUIET: Duration = Duration::from_secs(7);
    let mut f = fixture("sbx-budget", 1).await;
    f.operator.wait_quiet(QUIET, WAIT).await;
    let start = f.operator.object_requests();
    let reconciles = f
        .operator
        .metric("ctrlplane_reconciles_total{kind=\"Sandbox\"}");
    f.apply("box", "");
    f.wait_phase("box", SandboxPhase::Running).await;
    f.operator.wait_quiet(QUIET, WAIT).await;
    let running = f.operator.object_requests();
    let to_running = requests_between(&start, &running);
    let total: f64 = to_running.values().sum();
    let reconciled = f
        .operator
        .metric("ctrlplane_reconciles_total{kind=\"Sandbox\"}")
        - reconciles;
    println!("apply -> Running: {total} requests {to_running:?}, {reconciled} reconciles");
    assert!(total <= 6.0, "{total} requests to Running: {to_running:?}");
    assert!(reconciled <= 3.0, "{reconciled} reconciles to Running");

    f.operator.restart();
    f.operator.wait_quiet(QUIET, WAIT).await;
    let after_restart = f.operator.object_requests();
    assert!(
        after_restart.is_empty(),
        "a settled Sandbox costs nothing to look at again: {after_restart:?}"
    );

    f.sandboxes
        .delete("box", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_gone("box").await;
    f.operator.wait_quiet(QUIET, WAIT).await;
    let deletion = requests_between(&after_restart, &f.operator.object_requests());
    let total: f64 = deletion.values().sum();
    println!("delete: {total} requests {deletion:?}");
    assert!(total <= 4.0, "{total} requests to delete: {deletion:?}");
    f.wait_children_gone("box").await;
}
