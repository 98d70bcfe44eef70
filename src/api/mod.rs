//! The custom resource types, in the API group `ctrlplane.dev`, version
//! `v1alpha1`. Serde and schemars only: no logic lives here.

// Several `printcolumn(type_ = "string", ...)` entries in one `#[kube(...)]`
// look like repeated attributes to clippy; they are separate columns.
#![allow(clippy::duplicated_attributes)]

pub mod command;
pub mod common;
pub mod instance;
pub mod sandbox;
pub mod snapshot;
pub mod text;
pub mod webhook;

pub use command::*;
pub use common::*;
pub use instance::*;
pub use sandbox::*;
pub use snapshot::*;
pub use text::Text;
pub use webhook::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kind.
pub const GROUP: &str = "ctrlplane.dev";
/// The label every child and every object the operator manages carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ctrlplane-operator";

/// Every CustomResourceDefinition the operator serves, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        name_is_a_service_name(
            observed_generation_defaults_to_zero(Instance::crd()),
            "it names the Instance's Deployment and Service and is the value of its pods' label ctrlplane.dev/instance",
        ),
        name_is_a_service_name(
            observed_generation_defaults_to_zero(Sandbox::crd()),
            "it names the Sandbox's Pod and Service and is the value of their label ctrlplane.dev/sandbox",
        ),
        name_is_a_label_value(
            observed_generation_defaults_to_zero(Webhook::crd()),
            "it is the value of the label ctrlplane.dev/webhook on the Webhook's WebhookDeliveries",
        ),
        WebhookDelivery::crd(),
        observed_generation_defaults_to_zero(SandboxCommand::crd()),
        observed_generation_defaults_to_zero(SandboxSnapshot::crd()),
    ]
}

/// Gives `status` a default of `{observedGeneration: 0}`.
///
/// A new object then says, before the operator has looked at it, that no
/// generation has been observed yet. Generic readers of status (Flux's
/// kstatus, `kubectl wait`) compare observedGeneration with the generation;
/// without it they would take an object nobody has looked at for one that
/// is done.
fn observed_generation_defaults_to_zero(
    mut crd: CustomResourceDefinition,
) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({})));
            if let Some(observed) = status
                .properties
                .as_mut()
                .and_then(|p| p.get_mut("observedGeneration"))
            {
                observed.default = Some(JSON(serde_json::json!(0)));
            }
        }
    }
    crd
}

/// A name longer than a label value (63 characters) is refused at
/// admission, naming `metadata.name` and why, for a kind whose name becomes
/// a label value: accepted, the object would fail on every reconcile.
fn name_is_a_label_value(crd: CustomResourceDefinition, why: &str) -> CustomResourceDefinition {
    with_name_rule(
        crd,
        "self.size() <= 63",
        format!("must be at most 63 characters: {why}"),
    )
}

/// As [`name_is_a_label_value`], and a DNS-1035 label too (a letter first,
/// no dots), for a kind whose name becomes a Service's name.
fn name_is_a_service_name(crd: CustomResourceDefinition, why: &str) -> CustomResourceDefinition {
    let crd = name_is_a_label_value(crd, why);
    with_name_rule(
        crd,
        "self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        format!(
            "must start with a letter and hold only lowercase letters, digits and '-' (a DNS-1035 label): {why}"
        ),
    )
}

/// Adds a CEL rule on `metadata.name`, the one metadata field (with
/// generateName) a CRD schema may restrict.
fn with_name_rule(
    mut crd: CustomResourceDefinition,
    rule: &str,
    message: String,
) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, ValidationRule,
    };
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let metadata = root
            .properties
            .get_or_insert_with(Default::default)
            .entry("metadata".to_string())
            .or_insert_with(|| JSONSchemaProps {
                type_: Some("object".into()),
                ..Default::default()
            });
        let name = metadata
            .properties
            .get_or_insert_with(Default::default)
            .entry("name".to_string())
            .or_insert_with(|| JSONSchemaProps {
                type_: Some("string".into()),
                ..Default::default()
            });
        name.x_kubernetes_validations
            .get_or_insert_with(Vec::new)
            .push(ValidationRule {
                rule: rule.into(),
                message: Some(message.clone()),
                ..Default::default()
            });
    }
    crd
}

/// The file name a CRD is kept under in `crds/`, e.g. `instances.ctrlplane.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as the YAML that is checked in and printed by `ctrlplane-operator crds`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}
