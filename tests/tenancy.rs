//! End-to-end tests of the tenancy source against a Tenant Manager double
//! (a real HTTP server in the test, speaking the orch-library protocol) and
//! the real control plane; and of the chart's aggregated roles, through
//! impersonation.
//!
//! Each test has its own double, its own controller name, its own org and
//! project ids (so its own namespaces), and an operator that watches only
//! its test namespace and the project namespaces it expects.
//!
//! The names start with `tenancy_`, so `hack/test.sh tenancy` runs them.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::tenant_manager::{Project, TenantManager, ensure_quotas_count_ctrlplane_kinds};
use common::*;
use ctrlplane_operator::api::{Instance, InstancePhase, Webhook};
use ctrlplane_operator::tenancy::objects::{
    ORG_ID_LABEL, ORG_NAME_ANNOTATION, PROJECT_ID_LABEL, PROJECT_NAME_ANNOTATION, QUOTA_NAME,
    project_selector,
};
use ctrlplane_operator::tenancy::protocol::Uuid;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Starts an operator for the test namespace that follows `tm`, polls every
/// second, and also watches the namespaces of `projects`.
fn start_operator(
    ns: &TestNamespace,
    tm: &TenantManager,
    controller: &str,
    projects: &[&Project],
    extra: &[&str],
) -> Operator {
    let mut args: Vec<String> = vec![
        "--tenant-manager-url".into(),
        tm.url(),
        "--tenant-controller-name".into(),
        controller.into(),
        "--tenant-poll-interval-seconds".into(),
        "1".into(),
    ];
    for project in projects {
        args.push("--namespace".into());
        args.push(project.namespace());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ensure_quotas_count_ctrlplane_kinds();
    Operator::start_with(&ns.name, &args)
}

/// Waits until the double holds this status row for the resource.
async fn wait_row(tm: &TenantManager, resource_id: &str, status: &str) -> String {
    wait_until(
        &format!("status {status} for {resource_id}"),
        WAIT,
        || async {
            let row = tm.row(resource_id);
            match row {
                Some((s, message)) if s == status => Ok(Some(message)),
                other => Err(format!(
                    "row {other:?}, calls {:?}",
                    tm.statuses(resource_id)
                )),
            }
        },
    )
    .await
}

/// Waits until the double got `DELETE /v1/status` for the resource.
async fn wait_status_deleted(tm: &TenantManager, resource_id: &str) {
    wait_until(
        &format!("DELETE /v1/status for {resource_id}"),
        WAIT,
        || async {
            let calls = tm.statuses(resource_id);
            Ok(calls.iter().any(|c| c == "DELETE").then_some(()))
        },
    )
    .await
}

/// Waits until a poll asked for the events after `cursor`, made after `since`.
async fn wait_poll_after(tm: &TenantManager, cursor: i64, since: Instant) {
    wait_until(&format!("a poll with after={cursor}"), WAIT, || async {
        let polls: Vec<i64> = tm
            .requests()
            .iter()
            .filter(|r| r.at >= since)
            .filter_map(|r| r.after())
            .collect();
        Ok(polls.contains(&cursor).then_some(()))
    })
    .await
}

async fn namespaces() -> Api<Namespace> {
    Api::all(client().await)
}

fn assert_no_violations(tm: &TenantManager) {
    let violations = tm.violations();
    assert!(
        violations.is_empty(),
        "requests the Go poller would not send: {violations:#?}"
    );
}

fn instance_manifest(name: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  image: nginx:1.27\n  replicas: 1\n  resources: {{cpu: 100m, memory: 64Mi}}\n"
    )
}

