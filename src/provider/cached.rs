//! What the caches keep of the Pods and Deployments the providers read:
//! the metadata, and of spec and status only the fields a provider looks at.
//!
//! Why not the k8s-openapi types, trimmed: a `Pod` is 2.4 KB before it
//! holds a single string, because its `PodSpec` and `PodStatus` reserve
//! room for every field Kubernetes has, and a `Deployment` with one
//! container is 4.6 KB. The caches hold one Deployment per Instance and one
//! Pod per replica for as
//! long as the operator runs: at 10,000 Instances the empty fields alone
//! took ~100 MB. The watches deserialize straight into these types instead,
//! so a field not named here is skipped as it is read and never allocated.
//!
//! A Service, kept whole, was 0.8 KB before its strings, for a selector and
//! ports. The cluster-wide view of every Pod that the capacity check sums
//! is kept as [`Summaries`], a few numbers per Pod.
//!
//! The field names are Kubernetes' own, so code that reads a cached object
//! reads it as it would read the full one. What is created or applied is
//! still the full type; only what is read back from the caches is slim.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerPort, ContainerState, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::MANAGED_BY_LABEL;

/// An object of kind `K` as a cache keeps it: its metadata, and the parts of
/// spec and status named by `Spec` and `Status`. It is a `kube::Resource`
/// of `K`'s kind, so it is watched, stored and looked up like `K`.
#[derive(Deserialize, Serialize)]
#[serde(bound(
    deserialize = "Spec: Deserialize<'de>, Status: Deserialize<'de>",
    serialize = "Spec: Serialize, Status: Serialize"
))]
pub struct Cached<K, Spec, Status> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<Spec>,
    pub status: Option<Status>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

impl<K, Spec, Status> Cached<K, Spec, Status>
where
    Spec: DeserializeOwned,
    Status: DeserializeOwned,
{
    /// What a cache would keep of `full`: the same object read through this
    /// type, as a watch reads it.
    pub fn of(full: &K) -> Self
    where
        K: Serialize,
    {
        serde_json::to_value(full)
            .and_then(serde_json::from_value)
            .unwrap_or_else(|_| Self {
                metadata: ObjectMeta::default(),
                spec: None,
                status: None,
                kind: PhantomData,
            })
    }
}

// Derived impls would ask `K` for Clone, Debug and Default too.
impl<K, Spec: Clone, Status: Clone> Clone for Cached<K, Spec, Status> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
            kind: PhantomData,
        }
    }
}

impl<K, Spec: std::fmt::Debug, Status: std::fmt::Debug> std::fmt::Debug
    for Cached<K, Spec, Status>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .field("status", &self.status)
            .finish()
    }
}

impl<K, Spec, Status> Default for Cached<K, Spec, Status> {
    fn default() -> Self {
        Self {
            metadata: ObjectMeta::default(),
            spec: None,
            status: None,
            kind: PhantomData,
        }
    }
}

impl<K: k8s_openapi::Resource, Spec, Status> k8s_openapi::Resource for Cached<K, Spec, Status> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Resource, Spec, Status> k8s_openapi::Metadata for Cached<K, Spec, Status> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of a cached object's metadata what tells what it is and whose:
/// its name, namespace, uid, versions, deletion, the owners `owner` accepts,
/// our labels (`ctrlplane.dev/…` and managed-by) and the annotations
/// `annotations` names. Labels and annotations are BTreeMaps, which hold
/// room for eleven entries (~0.5 KB) even when they hold one: a map left
/// empty goes altogether.
pub fn keep_our_metadata(
    metadata: &mut ObjectMeta,
    owner: impl Fn(&OwnerReference) -> bool,
    annotations: &[&str],
) {
    metadata.managed_fields = None;
    metadata.generate_name = None;
    metadata.creation_timestamp = None;
    keep_keys(&mut metadata.labels, |key| {
        key.starts_with(OUR_PREFIX) || key == MANAGED_BY_LABEL
    });
    keep_keys(&mut metadata.annotations, |key| annotations.contains(&key));
    if let Some(owners) = &mut metadata.owner_references {
        owners.retain(owner);
        if owners.is_empty() {
            metadata.owner_references = None;
        }
    }
}

