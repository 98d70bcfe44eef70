//! Tests of the pure parts of the kubernetes provider: the objects it builds
//! and how it reads their status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;
use crate::api::Protocol;
use crate::api::{
    EnvVar, ExecHealthCheck, HealthCheck, HttpHealthCheck, InstanceResources, PortSpec,
    SecretKeySelector,
};
use crate::provider::cached::CachedPod;
use crate::provider::shape::service_matches;
use k8s_openapi::api::core::v1::Pod;

fn workload() -> InstanceWorkload {
    InstanceWorkload {
        namespace: "team-a".into(),
        name: "web".into(),
        owner: OwnerReference {
            api_version: "ctrlplane.dev/v1alpha1".into(),
            kind: "Instance".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
        labels: [("app.kubernetes.io/part-of".to_string(), "shop".to_string())].into(),
        image: "nginx:1.27".into(),
        replicas: 3,
        resources: Some(InstanceResources {
            cpu: Some(Quantity("250m".into())),
            memory: Some(Quantity("256Mi".into())),
        }),
        env: vec![
            EnvVar {
                name: "LOG_LEVEL".into(),
                value: Some("info".into()),
                secret_key_ref: None,
            },
            EnvVar {
                name: "DB_PASSWORD".into(),
                value: None,
                secret_key_ref: Some(SecretKeySelector {
                    name: "db".into(),
                    key: "password".into(),
                }),
            },
        ],
        ports: vec![
            PortSpec {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            PortSpec {
                name: "metrics".into(),
                port: 9090,
                protocol: Protocol::Tcp,
            },
        ],
        health_check: Some(HealthCheck {
            http_get: Some(HttpHealthCheck {
                path: "/healthz".into(),
                port: "http".into(),
            }),
            tcp_socket: None,
            exec: None,
            initial_delay_seconds: None,
            period_seconds: Some(5),
            timeout_seconds: None,
            failure_threshold: Some(2),
        }),
        region: Some("eu-west-1".into()),
        restart_token: Some("2026-11-01T12:00:00+00:00".into()),
        progress_deadline_seconds: 120,
    }
}

#[test]
fn the_deployment_carries_everything_the_instance_asks_for() {
    let deployment = deployment_for(&workload());
    let labels = deployment.metadata.labels.clone().unwrap();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("ctrlplane-operator")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        labels.get("ctrlplane.dev/instance").map(String::as_str),
        Some("web")
    );
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("uid-1", Some(true))
    );

    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.progress_deadline_seconds, Some(120));
    assert_eq!(
        spec.selector.match_labels.unwrap(),
        [("ctrlplane.dev/instance".to_string(), "web".to_string())].into()
    );
    let template = spec.template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
            .get(RESTART_ANNOTATION)
            .map(String::as_str),
        Some("2026-11-01T12:00:00+00:00")
    );
    let pod = template.spec.unwrap();
    assert_eq!(
        pod.node_selector
            .unwrap()
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("eu-west-1")
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("nginx:1.27"));
    let resources = container.resources.clone().unwrap();
    assert_eq!(
        resources.requests.unwrap().get("cpu"),
        Some(&Quantity("250m".into()))
    );
    assert_eq!(
        resources.limits.unwrap().get("memory"),
        Some(&Quantity("256Mi".into()))
    );
    let env = container.env.clone().unwrap();
    assert_eq!(env[0].value.as_deref(), Some("info"));
    let secret = env[1]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("db", "password")
    );
    assert!(
        env[1].value.is_none(),
        "a secret is referenced, never copied"
    );
    let ports = container.ports.clone().unwrap();
    assert_eq!(ports.len(), 2);
    let readiness = container.readiness_probe.clone().unwrap();
    let http = readiness.http_get.unwrap();
    assert_eq!(
        (http.path.as_deref(), http.port),
        (Some("/healthz"), IntOrString::String("http".into()))
    );
    assert_eq!(readiness.period_seconds, Some(5));
    assert_eq!(
        container.liveness_probe.as_ref().unwrap().failure_threshold,
        Some(2)
    );
}

#[test]
fn an_exec_health_check_becomes_an_exec_probe() {
    let mut w = workload();
    w.health_check = Some(HealthCheck {
        http_get: None,
        tcp_socket: None,
        exec: Some(ExecHealthCheck {
            command: vec!["/bin/check".into()],
        }),
        initial_delay_seconds: None,
        period_seconds: None,
        timeout_seconds: None,
        failure_threshold: None,
    });
    let deployment = deployment_for(&w);
    let probe = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .readiness_probe
        .clone()
        .unwrap();
    assert_eq!(
        probe.exec.unwrap().command,
        Some(vec!["/bin/check".to_string()])
    );
}

