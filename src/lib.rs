//! ctrlplane-operator: a Kubernetes operator for application instances,
//! disposable sandboxes and signed lifecycle webhooks.
//!
//! - [`api`]: the CRD types (serde and schemars only).
//! - [`lifecycle`]: the transition tables (pure).
//! - [`plan`]: observe -> plan for each kind (pure, property-tested).
//! - [`provider`]: the Provider trait, the registry and the providers.
//! - [`controller`]: watches, act, record, finalizers, Events.
//! - [`delivery`]: webhook signing, retries, the address guard, the HTTP client.
//! - [`runtime`]: configuration, logging, metrics, health endpoints.
//! - [`tenancy`]: projects of a Tenant Manager become namespaces.

pub mod api;
pub mod controller;
pub mod delivery;
pub mod lifecycle;
pub mod plan;
pub mod provider;
pub mod runtime;
pub mod tenancy;

#[cfg(test)]
mod testing;
