//! Tests of the pure parts of the pod provider.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, NodeCondition, NodeSpec, NodeStatus,
    PodCondition, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;
use crate::api::PortSpec;
use crate::api::Protocol;
use crate::provider::cached::CachedPod;

fn workload() -> SandboxWorkload {
    SandboxWorkload {
        namespace: "agents".into(),
        name: "box".into(),
        owner: OwnerReference {
            api_version: "ctrlplane.dev/v1alpha1".into(),
            kind: "Sandbox".into(),
            name: "box".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
        labels: [("ctrlplane.dev/agent-id".to_string(), "a1".to_string())].into(),
        image: "ghcr.io/acme/devbox:1".into(),
        cpu: "500m".into(),
        memory: "1Gi".into(),
        storage: "10Gi".into(),
        storage_class: Some("fast".into()),
        env: Vec::new(),
        ports: vec![PortSpec {
            name: "ssh".into(),
            port: 2222,
            protocol: Protocol::Tcp,
        }],
        run: RunWanted::On("node-a".into()),
        revision: "rev-1".into(),
        restore_from: None,
    }
}

#[test]
fn the_pod_is_restricted_pinned_and_mounts_the_claim() {
    let pod = pod_for(&workload(), "node-a", "node-a");
    let annotations = pod.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("rev-1")
    );
    assert_eq!(
        annotations.get(HOST_ANNOTATION).map(String::as_str),
        Some("node-a")
    );
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(
        labels.get("ctrlplane.dev/agent-id").map(String::as_str),
        Some("a1")
    );
    assert_eq!(labels.get(SANDBOX_LABEL).map(String::as_str), Some("box"));
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.node_selector
            .unwrap()
            .get("kubernetes.io/hostname")
            .map(String::as_str),
        Some("node-a")
    );
    let security = spec.security_context.unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert_eq!(spec.automount_service_account_token, Some(false));
    let container = &spec.containers[0];
    let container_security = container.security_context.clone().unwrap();
    assert_eq!(container_security.allow_privilege_escalation, Some(false));
    assert_eq!(
        container_security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    let resources = container.resources.clone().unwrap();
    assert_eq!(
        resources.requests, resources.limits,
        "Guaranteed QoS: requests equal limits"
    );
    assert_eq!(
        container.volume_mounts.as_ref().unwrap()[0].mount_path,
        DATA_PATH
    );
    let volume = &spec.volumes.unwrap()[0];
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "box-data"
    );
    assert_eq!(
        spec.tolerations.unwrap()[0].key.as_deref(),
        Some(SANDBOX_HOST_TAINT)
    );
}

#[test]
fn the_claim_asks_for_the_storage_in_the_class() {
    let claim = claim_for(&workload());
    let spec = claim.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources.unwrap().requests.unwrap().get("storage"),
        Some(&Quantity("10Gi".into()))
    );
    assert_eq!(claim.metadata.owner_references.unwrap()[0].uid, "uid-1");
}

#[test]
fn a_service_only_with_ports() {
    assert_eq!(
        service_for(&workload())
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap()[0]
            .port,
        2222
    );
    let mut no_ports = workload();
    no_ports.ports.clear();
    assert!(service_for(&no_ports).is_none());
}

fn pod(status: PodStatus) -> Pod {
    let mut pod = pod_for(&workload(), "node-a", "node-a");
    pod.status = Some(status);
    pod
}

#[test]
fn pods_that_cannot_start_are_failed_with_the_reason() {
    let pulling = pod(PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "sandbox".into(),
            ready: false,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("not found".into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    let observed = pod_observed(&CachedPod::of(&pulling));
    assert!(observed.failed && !observed.ready);
    assert!(observed.problems[0].contains("ImagePullBackOff"));
    assert_eq!(observed.revision.as_deref(), Some("rev-1"));

    let running = pod(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("10.244.0.3".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    let observed = pod_observed(&CachedPod::of(&running));
    assert!(observed.ready && !observed.failed && observed.problems.is_empty());
    assert_eq!(observed.ip.as_deref(), Some("10.244.0.3"));
}

fn node(name: &str, cpu: &str, memory: &str, taint: Option<&str>) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: taint.map(|key| {
                vec![Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]
            }),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(
                [
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(memory.into())),
                ]
                .into(),
            ),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    })
}