/// The prefix of the labels and annotations the operator sets.
const OUR_PREFIX: &str = "ctrlplane.dev/";

fn keep_keys(map: &mut Option<BTreeMap<String, String>>, keep: impl Fn(&str) -> bool) {
    if let Some(entries) = map {
        entries.retain(|key, _| keep(key));
        if entries.is_empty() {
            *map = None;
        }
    }
}

/// A cache that keeps, of each object a watch reports, only a summary `V`
/// (or nothing, when the summary is `None`), by namespace and name.
///
/// Why not a reflector store of a slim type: a store keeps per object an
/// `Arc` of the whole type (its `ObjectMeta` alone is 360 bytes before it
/// holds a string) and an `ObjectRef` key of four strings. For a cache that
/// only ever sums what objects ask for, such as the capacity check's view
/// of every Pod in the cluster, that is ten times the summary.
pub struct Summaries<V> {
    by_name: Arc<RwLock<HashMap<Box<str>, V>>>,
}

impl<V> Clone for Summaries<V> {
    fn clone(&self) -> Self {
        Self {
            by_name: self.by_name.clone(),
        }
    }
}

impl<V> Default for Summaries<V> {
    fn default() -> Self {
        Self {
            by_name: Arc::default(),
        }
    }
}

impl<V: Clone> Summaries<V> {
    /// Whether an object of this namespace and name is summarised.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.read()
            .contains_key(summary_key(namespace, name).as_str())
    }

    /// Every summary, as of now.
    pub fn values(&self) -> Vec<V> {
        self.read().values().cloned().collect()
    }

    /// A reader never sees a half-made change, so a poisoned lock (a panic
    /// elsewhere while holding it) still holds a whole map.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, V>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn summary_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Feeds a [`Summaries`] from a watch's events. A relist is gathered apart
/// and swapped in whole at its end, as kube's own stores do, so a reader
/// never sees a cache emptied by a restarted watch.
pub struct SummaryWriter<K, V> {
    summaries: Summaries<V>,
    summarise: fn(&K) -> Option<V>,
    relisting: Option<HashMap<Box<str>, V>>,
}

impl<K: kube::Resource, V> SummaryWriter<K, V> {
    pub fn new(summarise: fn(&K) -> Option<V>) -> Self {
        Self {
            summaries: Summaries::default(),
            summarise,
            relisting: None,
        }
    }

    /// The cache this writer fills.
    pub fn summaries(&self) -> Summaries<V> {
        self.summaries.clone()
    }

    /// Takes in one watch event.
    pub fn apply(&mut self, event: &kube::runtime::watcher::Event<K>) {
        use kube::runtime::watcher::Event;
        let key = |object: &K| {
            let meta = object.meta();
            summary_key(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            )
            .into_boxed_str()
        };
        match event {
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let (Some(relisting), Some(summary)) =
                    (&mut self.relisting, (self.summarise)(object))
                {
                    relisting.insert(key(object), summary);
                }
            }
            Event::InitDone => {
                if let Some(mut relisted) = self.relisting.take() {
                    relisted.shrink_to_fit();
                    *self.write() = relisted;
                }
            }
            Event::Apply(object) => {
                let key = key(object);
                match (self.summarise)(object) {
                    Some(summary) => self.write().insert(key, summary),
                    None => self.write().remove(&key),
                };
            }
            Event::Delete(object) => {
                self.write().remove(&key(object));
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, V>> {
        self.summaries
            .by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A Pod: where it runs, what its containers ask for, and how it is doing.
pub type CachedPod = Cached<Pod, PodPlacement, PodReadiness>;

/// Of a Pod's spec: the node it is bound to and its containers' requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlacement {
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRequests>,
}

/// What one container asks for (`resources.requests`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ContainerRequests {
    pub resources: Option<Requests>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Requests {
    pub requests: Option<BTreeMap<String, Quantity>>,
}

/// Of a Pod's status: its phase, address, conditions and containers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReadiness {
    pub phase: Option<String>,
    pub message: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub conditions: Option<Vec<Condition>>,
    pub container_statuses: Option<Vec<ContainerReadiness>>,
}

/// A condition of a Pod or a Deployment, without its times.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// How one container is doing.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReadiness {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    pub state: Option<ContainerState>,
    pub last_state: Option<ContainerState>,
}

/// A Deployment: its replicas, what its template runs, and its rollout.
pub type CachedDeployment = Cached<Deployment, DeploymentShape, RolloutStatus>;

/// Of a Deployment's status: the counts a rollout is judged by, and its
/// conditions without their messages.
///
/// Why not `DeploymentStatus`: its two conditions, with their times and
/// messages (one names the Deployment's ReplicaSet, so no two are alike),
/// were ~0.5 KB per Deployment, and the provider reads one fact from them:
/// whether the rollout missed its deadline. The provider's trim keeps only
/// a condition that says so (see
/// [`crate::provider::kubernetes::keep_what_the_provider_reads`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    pub conditions: Option<Vec<RolloutCondition>>,
}

