//! The custom resource types, in the API group `ctrlplane.dev`, version
//! `v1alpha1`. Serde and schemars only: no logic lives here.

// Several `printcolumn(type_ = "string", ...)` entries in one `#[kube(...)]`
// look like repeated attributes to clippy; they are separate columns.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod instance;
pub mod sandbox;
pub mod webhook;

pub use common::*;
pub use instance::*;
pub use sandbox::*;
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
        Instance::crd(),
        Sandbox::crd(),
        Webhook::crd(),
        WebhookDelivery::crd(),
    ]
}

/// The file name a CRD is kept under in `crds/`, e.g. `instances.ctrlplane.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as the YAML that is checked in and printed by `ctrlplane-operator crds`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}
