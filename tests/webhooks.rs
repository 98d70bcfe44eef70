//! End-to-end tests of webhook delivery: a real receiver on loopback that
//! verifies signatures with an independent implementation, an operator of
//! the test's own, and Instances changing on the real control plane.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::tls::PrivateCa;
use common::*;
use ctrlplane_operator::api::{
    Condition, DeliveryPhase, EventType, Instance, InstancePhase, Webhook, WebhookDelivery,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_bmV3LXNpZ25pbmcta2V5LWZvci1yb3RhdGlvbg==";

struct Fixture {
    // Fields drop in this order: the operator stops before the namespace
    // (and what is left in it) is cleaned up.
    operator: Operator,
    ns: TestNamespace,
    instances: Api<Instance>,
    webhooks: Api<Webhook>,
    deliveries: Api<WebhookDelivery>,
}

async fn fixture(prefix: &str) -> Fixture {
    ensure_crds();
    let ns = TestNamespace::create(prefix);
    let operator = Operator::start_with(&ns.name, &["--allow-private-webhook-addresses"]);
    let client = client().await;
    Fixture {
        instances: Api::namespaced(client.clone(), &ns.name),
        webhooks: Api::namespaced(client.clone(), &ns.name),
        deliveries: Api::namespaced(client, &ns.name),
        operator,
        ns,
    }
}

fn secret_manifest(name: &str, current: &str, previous: Option<&str>) -> String {
    let previous = previous
        .map(|p| format!("  previous-secret: \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  secret: \"{current}\"\n{previous}"
    )
}

fn webhook_manifest(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  allowInsecureHttp: true\n  secretRef:\n    name: signing\n{extra}"
    )
}

fn instance_manifest(name: &str) -> String {
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  image: nginx:1.27\n  replicas: 1\n"
    )
}

impl Fixture {
    fn apply(&self, manifest: &str) {
        apply_manifest(&self.ns.name, manifest).expect_success("applying");
    }

    async fn wait_webhook_ready(&self, name: &str) -> Webhook {
        wait_until(&format!("Webhook {name} Ready"), WAIT, || async {
            let webhook = self.webhooks.get(name).await.map_err(|e| e.to_string())?;
            let ready = webhook
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .cloned();
            match ready {
                Some(c) if serde_json::to_value(c.status).unwrap() == "True" => Ok(Some(webhook)),
                Some(c) => Err(format!("{}: {}", c.reason, c.message)),
                None => Err("no Ready condition".into()),
            }
        })
        .await
    }

    /// Waits until the Webhook's Ready condition has this reason.
    async fn wait_ready_reason(&self, name: &str, reason: &str) -> Condition {
        wait_until(
            &format!("Webhook {name} Ready reason {reason}"),
            WAIT,
            || async {
                let webhook = self.webhooks.get(name).await.map_err(|e| e.to_string())?;
                let ready = webhook
                    .status
                    .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
                Ok(ready.filter(|c| c.reason == reason))
            },
        )
        .await
    }

    async fn running(&self, name: &str) -> Instance {
        wait_until(&format!("Instance {name} Running"), WAIT, || async {
            let instance = self.instances.get(name).await.map_err(|e| e.to_string())?;
            Ok(
                (instance.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Running))
                    .then_some(instance),
            )
        })
        .await
    }

    /// Every (uid, sequence) the Instances' histories hold, with the type.
    async fn expected_events(&self) -> BTreeMap<(String, i64), String> {
        let list = self.instances.list(&ListParams::default()).await.unwrap();
        let mut expected = BTreeMap::new();
        for instance in list.items {
            let uid = instance.uid().unwrap();
            for entry in instance.status.map(|s| s.history).unwrap_or_default() {
                expected.insert(
                    (uid.clone(), entry.sequence),
                    entry.type_.as_str().to_string(),
                );
            }
        }
        expected
    }

    /// The namespace's delivery records, as the API server has them now.
    async fn records(&self) -> Result<Vec<WebhookDelivery>, String> {
        let list = self
            .deliveries
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(list.items)
    }

    async fn patch_instance(&self, name: &str, spec: serde_json::Value) {
        self.instances
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }
}

type Recorded = BTreeMap<(String, i64), String>;

/// Every event the Instances recorded, and those of them the receiver has
/// not accepted yet.
async fn recorded_and_undelivered(
    f: &Fixture,
    receiver: &Receiver,
) -> (Recorded, Vec<(String, i64)>) {
    let expected = f.expected_events().await;
    let got: BTreeSet<(String, i64)> = receiver
        .accepted()
        .into_iter()
        .map(|r| (r.uid, r.sequence))
        .collect();
    let missing = expected
        .keys()
        .filter(|k| !got.contains(*k))
        .cloned()
        .collect();
    (expected, missing)
}