#[test]
fn hosts_count_bound_pods_pods_on_their_way_and_reservations() {
    let nodes = [
        node("node-a", "4", "8Gi", None),
        node("node-b", "2", "4Gi", Some(SANDBOX_HOST_TAINT)),
    ];
    let mut bound = pod_for(&workload(), "node-a", "node-a");
    bound.spec.as_mut().unwrap().node_name = Some("node-a".into());
    let on_its_way = pod_for(&workload(), "node-b", "node-b");
    let mut finished = pod_for(&workload(), "node-a", "node-a");
    finished.status = Some(PodStatus {
        phase: Some("Succeeded".into()),
        ..PodStatus::default()
    });
    let pods: Vec<PodUsage> = [bound, on_its_way, finished]
        .iter()
        .filter_map(|p| pod_usage(&CachedPod::of(p)))
        .collect();
    assert_eq!(pods.len(), 2, "a finished Pod takes no room");
    let hosts = hosts_from(&nodes, &pods, &[("node-a".into(), 1000, 1 << 30)]);
    let a = hosts.iter().find(|h| h.name == "node-a").unwrap();
    assert_eq!((a.allocatable_cpu, a.requested_cpu), (4000, 1500));
    assert_eq!(a.requested_memory, 2 << 30);
    let b = hosts.iter().find(|h| h.name == "node-b").unwrap();
    assert_eq!(b.requested_cpu, 500);
    assert_eq!(b.blocking_taints, vec![SANDBOX_HOST_TAINT.to_string()]);
    assert!(a.schedulable && b.schedulable);
}

#[test]
fn the_capacity_cache_keeps_a_summary_of_each_pod_and_follows_the_watch() {
    use crate::provider::cached::SummaryWriter;
    use kube::runtime::watcher::Event;

    let mut bound = pod_for(&workload(), "node-a", "node-a");
    bound.spec.as_mut().unwrap().node_name = Some("node-a".into());
    let on_its_way = pod_for(&workload(), "node-b", "node-b");
    let mut unbound_stranger = on_its_way.clone();
    unbound_stranger.metadata.name = Some("stranger".into());
    unbound_stranger.metadata.annotations = None;
    let [bound, on_its_way, unbound_stranger] =
        [bound, on_its_way, unbound_stranger].map(|p| CachedPod::of(&p));

    let mut writer = SummaryWriter::new(pod_usage);
    let usage = writer.summaries();
    for event in [
        Event::Init,
        Event::InitApply(bound.clone()),
        Event::InitApply(unbound_stranger.clone()),
    ] {
        writer.apply(&event);
    }
    assert!(
        usage.values().is_empty(),
        "a relist shows only once it is whole"
    );
    writer.apply(&Event::InitDone);
    assert_eq!(
        usage.values(),
        vec![PodUsage {
            host: "node-a".into(),
            cpu: 500,
            memory: 1 << 30,
        }],
        "a Pod with no host takes no room yet"
    );
    assert!(usage.contains("agents", &bound.name_any()));
    assert!(!usage.contains("agents", "stranger"));

    writer.apply(&Event::Apply(on_its_way.clone()));
    assert!(usage.contains("agents", &on_its_way.name_any()));
    let mut finished = bound.clone();
    finished.status.get_or_insert_default().phase = Some("Succeeded".into());
    writer.apply(&Event::Apply(finished));
    writer.apply(&Event::Delete(on_its_way.clone()));
    assert!(usage.values().is_empty(), "finished and deleted Pods go");
}

#[test]
fn a_claim_restored_from_a_snapshot_names_it_and_is_big_enough() {
    let mut restored = workload();
    restored.restore_from = Some(crate::provider::RestoreSource {
        volume_snapshot: "snap".into(),
        restore_size: Some("20Gi".into()),
    });
    let claim = claim_for(&restored);
    let spec = claim.spec.unwrap();
    let source = spec.data_source.unwrap();
    assert_eq!(
        (
            source.api_group.as_deref(),
            source.kind.as_str(),
            source.name.as_str()
        ),
        (Some("snapshot.storage.k8s.io"), "VolumeSnapshot", "snap")
    );
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "20Gi",
        "at least the snapshot's size"
    );
}