fn labels(namespace: &Namespace) -> BTreeMap<String, String> {
    namespace.metadata.labels.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_a_project_becomes_a_namespace_with_its_quota_and_role_bindings() {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-create");
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let org = tm.create_org("Acme Corp");
    let web = tm.create_project(&org, "Web Shop");
    let _web_ns = TestNamespace::adopt(&web.namespace());
    let _operator = start_operator(
        &ns,
        &tm,
        &controller,
        &[&web],
        &[
            "--tenant-quota=count/instances.ctrlplane.dev=1,requests.cpu=2,requests.memory=4Gi",
            "--tenant-role-binding=view={org}-{project}-viewers,edit=oidc:{orgId}/{projectId}/editors",
        ],
    );

    // Replayed: the org needs nothing, the project gets its namespace.
    wait_row(&tm, &web.id, "completed").await;
    wait_row(&tm, &org.id, "completed").await;
    assert_eq!(tm.statuses(&web.id), ["in_progress", "completed"]);
    assert_eq!(tm.statuses(&org.id), ["in_progress", "completed"]);

    let name = web.namespace();
    assert!(name.starts_with("acme-corp-web-shop-"), "{name}");
    let namespace = namespaces().await.get(&name).await.unwrap();
    let found = labels(&namespace);
    assert_eq!(found[PROJECT_ID_LABEL], web.id);
    assert_eq!(found[ORG_ID_LABEL], org.id);
    assert_eq!(found["app.kubernetes.io/managed-by"], "ctrlplane-operator");
    let annotations = namespace.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations[PROJECT_NAME_ANNOTATION], "Web Shop");
    assert_eq!(annotations[ORG_NAME_ANNOTATION], "Acme Corp");
    assert!(
        namespace
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("ctrlplane-operator")
                && f.operation.as_deref() == Some("Apply")),
        "applied server-side by ctrlplane-operator"
    );

    let client = client().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &name);
    let quota = quotas.get(QUOTA_NAME).await.unwrap();
    let hard: BTreeMap<String, String> = quota
        .spec
        .clone()
        .unwrap()
        .hard
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    assert_eq!(
        hard,
        BTreeMap::from([
            ("count/instances.ctrlplane.dev".into(), "1".into()),
            ("requests.cpu".into(), "2".into()),
            ("requests.memory".into(), "4Gi".into()),
        ])
    );

    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &name);
    let selector = project_selector(&Uuid::parse(&web.id).unwrap());
    let mut found: Vec<(String, String, String)> = bindings
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| {
            let subject = b.subjects.clone().unwrap().remove(0);
            (
                b.name_any(),
                b.role_ref.name,
                format!("{}:{}", subject.kind, subject.name),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "edit".to_string(),
                "edit".to_string(),
                format!("Group:oidc:{}/{}/editors", org.id, web.id)
            ),
            (
                "view".to_string(),
                "view".to_string(),
                "Group:Acme Corp-Web Shop-viewers".to_string()
            ),
        ]
    );

    // The bindings grant what they name, there and nowhere else.
    let can = |verb: &str, resource: &str, namespace: &str, group: &str| {
        kubectl([
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            namespace,
            "--as",
            "someone",
            "--as-group",
            group,
        ])
        .stdout
        .trim()
            == "yes"
    };
    assert!(can("list", "pods", &name, "Acme Corp-Web Shop-viewers"));
    assert!(!can("create", "pods", &name, "Acme Corp-Web Shop-viewers"));
    let editors = format!("oidc:{}/{}/editors", org.id, web.id);
    assert!(can("create", "deployments.apps", &name, &editors));
    assert!(!can("list", "pods", &ns.name, &editors));

    // The quota counts Instances: the second one is refused.
    wait_until("the quota to count Instances", WAIT, || async {
        let quota = quotas.get(QUOTA_NAME).await.map_err(|e| e.to_string())?;
        let used = quota.status.and_then(|s| s.used).unwrap_or_default();
        Ok(used
            .contains_key("count/instances.ctrlplane.dev")
            .then_some(()))
    })
    .await;
    apply_manifest(&name, &instance_manifest("first")).expect_success("the first Instance");
    let second = apply_manifest(&name, &instance_manifest("second"));
    assert!(!second.success, "the quota allows one Instance");
    assert!(
        second.stderr.contains("exceeded quota"),
        "{}",
        second.stderr
    );

    // A project created while polling gets its namespace too.
    let before = Instant::now();
    let api = tm.create_project(&org, "API");
    let _api_ns = TestNamespace::adopt(&api.namespace());
    wait_row(&tm, &api.id, "completed").await;
    let namespace = namespaces().await.get(&api.namespace()).await.unwrap();
    assert_eq!(labels(&namespace)[PROJECT_ID_LABEL], api.id);
    wait_poll_after(&tm, tm.last_event_id(), before).await;

    let replays = tm.requests().iter().filter(|r| r.is_replay()).count();
    assert_eq!(replays, 1, "one replay, at start");
    assert_no_violations(&tm);
}

