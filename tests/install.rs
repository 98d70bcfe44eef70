//! Installing and operating: the Helm chart (lint, render, server-side dry
//! run, values schema), its RBAC proven by running the operator as the
//! chart's ServiceAccount, leader election with two replicas, and metrics.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::storage::Storage;
use common::tenant_manager::{TenantManager, ensure_quotas_count_ctrlplane_kinds};
use common::*;
use ctrlplane_operator::api::{
    CommandPhase, DeliveryPhase, Instance, InstancePhase, Sandbox, SandboxCommand, SandboxSnapshot,
    SnapshotPhase, WebhookDelivery,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Values that change everything a user would: several namespaces, three
/// replicas, no leader election, debug text logs, private webhooks.
const CUSTOM_VALUES: &str = "replicaCount: 3\nleaderElection:\n  enabled: false\nwatchNamespaces: [team-a, team-b]\nlogLevel: debug\nlogFormat: text\nconcurrency: 32\nwebhooks:\n  allowPrivateAddresses: true\n  deliveryTTLSeconds: 3600\n  concurrencyPerEndpoint: 4\nmetrics:\n  port: 9090\n  service: {enabled: true, type: ClusterIP}\n  serviceMonitor: {enabled: false}\nimage:\n  repository: registry.example.com/ctrlplane-operator\n  tag: v0.1.0-test\n  pullPolicy: Always\npodDisruptionBudget: {enabled: true, minAvailable: 2}\n";

fn custom_values_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("ctrlplane-values-{}.yaml", std::process::id()));
    std::fs::write(&path, CUSTOM_VALUES).unwrap();
    path
}

#[test]
fn helm_lint_strict_passes_with_default_and_custom_values() {
    let out = helm(["lint".as_ref(), "--strict".as_ref(), chart().as_os_str()]);
    assert!(
        out.success,
        "helm lint --strict: {}{}",
        out.stdout, out.stderr
    );
    let values = custom_values_file();
    let out = helm([
        "lint".as_ref(),
        "--strict".as_ref(),
        chart().as_os_str(),
        "-f".as_ref(),
        values.as_os_str(),
    ]);
    assert!(
        out.success,
        "helm lint --strict -f custom: {}{}",
        out.stdout, out.stderr
    );
}

#[test]
fn the_rendered_chart_is_accepted_by_the_api_server() {
    ensure_crds();
    let ns = TestNamespace::create("helm-render");
    let values = custom_values_file();
    for extra in [None, Some(values.clone())] {
        let mut args: Vec<std::ffi::OsString> = vec![
            "template".into(),
            format!("r-{}", ns.name).into(),
            chart().into(),
            "--namespace".into(),
            ns.name.clone().into(),
        ];
        if let Some(values) = extra {
            args.push("-f".into());
            args.push(values.into());
        }
        let rendered = helm(args);
        assert!(rendered.success, "helm template: {}", rendered.stderr);
        // The namespaces the custom values watch exist in a real install.
        let rendered_yaml = rendered
            .stdout
            .replace("namespace: team-a", &format!("namespace: {}", ns.name))
            .replace("namespace: team-b", &format!("namespace: {}", ns.name));
        let applied = kubectl_stdin(["apply", "--dry-run=server", "-f", "-"], &rendered_yaml);
        assert!(
            applied.success,
            "server-side dry run refused the chart: {}",
            applied.stderr
        );
        for kind in [
            "deployment.apps/",
            "serviceaccount/",
            "clusterrole.rbac.authorization.k8s.io/",
            "service/",
        ] {
            assert!(
                applied.stdout.contains(kind),
                "{kind} missing: {}",
                applied.stdout
            );
        }
    }
    // What the custom values ask for is what the Deployment gets.
    let rendered = helm([
        "template".as_ref(),
        "custom".as_ref(),
        chart().as_os_str(),
        "-f".as_ref(),
        values.as_os_str(),
    ]);
    let docs: Vec<serde_json::Value> = rendered
        .stdout
        .split("\n---\n")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|doc| doc.is_object())
        .collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for wanted in [
        "--namespace=team-a,team-b",
        "--log-format=text",
        "--allow-private-webhook-addresses",
        "--concurrency=32",
    ] {
        assert!(args.contains(&wanted), "{wanted} not in {args:?}");
    }
    assert!(!args.contains(&"--leader-election"));
    assert_eq!(
        container["image"],
        "registry.example.com/ctrlplane-operator:v0.1.0-test"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // Namespaced permissions only where asked; leases only with leader election.
    let role_bindings: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "RoleBinding").collect();
    assert_eq!(role_bindings.len(), 2);
    assert!(!docs.iter().any(|d| d["kind"] == "Role"));
    assert_eq!(
        docs.iter()
            .find(|d| d["kind"] == "PodDisruptionBudget")
            .unwrap()["spec"]["minAvailable"],
        2
    );
}

