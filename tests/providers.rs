//! A provider of the test's own, registered beside `kubernetes`, drives an
//! Instance through its whole life on the real control plane with no change
//! to any reconciler: the provider contract is all a new provider needs.
//!
//! The operator runs in this process (the library's `run_scope`), because a
//! provider defined here cannot be handed to the operator binary.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ctrlplane_operator::api::{Instance, InstancePhase};
use ctrlplane_operator::controller::{self, ControllerConfig, Scope};
use ctrlplane_operator::provider::{
    ActionNote, ApplyReason, Cleanup, Deprovision, InstanceProvider, InstanceWorkload, Named,
    ProviderResult, WakeupSlot, Wakeups, WorkloadId, WorkloadStatus,
};
use ctrlplane_operator::runtime::metrics::Metrics;
use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

const WAIT: Duration = Duration::from_secs(90);

/// What the memory provider runs for one Instance.
#[derive(Debug, Clone)]
struct Running {
    image: String,
    replicas: i32,
    restart_token: Option<String>,
    /// Deprovisioning has begun: one more call finishes it.
    going: bool,
}

/// A provider that "runs" workloads in memory: what it is asked to apply is
/// at once what runs, every replica ready. It deprovisions in two steps, so
/// the explicit clean-up path (the Instance waits for it) is exercised too.
struct MemoryProvider {
    running: Mutex<HashMap<(String, String), Running>>,
    calls: Mutex<Vec<String>>,
    wake: futures::channel::mpsc::UnboundedSender<WorkloadId>,
    wakeups: WakeupSlot,
}

impl MemoryProvider {
    fn new() -> Self {
        let (wake, wakeups) = futures::channel::mpsc::unbounded();
        Self {
            running: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            wake,
            wakeups: WakeupSlot::new(wakeups.boxed()),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Named for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }
}

#[async_trait]
impl InstanceProvider for MemoryProvider {
    async fn apply(
        &self,
        workload: &InstanceWorkload,
        reason: ApplyReason,
    ) -> ProviderResult<Vec<ActionNote>> {
        let wanted = Running {
            image: workload.image.clone(),
            replicas: workload.replicas,
            restart_token: workload.restart_token.clone(),
            going: false,
        };
        let key = (workload.namespace.clone(), workload.name.clone());
        let changed = {
            let mut running = self.running.lock().unwrap();
            let changed = running.get(&key).is_none_or(|held| {
                (&held.image, held.replicas, &held.restart_token)
                    != (&wanted.image, wanted.replicas, &wanted.restart_token)
            });
            running.insert(key, wanted);
            changed
        };
        if changed {
            self.calls.lock().unwrap().push(reason.as_str().to_string());
            // What runs changed: the Instance is to look again.
            let _ = self.wake.unbounded_send(workload.id());
        }
        Ok(Vec::new())
    }

    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision> {
        self.calls.lock().unwrap().push("deprovision".into());
        let key = (id.namespace.clone(), id.name.clone());
        let mut running = self.running.lock().unwrap();
        let done = match running.get_mut(&key) {
            Some(held) if held.going => {
                running.remove(&key);
                Deprovision::Done
            }
            Some(held) => {
                held.going = true;
                Deprovision::InProgress
            }
            None => Deprovision::Done,
        };
        let _ = self.wake.unbounded_send(id.clone());
        Ok(done)
    }

    async fn observe(&self, id: &WorkloadId) -> ProviderResult<Option<WorkloadStatus>> {
        let running = self.running.lock().unwrap();
        Ok(running
            .get(&(id.namespace.clone(), id.name.clone()))
            .map(|held| WorkloadStatus {
                provider_ref: ctrlplane_operator::api::ProviderRef {
                    provider: "memory".into(),
                    kind: "MemoryWorkload".into(),
                    name: id.name.clone(),
                },
                current: true,
                image: held.image.clone(),
                desired_replicas: held.replicas,
                replicas: held.replicas,
                ready_replicas: held.replicas,
                restart_token: held.restart_token.clone(),
                rollout_complete: true,
                progress_deadline_exceeded: None,
                problems: Vec::new(),
                endpoint_ready: true,
                terminating: held.going,
            }))
    }

