//! Webhook dispatch, the I/O half: which deliveries a status calls for (from
//! the Webhook cache), and creating them. Creating a delivery that already
//! exists is success: names are deterministic, so a retry after a crash
//! re-creates nothing and loses nothing.

use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};

use super::Context;
use crate::api::{EventSubject, HistoryEntry, WebhookDelivery};
use crate::plan::dispatch::deliveries_for;

/// Errors while dispatching.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The namespace is being deleted, and its Webhooks with it: nothing can
    /// be created there any more, and nobody is left to deliver to.
    #[error("namespace {namespace} is being deleted; its webhooks go with it")]
    NamespaceTerminating { namespace: String },
    #[error(
        "creating WebhookDelivery {name}: {}",
        crate::runtime::describe_kube_error(source)
    )]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The object an event is about.
pub fn subject<K: Resource<DynamicType = ()>>(object: &K) -> EventSubject {
    EventSubject {
        kind: K::kind(&()).into_owned(),
        name: object.meta().name.clone().unwrap_or_default(),
        uid: object.meta().uid.clone().unwrap_or_default(),
    }
}

/// Status fields dispatch works with, common to every kind with a history.
pub trait HasHistory {
    fn history(&self) -> &[HistoryEntry];
    fn history_mut(&mut self) -> &mut Vec<HistoryEntry>;
    fn dispatched_seq(&self) -> i64;
    fn set_dispatched_seq(&mut self, sequence: i64);
}

macro_rules! has_history {
    ($($status:ty),*) => {$(
        impl HasHistory for $status {
            fn history(&self) -> &[HistoryEntry] {
                &self.history
            }
            fn history_mut(&mut self) -> &mut Vec<HistoryEntry> {
                &mut self.history
            }
            fn dispatched_seq(&self) -> i64 {
                self.dispatched_seq
            }
            fn set_dispatched_seq(&mut self, sequence: i64) {
                self.dispatched_seq = sequence;
            }
        }
    )*};
}

has_history!(crate::api::InstanceStatus, crate::api::SandboxStatus);

/// The deliveries that the status's undispatched entries call for, given the
/// Webhooks now in the subject's namespace.
pub fn pending(
    context: &Context,
    subject: &EventSubject,
    namespace: &str,
    status: &impl HasHistory,
) -> Vec<WebhookDelivery> {
    let webhooks = context.webhooks.state();
    let in_namespace: Vec<_> = webhooks
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(namespace))
        .map(|w| w.as_ref())
        .collect();
    deliveries_for(
        subject,
        status.history(),
        status.dispatched_seq(),
        &in_namespace,
    )
}

/// Creates every delivery; one that exists already counts as created.
pub async fn create_deliveries(
    client: &kube::Client,
    deliveries: &[WebhookDelivery],
) -> Result<(), DispatchError> {
    for delivery in deliveries {
        let namespace = delivery.namespace().unwrap_or_default();
        let api: Api<WebhookDelivery> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), delivery).await {
            Ok(_) => {}
            Err(kube::Error::Api(response)) if response.code == 409 => {}
            Err(kube::Error::Api(response))
                if response.code == 403 && response.message.contains("being terminated") =>
            {
                return Err(DispatchError::NamespaceTerminating { namespace });
            }
            Err(source) => {
                return Err(DispatchError::Create {
                    name: delivery.name_any(),
                    source,
                });
            }
        }
    }
    Ok(())
}
