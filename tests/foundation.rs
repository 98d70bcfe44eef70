//! End-to-end tests of the foundation: the CRDs, the samples, validation by
//! the API server, and a control plane that really runs pods.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::test]
async fn crds_install_and_become_established() {
    ensure_crds();
    let crds: Api<CustomResourceDefinition> = Api::all(client().await);
    for expected in ctrlplane_operator::api::crds() {
        let name = expected.metadata.name.clone().unwrap();
        let crd = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            let condition = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .unwrap_or_else(|| panic!("{name} has no {wanted} condition"));
            assert_eq!(condition.status, "True", "{name} {wanted}: {condition:?}");
        }
        // The served schema is the one we generated, not a stale install.
        assert_eq!(
            crd.spec.versions[0].schema, expected.spec.versions[0].schema,
            "{name}: the installed schema differs from the generated one"
        );
    }
}

#[test]
fn kubectl_explain_shows_field_descriptions() {
    ensure_crds();
    let cases = [
        (
            "instance.spec.resources",
            &["CPU and memory for each replica", "cpu", "memory"][..],
        ),
        (
            "instance.spec.replicas",
            &["kubectl scale", "Defaults to 1"][..],
        ),
        (
            "instance.status.history",
            &["Webhooks are sent from here", "sequence"][..],
        ),
        ("sandbox.spec.ttlSeconds", &["30 days"][..]),
        ("sandbox.spec.expiryPolicy", &["Delete", "Stop"][..]),
        (
            "webhook.spec.secretRef",
            &["never appears in spec, status", "previousKey"][..],
        ),
        ("webhookdelivery.status", &["attempts", "nextAttemptAt"][..]),
    ];
    for (field, expected) in cases {
        let out = kubectl(["explain", field]).expect_success(&format!("kubectl explain {field}"));
        for text in expected {
            assert!(
                out.stdout.contains(text),
                "kubectl explain {field} should mention {text:?}:\n{}",
                out.stdout
            );
        }
    }
}

#[test]
fn every_sample_is_accepted_by_server_side_apply() {
    ensure_crds();
    let ns = TestNamespace::create("samples");
    let samples = repo_root().join("samples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the samples in {samples:?}");
    let mut applied = BTreeSet::new();
    for file in &files {
        let out = kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "-n".as_ref(),
            ns.name.as_ref(),
            "-o".as_ref(),
            "name".as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
        ])
        .expect_success(&format!("applying {file:?}"));
        applied.extend(out.stdout.lines().map(str::to_string));
    }
    // The category lists every kind, and every applied custom object is there.
    let listed = kubectl(["get", "ctrlplane", "-n", &ns.name, "-o", "name"])
        .expect_success("kubectl get ctrlplane");
    let listed: BTreeSet<String> = listed.stdout.lines().map(str::to_string).collect();
    let custom: BTreeSet<String> = applied
        .into_iter()
        .filter(|n| n.contains(".ctrlplane.dev/"))
        .collect();
    assert!(!custom.is_empty());
    assert_eq!(
        listed, custom,
        "kubectl get ctrlplane should list every sample object"
    );
    for kind in ["instance", "sandbox", "webhook"] {
        assert!(
            custom
                .iter()
                .any(|n| n.starts_with(&format!("{kind}.ctrlplane.dev/"))),
            "the samples should include a {kind}"
        );
    }
}

#[test]
fn kubectl_scale_sets_instance_replicas_through_the_scale_subresource() {
    ensure_crds();
    let ns = TestNamespace::create("scale");
    let manifest = "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n";
    apply_manifest(&ns.name, manifest).expect_success("applying the Instance");
    kubectl(["scale", "-n", &ns.name, "instance/web", "--replicas=3"])
        .expect_success("kubectl scale");
    let replicas = kubectl([
        "get",
        "-n",
        &ns.name,
        "inst/web",
        "-o",
        "jsonpath={.spec.replicas}",
    ])
    .expect_success("reading spec.replicas");
    assert_eq!(replicas.stdout, "3");
    let scale = kubectl([
        "get",
        "--raw",
        &format!(
            "/apis/ctrlplane.dev/v1alpha1/namespaces/{}/instances/web/scale",
            ns.name
        ),
    ])
    .expect_success("reading the scale subresource");
    let scale: serde_json::Value = serde_json::from_str(&scale.stdout).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
}

