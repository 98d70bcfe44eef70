//! What both providers do the same way: build container env and ports and
//! the Service in front of the pods from our API types (pure), tell whose a
//! child is, and keep a Service as it should be.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar as KubeEnvVar, EnvVarSource, SecretKeySelector as KubeSecretKeySelector,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::cached::CachedService;
use super::{ActionNote, ProviderError, ProviderResult, WorkloadId};
use crate::api::{EnvVar, MANAGED_BY, MANAGED_BY_LABEL, PortSpec, Protocol};
use crate::runtime::kubeapi::delete_if_present;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ctrlplane-operator";

/// A container's env: plain values as they are, Secret references as
/// `secretKeyRef`s that must exist (so a missing Secret stops the pod rather
/// than starting it without the value).
pub fn container_env(env: &[EnvVar]) -> Vec<KubeEnvVar> {
    env.iter()
        .map(|e| KubeEnvVar {
            name: e.name.clone(),
            value: e.value.clone(),
            value_from: e.secret_key_ref.as_ref().map(|s| EnvVarSource {
                secret_key_ref: Some(KubeSecretKeySelector {
                    name: s.name.clone(),
                    key: s.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect()
}

/// A container's ports, named as declared so probes and Services can refer
/// to them by name.
pub fn container_ports(ports: &[PortSpec]) -> Vec<ContainerPort> {
    ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.port,
            protocol: Some(protocol_name(p.protocol).to_string()),
            ..ContainerPort::default()
        })
        .collect()
}

/// A ClusterIP Service selecting the pods labelled `selector`, one port per
/// declared port, aimed at the container port of the same name; `None` when
/// nothing is declared (a Service needs at least one port).
pub fn cluster_ip_service(
    metadata: ObjectMeta,
    selector: (&str, &str),
    ports: &[PortSpec],
) -> Option<Service> {
    if ports.is_empty() {
        return None;
    }
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(BTreeMap::from([(
                selector.0.to_string(),
                selector.1.to_string(),
            )])),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        target_port: Some(IntOrString::String(p.name.clone())),
                        protocol: Some(protocol_name(p.protocol).to_string()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// Whose a child object is, as far as the operator is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The object's owner controls it.
    Ours,
    /// Nobody controls it, and it carries our labels for this owner: it is
    /// taken over (an owner reference is added) at the next apply.
    Adoptable,
    /// Someone else controls it, or it is not ours at all: never touched.
    Foreign,
}

/// Whose `existing` is, for the owner with UID `owner_uid`, whose children
/// carry the label `owner_label` (key, value).
pub fn ownership<K: Resource>(
    existing: &K,
    owner_uid: &str,
    owner_label: (&str, &str),
) -> Ownership {
    let controller = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(owner) if owner.uid == owner_uid => Ownership::Ours,
        Some(_) => Ownership::Foreign,
        None => {
            let labels = existing.labels();
            let ours = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                && labels.get(owner_label.0).map(String::as_str) == Some(owner_label.1);
            if ours {
                Ownership::Adoptable
            } else {
                Ownership::Foreign
            }
        }
    }
}

/// The cache key of an object in a namespace.
pub fn named<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

/// Whether an object carries the operator's managed-by label.
pub fn is_managed<K: Resource>(object: &K) -> bool {
    object.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// The owner a child belongs to, from its controlling owner reference, when
/// that owner is of `owner_kind`: how a change to a child wakes its owner.
pub fn owner_of<K: Resource>(child: &K, owner_kind: &str) -> Option<WorkloadId> {
    let owner = child
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == owner_kind)?;
    Some(WorkloadId {
        namespace: child.meta().namespace.clone()?,
        name: owner.name.clone(),
        uid: owner.uid.clone(),
    })
}

/// What the selector, type and ports of a Service say, as one number: what
/// a cached Service is compared by. Of a port, only what we set counts (its
/// name, port, target and protocol); the API server fills in the rest. The
/// number lives only in this process (the cache and what is compared with
/// it are both computed here), so the standard hasher does.
pub fn service_fingerprint<'a>(
    selector: impl IntoIterator<Item = (&'a str, &'a str)>,
    type_: Option<&str>,
    ports: impl IntoIterator<Item = &'a ServicePort>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (key, value) in selector {
        (key, value).hash(&mut hasher);
    }
    // Each part ends with a marker, so no two differently split inputs hash
    // as one.
    0xff_u8.hash(&mut hasher);
    type_.hash(&mut hasher);
    for port in ports {
        let target = port.target_port.as_ref().map(|t| match t {
            IntOrString::Int(number) => (Some(*number), None),
            IntOrString::String(name) => (None, Some(name.as_str())),
        });
        (&port.name, port.port, target, &port.protocol).hash(&mut hasher);
    }
    0xff_u8.hash(&mut hasher);
    hasher.finish()
}

/// The fingerprint of a cached Service: the one its trim kept, or (a
/// Service not trimmed) the one of its fields.
fn cached_fingerprint(cached: &CachedService) -> u64 {
    let spec = cached.spec.as_ref();
    spec.and_then(|s| s.fingerprint).unwrap_or_else(|| {
        service_fingerprint(
            spec.into_iter()
                .flat_map(|s| s.selector.iter())
                .map(|(k, v)| (k.as_str(), v.as_str())),
            spec.and_then(|s| s.type_.as_deref()),
            spec.and_then(|s| s.ports.as_ref()).into_iter().flatten(),
        )
    })
}

/// Whether a cached Service still says what we would apply: the ports,
/// selector, type, our labels and our owner.
pub fn service_matches(cached: &CachedService, desired: &Service) -> bool {
    let wanted = desired.spec.as_ref();
    let moved = cached
        .spec
        .as_ref()
        .map(|s| &s.labels[..])
        .unwrap_or_default();
    let labels_kept = desired.labels().iter().all(|(k, v)| {
        cached.labels().get(k) == Some(v) || moved.iter().any(|(mk, mv)| mk == k && mv == v)
    });
    let wanted_fingerprint = service_fingerprint(
        wanted
            .and_then(|s| s.selector.as_ref())
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        wanted.and_then(|s| s.type_.as_deref()),
        wanted.and_then(|s| s.ports.as_ref()).into_iter().flatten(),
    );
    labels_kept
        && cached_fingerprint(cached) == wanted_fingerprint
        && cached.owner_references() == desired.owner_references()
}

/// Trims a cached Service to what the providers compare and decide
/// ownership by: its labels (all of them: an owner's own labels are
/// applied to its Service too), every owner, and the fingerprint of its
/// selector, type and ports. With a controlling owner, the labels move into
/// the spec as a short list (see
/// [`crate::provider::cached::ServiceShape::labels`]).
pub fn keep_what_the_providers_compare(service: &mut CachedService) {
    let metadata = &mut service.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.generate_name = None;
    metadata.creation_timestamp = None;
    let owned = metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    if let (true, Some(spec)) = (owned, &mut service.spec) {
        spec.labels = metadata.labels.take().into_iter().flatten().collect();
    }
    let fingerprint = cached_fingerprint(service);
    if let Some(spec) = &mut service.spec {
        spec.fingerprint = Some(fingerprint);
        spec.selector = Vec::new();
        spec.type_ = None;
        spec.ports = None;
    }
}

/// Makes an owner's Service match `desired` (or go, when `None`: it declares
/// no ports any more), reading what exists from the cache of every Service
/// in scope: no request when it already matches, and a Service of the same
/// name that belongs to someone else is never touched. Both providers'
/// Services go through here.
pub async fn ensure_service(
    client: &Client,
    cache: &Store<CachedService>,
    owner: &WorkloadId,
    owner_kind: &str,
    owner_label: &str,
    desired: Option<Service>,
) -> ProviderResult<Vec<ActionNote>> {
    let api: Api<Service> = Api::namespaced(client.clone(), &owner.namespace);
    let cached = cache.get(&ObjectRef::new(&owner.name).within(&owner.namespace));
    let whose = cached
        .as_deref()
        .map(|s| ownership(s, &owner.uid, (owner_label, &owner.name)));
    let Some(desired) = desired else {
        if whose == Some(Ownership::Ours) {
            delete_if_present(&api, &owner.name, &DeleteParams::default())
                .await
                .map_err(|source| {
                    ProviderError::kube(
                        format!("deleting Service {}", owner.name),
                        &owner.namespace,
                        source,
                    )
                })?;
        }
        return Ok(Vec::new());
    };
    let mut notes = Vec::new();
    match (cached.as_deref(), whose) {
        (_, Some(Ownership::Foreign)) => {
            return Err(ProviderError::Conflict {
                kind: "Service".into(),
                name: owner.name.clone(),
                owner: owner_kind.into(),
            });
        }
        (Some(existing), _) if service_matches(existing, &desired) => return Ok(notes),
        (Some(_), Some(Ownership::Ours)) => notes.push(ActionNote {
            warning: false,
            reason: "ServiceUpdated".into(),
            message: format!("Service {} updated to match spec.ports", owner.name),
        }),
        _ => {}
    }
    api.patch(
        &owner.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| {
        ProviderError::kube(
            format!("applying Service {}", owner.name),
            &owner.namespace,
            source,
        )
    })?;
    Ok(notes)
}