/// Waits until the receiver has accepted every event the Instances recorded.
async fn wait_all_delivered(f: &Fixture, receiver: &Receiver) -> Recorded {
    wait_until("every recorded event to be delivered", WAIT, || async {
        let (expected, missing) = recorded_and_undelivered(f, receiver).await;
        if missing.is_empty() && !expected.is_empty() {
            Ok(Some(expected))
        } else {
            Err(format!(
                "{} of {} missing, e.g. {:?}",
                missing.len(),
                expected.len(),
                missing.first()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn lifecycle_events_arrive_signed_and_in_order_per_object() {
    let f = fixture("wh-order").await;
    let receiver = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hooks",
        &receiver.url(),
        "  events: [\"instance.*\", \"deploy.*\"]\n  headers:\n    X-Team: platform\n",
    ));
    f.wait_webhook_ready("hooks").await;
    for name in ["a", "b"] {
        f.apply(&instance_manifest(name));
    }
    for name in ["a", "b"] {
        f.running(name).await;
    }
    f.patch_instance("a", serde_json::json!({"replicas": 2}))
        .await;
    f.patch_instance("b", serde_json::json!({"image": "nginx:1.28"}))
        .await;
    f.patch_instance("a", serde_json::json!({"state": "Stopped"}))
        .await;
    wait_until("a Stopped", WAIT, || async {
        let a = f.instances.get("a").await.map_err(|e| e.to_string())?;
        Ok((a.status.and_then(|s| s.phase) == Some(InstancePhase::Stopped)).then_some(()))
    })
    .await;
    // b's new image rolls out on its own clock: under load it can finish
    // after a has stopped, and its deploy.succeeded would then be missing
    // from the history that wait_all_delivered compares against.
    wait_until("b's new release rolled out", WAIT, || async {
        let b = f.instances.get("b").await.map_err(|e| e.to_string())?;
        let history = b.status.map(|s| s.history).unwrap_or_default();
        Ok(history
            .iter()
            .any(|entry| entry.type_ == EventType::DeploySucceeded)
            .then_some(()))
    })
    .await;
    let expected = wait_all_delivered(&f, &receiver).await;

    let received = receiver.accepted();
    assert!(
        received.iter().all(|r| r.verified_with == [0]),
        "every request verifies: {received:?}"
    );
    // Per object, arrival order is sequence order, with no gaps.
    let mut by_object: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &received {
        by_object.entry(r.uid.clone()).or_default().push(r.sequence);
    }
    for (uid, sequences) in &by_object {
        let mut sorted = sequences.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sequences, &sorted, "{uid}: events out of order or repeated");
    }
    for r in &received {
        assert_eq!(
            expected.get(&(r.uid.clone(), r.sequence)),
            Some(&r.type_),
            "type matches the history"
        );
        assert_eq!(r.namespace, f.ns.name);
        assert!(r.id.starts_with("evt_"));
        assert!(r.body["timestamp"].is_string() && r.body["data"]["reason"].is_string());
    }
    let types: BTreeSet<&str> = received.iter().map(|r| r.type_.as_str()).collect();
    for wanted in [
        "instance.created",
        "instance.started",
        "instance.scaled",
        "instance.stopped",
        "deploy.started",
        "deploy.succeeded",
    ] {
        assert!(types.contains(wanted), "{wanted} was delivered: {types:?}");
    }

    // A healthy receiver costs no delivery records (deliveryRecords:
    // Failures, the default): `kubectl get whd` shows only what needs
    // attention, and here nothing does.
    let records = f.deliveries.list(&ListParams::default()).await.unwrap();
    assert!(
        records.items.is_empty(),
        "{:?}",
        records
            .items
            .iter()
            .map(|d| d.name_any())
            .collect::<Vec<_>>()
    );
    let webhook = wait_until("the webhook's counts", WAIT, || async {
        let w = f.webhooks.get("hooks").await.map_err(|e| e.to_string())?;
        let status = w.status.clone().unwrap_or_default();
        Ok((status.succeeded as usize == expected.len() && status.pending == 0).then_some(w))
    })
    .await;
    let status = webhook.status.unwrap();
    assert_eq!(status.consecutive_failures, 0);
    assert!(
        status
            .last_delivery
            .is_some_and(|l| l.succeeded && l.status_code == Some(200))
    );
}

fn holds_the_finalizer(instance: &Instance) -> bool {
    instance
        .finalizers()
        .iter()
        .any(|f| f == "ctrlplane.dev/cleanup")
}

#[tokio::test]
async fn an_instance_made_before_its_webhook_still_sends_its_last_events() {
    let f = fixture("wh-late").await;
    let receiver = Receiver::start(&[SECRET]).await;
    f.apply(&instance_manifest("early"));
    let running = f.running("early").await;
    // Nothing listens yet, and its children go with it: no finalizer.
    assert!(!holds_the_finalizer(&running), "{:?}", running.finalizers());
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest("hooks", &receiver.url(), ""));
    // The new Webhook wakes it: it takes the finalizer, so that its
    // deletion waits for its last events.
    wait_until("the Instance to take the finalizer", WAIT, || async {
        let instance = f.instances.get("early").await.map_err(|e| e.to_string())?;
        Ok(holds_the_finalizer(&instance).then_some(()))
    })
    .await;
    let uid = running.uid().unwrap();
    f.instances
        .delete("early", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("instance.deleted to reach the receiver", WAIT, || async {
        let last = receiver
            .accepted()
            .into_iter()
            .filter(|r| r.uid == uid)
            .map(|r| r.type_)
            .collect::<Vec<_>>();
        Ok(last.iter().any(|t| t == "instance.deleted").then_some(()))
    })
    .await;
    wait_until("the Instance to be gone", WAIT, || async {
        let left = f
            .instances
            .get_opt("early")
            .await
            .map_err(|e| e.to_string())?;
        Ok(left.is_none().then_some(()))
    })
    .await;
}

#[tokio::test]
async fn delivery_records_all_keeps_a_record_of_every_delivery_until_it_expires() {
    ensure_crds();
    let ns = TestNamespace::create("wh-all");
    let _operator = Operator::start_with(
        &ns.name,
        &[
            "--allow-private-webhook-addresses",
            "--webhook-delivery-ttl-seconds",
            "10",
        ],
    );
    let client = client().await;
    let f = Fixture {
        instances: Api::namespaced(client.clone(), &ns.name),
        webhooks: Api::namespaced(client.clone(), &ns.name),
        deliveries: Api::namespaced(client, &ns.name),
        operator: _operator,
        ns,
    };
    let receiver = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "audit",
        &receiver.url(),
        "  deliveryRecords: All\n",
    ));
    f.wait_webhook_ready("audit").await;
    f.apply(&instance_manifest("web"));
    // Every delivery has its record, Succeeded, for kubectl to show. A
    // record lives 10 s once completed: on a slow machine the first ones
    // can expire before the Instance is Running or the last record exists.
    // So the records (and kubectl's table) are watched from the start, and
    // a record counts once it was seen Succeeded.
    let seen = std::cell::RefCell::new(BTreeMap::<String, String>::new());
    let shown = std::cell::Cell::new(false);
    let last_table = std::cell::RefCell::new(String::new());
    let expected = wait_until(
        "web Running, every event delivered and a Succeeded record of each",
        WAIT,
        || async {
            let records = f.records().await?;
            seen.borrow_mut().extend(
                records
                    .iter()
                    .filter(|d| {
                        d.status.as_ref().and_then(|s| s.phase) == Some(DeliveryPhase::Succeeded)
                    })
                    .map(|d| (d.name_any(), d.spec.webhook_name.clone())),
            );
            if !shown.get() {
                let table = kubectl(["get", "whd", "-n", &f.ns.name]);
                if !table.success {
                    return Err(table.stderr);
                }
                shown.set(
                    table.stdout.contains("Succeeded") && table.stdout.contains("instance.created"),
                );
                *last_table.borrow_mut() = table.stdout;
            }
            let web = f.instances.get("web").await.map_err(|e| e.to_string())?;
            if web.status.and_then(|s| s.phase) != Some(InstancePhase::Running) {
                return Err("web is not Running yet".into());
            }
            let (expected, missing) = recorded_and_undelivered(&f, &receiver).await;
            let missing = missing.len();
            let recorded = seen.borrow().len();
            if missing == 0 && recorded >= expected.len() {
                Ok(Some(expected))
            } else {
                Err(format!(
                    "{missing} of {} not delivered, {recorded} records seen Succeeded",
                    expected.len()
                ))
            }
        },
    )
    .await;
    let seen = seen.into_inner();
    assert_eq!(
        seen.len(),
        expected.len(),
        "one record per delivery: {seen:?}"
    );
    assert!(seen.values().all(|webhook| webhook == "audit"), "{seen:?}");
    assert!(shown.get(), "{}", last_table.borrow());
    // Completed records go once their time is up (10s here).
    wait_until("the completed records to expire", WAIT, || async {
        let left = f.records().await?.len();
        Ok((left == 0).then_some(()))
    })
    .await;
    // The counts stay: they are the Webhook's, not the records'.
    let webhook = f.webhooks.get("audit").await.unwrap();
    assert_eq!(webhook.status.unwrap().succeeded as usize, expected.len());
}

#[tokio::test]
async fn an_inactive_webhook_is_sent_nothing() {
    let f = fixture("wh-inactive").await;
    let active = Receiver::start(&[SECRET]).await;
    let paused = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest("active", &active.url(), ""));
    f.apply(&webhook_manifest(
        "paused",
        &paused.url(),
        "  active: false\n",
    ));
    f.wait_webhook_ready("active").await;
    f.wait_ready_reason("paused", "Inactive").await;
    f.apply(&instance_manifest("web"));
    f.running("web").await;
    f.patch_instance("web", serde_json::json!({"replicas": 2}))
        .await;
    let expected = wait_until("the scale event recorded", WAIT, || async {
        let expected = f.expected_events().await;
        Ok(expected
            .values()
            .any(|t| t == "instance.scaled")
            .then_some(expected))
    })
    .await;
    wait_all_delivered(&f, &active).await;
    // Every event is dispatched, with nothing sent to the paused one.
    wait_until("every event dispatched", WAIT, || async {
        let web = f.instances.get("web").await.map_err(|e| e.to_string())?;
        let status = web.status.unwrap_or_default();
        let last = status.history.last().map_or(0, |e| e.sequence);
        Ok((status.dispatched_seq >= last && last >= expected.len() as i64).then_some(()))
    })
    .await;
    assert!(paused.received().is_empty(), "{:?}", paused.received());
    let records = f.deliveries.list(&ListParams::default()).await.unwrap();
    assert!(
        records
            .items
            .iter()
            .all(|d| d.spec.webhook_name != "paused")
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_back_other_webhooks() {
    let f = fixture("wh-hang").await;
    let hanging = Receiver::start(&[SECRET]).await;
    hanging.set_mode(Mode::Hang);
    let healthy = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hanging",
        &hanging.url(),
        "  timeoutSeconds: 60\n",
    ));
    f.apply(&webhook_manifest("healthy", &healthy.url(), ""));
    f.wait_webhook_ready("hanging").await;
    f.wait_webhook_ready("healthy").await;
    for name in ["a", "b", "c"] {
        f.apply(&instance_manifest(name));
    }
    for name in ["a", "b", "c"] {
        f.running(name).await;
    }
    // Every event reaches the healthy receiver while the hanging one has
    // not answered a single request (its attempts wait out a 60s timeout).
    wait_all_delivered(&f, &healthy).await;
    assert!(
        hanging.max_in_flight() >= 1,
        "the hanging receiver was tried"
    );
    assert!(hanging.accepted().is_empty());
}