#[test]
fn sandbox_storage_cannot_shrink() {
    ensure_crds();
    let ns = TestNamespace::create("shrink");
    let manifest = |storage: &str| {
        format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: box\nspec:\n  image: ghcr.io/acme/devbox:1\n  resources: {{cpu: 1, memory: 1Gi, storage: {storage}}}\n"
        )
    };
    apply_manifest(&ns.name, &manifest("10Gi")).expect_success("creating the Sandbox");
    apply_manifest(&ns.name, &manifest("20Gi")).expect_success("growing its storage");
    let out = apply_manifest(&ns.name, &manifest("5Gi"));
    assert!(!out.success, "shrinking storage should be refused");
    assert!(
        out.stderr.contains("spec.resources.storage") && out.stderr.contains("cannot shrink"),
        "the refusal should name spec.resources.storage: {}",
        out.stderr
    );
}

/// Each invalid manifest under tests/fixtures/invalid is rejected by the API
/// server, and the message names the field its `# expect-field:` line gives.
macro_rules! invalid_manifests {
    ($($test:ident => $file:literal,)*) => {
        const LISTED_FIXTURES: &[&str] = &[$($file),*];
        $(
            #[test]
            fn $test() {
                assert_rejected($file);
            }
        )*
    };
}

invalid_manifests! {
    rejects_instance_name_too_long => "instance-name-too-long.yaml",
    rejects_instance_name_not_a_service_name => "instance-name-not-a-service-name.yaml",
    rejects_instance_image_bad_shape => "instance-image-bad-shape.yaml",
    rejects_instance_image_empty => "instance-image-empty.yaml",
    rejects_instance_image_missing => "instance-image-missing.yaml",
    rejects_instance_replicas_negative => "instance-replicas-negative.yaml",
    rejects_instance_replicas_too_many => "instance-replicas-too-many.yaml",
    rejects_instance_port_zero => "instance-port-zero.yaml",
    rejects_instance_port_too_high => "instance-port-too-high.yaml",
    rejects_instance_port_duplicate_name => "instance-port-duplicate-name.yaml",
    rejects_instance_port_duplicate_number => "instance-port-duplicate-number.yaml",
    rejects_instance_port_bad_name => "instance-port-bad-name.yaml",
    rejects_instance_cpu_zero => "instance-cpu-zero.yaml",
    rejects_instance_memory_negative => "instance-memory-negative.yaml",
    rejects_instance_memory_not_a_quantity => "instance-memory-not-a-quantity.yaml",
    rejects_instance_env_value_and_secret => "instance-env-value-and-secret.yaml",
    rejects_instance_env_secret_bad_name => "instance-env-secret-bad-name.yaml",
    rejects_instance_env_secret_bad_key => "instance-env-secret-bad-key.yaml",
    rejects_instance_healthcheck_unknown_port => "instance-healthcheck-unknown-port.yaml",
    rejects_instance_healthcheck_two_kinds => "instance-healthcheck-two-kinds.yaml",
    rejects_instance_state_unknown => "instance-state-unknown.yaml",
    rejects_instance_suspend_blank_reason => "instance-suspend-blank-reason.yaml",
    rejects_instance_region_bad => "instance-region-bad.yaml",
    rejects_instance_rollback_unknown => "instance-rollback-unknown.yaml",
    rejects_instance_progress_deadline_too_short => "instance-progress-deadline-too-short.yaml",
    rejects_sandbox_name_too_long => "sandbox-name-too-long.yaml",
    rejects_sandbox_ttl_too_short => "sandbox-ttl-too-short.yaml",
    rejects_sandbox_ttl_too_long => "sandbox-ttl-too-long.yaml",
    rejects_sandbox_ttl_and_expires_at => "sandbox-ttl-and-expires-at.yaml",
    rejects_sandbox_storage_zero => "sandbox-storage-zero.yaml",
    rejects_sandbox_resources_missing => "sandbox-resources-missing.yaml",
    rejects_sandbox_placement_host_and_selector => "sandbox-placement-host-and-selector.yaml",
    rejects_sandbox_agent_id_bad => "sandbox-agent-id-bad.yaml",
    rejects_sandbox_expiry_policy_unknown => "sandbox-expiry-policy-unknown.yaml",
    rejects_sandbox_source_bad_snapshot_ref => "sandbox-source-bad-snapshot-ref.yaml",
    rejects_sandboxcommand_empty_command => "sandboxcommand-empty-command.yaml",
    rejects_sandboxcommand_timeout_zero => "sandboxcommand-timeout-zero.yaml",
    rejects_sandboxcommand_env_value_and_secret => "sandboxcommand-env-value-and-secret.yaml",
    rejects_sandboxsnapshot_bad_sandbox_ref => "sandboxsnapshot-bad-sandbox-ref.yaml",
    rejects_webhook_name_too_long => "webhook-name-too-long.yaml",
    rejects_webhook_http_url => "webhook-http-url.yaml",
    rejects_webhook_not_a_url => "webhook-not-a-url.yaml",
    rejects_webhook_unknown_event => "webhook-unknown-event.yaml",
    rejects_webhook_secret_ref_bad_name => "webhook-secret-ref-bad-name.yaml",
    rejects_webhook_secret_ref_missing => "webhook-secret-ref-missing.yaml",
    rejects_webhook_timeout_too_long => "webhook-timeout-too-long.yaml",
    rejects_webhook_retry_zero_attempts => "webhook-retry-zero-attempts.yaml",
    rejects_webhook_backoff_base_above_cap => "webhook-backoff-base-above-cap.yaml",
    rejects_webhook_reserved_header => "webhook-reserved-header.yaml",
    rejects_webhook_ca_bundle_not_pem => "webhook-ca-bundle-not-pem.yaml",
    rejects_webhook_url_with_credentials => "webhook-url-with-credentials.yaml",
    rejects_webhook_header_crlf => "webhook-header-crlf.yaml",
}

