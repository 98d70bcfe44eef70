//! ctrlplane-operator: a Kubernetes operator for application instances,
//! disposable sandboxes and signed lifecycle webhooks.

pub mod api;
pub mod lifecycle;