#[test]
fn bad_values_are_refused_by_the_values_schema() {
    for (set, field) in [
        ("replicaCount=0", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("logLevel=loud", "logLevel"),
        ("metrics.port=80", "metrics.port"),
        ("watchNamespaces[0]=Team_A", "watchNamespaces"),
        (
            "leaderElection.leaseDurationSeconds=1",
            "leaderElection.leaseDurationSeconds",
        ),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("unknownSetting=true", "unknownSetting"),
        ("tenancy.enabled=true", "tenancy.tenantManagerURL"),
        (
            "tenancy.tenantManagerURL=ftp://tm",
            "tenancy.tenantManagerURL",
        ),
        (
            "tenancy.pollIntervalSeconds=0",
            "tenancy.pollIntervalSeconds",
        ),
        ("tenancy.quota.requests\\.cpu=lots", "tenancy.quota"),
        ("tenancy.groups.admin=a\\,b", "tenancy.groups.admin"),
        ("tenancy.groups.owner=x", "tenancy.groups"),
    ] {
        let out = helm([
            "template".as_ref(),
            "bad".as_ref(),
            chart().as_os_str(),
            "--set".as_ref(),
            set.as_ref(),
        ]);
        assert!(!out.success, "--set {set} should be refused");
        assert!(
            out.stderr.contains(field.split('.').next_back().unwrap()),
            "--set {set}: the error should name {field}: {}",
            out.stderr
        );
    }
}

#[test]
fn the_plain_manifests_are_rendered_from_the_chart() {
    let output = Command::new(repo_root().join("hack/render-manifests.sh"))
        .arg("--stdout")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = String::from_utf8(output.stdout).unwrap();
    let checked_in =
        std::fs::read_to_string(repo_root().join("deploy/manifests/ctrlplane-operator.yaml"))
            .unwrap();
    assert!(
        fresh == checked_in,
        "deploy/manifests/ctrlplane-operator.yaml is stale; run hack/render-manifests.sh"
    );
}

/// Deletes cluster-scoped objects ("kind/name ...") when dropped.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
        args.extend(self.0.split(' '));
        let _ = kubectl(args);
    }
}

/// The documents of a rendered chart, parsed.
fn documents(rendered: &str) -> Vec<serde_json::Value> {
    rendered
        .split("\n---\n")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|doc| doc.is_object())
        .collect()
}