#[test]
fn the_service_has_one_port_per_declared_port_and_none_without_ports() {
    let service = service_for(&workload()).unwrap();
    let spec = service.spec.unwrap();
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[1].name.as_deref(), Some("metrics"));
    assert_eq!(ports[1].port, 9090);
    assert_eq!(
        ports[1].target_port,
        Some(IntOrString::String("metrics".into()))
    );
    assert_eq!(
        spec.selector
            .unwrap()
            .get("ctrlplane.dev/instance")
            .map(String::as_str),
        Some("web")
    );

    let mut no_ports = workload();
    no_ports.ports.clear();
    assert!(service_for(&no_ports).is_none());
}

#[test]
fn a_service_matches_itself_and_not_a_changed_one() {
    let desired = service_for(&workload()).unwrap();
    // As the cache keeps it.
    let cached = |service: &Service| {
        let mut cached = CachedService::of(service);
        crate::provider::shape::keep_what_the_providers_compare(&mut cached);
        cached
    };
    // After the API server has filled in the rest.
    let mut served = desired.clone();
    let spec = served.spec.as_mut().unwrap();
    spec.cluster_ip = Some("127.0.0.200".into());
    spec.session_affinity = Some("None".into());
    served
        .metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "web".into());
    assert!(service_matches(&cached(&served), &desired));
    let mut edited = served.clone();
    edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 80;
    assert!(!service_matches(&cached(&edited), &desired));
    let mut retargeted = served.clone();
    retargeted.spec.as_mut().unwrap().selector =
        Some([("app".to_string(), "other".to_string())].into());
    assert!(!service_matches(&cached(&retargeted), &desired));
    let mut orphaned = served.clone();
    orphaned.metadata.owner_references = None;
    assert!(!service_matches(&cached(&orphaned), &desired));
    let kept = cached(&served);
    assert!(
        kept.metadata.labels.is_none() && !kept.spec.as_ref().unwrap().labels.is_empty(),
        "with a controlling owner, the labels move into the slim spec"
    );
    let kept_spec = kept.spec.as_ref().unwrap();
    assert!(
        kept_spec.fingerprint.is_some()
            && kept_spec.ports.is_none()
            && kept_spec.selector.is_empty()
            && kept_spec.type_.is_none(),
        "the selector, type and ports are kept as their fingerprint"
    );
    assert!(
        service_matches(&CachedService::of(&served), &desired),
        "a Service the cache did not trim is compared field by field"
    );
    let mut renumbered = served.clone();
    renumbered.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(IntOrString::Int(8080));
    assert!(!service_matches(&cached(&renumbered), &desired));
    let mut retyped = served.clone();
    retyped.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    assert!(!service_matches(&cached(&retyped), &desired));
    let mut relabelled = served.clone();
    relabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(INSTANCE_LABEL);
    assert!(!service_matches(&cached(&relabelled), &desired));
}

fn pod(name: &str, container: ContainerStatus) -> Arc<CachedPod> {
    Arc::new(CachedPod::of(&Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![container]),
            ..PodStatus::default()
        }),
    }))
}