/// A condition of a Deployment: what it says, and when it last said it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub last_update_time: Option<Time>,
}

/// Of a Deployment's spec: the replicas and what the template runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct DeploymentShape {
    pub replicas: Option<i32>,
    #[serde(default)]
    pub template: TemplateShape,
    /// Not a field of the spec: the value of the Deployment's applied-hash
    /// annotation, moved here when the cache trims it, so that its
    /// annotations map (~0.6 KB for one entry) need not be kept.
    #[serde(skip)]
    pub applied_hash: Option<String>,
}

/// Of a pod template: its annotations and its containers' images and ports.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TemplateShape {
    pub metadata: Option<TemplateMetadata>,
    pub spec: Option<TemplateSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TemplateMetadata {
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TemplateSpec {
    #[serde(default)]
    pub containers: Vec<ContainerShape>,
}

/// One container of a template: its name, image and ports.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ContainerShape {
    #[serde(default)]
    pub name: String,
    pub image: Option<String>,
    pub ports: Option<Vec<ContainerPort>>,
}

/// A Service: of its spec only what the providers compare with what they
/// would apply (its selector, type and ports). Nothing reads its status.
pub type CachedService = Cached<Service, ServiceShape, Unread>;

/// Of a Service's spec: what decides where its traffic goes.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ServiceShape {
    /// Sorted by key. A list, not a map: a BTreeMap holds room for eleven
    /// entries (~0.5 KB) for the one a selector of ours has.
    #[serde(default, with = "sorted_pairs")]
    pub selector: Vec<(String, String)>,
    /// Not a field of the spec: the Service's labels, moved here (sorted by
    /// key) when the cache trims a Service that has a controlling owner, for
    /// the same reason as the selector. Ownership is then the owner's to
    /// say; the labels are only compared with what would be applied.
    #[serde(skip)]
    pub labels: Vec<(String, String)>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub ports: Option<Vec<ServicePort>>,
    /// Not a field of the spec: what the selector, type and ports say, as
    /// one number ([`crate::provider::shape::service_fingerprint`]), set
    /// when the cache trims a Service, which then lets go of the three. They
    /// are only ever compared with what would be applied, and kept as
    /// they are read they were ~0.4 KB per Service.
    #[serde(skip)]
    pub fingerprint: Option<u64>,
}

/// A JSON object of strings, read into and written from a list of pairs
/// sorted by key: what a map of one or two entries costs, without a map.
mod sorted_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        pairs: &[(String, String)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, &str> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        map.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        let map: Option<BTreeMap<String, String>> = Option::deserialize(deserializer)?;
        // A BTreeMap iterates in key order, so the list comes out sorted.
        let mut pairs: Vec<(String, String)> = map.into_iter().flatten().collect();
        pairs.shrink_to_fit();
        Ok(pairs)
    }
}