#[tokio::test]
async fn a_receiver_that_is_down_for_a_while_gets_every_event_once_it_is_back() {
    let f = fixture("wh-down").await;
    let mut receiver = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hooks",
        &receiver.url(),
        "  retryPolicy: {maxAttempts: 20, backoffBaseSeconds: 1, backoffCapSeconds: 2}\n",
    ));
    f.wait_webhook_ready("hooks").await;
    receiver.stop().await;
    f.apply(&instance_manifest("web"));
    f.running("web").await;
    f.patch_instance("web", serde_json::json!({"replicas": 3}))
        .await;
    // Deliveries fail and are retried while it is down.
    wait_until("failed attempts to be recorded", WAIT, || async {
        let list = f.records().await?;
        let retrying = list.iter().any(|d| {
            d.status.as_ref().is_some_and(|s| {
                s.attempts >= 2
                    && s.phase == Some(DeliveryPhase::Pending)
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("connect"))
            })
        });
        Ok(retrying.then_some(()))
    })
    .await;
    receiver.resume().await;
    wait_all_delivered(&f, &receiver).await;
    assert!(receiver.accepted().iter().all(|r| r.verified_with == [0]));
}

#[tokio::test]
async fn an_endpoint_that_answers_410_is_switched_off() {
    let f = fixture("wh-gone").await;
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.set_mode(Mode::Answer(410));
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest("hooks", &receiver.url(), ""));
    f.wait_webhook_ready("hooks").await;
    f.apply(&instance_manifest("web"));
    let webhook = wait_until("the webhook to be switched off", WAIT, || async {
        let w = f.webhooks.get("hooks").await.map_err(|e| e.to_string())?;
        Ok(w.status
            .as_ref()
            .and_then(|s| s.disabled.as_ref())
            .is_some()
            .then_some(w))
    })
    .await;
    let disabled = webhook.status.as_ref().unwrap().disabled.clone().unwrap();
    assert_eq!(disabled.reason, "EndpointGone");
    f.wait_ready_reason("hooks", "EndpointGone").await;
    // The operator switches the webhook off in status first and publishes
    // the Event after.
    wait_for_events(
        &f.ns.name,
        "involvedObject.name=hooks",
        &[],
        &["EndpointGone"],
    )
    .await;

    // Nothing more is sent to it.
    f.running("web").await;
    let count = receiver.received().len();
    f.patch_instance("web", serde_json::json!({"replicas": 2}))
        .await;
    wait_until("the scale to be recorded", WAIT, || async {
        let i = f.instances.get("web").await.map_err(|e| e.to_string())?;
        let scaled = i.status.is_some_and(|s| {
            s.history
                .iter()
                .any(|e| e.type_.as_str() == "instance.scaled")
                && s.dispatched_seq >= s.history.last().map_or(0, |e| e.sequence)
        });
        Ok(scaled.then_some(()))
    })
    .await;
    assert_eq!(
        receiver.received().len(),
        count,
        "a switched-off webhook gets nothing"
    );
}