/// resourceVersions of everything a project got, by kind and name.
async fn versions(project: &Project) -> BTreeMap<String, String> {
    let client = client().await;
    let name = project.namespace();
    let selector = project_selector(&Uuid::parse(&project.id).unwrap());
    let mut versions = BTreeMap::new();
    let namespace = namespaces().await.get(&name).await.unwrap();
    versions.insert(
        format!("namespace/{name}"),
        namespace.resource_version().unwrap(),
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &name);
    for quota in quotas
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
    {
        // The quota controller writes status.used: only the spec counts.
        versions.insert(
            format!("resourcequota/{}", quota.name_any()),
            serde_json::to_string(&quota.spec).unwrap(),
        );
    }
    let bindings: Api<RoleBinding> = Api::namespaced(client, &name);
    for binding in bindings
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
    {
        versions.insert(
            format!("rolebinding/{}", binding.name_any()),
            binding.resource_version().unwrap(),
        );
    }
    versions
}

/// Waits until the operator has replayed `times` times in all and reported
/// the project completed after the last replay.
async fn wait_replayed(tm: &TenantManager, project: &Project, times: usize) {
    wait_until(&format!("replay {times} done"), WAIT, || async {
        let requests = tm.requests();
        let replays: Vec<&common::tenant_manager::Request> =
            requests.iter().filter(|r| r.is_replay()).collect();
        let Some(last) = replays.get(times - 1) else {
            return Ok(None);
        };
        let completed_since = requests.iter().any(|r| {
            r.at > last.at
                && r.resource_id() == Some(project.id.as_str())
                && r.status().as_deref() == Some("completed")
        });
        Ok((replays.len() == times && completed_since).then_some(()))
    })
    .await
}