#[test]
fn pod_problems_say_what_a_user_can_act_on() {
    let crashing = pod(
        "web-1",
        ContainerStatus {
            name: "app".into(),
            ready: false,
            restart_count: 5,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: Some("back-off 5m0s".into()),
                }),
                ..ContainerState::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        },
    );
    let problems = pod_problems(&[crashing.clone(), crashing]);
    assert_eq!(
        problems,
        vec![
            "pod web-1: container app is in CrashLoopBackOff (restarted 5 times, last exit code 1): back-off 5m0s"
        ]
    );

    let unschedulable = Arc::new(CachedPod::of(&Pod {
        metadata: ObjectMeta {
            name: Some("web-2".into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(
                    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector"
                        .into(),
                ),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }));
    let problems = pod_problems(&[unschedulable]);
    assert!(problems[0].contains("cannot be scheduled") && problems[0].contains("node affinity"));
}

#[test]
fn the_cache_of_instance_pods_keeps_only_what_explains_a_pod_that_is_not_ready() {
    let of_web = |pod: Arc<CachedPod>| {
        let mut pod = CachedPod::clone(&pod);
        pod.metadata.namespace = Some("team".into());
        pod.metadata.labels = Some([(INSTANCE_LABEL.to_string(), "web".to_string())].into());
        pod
    };
    let container = |ready: bool, waiting: Option<&str>| ContainerStatus {
        name: "app".into(),
        ready,
        state: Some(ContainerState {
            waiting: waiting.map(|reason| ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            running: (waiting.is_none()).then(Default::default),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    let mut ready = of_web(pod("web-1", container(true, None)));
    ready.status.as_mut().unwrap().conditions = Some(vec![crate::provider::cached::Condition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    let creating = of_web(pod("web-2", container(false, Some("ContainerCreating"))));
    assert_eq!(pod_health(&ready), None, "a ready pod is not kept");
    assert_eq!(pod_health(&creating), None, "nor one that is on its way");

    let pulling = of_web(pod("web-3", container(false, Some("ImagePullBackOff"))));
    let health = pod_health(&pulling).expect("a pod with a problem is kept");
    assert_eq!(
        (health.namespace.as_str(), health.instance.as_str()),
        ("team", "web")
    );
    assert_eq!(
        describe_problems(health.problems),
        pod_problems(&[Arc::new(pulling.clone())]),
        "and says what the whole pod would"
    );
    assert_eq!(
        unready_pod_owner(&pulling).map(|id| (id.namespace, id.name)),
        Some(("team".to_string(), "web".to_string())),
        "an unready pod wakes its Instance"
    );
    assert_eq!(unready_pod_owner(&ready), None);
}

/// Our Deployment with `status`, as the cache holds it.
fn deployment_with(status: DeploymentStatus, generation: i64) -> CachedDeployment {
    let mut deployment = deployment_for(&workload());
    deployment.metadata.generation = Some(generation);
    deployment.status = Some(status);
    CachedDeployment::of(&deployment)
}

#[test]
fn the_workload_status_reads_rollout_progress_and_the_deadline() {
    let complete = deployment_with(
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            ready_replicas: Some(3),
            updated_replicas: Some(3),
            available_replicas: Some(3),
            ..DeploymentStatus::default()
        },
        2,
    );
    let status = workload_status(&complete, None, Vec::new, true, true);
    assert!(
        status.current && status.rollout_complete && status.progress_deadline_exceeded.is_none()
    );
    assert_eq!(status.image, "nginx:1.27");
    assert_eq!(
        status.restart_token.as_deref(),
        Some("2026-11-01T12:00:00+00:00")
    );
    assert!(!status.endpoint_ready, "no Service yet");

    // The controller has not seen generation 3 yet: nothing can be judged.
    let behind = deployment_with(
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            ready_replicas: Some(3),
            updated_replicas: Some(3),
            available_replicas: Some(3),
            ..DeploymentStatus::default()
        },
        3,
    );
    let status = workload_status(&behind, None, Vec::new, false, true);
    assert!(!status.current && !status.rollout_complete);

    let stuck = deployment_with(
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            ready_replicas: Some(1),
            updated_replicas: Some(3),
            available_replicas: Some(1),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        },
        2,
    );
    let status = workload_status(&stuck, None, Vec::new, false, true);
    assert!(status.progress_deadline_exceeded.is_some() && !status.rollout_complete);
}

#[test]
fn the_cache_keeps_a_deployment_condition_only_while_the_rollout_is_stuck() {
    let condition = |type_: &str, status: &str, reason: &str| DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some("ReplicaSet \"web-5d8f7c9b6\" has successfully progressed.".into()),
        ..DeploymentCondition::default()
    };
    let with_conditions = |conditions| {
        let mut deployment = deployment_with(
            DeploymentStatus {
                conditions: Some(conditions),
                ..DeploymentStatus::default()
            },
            2,
        );
        keep_what_the_provider_reads(&mut deployment);
        deployment
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
    };
    let healthy = with_conditions(vec![
        condition("Available", "True", "MinimumReplicasAvailable"),
        condition("Progressing", "True", "NewReplicaSetAvailable"),
    ]);
    assert!(healthy.is_empty(), "kept {healthy:?}");
    let stuck = with_conditions(vec![
        condition("Available", "False", "MinimumReplicasUnavailable"),
        condition("Progressing", "False", "ProgressDeadlineExceeded"),
    ]);
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].reason.as_deref(), Some("ProgressDeadlineExceeded"));
}

#[test]
fn the_trimmed_deployment_in_the_cache_reads_as_the_full_one() {
    let mut full = deployment_with(
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            ready_replicas: Some(1),
            updated_replicas: Some(3),
            available_replicas: Some(1),
            conditions: Some(vec![
                DeploymentCondition {
                    type_: "Available".into(),
                    status: "False".into(),
                    ..DeploymentCondition::default()
                },
                DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "False".into(),
                    reason: Some("ProgressDeadlineExceeded".into()),
                    ..DeploymentCondition::default()
                },
            ]),
            ..DeploymentStatus::default()
        },
        2,
    );
    full.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH_ANNOTATION.into(), "00000000000000ff".into());
    let mut trimmed = full.clone();
    keep_what_the_provider_reads(&mut trimmed);
    let crashing = pod(
        "web-1",
        ContainerStatus {
            name: "app".into(),
            restart_count: 4,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        },
    );
    for wants_service in [false, true] {
        assert_eq!(
            workload_status(
                &trimmed,
                None,
                || pod_problems(std::slice::from_ref(&crashing)),
                wants_service,
                true
            ),
            workload_status(
                &full,
                None,
                || pod_problems(std::slice::from_ref(&crashing)),
                wants_service,
                true
            )
        );
    }
    let hash = 0xff;
    assert_eq!(
        applied_before_a_restart(Some(&trimmed), &workload(), hash).map(|a| a.generation),
        applied_before_a_restart(Some(&full), &workload(), hash).map(|a| a.generation)
    );
    assert!(
        trimmed.metadata.labels.is_none() && full.metadata.labels.is_some(),
        "with a controlling owner, the labels go"
    );
    assert_eq!(
        ownership(&trimmed, &workload().id()),
        ownership(&full, &workload().id())
    );
    assert!(serde_json::to_vec(&trimmed).unwrap().len() < serde_json::to_vec(&full).unwrap().len());
}