#[tokio::test]
async fn an_endpoint_that_always_fails_ends_in_failed_deliveries_after_the_last_attempt() {
    let f = fixture("wh-500").await;
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.set_mode(Mode::Answer(500));
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hooks",
        &receiver.url(),
        "  events: [\"instance.created\"]\n  retryPolicy: {maxAttempts: 3, backoffBaseSeconds: 1, backoffCapSeconds: 2}\n",
    ));
    f.wait_webhook_ready("hooks").await;
    f.apply(&instance_manifest("web"));
    let failed = wait_until("the delivery to fail for good", WAIT, || async {
        let list = f.records().await?;
        Ok(list
            .into_iter()
            .find(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeliveryPhase::Failed)))
    })
    .await;
    let status = failed.status.clone().unwrap();
    assert_eq!(status.attempts, 3);
    assert_eq!(status.last_status_code, Some(500));
    assert_eq!(status.attempt_log.len(), 3);
    assert!(status.next_attempt_at.is_none() && status.completed_at.is_some());
    assert_eq!(receiver.received().len(), 3, "exactly maxAttempts attempts");
    let ids: BTreeSet<String> = receiver.received().into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 1, "webhook-id is the same on every retry");
    // The record's status is written first and the Event published after.
    let selector = format!("involvedObject.name={}", failed.name_any());
    wait_for_events(&f.ns.name, &selector, &[], &["DeliveryFailed"]).await;
    let webhook = wait_until("the webhook to count it", WAIT, || async {
        let w = f.webhooks.get("hooks").await.map_err(|e| e.to_string())?;
        Ok(w.status.clone().filter(|s| s.failed == 1).map(|_| w))
    })
    .await;
    assert!(webhook.status.unwrap().consecutive_failures >= 3);
}

