//! The `pod` provider for Sandboxes: a PersistentVolumeClaim that keeps the
//! data across stops, a Pod while it runs (placed on the host the planner
//! chose, with a restricted security context), and a Service when it
//! declares ports. Building the objects and reading them are pure functions;
//! the provider applies them and reads its caches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Node, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodStatus,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, Toleration, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use super::kubernetes::{FIELD_MANAGER, pod_problems};
use super::shape;
use super::{ActionNote, Deprovision, ProviderError, ProviderResult, SandboxProvider, WorkloadId};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::plan::capacity::{Host, SANDBOX_HOST_TAINT};
use crate::plan::sandbox::{
    ClaimObserved, PodObserved, SANDBOX_LABEL, SandboxObserved, SandboxWorkload, claim_name, milli,
};

/// The provider's name in spec.provider.
pub const NAME: &str = "pod";
/// The annotation that records which revision of the spec a Pod was made from.
pub const REVISION_ANNOTATION: &str = "ctrlplane.dev/revision";
/// The annotation that records the host the operator chose for a Pod.
pub const HOST_ANNOTATION: &str = "ctrlplane.dev/host";
/// Where the claim is mounted in the sandbox.
pub const DATA_PATH: &str = "/data";
/// The user sandbox containers run as when the image does not say.
const SANDBOX_USER: i64 = 65532;

fn labels(workload: &SandboxWorkload) -> BTreeMap<String, String> {
    let mut labels = workload.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(SANDBOX_LABEL.to_string(), workload.name.clone());
    labels
}