/// Requests of one verb the operator made to the API server.
/// Requests of one Kubernetes verb (`create`, `update`, `delete`...), all
/// resources together.
fn api_requests(operator: &Operator, verb: &str) -> f64 {
    operator.metric(&format!(
        "ctrlplane_kube_api_requests_total{{verb=\"{verb}\","
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_replay_after_a_restart_changes_nothing_that_is_right() {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-replay");
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let org = tm.create_org("replay");
    let kept = tm.create_project(&org, "kept");
    let gone = tm.create_project(&org, "gone");
    tm.delete_project(&gone);
    let _kept_ns = TestNamespace::adopt(&kept.namespace());
    let extra = [
        "--tenant-quota=count/instances.ctrlplane.dev=5",
        "--tenant-role-binding=view={org}-{project}-viewers,edit={org}-{project}-editors",
    ];
    let mut operator = start_operator(&ns, &tm, &controller, &[&kept], &extra);
    wait_replayed(&tm, &kept, 1).await;
    // A project deleted before it was ever seen: replayed as deleted,
    // nothing to remove, the deletion acknowledged.
    wait_status_deleted(&tm, &gone.id).await;
    assert!(
        namespaces()
            .await
            .get_opt(&gone.namespace())
            .await
            .unwrap()
            .is_none()
    );
    let first = versions(&kept).await;
    assert_eq!(first.len(), 4, "namespace, quota, two bindings: {first:?}");

    // Drift while the operator is away: a hand edit of the quota, and a
    // binding the templates no longer call for.
    let name = kept.namespace();
    kubectl([
        "patch",
        "resourcequota",
        QUOTA_NAME,
        "-n",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"hard":{"count/instances.ctrlplane.dev":"999"}}}"#,
    ])
    .expect_success("editing the quota by hand");
    apply_manifest(
        &name,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: retired\n  labels:\n    app.kubernetes.io/managed-by: ctrlplane-operator\n    {PROJECT_ID_LABEL}: {}\n    {ORG_ID_LABEL}: {}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: retired}}]\n",
            kept.id, org.id
        ),
    )
    .expect_success("a retired binding");

    operator.restart();
    wait_replayed(&tm, &kept, 2).await;
    let repaired = versions(&kept).await;
    assert_eq!(
        repaired.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>(),
        "the retired binding is gone"
    );
    assert_eq!(
        repaired, first,
        "the quota is as its template says again; nothing else was written"
    );
    assert_eq!(
        api_requests(&operator, "delete"),
        1.0,
        "only the retired binding"
    );
    assert_eq!(api_requests(&operator, "create"), 0.0);
    assert_eq!(api_requests(&operator, "update"), 0.0);

    // A restart with nothing to repair writes nothing at all.
    operator.restart();
    wait_replayed(&tm, &kept, 3).await;
    assert_eq!(versions(&kept).await, repaired);
    for verb in ["delete", "create", "update"] {
        assert_eq!(api_requests(&operator, verb), 0.0, "{verb}");
    }
    // Acknowledged, the deleted project is not replayed again.
    assert_eq!(tm.statuses(&gone.id), ["in_progress", "DELETE"]);
    assert_no_violations(&tm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_a_failed_event_is_reported_and_the_cursor_waits_for_it() {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-cursor");
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let org = tm.create_org("cursor");
    // Someone else's namespace already has the name this project would get.
    let taken_in_replay = tm.create_project(&org, "taken in replay");
    let fine_in_replay = tm.create_project(&org, "fine in replay");
    let foreign = TestNamespace::adopt(&taken_in_replay.namespace());
    kubectl(["create", "namespace", &foreign.name]).expect_success("someone else's namespace");
    let _fine_ns = TestNamespace::adopt(&fine_in_replay.namespace());
    let replayed_up_to = tm.last_event_id();
    let started = Instant::now();
    let _operator = start_operator(&ns, &tm, &controller, &[], &[]);

    // Replay: the failure is reported and skipped; the cursor becomes
    // lastEventId all the same.
    let message = wait_row(&tm, &taken_in_replay.id, "error").await;
    assert!(
        message.starts_with("handle created project/taken in replay: namespace ")
            && message.contains("already exists and does not belong to project"),
        "{message}"
    );
    wait_row(&tm, &fine_in_replay.id, "completed").await;
    wait_poll_after(&tm, replayed_up_to, started).await;
    assert!(
        !labels(&namespaces().await.get(&foreign.name).await.unwrap())
            .contains_key(PROJECT_ID_LABEL),
        "someone else's namespace is left alone"
    );

    // Polling: the first failure ends the page, and the cursor stays before
    // it, so the event comes again; nothing after it is handled meanwhile.
    let taken = tm.create_project(&org, "taken");
    let blocked = TestNamespace::adopt(&taken.namespace());
    kubectl(["create", "namespace", &blocked.name]).expect_success("another foreign namespace");
    let behind = tm.create_project(&org, "behind it");
    let _behind_ns = TestNamespace::adopt(&behind.namespace());
    wait_row(&tm, &taken.id, "error").await;
    let failed = Instant::now();
    wait_until(
        "two more polls from before the failed event",
        WAIT,
        || async {
            let again = tm
                .requests()
                .iter()
                .filter(|r| r.at > failed && r.after() == Some(replayed_up_to))
                .count();
            Ok((again >= 2).then_some(()))
        },
    )
    .await;
    let errors = tm
        .statuses(&taken.id)
        .iter()
        .filter(|s| *s == "error")
        .count();
    assert!(errors >= 2, "the failed event was handled again: {errors}");
    assert!(
        tm.statuses(&behind.id).is_empty(),
        "nothing after a failed event is handled"
    );
    assert!(
        !tm.requests()
            .iter()
            .any(|r| r.after().is_some_and(|after| after > replayed_up_to)),
        "the cursor did not pass the failed event"
    );

    // Once the way is free, it goes through and the cursor moves on.
    kubectl([
        "delete",
        "namespace",
        &blocked.name,
        "--wait=true",
        "--timeout=120s",
    ])
    .expect_success("freeing the name");
    wait_row(&tm, &taken.id, "completed").await;
    wait_row(&tm, &behind.id, "completed").await;
    let namespace = namespaces().await.get(&taken.namespace()).await.unwrap();
    assert_eq!(labels(&namespace)[PROJECT_ID_LABEL], taken.id);
    wait_poll_after(&tm, tm.last_event_id(), failed).await;
    // A replayed event that failed waits for the next replay.
    assert_eq!(tm.row(&taken_in_replay.id).unwrap().0, "error");

    // A status that cannot be reported never holds events up.
    tm.answer_status_with(Some(500));
    let unreported = tm.create_project(&org, "unreported");
    let _unreported_ns = TestNamespace::adopt(&unreported.namespace());
    let before = Instant::now();
    wait_poll_after(&tm, tm.last_event_id(), before).await;
    assert!(
        namespaces()
            .await
            .get_opt(&unreported.namespace())
            .await
            .unwrap()
            .is_some()
    );
    tm.answer_status_with(None);
    assert_no_violations(&tm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_project_deletion_delivers_the_last_events_and_completes_once_the_namespace_is_gone()
 {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-delete");
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let org = tm.create_org("deleting");
    let project = tm.create_project(&org, "shop");
    let name = project.namespace();
    let _project_ns = TestNamespace::adopt(&name);
    let operator = start_operator(
        &ns,
        &tm,
        &controller,
        &[&project],
        &["--allow-private-webhook-addresses"],
    );
    wait_row(&tm, &project.id, "completed").await;

    // A running Instance with a Webhook. The Webhook also carries a
    // finalizer of the test's own, which holds the namespace in Terminating
    // until the test lets go.
    let receiver = Receiver::start(&[SECRET]).await;
    apply_manifest(
        &name,
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing\nstringData:\n  secret: \"{SECRET}\"\n"),
    )
    .expect_success("secret");
    apply_manifest(
        &name,
        &format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: hooks\n  finalizers: [ctrlplane.dev/test-hold]\nspec:\n  url: {}\n  allowInsecureHttp: true\n  secretRef: {{name: signing}}\n",
            receiver.url()
        ),
    )
    .expect_success("webhook");
    apply_manifest(&name, &instance_manifest("web")).expect_success("instance");
    let client = client().await;
    let instances: Api<Instance> = Api::namespaced(client.clone(), &name);
    wait_until("the Instance Running", WAIT, || async {
        let i = instances.get("web").await.map_err(|e| e.to_string())?;
        Ok((i.status.and_then(|s| s.phase) == Some(InstancePhase::Running)).then_some(()))
    })
    .await;

    tm.delete_project(&project);
    wait_until("the namespace to be deleted", WAIT, || async {
        let namespace = namespaces()
            .await
            .get(&name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(namespace
            .metadata
            .deletion_timestamp
            .is_some()
            .then_some(()))
    })
    .await;
    // The namespace is deleted only after its Instance went through its
    // finalizer and the last event reached the receiver.
    let types: Vec<String> = receiver.accepted().into_iter().map(|r| r.type_).collect();
    assert!(
        types.iter().any(|t| t == "instance.deleted"),
        "the last event was delivered before the namespace went: {types:?}"
    );
    assert_eq!(
        operator.metric("ctrlplane_webhook_events_dropped_total"),
        0.0
    );

    // Terminating is not gone: the deletion is not reported done yet.
    assert!(namespaces().await.get_opt(&name).await.unwrap().is_some());
    assert_eq!(tm.statuses(&project.id).last().unwrap(), "in_progress");

    let webhooks: Api<Webhook> = Api::namespaced(client, &name);
    webhooks
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_status_deleted(&tm, &project.id).await;
    assert!(
        namespaces().await.get_opt(&name).await.unwrap().is_none(),
        "completed only once the namespace is gone"
    );
    assert_eq!(
        tm.statuses(&project.id),
        ["in_progress", "completed", "in_progress", "DELETE"]
    );
    assert_eq!(tm.row(&project.id), None);
    assert_no_violations(&tm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_org_deletion_removes_all_its_projects() {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-org");
    let controller = format!("ctrl-{}", ns.name);
    let tm = TenantManager::start(&controller).await;
    let leaving = tm.create_org("leaving");
    let first = tm.create_project(&leaving, "first");
    let second = tm.create_project(&leaving, "second");
    let staying = tm.create_org("staying");
    let other = tm.create_project(&staying, "other");
    let _guards: Vec<TestNamespace> = [&first, &second, &other]
        .iter()
        .map(|p| TestNamespace::adopt(&p.namespace()))
        .collect();
    let _operator = start_operator(&ns, &tm, &controller, &[&first, &second, &other], &[]);
    for project in [&first, &second, &other] {
        wait_row(&tm, &project.id, "completed").await;
    }

    // Only the org's event: its projects go with it.
    tm.delete_org(&leaving);
    wait_status_deleted(&tm, &leaving.id).await;
    let namespaces = namespaces().await;
    for project in [&first, &second] {
        assert!(
            namespaces
                .get_opt(&project.namespace())
                .await
                .unwrap()
                .is_none(),
            "{} is gone before the org's deletion is reported done",
            project.namespace()
        );
    }
    assert!(
        namespaces
            .get_opt(&other.namespace())
            .await
            .unwrap()
            .is_some(),
        "another org's project stays"
    );
    assert_no_violations(&tm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_an_unreachable_tenant_manager_is_retried_with_backoff_while_the_operator_stays_healthy()
 {
    ensure_crds();
    let ns = TestNamespace::create("tenancy-unreachable");
    let controller = format!("ctrl-{}", ns.name);
    let mut tm = TenantManager::start(&controller).await;
    let org = tm.create_org("patient");
    let early = tm.create_project(&org, "early");
    let _early_ns = TestNamespace::adopt(&early.namespace());
    tm.answer_events_with(Some(500));
    // Ready while the Tenant Manager fails: start_operator waits for /readyz.
    let operator = start_operator(&ns, &tm, &controller, &[], &[]);

    // The replay is asked again after 1, 2 and 4 seconds.
    let replays = wait_until("four replay attempts", WAIT, || async {
        let replays: Vec<Instant> = tm
            .requests()
            .iter()
            .filter(|r| r.is_replay())
            .map(|r| r.at)
            .collect();
        Ok((replays.len() >= 4).then_some(replays))
    })
    .await;
    for (i, wanted) in [1u64, 2, 4].iter().enumerate() {
        let gap = replays[i + 1] - replays[i];
        // A lower bound only: a busy machine may take longer, never shorter.
        assert!(
            gap >= Duration::from_secs(*wanted) - Duration::from_millis(20),
            "attempt {} came {gap:?} after the one before, expected {wanted}s",
            i + 2
        );
    }
    let waits: Vec<u64> = operator
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "tenancy replay failed; retrying")
        .filter_map(|l| l["retry_in_seconds"].as_u64())
        .collect();
    assert!(waits.starts_with(&[1, 2, 4]), "{waits:?}");

    // Not listening at all: connections refused, the operator stays healthy.
    tm.stop().await;
    wait_until("a refused connection in the log", WAIT, || async {
        Ok(operator.log().contains("could not connect").then_some(()))
    })
    .await;
    assert_eq!(
        http_get(operator.metrics_address, "/healthz").map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http_get(operator.metrics_address, "/readyz").map(|r| r.0),
        Some(200)
    );
    tm.resume().await;
    tm.answer_events_with(None);
    wait_row(&tm, &early.id, "completed").await;

    // Polling through an outage: failed polls are tried again each interval.
    tm.stop().await;
    let late = tm.create_project(&org, "late");
    let _late_ns = TestNamespace::adopt(&late.namespace());
    wait_until("a failed poll in the log", WAIT, || async {
        Ok(operator
            .log()
            .contains("tenancy poll failed; trying again next interval")
            .then_some(()))
    })
    .await;
    assert_eq!(
        http_get(operator.metrics_address, "/healthz").map(|r| r.0),
        Some(200)
    );
    tm.resume().await;
    wait_row(&tm, &late.id, "completed").await;
    assert_no_violations(&tm);
}

/// A ResourceQuota counts our kinds like any other (`count/<plural>.<group>`):
/// with `count/instances.ctrlplane.dev: "2"`, the API server's quota
/// admission refuses a third Instance with its own message, before anything
/// is stored and whether an operator runs or not; deleting one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_a_quota_of_two_instances_refuses_the_third_at_admission() {
    ensure_crds();
    ensure_quotas_count_ctrlplane_kinds();
    let ns = TestNamespace::create("tenancy-quota");
    apply_manifest(
        &ns.name,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: instances\nspec:\n  hard: {count/instances.ctrlplane.dev: \"2\"}\n",
    )
    .expect_success("the quota");
    let client = client().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let used = || async {
        let quota = quotas.get("instances").await.map_err(|e| e.to_string())?;
        let used = quota.status.and_then(|s| s.used).unwrap_or_default();
        Ok::<_, String>(
            used.get("count/instances.ctrlplane.dev")
                .map(|q| q.0.clone()),
        )
    };
    // Until the quota controller has counted, admission refuses everything
    // the quota covers ("status unknown for quota").
    wait_until("the quota to count Instances", WAIT, || async {
        Ok(used().await?.filter(|u| u == "0"))
    })
    .await;
    for name in ["first", "second"] {
        apply_manifest(&ns.name, &instance_manifest(name))
            .expect_success("an Instance within the quota");
    }
    let third = apply_manifest(&ns.name, &instance_manifest("third"));
    assert!(!third.success, "the quota allows two Instances");
    assert!(
        third.stderr.contains(
            "instances.ctrlplane.dev \"third\" is forbidden: exceeded quota: instances, requested: count/instances.ctrlplane.dev=1, used: count/instances.ctrlplane.dev=2, limited: count/instances.ctrlplane.dev=2"
        ),
        "{}",
        third.stderr
    );
    // The same through the API: 403 Forbidden, with the same message.
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns.name);
    let fourth: Instance = serde_saphyr::from_str(&instance_manifest("fourth")).unwrap();
    match instances.create(&Default::default(), &fourth).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("exceeded quota: instances"),
                "{status:?}"
            );
        }
        other => panic!("the fourth Instance was not refused: {other:?}"),
    }
    let names: Vec<String> = instances
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|i| i.name_any())
        .collect();
    assert_eq!(names, ["first", "second"]);

    // Deleting one frees its place once the quota controller has seen it go.
    kubectl(["delete", "instance", "first", "-n", &ns.name]).expect_success("deleting one");
    wait_until("the quota to count one Instance", WAIT, || async {
        Ok(used().await?.filter(|u| u == "1"))
    })
    .await;
    apply_manifest(&ns.name, &instance_manifest("third"))
        .expect_success("the third, now that there is room");
}