#[tokio::test]
async fn a_webhook_never_receives_events_from_another_namespace() {
    ensure_crds();
    let mine = TestNamespace::create("wh-mine");
    let other = TestNamespace::create("wh-other");
    let _operator = Operator::start_with(
        &format!("{},{}", mine.name, other.name),
        &["--allow-private-webhook-addresses"],
    );
    let receiver = Receiver::start(&[SECRET]).await;
    apply_manifest(&mine.name, &secret_manifest("signing", SECRET, None)).expect_success("secret");
    apply_manifest(&mine.name, &webhook_manifest("hooks", &receiver.url(), ""))
        .expect_success("webhook");
    apply_manifest(&other.name, &instance_manifest("stranger")).expect_success("other instance");
    apply_manifest(&mine.name, &instance_manifest("local")).expect_success("own instance");
    let client = client().await;
    let mine_instances: Api<Instance> = Api::namespaced(client.clone(), &mine.name);
    let other_instances: Api<Instance> = Api::namespaced(client, &other.name);
    for api in [&mine_instances, &other_instances] {
        wait_until("Running", WAIT, || async {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list
                .items
                .iter()
                .all(|i| i.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Running))
                .then_some(()))
        })
        .await;
    }
    let local = mine_instances.get("local").await.unwrap();
    wait_until("the local Instance's events", WAIT, || async {
        Ok(receiver
            .accepted()
            .iter()
            .any(|r| r.type_ == "instance.started" && Some(&r.uid) == local.uid().as_ref())
            .then_some(()))
    })
    .await;
    let stranger = other_instances.get("stranger").await.unwrap();
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| Some(&r.uid) != stranger.uid().as_ref() && r.namespace == mine.name),
        "events of another namespace arrived"
    );
}

/// Marks one pod Ready or not, as its readiness probe would. kwok only acts
/// on Pending pods, so a Running pod keeps what is written here.
async fn set_pod_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let reason = if ready { "ProbePassed" } else { "ProbeFailed" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "reason": reason},
            {"type": "ContainersReady", "status": status, "reason": reason},
        ]}})),
    )
    .await
    .unwrap();
}