fn meta(workload: &SandboxWorkload, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(workload.namespace.clone()),
        labels: Some(labels(workload)),
        owner_references: Some(vec![workload.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The claim that keeps a sandbox's data. Pure.
pub fn claim_for(workload: &SandboxWorkload) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(workload, &workload.claim_name),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: workload.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(workload.storage.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The Pod of a running sandbox, on its chosen host. Pure.
pub fn pod_for(workload: &SandboxWorkload, host: &str, host_label: &str) -> Pod {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(workload.cpu.clone())),
        ("memory".to_string(), Quantity(workload.memory.clone())),
    ]);
    let mut metadata = meta(workload, &workload.name);
    metadata.annotations = Some(BTreeMap::from([
        (REVISION_ANNOTATION.to_string(), workload.revision.clone()),
        (HOST_ANNOTATION.to_string(), host.to_string()),
    ]));
    let env = shape::container_env(&workload.env);
    let ports = shape::container_ports(&workload.ports);
    Pod {
        metadata,
        spec: Some(PodSpec {
            // The operator chose the host with room for it (see the capacity
            // check); the scheduler only confirms, and binds the claim.
            node_selector: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                host_label.to_string(),
            )])),
            tolerations: Some(vec![Toleration {
                key: Some(SANDBOX_HOST_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }]),
            // Restricted by default, as the Pod Security Standards define it.
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(SANDBOX_USER),
                run_as_group: Some(SANDBOX_USER),
                fs_group: Some(SANDBOX_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![Container {
                name: "sandbox".into(),
                image: Some(workload.image.clone()),
                resources: Some(ResourceRequirements {
                    requests: Some(resources.clone()),
                    limits: Some(resources),
                    ..ResourceRequirements::default()
                }),
                env: (!env.is_empty()).then_some(env),
                ports: (!ports.is_empty()).then_some(ports),
                volume_mounts: Some(vec![VolumeMount {
                    name: "data".into(),
                    mount_path: DATA_PATH.into(),
                    ..VolumeMount::default()
                }]),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: workload.claim_name.clone(),
                    read_only: Some(false),
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The Service of a sandbox that declares ports. Pure.
pub fn service_for(workload: &SandboxWorkload) -> Option<Service> {
    shape::cluster_ip_service(
        meta(workload, &workload.name),
        (SANDBOX_LABEL, &workload.name),
        &workload.ports,
    )
}

/// Container waiting reasons that mean the Pod cannot start by itself.
const STUCK: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What a sandbox's Pod says about itself. Pure.
pub fn pod_observed(pod: &Pod) -> PodObserved {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let unschedulable = status.conditions.iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    let stuck = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| STUCK.contains(&r))
    });
    let failed = status.phase.as_deref() == Some("Failed") || unschedulable || stuck;
    let problems = if ready {
        Vec::new()
    } else {
        pod_problems(&[Arc::new(pod.clone())])
    };
    PodObserved {
        name: pod.name_any(),
        revision: pod.annotations().get(REVISION_ANNOTATION).cloned(),
        ready,
        ip: status.pod_ip.clone(),
        host: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        failed,
        problems,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// CPU (millicores) and memory (bytes) a Pod asks for.
fn pod_requests(pod: &Pod) -> (i64, i64) {
    let mut cpu = 0;
    let mut memory = 0;
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        if let Some(q) = requests.and_then(|r| r.get("cpu")) {
            cpu += kube_quantity::ParsedQuantity::try_from(q)
                .ok()
                .and_then(|q| milli(&q, true))
                .unwrap_or(0);
        }
        if let Some(q) = requests.and_then(|r| r.get("memory")) {
            memory += kube_quantity::ParsedQuantity::try_from(q)
                .ok()
                .and_then(|q| milli(&q, false))
                .unwrap_or(0);
        }
    }
    (cpu, memory)
}

/// Shrinks a Pod of the cluster-wide capacity cache to what [`hosts_from`]
/// reads: its name, the host annotation, the node it is bound to, what its
/// containers request, and its phase. That cache holds every Pod in the
/// cluster for as long as the operator runs, most of them not ours.
pub fn keep_what_capacity_needs(pod: &mut Pod) {
    let metadata = &mut pod.metadata;
    metadata.managed_fields = None;
    metadata.labels = None;
    metadata.owner_references = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.retain(|key, _| key == HOST_ANNOTATION);
    }
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            containers: spec
                .containers
                .into_iter()
                .map(|container| Container {
                    name: container.name,
                    resources: container.resources.map(|r| ResourceRequirements {
                        requests: r.requests,
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            ..PodStatus::default()
        });
    }
}

/// The hosts, with what every Pod bound or headed to them asks for. Pure.
pub fn hosts_from(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    reserved: &[(String, i64, i64)],
) -> Vec<Host> {
    let mut used: HashMap<String, (i64, i64)> = HashMap::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        // Bound, or one of ours on its way to the host we chose.
        let host = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .or_else(|| pod.annotations().get(HOST_ANNOTATION).cloned());
        if let Some(host) = host {
            let (cpu, memory) = pod_requests(pod);
            let entry = used.entry(host).or_default();
            entry.0 += cpu;
            entry.1 += memory;
        }
    }
    for (host, cpu, memory) in reserved {
        let entry = used.entry(host.clone()).or_default();
        entry.0 += cpu;
        entry.1 += memory;
    }
    nodes
        .iter()
        .map(|node| {
            let status = node.status.clone().unwrap_or_default();
            let allocatable = status.allocatable.unwrap_or_default();
            let parse = |key: &str, thousandths: bool| {
                allocatable
                    .get(key)
                    .and_then(|q| kube_quantity::ParsedQuantity::try_from(q).ok())
                    .and_then(|q| milli(&q, thousandths))
                    .unwrap_or(0)
            };
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let spec = node.spec.clone().unwrap_or_default();
            let (requested_cpu, requested_memory) =
                used.get(&node.name_any()).copied().unwrap_or_default();
            Host {
                name: node.name_any(),
                labels: node.labels().clone(),
                allocatable_cpu: parse("cpu", true),
                allocatable_memory: parse("memory", false),
                requested_cpu,
                requested_memory,
                schedulable: ready && !spec.unschedulable.unwrap_or(false),
                blocking_taints: spec
                    .taints
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                    .map(|t| t.key)
                    .collect(),
            }
        })
        .collect()
}

/// The caches the pod provider reads.
#[derive(Clone)]
pub struct Caches {
    /// Our Pods, PVCs and Services in the scope.
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    pub services: Store<Service>,
    /// Every node, and every Pod in the cluster, for the capacity check.
    pub nodes: Store<Node>,
    pub all_pods: Store<Pod>,
}

/// A Pod just created, counted against its host until the cache shows it.
struct Reservation {
    host: String,
    cpu: i64,
    memory: i64,
    at: Instant,
}

/// Runs sandboxes as Pods with claims.
pub struct PodProvider {
    client: Client,
    caches: Caches,
    reservations: Mutex<HashMap<(String, String), Reservation>>,
}

impl PodProvider {
    pub fn new(client: Client, caches: Caches) -> Self {
        Self {
            client,
            caches,
            reservations: Mutex::new(HashMap::new()),
        }
    }

    fn kube_error(
        &self,
        action: String,
        namespace: &str,
    ) -> impl FnOnce(kube::Error) -> ProviderError + '_ {
        let namespace = namespace.to_string();
        move |source| ProviderError::kube(action, &namespace, source)
    }
}

impl super::Named for PodProvider {
    fn name(&self) -> &str {
        NAME
    }
}

#[async_trait]
impl SandboxProvider for PodProvider {
    async fn provision(&self, workload: &SandboxWorkload) -> ProviderResult<Vec<ActionNote>> {
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &workload.namespace);
        let cached = self
            .caches
            .claims
            .get(&ObjectRef::new(&workload.claim_name).within(&workload.namespace));
        if cached.is_none() {
            match claims
                .create(&PostParams::default(), &claim_for(workload))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(source) => {
                    return Err(self.kube_error(
                        format!("creating claim {}", workload.claim_name),
                        &workload.namespace,
                    )(source));
                }
            }
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &workload.namespace);
        let cached_service = self
            .caches
            .services
            .get(&ObjectRef::new(&workload.name).within(&workload.namespace));
        match service_for(workload) {
            Some(desired) => {
                let ports = |s: &Service| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.ports.clone())
                        .unwrap_or_default()
                };
                if cached_service
                    .as_deref()
                    .is_none_or(|c| ports(c) != ports(&desired))
                {
                    services
                        .patch(
                            &workload.name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&desired),
                        )
                        .await
                        .map_err(self.kube_error(
                            format!("applying Service {}", workload.name),
                            &workload.namespace,
                        ))?;
                }
            }
            None if cached_service.is_some() => {
                let _ = services
                    .delete(&workload.name, &DeleteParams::default())
                    .await;
            }
            None => {}
        }
        Ok(Vec::new())
    }

    async fn start(&self, workload: &SandboxWorkload) -> ProviderResult<Vec<ActionNote>> {
        let Some(host) = &workload.host else {
            return Ok(Vec::new());
        };
        let host_label = self
            .caches
            .nodes
            .get(&ObjectRef::new(host))
            .and_then(|n| n.labels().get("kubernetes.io/hostname").cloned())
            .unwrap_or_else(|| host.clone());
        let pod = pod_for(workload, host, &host_label);
        let (cpu, memory) = pod_requests(&pod);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &workload.namespace);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                if let Ok(mut reservations) = self.reservations.lock() {
                    reservations.insert(
                        (workload.namespace.clone(), workload.name.clone()),
                        Reservation {
                            host: host.clone(),
                            cpu,
                            memory,
                            at: Instant::now(),
                        },
                    );
                }
                Ok(vec![ActionNote {
                    warning: false,
                    reason: "PodCreated".into(),
                    message: format!("pod {} placed on {host}", workload.name),
                }])
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Vec::new()),
            Err(source) => Err(self.kube_error(
                format!("creating pod {}", workload.name),
                &workload.namespace,
            )(source)),
        }
    }

    async fn stop(&self, id: &WorkloadId) -> ProviderResult<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &id.namespace);
        match pods.delete(&id.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(self
                .kube_error(format!("deleting pod {}", id.name), &id.namespace)(
                source
            )),
        }
    }

    async fn deprovision(&self, id: &WorkloadId) -> ProviderResult<Deprovision> {
        let mut gone = true;
        let delete = |result: Result<_, kube::Error>, what: String| match result {
            Ok(_) => Ok(false),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(true),
            Err(source) => Err(ProviderError::kube(what, &id.namespace, source)),
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &id.namespace);
        gone &= delete(
            pods.delete(&id.name, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("deleting pod {}", id.name),
        )?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &id.namespace);
        gone &= delete(
            services
                .delete(&id.name, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("deleting Service {}", id.name),
        )?;
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &id.namespace);
        let claim = claim_name(&id.name);
        gone &= delete(
            claims
                .delete(&claim, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("deleting claim {claim}"),
        )?;
        Ok(if gone {
            Deprovision::Done
        } else {
            Deprovision::InProgress
        })
    }

    async fn status(&self, id: &WorkloadId) -> ProviderResult<SandboxObserved> {
        let pod = self
            .caches
            .pods
            .get(&ObjectRef::new(&id.name).within(&id.namespace));
        if pod.is_some()
            && let Ok(mut reservations) = self.reservations.lock()
        {
            reservations.remove(&(id.namespace.clone(), id.name.clone()));
        }
        let claim = self
            .caches
            .claims
            .get(&ObjectRef::new(&claim_name(&id.name)).within(&id.namespace))
            .map(|c| ClaimObserved {
                name: c.name_any(),
                bound: c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
            });
        let service = self
            .caches
            .services
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
            .is_some_and(|s| s.labels().get(SANDBOX_LABEL) == Some(&id.name));
        Ok(SandboxObserved {
            claim,
            pod: pod.map(|p| pod_observed(&p)),
            service,
        })
    }

    async fn hosts(&self) -> ProviderResult<Vec<Host>> {
        let pods = self.caches.all_pods.state();
        let reserved: Vec<(String, i64, i64)> = {
            let Ok(mut reservations) = self.reservations.lock() else {
                return Ok(hosts_from(&self.caches.nodes.state(), &pods, &[]));
            };
            // A reservation ends when the cache has the Pod, or after a
            // minute in any case.
            reservations.retain(|(namespace, name), r| {
                r.at.elapsed() < Duration::from_secs(60)
                    && !pods.iter().any(|p| {
                        p.namespace().as_deref() == Some(namespace.as_str())
                            && &p.name_any() == name
                    })
            });
            reservations
                .values()
                .map(|r| (r.host.clone(), r.cpu, r.memory))
                .collect()
        };
        Ok(hosts_from(&self.caches.nodes.state(), &pods, &reserved))
    }
}

#[cfg(test)]
mod tests;