/// The chart's aggregated roles, applied under a release name of the test's
/// own, and deleted when dropped.
struct AggregatedRoles(String);

impl AggregatedRoles {
    fn install(release: &str) -> Self {
        let rendered = helm([
            "template".as_ref(),
            release.as_ref(),
            chart().as_os_str(),
            "-s".as_ref(),
            "templates/aggregated-roles.yaml".as_ref(),
        ]);
        assert!(rendered.success, "{}", rendered.stderr);
        kubectl_stdin(["apply", "-f", "-"], &rendered.stdout)
            .expect_success("applying the aggregated roles");
        Self(release.to_string())
    }
}

impl Drop for AggregatedRoles {
    fn drop(&mut self) {
        let roles: Vec<String> = ["admin", "edit", "view"]
            .iter()
            .map(|r| format!("clusterrole/{}-ctrlplane-operator-{r}", self.0))
            .collect();
        let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
        args.extend(roles.iter().map(String::as_str));
        let _ = kubectl(args);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_aggregated_roles_let_an_editor_apply_instances_in_their_namespace_only() {
    ensure_crds();
    let theirs = TestNamespace::create("tenancy-roles-a");
    let elsewhere = TestNamespace::create("tenancy-roles-b");
    let _roles = AggregatedRoles::install(&format!("roles-{}", &theirs.name[16..]));
    let editor = format!("editor-{}", theirs.name);
    let viewer = format!("viewer-{}", theirs.name);
    // Only Kubernetes' built-in roles are bound; ours reach the user
    // through aggregation.
    kubectl([
        "create",
        "rolebinding",
        "editor",
        "-n",
        &theirs.name,
        "--clusterrole=edit",
        &format!("--user={editor}"),
    ])
    .expect_success("binding edit");
    kubectl([
        "create",
        "rolebinding",
        "viewer",
        "-n",
        &theirs.name,
        "--clusterrole=view",
        &format!("--user={viewer}"),
    ])
    .expect_success("binding view");
    let as_user = |user: &str, args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--as", user];
        all.extend_from_slice(args);
        match stdin {
            Some(input) => kubectl_stdin(all, input),
            None => kubectl(all),
        }
    };
    // The aggregation controller folds our rules into edit and view.
    wait_until("the roles to aggregate", WAIT, || async {
        let can_edit = as_user(
            &editor,
            &[
                "auth",
                "can-i",
                "create",
                "instances.ctrlplane.dev",
                "-n",
                &theirs.name,
            ],
            None,
        );
        let can_view = as_user(
            &viewer,
            &[
                "auth",
                "can-i",
                "list",
                "webhookdeliveries.ctrlplane.dev",
                "-n",
                &theirs.name,
            ],
            None,
        );
        Ok((can_edit.success && can_view.success).then_some(()))
    })
    .await;

    let instance = "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n";
    as_user(
        &editor,
        &["apply", "--server-side", "-n", &theirs.name, "-f", "-"],
        Some(instance),
    )
    .expect_success("the editor applies an Instance in their namespace");
    as_user(
        &editor,
        &["scale", "instance/web", "--replicas=2", "-n", &theirs.name],
        None,
    )
    .expect_success("the editor scales it");
    let delivery = "apiVersion: ctrlplane.dev/v1alpha1\nkind: WebhookDelivery\nmetadata:\n  name: forged\nspec:\n  webhookName: hooks\n  event: {id: x, type: instance.started, timestamp: \"2026-01-01T00:00:00Z\", subject: {kind: Instance, name: web, uid: u}, sequence: 1, reason: Forged}\n";
    for (user, args, stdin, what) in [
        (
            &editor,
            vec!["apply", "--server-side", "-n", &elsewhere.name, "-f", "-"],
            Some(instance),
            "an Instance in another namespace",
        ),
        (
            &editor,
            vec!["get", "instances", "-n", &elsewhere.name],
            None,
            "reading another namespace",
        ),
        (
            &editor,
            vec!["create", "-n", &theirs.name, "-f", "-"],
            Some(delivery),
            "a forged WebhookDelivery",
        ),
        (
            &viewer,
            vec!["apply", "--server-side", "-n", &theirs.name, "-f", "-"],
            Some(instance),
            "a viewer writing",
        ),
    ] {
        let out = as_user(user, &args, stdin);
        assert!(
            !out.success && out.stderr.contains("forbidden"),
            "{what} should be forbidden: {}{}",
            out.stdout,
            out.stderr
        );
    }
    for args in [
        vec!["get", "instances", "-n", &theirs.name],
        vec!["get", "webhookdeliveries", "-n", &theirs.name],
    ] {
        as_user(&viewer, &args, None).expect_success("the viewer reads");
    }
}