/// The health events of a Running Instance whose replicas go unready and
/// come back, one pod at a time: health.passed when it starts (it has a
/// health check), health.degraded (one of two unready), health.failed (both),
/// health.degraded (one back), health.recovered (both back). Each Webhook
/// receives exactly the events its filter names, the earlier names
/// health.healthy and health.unhealthy included.
#[tokio::test]
async fn health_events_reach_the_webhooks_that_filter_for_them_earlier_names_included() {
    let f = fixture("wh-health").await;
    f.apply(&secret_manifest("signing", SECRET, None));
    let filters = [
        ("passed", "health.passed"),
        ("failed", "health.failed"),
        ("degraded", "health.degraded"),
        ("recovered", "health.recovered"),
        ("old-healthy", "health.healthy"),
        ("old-unhealthy", "health.unhealthy"),
        ("all-health", "health.*"),
    ];
    let mut receivers = BTreeMap::new();
    for (name, filter) in filters {
        let receiver = Receiver::start(&[SECRET]).await;
        f.apply(&webhook_manifest(
            name,
            &receiver.url(),
            &format!("  events: [\"{filter}\"]\n"),
        ));
        receivers.insert(name, receiver);
    }
    for (name, _) in filters {
        f.wait_webhook_ready(name).await;
    }
    f.apply(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: nginx:1.27\n  replicas: 2\n  ports:\n    - {name: http, port: 8080}\n  healthCheck:\n    httpGet: {path: /healthz, port: http}\n",
    );
    let client = client().await;
    let pods: Api<Pod> = Api::namespaced(client, &f.ns.name);
    let health_events = |instance: &Instance| -> Vec<(String, String)> {
        instance
            .status
            .iter()
            .flat_map(|s| &s.history)
            .filter(|e| e.type_.family() == "health")
            .map(|e| {
                let before = e.details.get("previousHealth").cloned().unwrap_or_default();
                (e.type_.as_str().to_string(), before)
            })
            .collect()
    };
    let wait_health = |wanted: Vec<(&'static str, &'static str)>| {
        let f = &f;
        async move {
            let wanted: Vec<(String, String)> = wanted
                .iter()
                .map(|(t, b)| (t.to_string(), b.to_string()))
                .collect();
            let wanted = &wanted;
            wait_until(&format!("health events {wanted:?}"), WAIT, || async move {
                let web = f.instances.get("web").await.map_err(|e| e.to_string())?;
                let got = health_events(&web);
                if &got == wanted {
                    Ok(Some(()))
                } else {
                    Err(format!("{got:?}"))
                }
            })
            .await
        }
    };
    f.running("web").await;
    wait_health(vec![("health.passed", "")]).await;
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels("ctrlplane.dev/instance=web"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");

    set_pod_ready(&pods, &names[0], false).await;
    wait_health(vec![("health.passed", ""), ("health.degraded", "Healthy")]).await;
    set_pod_ready(&pods, &names[1], false).await;
    wait_health(vec![
        ("health.passed", ""),
        ("health.degraded", "Healthy"),
        ("health.failed", "Degraded"),
    ])
    .await;
    set_pod_ready(&pods, &names[0], true).await;
    wait_health(vec![
        ("health.passed", ""),
        ("health.degraded", "Healthy"),
        ("health.failed", "Degraded"),
        ("health.degraded", "Failed"),
    ])
    .await;
    set_pod_ready(&pods, &names[1], true).await;
    wait_health(vec![
        ("health.passed", ""),
        ("health.degraded", "Healthy"),
        ("health.failed", "Degraded"),
        ("health.degraded", "Failed"),
        ("health.recovered", "Degraded"),
    ])
    .await;

    let expected: [(&str, &[&str]); 7] = [
        ("passed", &["health.passed"]),
        ("failed", &["health.failed"]),
        ("degraded", &["health.degraded", "health.degraded"]),
        ("recovered", &["health.recovered"]),
        ("old-healthy", &["health.recovered"]),
        (
            "old-unhealthy",
            &["health.degraded", "health.failed", "health.degraded"],
        ),
        (
            "all-health",
            &[
                "health.passed",
                "health.degraded",
                "health.failed",
                "health.degraded",
                "health.recovered",
            ],
        ),
    ];
    for (name, types) in expected {
        let receiver = &receivers[name];
        let got = wait_until(&format!("the events of webhook {name}"), WAIT, || async {
            let mut seen = BTreeSet::new();
            let got: Vec<String> = receiver
                .accepted()
                .into_iter()
                .filter(|r| seen.insert(r.id.clone()))
                .map(|r| r.type_)
                .collect();
            Ok((got.len() >= types.len()).then_some(got))
        })
        .await;
        assert_eq!(got, types, "webhook {name}");
    }
    // Only the events of Instance web's health arrived: nothing else matched.
    assert!(
        receivers
            .values()
            .flat_map(|r| r.received())
            .all(|r| r.name == "web" && r.type_.starts_with("health.")),
    );
    // A person sees the problems as Warnings, and the recovery.
    wait_for_events(
        &f.ns.name,
        "involvedObject.name=web",
        &[
            "-o",
            "jsonpath={range .items[*]}{.type} {.reason}{\"\\n\"}{end}",
        ],
        &[
            "Warning HealthDegraded",
            "Warning HealthCheckFailed",
            "Normal HealthRecovered",
        ],
    )
    .await;
}

/// An https Webhook for `url`, trusting the PEM `ca_bundle` when given.
fn https_webhook_manifest(name: &str, url: &str, ca_bundle: Option<&str>) -> String {
    let ca_bundle = ca_bundle
        .map(|pem| {
            let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
            format!("  caBundle: |\n{indented}")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  secretRef:\n    name: signing\n{ca_bundle}"
    )
}

#[tokio::test]
async fn a_private_ca_in_ca_bundle_is_trusted_and_without_it_the_endpoint_is_not() {
    let f = fixture("wh-ca").await;
    let ca = PrivateCa::generate();
    let receiver = Receiver::start_https(&[SECRET], ca.server.clone()).await;
    assert!(receiver.url().starts_with("https://"));
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&https_webhook_manifest(
        "trusting",
        &receiver.url(),
        Some(&ca.ca_pem),
    ));
    f.apply(&https_webhook_manifest("untrusting", &receiver.url(), None));
    // Passes the schema (it looks like PEM) but holds no certificate.
    f.apply(&https_webhook_manifest(
        "broken",
        &receiver.url(),
        Some("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----"),
    ));
    f.wait_webhook_ready("trusting").await;
    f.wait_webhook_ready("untrusting").await;
    let broken = f.wait_ready_reason("broken", "CaBundleNotUsable").await;
    assert!(
        broken.message.contains("spec.caBundle"),
        "the condition names the field: {}",
        broken.message
    );

    f.apply(&instance_manifest("web"));
    f.running("web").await;
    let expected = wait_all_delivered(&f, &receiver).await;
    assert!(
        receiver.accepted().iter().all(|r| r.verified_with == [0]),
        "every request over TLS is signed"
    );

    // Without the bundle the operator refuses the certificate: the attempt
    // records why, and the request never reaches the receiver.
    let refused = wait_until(
        "an untrusting delivery to record its TLS error",
        WAIT,
        || async {
            let list = f.records().await?;
            Ok(list
                .into_iter()
                .filter(|d| d.spec.webhook_name == "untrusting")
                .find_map(|d| d.status.and_then(|s| s.last_error)))
        },
    )
    .await;
    eprintln!("the untrusting Webhook's delivery error: {refused}");
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the error says it is the certificate: {refused}"
    );
    assert!(!receiver.failed_handshakes().is_empty());
    let from_trusting_only = receiver.received().len();
    assert_eq!(
        from_trusting_only,
        expected.len(),
        "only the trusting Webhook's requests got through"
    );
}