mod fingerprints {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use proptest::prelude::*;

    /// A Service port from a few names, numbers, targets and protocols, so
    /// that generated Services often agree and often differ by one field.
    fn port() -> impl Strategy<Value = ServicePort> {
        (
            prop::sample::select(vec!["http", "grpc", "metrics"]),
            prop::sample::select(vec![80, 8080]),
            prop::option::of(prop_oneof![
                Just(IntOrString::String("http".into())),
                Just(IntOrString::Int(8080)),
            ]),
            prop::option::of(prop::sample::select(vec!["TCP", "UDP"])),
        )
            .prop_map(|(name, port, target_port, protocol)| ServicePort {
                name: Some(name.into()),
                port,
                target_port,
                protocol: protocol.map(Into::into),
                ..ServicePort::default()
            })
    }

    fn with_ports(ports: Vec<ServicePort>, selector: &str) -> Service {
        let mut service = service_for(&workload()).unwrap();
        let spec = service.spec.as_mut().unwrap();
        spec.ports = Some(ports);
        spec.selector = Some([(INSTANCE_LABEL.to_string(), selector.to_string())].into());
        service
    }

    proptest! {
        /// The cache keeps a Service's selector, type and ports only as
        /// their fingerprint: a cached Service matches exactly when its
        /// selector and the ports' names, numbers, targets and protocols
        /// are as wanted, trimmed or not.
        #[test]
        fn a_trimmed_service_matches_when_its_fields_do(
            served_ports in prop::collection::vec(port(), 1..4),
            wanted_ports in prop::collection::vec(port(), 1..4),
            served_selector in prop::sample::select(vec!["web", "api"]),
        ) {
            let identity = |p: &ServicePort| {
                (p.name.clone(), p.port, p.target_port.clone(), p.protocol.clone())
            };
            let same = served_selector == "web"
                && served_ports.iter().map(identity).eq(wanted_ports.iter().map(identity));
            let served = with_ports(served_ports, served_selector);
            let desired = with_ports(wanted_ports, "web");
            let untrimmed = CachedService::of(&served);
            let mut trimmed = CachedService::of(&served);
            crate::provider::shape::keep_what_the_providers_compare(&mut trimmed);
            prop_assert_eq!(service_matches(&trimmed, &desired), same);
            prop_assert_eq!(service_matches(&untrimmed, &desired), same);
            prop_assert!(service_matches(&trimmed, &served));
        }
    }
}