    fn cleanup(&self) -> Cleanup {
        Cleanup::Deprovision
    }

    fn wakeups(&self) -> Option<Wakeups> {
        self.wakeups.take()
    }
}

fn phase(instance: &Instance) -> Option<InstancePhase> {
    instance.status.as_ref().and_then(|s| s.phase)
}

fn ready(instance: &Instance) -> bool {
    instance.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && serde_json::to_value(c.status).unwrap() == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_of_a_test_s_own_runs_an_instance_through_its_whole_life() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_crds();
    let ns = TestNamespace::create("provider-memory");
    let client = client().await;
    let provider = Arc::new(MemoryProvider::new());
    let config = ControllerConfig {
        default_provider: "kubernetes".into(),
        concurrency: 4,
        reporter_instance: "provider-test".into(),
        delivery: controller::delivery::DeliveryConfig {
            allow_private_addresses: true,
            completed_ttl: Duration::from_secs(60),
            per_endpoint_concurrency: 2,
            concurrency: 4,
        },
        extra_instance_providers: vec![provider.clone() as Arc<dyn InstanceProvider>],
    };
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    }
    .boxed()
    .shared();
    let operator = tokio::spawn(controller::run_scope(
        client.clone(),
        Scope::Namespace(ns.name.clone()),
        config,
        Arc::new(Metrics::default()),
        || {},
        shutdown,
    ));

    let instances: Api<Instance> = Api::namespaced(client, &ns.name);
    apply_manifest(
        &ns.name,
        "apiVersion: ctrlplane.dev/v1alpha1\nkind: Instance\nmetadata:\n  name: vm\nspec:\n  provider: memory\n  image: example.test/app:1\n  replicas: 2\n",
    )
    .expect_success("applying the Instance");
    let wait = |what: &'static str, check: fn(&Instance) -> bool| {
        let instances = instances.clone();
        async move {
            wait_until(what, WAIT, || async {
                let instance = instances.get("vm").await.map_err(|e| e.to_string())?;
                Ok(check(&instance).then_some(instance))
            })
            .await
        }
    };
    let running = wait("Running on the memory provider", |i| {
        phase(i) == Some(InstancePhase::Running) && ready(i)
    })
    .await;
    let status = running.status.unwrap();
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(
        status
            .provider_ref
            .map(|r| (r.provider.to_string(), r.kind.to_string())),
        Some(("memory".to_string(), "MemoryWorkload".to_string()))
    );

    let patch = |spec: serde_json::Value| {
        let instances = instances.clone();
        async move {
            instances
                .patch(
                    "vm",
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({ "spec": spec })),
                )
                .await
                .unwrap();
        }
    };
    patch(serde_json::json!({"replicas": 3})).await;
    wait("scaled to 3", |i| {
        ready(i) && i.status.as_ref().is_some_and(|s| s.ready_replicas == 3)
    })
    .await;
    patch(serde_json::json!({"state": "Stopped"})).await;
    wait("Stopped", |i| phase(i) == Some(InstancePhase::Stopped)).await;
    patch(serde_json::json!({"state": "Running"})).await;
    wait("Running again", |i| {
        phase(i) == Some(InstancePhase::Running) && ready(i)
    })
    .await;

    instances
        .delete("vm", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Instance to be gone", WAIT, || async {
        Ok(instances
            .get_opt("vm")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
    // It waited for the provider to finish deprovisioning: the first call
    // only began it.
    let calls = provider.calls();
    assert!(
        calls.iter().filter(|c| *c == "deprovision").count() >= 2,
        "{calls:?}"
    );
    assert!(provider.running.lock().unwrap().is_empty());
    // The reasons the engine passed along: the verbs survive as reasons.
    for reason in ["start", "scale", "stop"] {
        assert!(calls.iter().any(|c| c == reason), "{reason} in {calls:?}");
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
}
