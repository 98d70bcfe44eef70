//! Pieces of Kubernetes objects that both providers build the same way from
//! our API types: container env and ports, and the Service in front of the
//! pods. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar as KubeEnvVar, EnvVarSource, SecretKeySelector as KubeSecretKeySelector,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{EnvVar, PortSpec, Protocol};

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