#[test]
fn a_command_s_environment_travels_on_stdin_escaped_for_printf() {
    let block = env_block(&[
        ("PLAIN".into(), "hello world".into()),
        ("TRICKY".into(), "a\\b\nc\td".into()),
    ]);
    assert_eq!(
        String::from_utf8(block).unwrap(),
        "PLAIN=hello world\nTRICKY=a\\\\b\\nc\\0011d\n\n"
    );
    let request = ExecRequest {
        argv: vec!["make".into(), "test".into()],
        env: vec![("TOKEN".into(), "s3cr3t".into())],
        working_dir: Some("src".into()),
        keep_bytes: 1,
    };
    let argv = exec_argv(&request);
    assert_eq!(&argv[..2], ["sh", "-c"]);
    assert_eq!(&argv[3..], ["ctrlplane-command", "src", "make", "test"]);
    assert!(
        argv.iter().all(|a| !a.contains("s3cr3t")),
        "no value in the request"
    );
    assert!(
        !format!("{request:?}").contains("s3cr3t"),
        "nor in its Debug"
    );
}

#[test]
fn the_trimmed_pod_in_the_cache_reads_as_the_full_one() {
    for status in [
        PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "sandbox".into(),
                image: "ghcr.io/acme/devbox:1".into(),
                image_id: "sha256:abc".into(),
                restart_count: 3,
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some("back-off".into()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/2 nodes are available".into()),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        },
        PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.244.0.3".into()),
            host_ip: Some("127.0.0.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        },
    ] {
        let full = pod(status);
        let mut trimmed = CachedPod::of(&full);
        keep_what_the_provider_reads(&mut trimmed);
        assert_eq!(pod_observed(&trimmed), pod_observed(&CachedPod::of(&full)));
        assert!(trimmed.spec.as_ref().unwrap().containers.is_empty());
        assert!(
            serde_json::to_vec(&trimmed).unwrap().len() * 2
                < serde_json::to_vec(&full).unwrap().len()
        );
    }
}

#[test]
fn only_a_change_that_matters_to_its_sandbox_wakes_it() {
    let news = |status: PodStatus| pod_is_news(&CachedPod::of(&pod(status)));
    let condition =
        |type_: &str, status: &str, reason: Option<&str>, message: Option<&str>| PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            ..PodCondition::default()
        };
    let pending = |conditions: Vec<PodCondition>, waiting: Option<&str>| PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(conditions),
        container_statuses: waiting.map(|reason| {
            vec![ContainerStatus {
                name: "sandbox".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: None,
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]
        }),
        ..PodStatus::default()
    };
    // On its way: created, waiting for its claim, scheduled, being made.
    assert!(!news(pending(Vec::new(), None)));
    assert!(!news(pending(
        vec![condition(
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("pod has unbound immediate PersistentVolumeClaims")
        )],
        None
    )));
    assert!(!news(pending(
        vec![condition("PodScheduled", "True", None, None)],
        Some("ContainerCreating")
    )));
    // News: a problem, a start, an end.
    assert!(news(pending(
        vec![condition("PodScheduled", "True", None, None)],
        Some("ImagePullBackOff")
    )));
    assert!(news(pending(
        vec![condition(
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("0/2 nodes are available")
        )],
        None
    )));
    assert!(news(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![condition("Ready", "True", None, None)]),
        ..PodStatus::default()
    }));
    assert!(news(PodStatus {
        phase: Some("Failed".into()),
        ..PodStatus::default()
    }));
    let mut going = pod(pending(Vec::new(), None));
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    assert!(
        pod_is_news(&CachedPod::of(&going)),
        "a pod going away is news"
    );

    let claim = |phase: &str| PersistentVolumeClaim {
        status: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    assert!(!claim_is_news(&claim("Pending")));
    assert!(claim_is_news(&claim("Bound")));
}