#[tokio::test]
async fn a_rotating_secret_signs_with_both_keys() {
    let f = fixture("wh-rotate").await;
    // index 0: the old key, index 1: the new one.
    let receiver = Receiver::start(&[SECRET, NEW_SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest("hooks", &receiver.url(), ""));
    f.wait_webhook_ready("hooks").await;
    f.apply(&instance_manifest("web"));
    f.running("web").await;
    wait_all_delivered(&f, &receiver).await;
    assert!(receiver.accepted().iter().all(|r| r.verified_with == [0]));

    // Rotate: the new key is current, the old one is still sent alongside.
    f.apply(&secret_manifest("signing", NEW_SECRET, Some(SECRET)));
    // The operator reads Secrets fresh within ten seconds; keep
    // changing the Instance until an event signed with both keys arrives.
    let mut replicas = 1;
    let (f, receiver) = (&f, &receiver);
    wait_until("an event signed with both keys", WAIT, || {
        replicas += 1;
        let replicas = replicas;
        async move {
            if receiver
                .accepted()
                .iter()
                .any(|r| r.verified_with == [0, 1])
            {
                return Ok(Some(()));
            }
            f.patch_instance("web", serde_json::json!({"replicas": replicas % 4 + 1}))
                .await;
            Err("not yet".to_string())
        }
    })
    .await;
    // Rotation done: only the new key.
    f.apply(&secret_manifest("signing", NEW_SECRET, None));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client().await, &f.ns.name);
    secrets
        .patch(
            "signing",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    serde_json::json!([{"op": "remove", "path": "/data/previous-secret"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    wait_until("an event signed with the new key only", WAIT, || {
        replicas += 1;
        let replicas = replicas;
        async move {
            if receiver.accepted().iter().any(|r| r.verified_with == [1]) {
                return Ok(Some(()));
            }
            f.patch_instance("web", serde_json::json!({"replicas": replicas % 4 + 1}))
                .await;
            Err("not yet".to_string())
        }
    })
    .await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| !r.verified_with.is_empty()),
        "every request verified"
    );
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_up_the_others() {
    ensure_crds();
    let ns = TestNamespace::create("wh-slow");
    // Few reconcile slots (4) and two attempts in flight per endpoint: were
    // the bound not there, the slow endpoint would take every slot.
    let _operator = Operator::start_with(
        &ns.name,
        &[
            "--allow-private-webhook-addresses",
            "--concurrency",
            "1",
            "--webhook-concurrency-per-endpoint",
            "2",
        ],
    );
    let slow = Receiver::start(&[SECRET]).await;
    // Slow on the scale of the whole test, not of one machine's speed: two
    // answers every 40 s cannot catch up with the fast receiver however long
    // the Instances take to start. Nothing waits for these answers: the test
    // ends once the fast receiver has everything, and dropping the receiver
    // does not wait for its requests in flight. The timeout (60 s, the most
    // allowed) stays well above the delay, so none is abandoned and retried.
    slow.set_mode(Mode::Slow(Duration::from_secs(40)));
    let fast = Receiver::start(&[SECRET]).await;
    apply_manifest(&ns.name, &secret_manifest("signing", SECRET, None)).expect_success("secret");
    apply_manifest(
        &ns.name,
        &webhook_manifest(
            "slow",
            &slow.url(),
            "  timeoutSeconds: 60
",
        ),
    )
    .expect_success("slow");
    apply_manifest(&ns.name, &webhook_manifest("fast", &fast.url(), "")).expect_success("fast");
    let client = client().await;
    let webhooks: Api<Webhook> = Api::namespaced(client.clone(), &ns.name);
    for name in ["slow", "fast"] {
        wait_until("both webhooks Ready", WAIT, || async {
            let w = webhooks.get(name).await.map_err(|e| e.to_string())?;
            Ok(w.status
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "Ready")
                })
                .then_some(()))
        })
        .await;
    }
    for i in 0..6 {
        apply_manifest(&ns.name, &instance_manifest(&format!("app-{i}")))
            .expect_success("instance");
    }
    let instances: Api<Instance> = Api::namespaced(client, &ns.name);
    let expected = wait_until("every Instance Running", WAIT, || async {
        let list = instances
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let running = list
            .items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Running))
            .count();
        let events: usize = list
            .items
            .iter()
            .map(|i| i.status.as_ref().map_or(0, |s| s.history.len()))
            .sum();
        Ok((running == 6).then_some(events))
    })
    .await;
    wait_until("the fast receiver to get every event", WAIT, || async {
        Ok((fast.accepted().len() >= expected).then_some(()))
    })
    .await;
    assert!(
        slow.accepted().len() < expected / 2,
        "the fast receiver finished while the slow one had {} of {expected}",
        slow.accepted().len()
    );
    assert!(
        slow.max_in_flight() <= 2,
        "{} attempts at once to one endpoint",
        slow.max_in_flight()
    );
}