/// A part of an object that no cache reader looks at: read past, kept empty.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Unread {}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        Container, ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec, PodStatus,
        PodTemplateSpec, ResourceRequirements,
    };
    use kube::api::ResourceExt;
    use kube::runtime::reflector::Lookup;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("team".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("nginx".into()),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                pod_ip: Some("127.0.0.9".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: Some("ContainersNotReady".into()),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "main".into(),
                    restart_count: 3,
                    image: "nginx".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_cached_pod_reads_as_the_pod_it_came_from() {
        let cached = CachedPod::of(&pod());
        assert_eq!(cached.name_any(), "web-0");
        assert_eq!(ResourceExt::namespace(&cached).as_deref(), Some("team"));
        assert_eq!(cached.labels().get("app").map(String::as_str), Some("web"));
        let spec = cached.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let requests = spec.containers[0].resources.as_ref().unwrap();
        assert_eq!(
            requests.requests.as_ref().unwrap()["cpu"],
            Quantity("250m".into())
        );
        let status = cached.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.9"));
        assert_eq!(status.conditions.as_ref().unwrap()[0].type_, "Ready");
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            (container.name.as_str(), container.restart_count),
            ("main", 3)
        );
        assert_eq!(
            container
                .state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        // Looked up in a store under the Pod's own kind and name.
        let key = cached.to_object_ref(());
        assert_eq!(
            (key.name.as_str(), key.namespace.as_deref()),
            ("web-0", Some("team"))
        );
        assert_eq!(<CachedPod as kube::Resource>::kind(&()), "Pod");
        assert_eq!(<CachedPod as kube::Resource>::plural(&()), "pods");
    }

    #[test]
    fn a_cached_deployment_keeps_its_replicas_image_ports_and_rollout() {
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(4),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: Some([("restart".to_string(), "1".to_string())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "main".into(),
                            image: Some("nginx:1.27".into()),
                            ports: Some(vec![ContainerPort {
                                container_port: 8080,
                                ..ContainerPort::default()
                            }]),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(2),
                conditions: Some(vec![DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    ..DeploymentCondition::default()
                }]),
                ..DeploymentStatus::default()
            }),
        };
        let cached = CachedDeployment::of(&deployment);
        assert_eq!(cached.metadata.generation, Some(4));
        let spec = cached.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let template = &spec.template;
        assert_eq!(
            template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["restart"],
            "1"
        );
        let container = &template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);
        assert_eq!(cached.status.as_ref().unwrap().ready_replicas, Some(2));
        assert_eq!(
            <CachedDeployment as kube::Resource>::plural(&()),
            "deployments"
        );
    }

    #[test]
    fn cached_metadata_keeps_ours_and_drops_empty_maps() {
        let mut metadata = ObjectMeta {
            name: Some("web-0".into()),
            generate_name: Some("web-".into()),
            labels: Some(
                [
                    ("ctrlplane.dev/instance", "web"),
                    (MANAGED_BY_LABEL, "ctrlplane-operator"),
                    ("pod-template-hash", "abc"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ),
            annotations: Some([("kwok.x-k8s.io/node".to_string(), "fake".to_string())].into()),
            owner_references: Some(vec![OwnerReference {
                kind: "ReplicaSet".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        keep_our_metadata(
            &mut metadata,
            |o| o.kind == "Sandbox",
            &["ctrlplane.dev/host"],
        );
        assert_eq!(metadata.name.as_deref(), Some("web-0"));
        assert_eq!(
            metadata.labels.unwrap().into_keys().collect::<Vec<_>>(),
            [MANAGED_BY_LABEL, "ctrlplane.dev/instance"]
        );
        assert!(metadata.annotations.is_none() && metadata.owner_references.is_none());
        assert!(metadata.generate_name.is_none());
    }

    #[test]
    fn cached_types_are_a_fraction_of_the_full_ones() {
        // What made the caches grow: the full types' fixed size.
        assert!(std::mem::size_of::<CachedPod>() * 3 < std::mem::size_of::<Pod>());
        assert!(std::mem::size_of::<CachedDeployment>() * 3 < std::mem::size_of::<Deployment>());
    }
}