fn assert_rejected(file: &str) {
    ensure_crds();
    let path = repo_root().join("tests/fixtures/invalid").join(file);
    let expectations = fixture_expectations(&path);
    assert!(
        !expectations.is_empty(),
        "{file} has no `# expect-field:` line"
    );
    let ns = TestNamespace::create(&format!("invalid-{}", file.trim_end_matches(".yaml")));
    let out = kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "-n".as_ref(),
        ns.name.as_ref(),
        "-f".as_ref(),
        path.as_os_str(),
    ]);
    assert!(
        !out.success,
        "{file} should be rejected, but was accepted:\n{}",
        out.stdout
    );
    for expected in &expectations {
        assert!(
            out.stderr.contains(expected.as_str()),
            "{file}: the rejection should mention {expected:?}, but said:\n{}",
            out.stderr
        );
    }
    // Nothing of it was stored.
    let listed =
        kubectl(["get", "ctrlplane", "-n", &ns.name, "-o", "name"]).expect_success("listing");
    assert_eq!(
        listed.stdout.trim(),
        "",
        "{file}: a rejected object must not exist"
    );
}

#[test]
fn every_invalid_fixture_has_a_test() {
    let dir = repo_root().join("tests/fixtures/invalid");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let listed: BTreeSet<String> = LISTED_FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, listed, "fixtures and tests differ");
    assert!(listed.len() >= 20);
}

#[tokio::test]
async fn a_plain_deployment_gets_running_pods_on_the_kwok_nodes() {
    let ns = TestNamespace::create("smoke");
    let client = client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let running = wait_until("3 Running and Ready pods", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=smoke"))
                .await
                .map_err(|e| e.to_string())?;
            let ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .collect();
            Ok((ready.len() == 3).then_some(ready))
        }
    })
    .await;
    for pod in running {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(node.starts_with("kwok-node-"), "scheduled on {node:?}");
        assert!(
            pod.status.and_then(|s| s.pod_ip).is_some(),
            "a running pod has an IP"
        );
    }
    wait_until(
        "the Deployment to report 3 available replicas",
        Duration::from_secs(30),
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("smoke").await.map_err(|e| e.to_string())?;
                Ok((d.status.and_then(|s| s.available_replicas) == Some(3)).then_some(()))
            }
        },
    )
    .await;
}