#[tokio::test]
async fn the_operator_killed_at_random_moments_loses_no_event() {
    let mut f = fixture("wh-crash").await;
    let receiver = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hooks",
        &receiver.url(),
        "  retryPolicy: {maxAttempts: 50, backoffBaseSeconds: 1, backoffCapSeconds: 2}\n",
    ));
    f.wait_webhook_ready("hooks").await;
    let names: Vec<String> = (0..6).map(|i| format!("app-{i}")).collect();
    // A burst of changes, with the operator killed (SIGKILL) at random
    // moments in between and started again.
    for round in 0..5 {
        for (i, name) in names.iter().enumerate() {
            if round == 0 {
                f.apply(&instance_manifest(name));
            } else {
                let spec = match (round + i) % 3 {
                    0 => serde_json::json!({"replicas": round % 3 + 1}),
                    1 => {
                        serde_json::json!({"state": if round % 2 == 0 { "Running" } else { "Stopped" }})
                    }
                    _ => serde_json::json!({"image": format!("nginx:1.{}", 20 + round)}),
                };
                f.patch_instance(name, spec).await;
            }
        }
        let pause = Duration::from_millis(fastrand::u64(50..1500));
        // The random moment is the thing under test here.
        tokio::time::sleep(pause).await;
        f.operator.kill();
        f.operator.restart();
    }
    // Settle: everything the Instances recorded reaches the receiver.
    for name in &names {
        wait_until(&format!("{name} to settle"), WAIT, || async {
            let i = f.instances.get(name).await.map_err(|e| e.to_string())?;
            let status = i.status.clone().unwrap_or_default();
            let settled = matches!(
                status.phase,
                Some(InstancePhase::Running | InstancePhase::Stopped)
            ) && status.observed_generation == i.metadata.generation
                && status.dispatched_seq >= status.history.last().map_or(0, |e| e.sequence);
            Ok(settled.then_some(()))
        })
        .await;
    }
    let expected = wait_all_delivered(&f, &receiver).await;
    assert!(
        expected.len() >= names.len() * 3,
        "a burst of events: {}",
        expected.len()
    );
    // History sequences have no gaps: nothing was recorded twice or skipped.
    for name in &names {
        assert_history_gapless(&f.instances.get(name).await.unwrap());
    }
    assert!(receiver.accepted().iter().all(|r| r.verified_with == [0]));
}

/// Deleting a namespace deletes its Webhooks with it: the final events of
/// its Instances have nowhere to go, and must not hold the namespace forever.
#[tokio::test]
async fn a_namespace_with_webhooks_and_instances_can_be_deleted() {
    let f = fixture("wh-nsdel").await;
    let receiver = Receiver::start(&[SECRET]).await;
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest("hooks", &receiver.url(), ""));
    f.wait_webhook_ready("hooks").await;
    for name in ["a", "b", "c"] {
        f.apply(&instance_manifest(name));
    }
    for name in ["a", "b", "c"] {
        f.running(name).await;
    }
    kubectl(["delete", "namespace", &f.ns.name, "--wait=false"])
        .expect_success("deleting the namespace");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client().await);
    wait_until("the namespace to be gone", WAIT, || async {
        Ok(namespaces
            .get_opt(&f.ns.name)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
}

#[tokio::test]
async fn no_secret_value_appears_in_logs_events_or_status() {
    let f = fixture("wh-secret").await;
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.set_mode(Mode::Answer(503));
    f.apply(&secret_manifest("signing", SECRET, None));
    f.apply(&webhook_manifest(
        "hooks",
        &receiver.url(),
        "  retryPolicy: {maxAttempts: 2, backoffBaseSeconds: 1, backoffCapSeconds: 1}\n",
    ));
    // A Webhook whose Secret has a key that is not valid: its error must not quote it.
    f.apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: broken\nstringData:\n  secret: \"whsec_not!base64-secret-value\"\n");
    f.apply(
        &webhook_manifest("broken", &receiver.url(), "").replace("name: signing", "name: broken"),
    );
    f.wait_webhook_ready("hooks").await;
    f.apply(&instance_manifest("web"));
    f.running("web").await;
    wait_until("failed deliveries", WAIT, || async {
        let list = f.records().await?;
        Ok(list
            .iter()
            .any(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeliveryPhase::Failed))
            .then_some(()))
    })
    .await;
    let reason = wait_until("the broken webhook's Ready condition", WAIT, || async {
        let webhook = f.webhooks.get("broken").await.map_err(|e| e.to_string())?;
        Ok(webhook
            .status
            .into_iter()
            .flat_map(|s| s.conditions)
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason))
    })
    .await;
    assert_eq!(reason, "SecretNotUsable");

    let secret_values = [
        SECRET.to_string(),
        SECRET.trim_start_matches("whsec_").to_string(),
        "not!base64-secret-value".to_string(),
    ];
    let mut haystacks = vec![("operator log", f.operator.log())];
    for kind in ["events", "instances", "webhooks", "webhookdeliveries"] {
        let out = kubectl(["get", kind, "-n", &f.ns.name, "-o", "yaml"]).expect_success(kind);
        haystacks.push((kind, out.stdout));
    }
    for (what, text) in &haystacks {
        assert!(
            !text.is_empty() || *what == "operator log",
            "{what} is empty"
        );
        for value in &secret_values {
            assert!(
                !text.contains(value.as_str()),
                "{what} contains a secret value"
            );
        }
    }
}