/// The operator's arguments in a rendered Deployment.
fn operator_args(docs: &[serde_json::Value]) -> Vec<String> {
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// A kubeconfig that acts as the chart's ServiceAccount (the admin's
/// certificate may impersonate).
fn impersonating_kubeconfig(namespace: &str, service_account: &str) -> PathBuf {
    let original = std::fs::read_to_string(kubeconfig()).unwrap();
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let impersonating = original.replacen("  user:\n", &format!("  user:\n    as: {user}\n"), 1);
    assert_ne!(
        impersonating, original,
        "the kubeconfig has a user to impersonate with"
    );
    let path = std::env::temp_dir().join(format!("kubeconfig-{namespace}"));
    std::fs::write(&path, impersonating).unwrap();
    path
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_permissions_the_chart_grants() {
    ensure_crds();
    let ns = TestNamespace::create("rbac");
    let release = format!("rbac-{}", &ns.name[5..]);
    let rendered = helm([
        "template",
        &release,
        chart().to_str().unwrap(),
        "--namespace",
        &ns.name,
        "--set",
        &format!("watchNamespaces[0]={}", ns.name),
    ]);
    assert!(rendered.success, "{}", rendered.stderr);
    // Only the RBAC: the Deployment cannot run here (no image), the operator
    // runs as a process with the ServiceAccount's identity instead.
    let rbac: Vec<&str> = rendered
        .stdout
        .split("\n---\n")
        .filter(|doc| {
            [
                "kind: ServiceAccount",
                "kind: ClusterRole\n",
                "kind: ClusterRoleBinding",
                "kind: Role\n",
                "kind: RoleBinding",
            ]
            .iter()
            .any(|k| doc.contains(k))
        })
        .collect();
    assert!(
        rbac.len() >= 6,
        "ServiceAccount, two ClusterRoles and their bindings, the lease Role and binding"
    );
    kubectl_stdin(["apply", "-f", "-"], &rbac.join("\n---\n"))
        .expect_success("applying the chart's RBAC");
    let cluster_scoped = format!(
        "clusterrole/{release}-ctrlplane-operator clusterrole/{release}-ctrlplane-operator-capacity clusterrolebinding/{release}-ctrlplane-operator-capacity clusterrole/{release}-ctrlplane-operator-admin clusterrole/{release}-ctrlplane-operator-edit clusterrole/{release}-ctrlplane-operator-view"
    );
    let _cleanup = Cleanup(cluster_scoped);

    let service_account = format!("{release}-ctrlplane-operator");
    let kubeconfig = impersonating_kubeconfig(&ns.name, &service_account);
    let operator = Operator::start_as(
        &ns.name,
        &kubeconfig,
        &[
            "--allow-private-webhook-addresses",
            "--leader-election",
            "--leader-election-namespace",
            &ns.name,
        ],
    );

    // A full Instance and Webhook lifecycle.
    let receiver = Receiver::start(&[SECRET]).await;
    apply_manifest(&ns.name, &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"))
        .expect_success("secret");
    apply_manifest(
        &ns.name,
        &format!("apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\nspec:\n  url: {}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n", receiver.url()),
    )
    .expect_success("webhook");
    apply_manifest(
        &ns.name,
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n  replicas: 2\n  ports: [{name: http, port: 8080}]\n",
    )
    .expect_success("instance");
    let client = client().await;
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns.name);
    let deliveries: Api<WebhookDelivery> = Api::namespaced(client, &ns.name);
    wait_until("Running", WAIT, || async {
        let i = instances.get("web").await.map_err(|e| e.to_string())?;
        Ok((i.status.and_then(|s| s.phase) == Some(InstancePhase::Running)).then_some(()))
    })
    .await;
    instances
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    instances
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Instance to be gone", WAIT, || async {
        Ok(instances
            .get_opt("web")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
    // Every event reaches the receiver, the last one included; a healthy
    // receiver leaves no delivery records behind.
    wait_until("instance.deleted to be delivered", WAIT, || async {
        Ok(receiver
            .accepted()
            .iter()
            .any(|r| r.type_ == "instance.deleted")
            .then_some(()))
    })
    .await;
    let records = deliveries.list(&ListParams::default()).await.unwrap();
    assert!(
        records
            .items
            .iter()
            .all(|d| d.status.as_ref().and_then(|s| s.phase) != Some(DeliveryPhase::Failed)),
        "no delivery failed"
    );

    // A Sandbox with a command run through pods/exec and a snapshot of its
    // claim: the permissions the chart grants for exactly these.
    let storage = Storage::create(&ns.name, 1);
    apply_manifest(
        &ns.name,
        &format!("apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: box\nspec:\n  image: ghcr.io/acme/devbox:1\n  resources: {{cpu: 250m, memory: 256Mi, storage: 1Gi, storageClassName: {}}}\n---\napiVersion: ctrlplane.dev/v1alpha1\nkind: SandboxCommand\nmetadata:\n  name: hello\nspec:\n  sandboxRef: {{name: box}}\n  command: [sh, -c, echo hello]\n---\napiVersion: ctrlplane.dev/v1alpha1\nkind: SandboxSnapshot\nmetadata:\n  name: snap\nspec:\n  sandboxRef: {{name: box}}\n", storage.class),
    )
    .expect_success("sandbox, command and snapshot");
    let client = common::client().await;
    let commands: Api<SandboxCommand> = Api::namespaced(client.clone(), &ns.name);
    let snapshots: Api<SandboxSnapshot> = Api::namespaced(client.clone(), &ns.name);
    let sandboxes: Api<Sandbox> = Api::namespaced(client, &ns.name);
    let hello = wait_until("the command to succeed", WAIT, || async {
        let c = commands.get("hello").await.map_err(|e| e.to_string())?;
        let status = c.status.unwrap_or_default();
        match status.phase {
            Some(CommandPhase::Succeeded) => Ok(Some(status)),
            Some(phase) if phase.is_finished() => {
                Err(format!("ended {phase}: {:?}", status.conditions))
            }
            phase => Err(format!("{phase:?}")),
        }
    })
    .await;
    assert_eq!(hello.stdout.map(|o| o.text).as_deref(), Some("hello\n"));
    wait_until("the snapshot to be Ready", WAIT, || async {
        let s = snapshots.get("snap").await.map_err(|e| e.to_string())?;
        let phase = s.status.and_then(|s| s.phase);
        Ok((phase == Some(SnapshotPhase::Ready)).then_some(()))
    })
    .await;
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    sandboxes
        .delete("box", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the snapshot and the Sandbox to be gone", WAIT, || async {
        let snapshot = snapshots.get_opt("snap").await.map_err(|e| e.to_string())?;
        let sandbox = sandboxes.get_opt("box").await.map_err(|e| e.to_string())?;
        Ok((snapshot.is_none() && sandbox.is_none()).then_some(()))
    })
    .await;

    let log = operator.log();
    assert!(
        !log.contains("forbidden"),
        "the operator hit a permission it lacks:\n{}",
        log.lines()
            .filter(|l| l.contains("forbidden"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // And nothing beyond its role.
    let as_operator = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        let output = Command::new(kubectl_binary()).args(&all).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for forbidden in [
        vec!["get", "secrets", "--all-namespaces"],
        vec!["get", "instances", "-n", "default"],
        vec![
            "create",
            "clusterrolebinding",
            "escalate",
            "--clusterrole=cluster-admin",
            "--user=nobody",
        ],
        vec!["delete", "nodes", "--all", "--dry-run=server"],
        vec!["get", "leases", "-n", "kube-system"],
    ] {
        let (ok, stderr) = as_operator(&forbidden);
        assert!(
            !ok && stderr.contains("forbidden"),
            "{forbidden:?} should be forbidden: {stderr}"
        );
    }
}

#[tokio::test]
async fn leader_election_hands_over_when_the_leader_is_killed() {
    ensure_crds();
    let ns = TestNamespace::create("leader");
    let args = [
        "--leader-election",
        "--leader-election-namespace",
        &ns.name,
        "--leader-election-lease-duration",
        "6",
    ];
    let mut first = Operator::start_with(&ns.name, &args);
    let mut second = Operator::start_with(&ns.name, &args);
    let leader_of =
        |a: &Operator, b: &Operator| (a.metric("ctrlplane_leader "), b.metric("ctrlplane_leader "));
    wait_until("one leader", WAIT, || async {
        let (a, b) = leader_of(&first, &second);
        Ok((a + b == 1.0).then_some(()))
    })
    .await;
    let (leader, follower) = if first.metric("ctrlplane_leader ") == 1.0 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    apply_manifest(
        &ns.name,
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n  replicas: 2\n",
    )
    .expect_success("instance");
    let instances: Api<Instance> = Api::namespaced(client().await, &ns.name);
    wait_until("Running", WAIT, || async {
        let i = instances.get("web").await.map_err(|e| e.to_string())?;
        Ok((i.status.and_then(|s| s.phase) == Some(InstancePhase::Running)).then_some(()))
    })
    .await;
    assert!(leader.metric("ctrlplane_status_writes_total") > 0.0);
    assert_eq!(
        follower.metric("ctrlplane_status_writes_total"),
        0.0,
        "only the leader writes"
    );
    assert_eq!(
        follower.metric("ctrlplane_reconciles_total"),
        0.0,
        "the follower does not even reconcile"
    );

    // A rollout in flight, then the leader dies.
    instances
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"image": "nginx:1.28"}})),
        )
        .await
        .unwrap();
    leader.kill();
    let killed = Instant::now();
    wait_until("the follower to take over", WAIT, || async {
        Ok((follower.metric("ctrlplane_leader ") == 1.0).then_some(()))
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!(
        "leader election: takeover {:.1}s after the leader was killed (lease 6s)",
        takeover.as_secs_f64()
    );
    assert!(takeover < Duration::from_secs(30), "took {takeover:?}");
    wait_until(
        "the rollout to complete under the new leader",
        WAIT,
        || async {
            let i = instances.get("web").await.map_err(|e| e.to_string())?;
            let done = i
                .status
                .as_ref()
                .and_then(|s| s.current_release.as_ref())
                .is_some_and(|r| {
                    r.image == "nginx:1.28"
                        && r.outcome == ctrlplane_operator::api::ReleaseOutcome::Succeeded
                });
            Ok(done.then_some(()))
        },
    )
    .await;
    assert!(follower.metric("ctrlplane_status_writes_total") > 0.0);
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_at_once() {
    ensure_crds();
    let ns = TestNamespace::create("lease-lost");
    let mut operator = Operator::start_with(
        &ns.name,
        &[
            "--leader-election",
            "--leader-election-namespace",
            &ns.name,
            "--leader-election-lease-duration",
            "6",
        ],
    );
    wait_until("it to lead", WAIT, || async {
        Ok((operator.metric("ctrlplane_leader ") == 1.0).then_some(()))
    })
    .await;
    // Another replica holds the lease now, as after a partition in which
    // this one could not renew in time.
    let leases: Api<Lease> = Api::namespaced(client().await, &ns.name);
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    leases
        .patch(
            "ctrlplane-operator",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({
                "spec": {"holderIdentity": "another-replica", "acquireTime": now, "renewTime": now}
            })),
        )
        .await
        .unwrap();
    let taken = Instant::now();
    let status = wait_until("the operator to stop", WAIT, || {
        let status = operator.exit_status();
        async move { Ok(status) }
    })
    .await;
    eprintln!(
        "leader election: stopped {:.1}s after the lease was taken (lease 6s)",
        taken.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "it exits with an error: {status}");
    assert!(
        operator.log().contains("lost the lease; stopping at once"),
        "it says why"
    );
    let lease = leases.get("ctrlplane-operator").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("another-replica"),
        "it did not take the lease back"
    );
}

#[tokio::test]
async fn metrics_count_reconciles_transitions_and_deliveries() {
    ensure_crds();
    let ns = TestNamespace::create("metrics");
    let operator = Operator::start_with(&ns.name, &["--allow-private-webhook-addresses"]);
    let receiver = Receiver::start(&[SECRET]).await;
    apply_manifest(&ns.name, &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"))
        .expect_success("secret");
    apply_manifest(
        &ns.name,
        &format!("apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\nspec:\n  url: {}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n", receiver.url()),
    )
    .expect_success("webhook");
    wait_until("the webhook cached", WAIT, || async {
        Ok((operator.metric("ctrlplane_reconciles_total{kind=\"Webhook\"}") > 0.0).then_some(()))
    })
    .await;
    apply_manifest(
        &ns.name,
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n",
    )
    .expect_success("instance");
    wait_until("deliveries to succeed", WAIT, || async {
        Ok(
            (operator.metric("ctrlplane_webhook_deliveries_total{outcome=\"succeeded\"}") >= 3.0)
                .then_some(()),
        )
    })
    .await;
    for (metric, at_least) in [
        ("ctrlplane_reconciles_total{kind=\"Instance\"}", 1.0),
        (
            "ctrlplane_reconcile_duration_seconds_count{kind=\"Instance\"}",
            1.0,
        ),
        (
            "ctrlplane_transitions_total{kind=\"Instance\",from=\"Starting\",to=\"Running\"}",
            1.0,
        ),
        ("ctrlplane_status_writes_total{kind=\"Instance\"}", 1.0),
        ("ctrlplane_webhook_delivery_latency_seconds_count", 3.0),
        // Labelled with the Kubernetes verb and the resource (all summed).
        ("ctrlplane_kube_api_requests_total{verb=\"update\",", 1.0),
        ("ctrlplane_kube_api_requests_total{verb=\"list\",", 1.0),
        ("ctrlplane_leader ", 1.0),
        ("ctrlplane_ready ", 1.0),
    ] {
        let value = operator.metric(metric);
        assert!(
            value >= at_least,
            "{metric} = {value}, expected at least {at_least}"
        );
    }
    let text = operator.metrics();
    for name in [
        "ctrlplane_reconciles_in_flight",
        "ctrlplane_webhook_events_dropped",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name}")),
            "{name} is exported"
        );
    }
    // Health endpoints.
    assert_eq!(
        http_get(operator.metrics_address, "/healthz").map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http_get(operator.metrics_address, "/readyz").map(|r| r.0),
        Some(200)
    );
    // Every reconcile log line carries the object's namespace and name.
    let log = operator.log();
    let reconcile_lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["span"]["name"] == "reconcile")
        .collect();
    assert!(
        reconcile_lines.iter().any(|l| l["message"] == "reconciled"
            && l["span"]["kind"] == "Instance"
            && l["span"]["namespace"] == ns.name.as_str()
            && l["span"]["object"] == "web"),
        "a reconcile of Instance {}/web is logged with its kind, namespace and name",
        ns.name
    );
    for line in reconcile_lines {
        assert!(
            line["span"]["namespace"].is_string() && line["span"]["object"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn the_chart_renders_tenancy_only_when_enabled() {
    let render = |sets: &[&str]| {
        let mut args = vec![
            "template".to_string(),
            "t".to_string(),
            chart().to_string_lossy().into_owned(),
        ];
        for set in sets {
            // `--set` reads braces as a list; group templates have them.
            args.push(
                if set.contains('{') {
                    "--set-json"
                } else {
                    "--set"
                }
                .into(),
            );
            args.push(set.to_string());
        }
        helm(args)
    };
    let named = |docs: &[serde_json::Value], kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .cloned()
    };

    // Off by default: the aggregated roles only.
    let off = render(&[]);
    assert!(off.success, "{}", off.stderr);
    let docs = documents(&off.stdout);
    for (role, aggregates_to) in [
        ("view", vec!["view", "edit", "admin"]),
        ("edit", vec!["edit", "admin"]),
        ("admin", vec!["admin"]),
    ] {
        let found = named(
            &docs,
            "ClusterRole",
            &format!("t-ctrlplane-operator-{role}"),
        )
        .unwrap_or_else(|| panic!("the {role} role"));
        for to in aggregates_to {
            assert_eq!(
                found["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")],
                "true",
                "{role} aggregates into {to}"
            );
        }
    }
    assert!(named(&docs, "ClusterRole", "t-ctrlplane-operator-tenancy").is_none());
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ValidatingAdmissionPolicy")
    );
    assert!(
        !operator_args(&docs)
            .iter()
            .any(|a| a.starts_with("--tenant-"))
    );

    // On: the flags, and `bind` on exactly the roles the groups get.
    let on = render(&[
        "tenancy.enabled=true",
        "tenancy.tenantManagerURL=http://tm.example:8080",
        "tenancy.groups.view=",
        r#"tenancy.extraRoleBindings=[{"clusterRole":"edit","group":"{org}-{project}-developers"}]"#,
    ]);
    assert!(on.success, "{}", on.stderr);
    let docs = documents(&on.stdout);
    let args = operator_args(&docs);
    for wanted in [
        "--tenant-manager-url=http://tm.example:8080",
        "--tenant-controller-name=ctrlplane-operator",
        "--tenant-quota=count/instances.ctrlplane.dev=50,count/sandboxes.ctrlplane.dev=50,count/webhooks.ctrlplane.dev=20,requests.storage=500Gi",
        "--tenant-role-binding=t-ctrlplane-operator-admin={org}-{project}-admins,t-ctrlplane-operator-edit={org}-{project}-editors,edit={org}-{project}-developers",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} not in {args:?}");
    }
    let tenancy = named(&docs, "ClusterRole", "t-ctrlplane-operator-tenancy").unwrap();
    let bind: Vec<&serde_json::Value> = tenancy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "bind"))
        .collect();
    assert_eq!(bind.len(), 1);
    assert_eq!(
        bind[0]["resourceNames"],
        serde_json::json!([
            "t-ctrlplane-operator-admin",
            "t-ctrlplane-operator-edit",
            "edit"
        ])
    );
    assert!(named(&docs, "ClusterRoleBinding", "t-ctrlplane-operator-tenancy").is_some());
    assert!(
        named(
            &docs,
            "ValidatingAdmissionPolicy",
            "t-ctrlplane-operator-tenant-namespaces"
        )
        .is_some()
    );

    // No group at all: no bind rule (resourceNames left empty would mean
    // every ClusterRole).
    let none = render(&[
        "tenancy.enabled=true",
        "tenancy.tenantManagerURL=http://tm",
        "tenancy.groups.admin=",
        "tenancy.groups.edit=",
        "tenancy.groups.view=",
        "tenancy.quota=null",
    ]);
    assert!(none.success, "{}", none.stderr);
    let docs = documents(&none.stdout);
    let tenancy = named(&docs, "ClusterRole", "t-ctrlplane-operator-tenancy").unwrap();
    assert!(!tenancy.to_string().contains("\"bind\""), "{tenancy}");
    let args = operator_args(&docs);
    assert!(
        args.iter().any(|a| a == "--tenant-role-binding="),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--tenant-quota="), "{args:?}");

    // Project namespaces must be watched: a list of namespaces is refused.
    let watched = render(&[
        "tenancy.enabled=true",
        "tenancy.tenantManagerURL=http://tm",
        "watchNamespaces[0]=team-a",
    ]);
    assert!(!watched.success);
    assert!(
        watched.stderr.contains("watchNamespaces to be empty"),
        "{}",
        watched.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenancy_source_works_with_exactly_the_permissions_the_chart_grants() {
    ensure_crds();
    let ns = TestNamespace::create("rbac-tenancy");
    let release = format!("rt-{}", &ns.name[13..]);
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let org = tm.create_org("rbac");
    let project = tm.create_project(&org, "tenant");
    let tenant_ns = TestNamespace::adopt(&project.namespace());

    let rendered = helm([
        "template",
        &release,
        chart().to_str().unwrap(),
        "--namespace",
        &ns.name,
        "--set",
        "tenancy.enabled=true",
        "--set",
        &format!("tenancy.tenantManagerURL={}", tm.url()),
        "--set",
        &format!("tenancy.controllerName={controller}"),
        "--set",
        "tenancy.pollIntervalSeconds=1",
    ]);
    assert!(rendered.success, "{}", rendered.stderr);
    // Everything but the Deployment and what serves it: the operator runs
    // as a process with the ServiceAccount's identity instead.
    let wanted_kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let access: Vec<&str> = rendered
        .stdout
        .split("\n---\n")
        .filter(|doc| {
            serde_saphyr::from_str::<serde_json::Value>(doc)
                .ok()
                .and_then(|d| d["kind"].as_str().map(str::to_string))
                .is_some_and(|kind| wanted_kinds.contains(&kind.as_str()))
        })
        .collect();
    let prefix = format!("{release}-ctrlplane-operator");
    let _cleanup = Cleanup(format!(
        "clusterrole/{prefix} clusterrole/{prefix}-capacity clusterrole/{prefix}-tenancy clusterrole/{prefix}-admin clusterrole/{prefix}-edit clusterrole/{prefix}-view clusterrolebinding/{prefix} clusterrolebinding/{prefix}-capacity clusterrolebinding/{prefix}-tenancy validatingadmissionpolicy/{prefix}-tenant-namespaces validatingadmissionpolicybinding/{prefix}-tenant-namespaces"
    ));
    kubectl_stdin(["apply", "-f", "-"], &access.join("\n---\n"))
        .expect_success("applying the chart's RBAC and policy");

    let kubeconfig = impersonating_kubeconfig(&ns.name, &prefix);
    let as_operator = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        let output = Command::new(kubectl_binary()).args(&all).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Admission policies take a moment to be in force.
    wait_until("the namespace policy to be in force", WAIT, || {
        let (ok, stderr) =
            as_operator(&["label", "namespace", &ns.name, "probe=1", "--dry-run=server"]);
        async move { Ok((!ok && stderr.contains("writes only the namespaces it made")).then_some(())) }
    })
    .await;

    // The tenancy flags exactly as the chart's Deployment passes them.
    let tenancy_args: Vec<String> = operator_args(&documents(&rendered.stdout))
        .into_iter()
        .filter(|a| a.starts_with("--tenant-"))
        .collect();
    let mut args: Vec<&str> = vec![
        "--leader-election",
        "--leader-election-namespace",
        &ns.name,
        "--namespace",
        &tenant_ns.name,
    ];
    args.extend(tenancy_args.iter().map(String::as_str));
    ensure_quotas_count_ctrlplane_kinds();
    let operator = Operator::start_as(&ns.name, &kubeconfig, &args);
    wait_until("the project completed", WAIT, || async {
        Ok((tm.row(&project.id).map(|r| r.0).as_deref() == Some("completed")).then_some(()))
    })
    .await;

    // Its namespace has the three bindings of the chart's own roles, and a
    // member of the project's editors group runs an Instance there (which
    // the operator, as its ServiceAccount, brings to Running) and nowhere else.
    let mut bindings: Vec<String> = kubectl([
        "get",
        "rolebindings",
        "-n",
        &tenant_ns.name,
        "-o",
        "jsonpath={.items[*].roleRef.name}",
    ])
    .expect_success("listing the bindings")
    .stdout
    .split_whitespace()
    .map(str::to_string)
    .collect();
    bindings.sort();
    assert_eq!(
        bindings,
        [
            format!("{prefix}-admin"),
            format!("{prefix}-edit"),
            format!("{prefix}-view")
        ]
    );
    let editor = ["--as", "bob", "--as-group", "rbac-tenant-editors"];
    let instance = "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n";
    let mut apply = editor.to_vec();
    apply.extend(["apply", "--server-side", "-n", &tenant_ns.name, "-f", "-"]);
    kubectl_stdin(apply, instance).expect_success("the project's editor applies an Instance");
    let mut elsewhere = editor.to_vec();
    elsewhere.extend(["apply", "--server-side", "-n", &ns.name, "-f", "-"]);
    let refused = kubectl_stdin(elsewhere, instance);
    assert!(
        !refused.success && refused.stderr.contains("forbidden"),
        "{}",
        refused.stderr
    );
    let instances: Api<Instance> = Api::namespaced(client().await, &tenant_ns.name);
    wait_until("the tenant's Instance Running", WAIT, || async {
        let i = instances.get("web").await.map_err(|e| e.to_string())?;
        Ok((i.status.and_then(|s| s.phase) == Some(InstancePhase::Running)).then_some(()))
    })
    .await;

    // Deleted: the Instance (no Webhook here, so no finalizer holds it), then
    // the namespace.
    tm.delete_project(&project);
    wait_until("the deletion acknowledged", WAIT, || async {
        Ok(tm
            .statuses(&project.id)
            .iter()
            .any(|s| s == "DELETE")
            .then_some(()))
    })
    .await;
    assert!(
        kubectl(["get", "namespace", &tenant_ns.name])
            .stderr
            .contains("NotFound"),
        "the project's namespace is gone"
    );
    let log = operator.log();
    assert!(
        !log.contains("forbidden"),
        "the operator hit a permission it lacks:\n{}",
        log.lines()
            .filter(|l| l.contains("forbidden"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(tm.violations().is_empty(), "{:?}", tm.violations());

    // And nothing beyond: `bind` on its own roles only, and namespaces
    // only when they are the ones it made.
    let view_role = format!("--clusterrole={prefix}-view");
    let (ok, stderr) = as_operator(&[
        "create",
        "rolebinding",
        "allowed",
        "-n",
        &ns.name,
        &view_role,
        "--group=g",
        "--dry-run=server",
    ]);
    assert!(ok, "binding the chart's view role: {stderr}");
    for forbidden in [
        vec![
            "create",
            "rolebinding",
            "escalate",
            "-n",
            &ns.name,
            "--clusterrole=cluster-admin",
            "--user=nobody",
            "--dry-run=server",
        ],
        vec![
            "create",
            "rolebinding",
            "broader",
            "-n",
            &ns.name,
            "--clusterrole=edit",
            "--group=g",
            "--dry-run=server",
        ],
        vec!["delete", "namespace", &ns.name, "--dry-run=server"],
        vec![
            "label",
            "namespace",
            "default",
            "pod-security.kubernetes.io/enforce=privileged",
            "--dry-run=server",
        ],
        vec![
            "create",
            "namespace",
            &format!("{}-x", ns.name),
            "--dry-run=server",
        ],
        vec!["get", "secrets", "--all-namespaces"],
    ] {
        let (ok, stderr) = as_operator(&forbidden);
        assert!(
            !ok && (stderr.contains("forbidden") || stderr.contains("Forbidden")),
            "{forbidden:?} should be forbidden: {stderr}"
        );
    }
}
