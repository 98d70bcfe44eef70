//! The `ctrlplane_objects` gauge: the objects in one scope's caches, by
//! kind, namespace and phase, counted on every scrape (see
//! [`ObjectCounts`](crate::runtime::metrics::ObjectCounts)). The caches are
//! the reflectors the controllers read anyway: counting costs no request.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::{
    ConditionStatus, Instance, Sandbox, SandboxCommand, SandboxSnapshot, Webhook, WebhookDelivery,
};
use crate::runtime::metrics::{Metrics, ObjectCountsRegistration, ObjectLabels};

/// The phase label of an object the operator has written no status for yet.
pub const PENDING: &str = "Pending";

/// What an object is counted under in `ctrlplane_objects`: its phase.
pub trait Counted: kube::Resource<DynamicType = ()> + Clone + 'static {
    fn phase_label(&self) -> String;
}

fn phase_or_pending(phase: Option<impl std::fmt::Display>) -> String {
    phase.map_or_else(|| PENDING.to_string(), |p| p.to_string())
}

macro_rules! counted_by_phase {
    ($($kind:ty),*) => {$(
        impl Counted for $kind {
            fn phase_label(&self) -> String {
                phase_or_pending(self.status.as_ref().and_then(|s| s.phase))
            }
        }
    )*};
}
counted_by_phase!(Instance, Sandbox, SandboxCommand, SandboxSnapshot);

/// A Webhook has no phase: Ready or NotReady, as its Ready condition says.
impl Counted for Webhook {
    fn phase_label(&self) -> String {
        let ready = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status);
        match ready {
            Some(ConditionStatus::True) => "Ready",
            Some(_) => "NotReady",
            None => PENDING,
        }
        .to_string()
    }
}

/// A WebhookDelivery is Pending until its first attempt is recorded.
impl Counted for WebhookDelivery {
    fn phase_label(&self) -> String {
        phase_or_pending(
            self.status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}")),
        )
    }
}

fn count<K: Counted>(tally: &mut BTreeMap<ObjectLabels, i64>, store: &Store<K>) {
    for object in store.state() {
        let labels = ObjectLabels {
            kind: K::kind(&()).into_owned(),
            namespace: object.namespace().unwrap_or_default(),
            phase: object.phase_label(),
        };
        *tally.entry(labels).or_insert(0) += 1;
    }
}

/// The caches one scope counts.
pub struct CountedCaches {
    pub instances: Store<Instance>,
    pub sandboxes: Store<Sandbox>,
    pub commands: Store<SandboxCommand>,
    pub snapshots: Store<SandboxSnapshot>,
    pub webhooks: Store<Webhook>,
    pub deliveries: Store<WebhookDelivery>,
}

/// Counts these caches into `ctrlplane_objects` until the registration is
/// dropped (when the scope stops).
pub fn register(metrics: &Metrics, caches: CountedCaches) -> ObjectCountsRegistration {
    metrics.objects.register(Box::new(move |tally| {
        count(tally, &caches.instances);
        count(tally, &caches.sandboxes);
        count(tally, &caches.commands);
        count(tally, &caches.snapshots);
        count(tally, &caches.webhooks);
        count(tally, &caches.deliveries);
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::api::{InstancePhase, InstanceSpec, InstanceStatus};

    fn instance(namespace: &str, name: &str, phase: Option<InstancePhase>) -> Instance {
        let spec: InstanceSpec =
            serde_json::from_value(serde_json::json!({"image": "nginx:1.27"})).unwrap();
        let mut instance = Instance::new(name, spec);
        instance.metadata.namespace = Some(namespace.into());
        instance.status = phase.map(|phase| InstanceStatus {
            phase: Some(phase),
            ..Default::default()
        });
        instance
    }

    #[test]
    fn objects_are_counted_by_kind_namespace_and_phase_as_the_caches_change() {
        let metrics = Arc::new(Metrics::default());
        let mut instances = Writer::<Instance>::default();
        let _registration = register(
            &metrics,
            CountedCaches {
                instances: instances.as_reader(),
                sandboxes: Writer::default().as_reader(),
                commands: Writer::default().as_reader(),
                snapshots: Writer::default().as_reader(),
                webhooks: Writer::default().as_reader(),
                deliveries: Writer::default().as_reader(),
            },
        );
        let key = |namespace: &str, phase: &str| ObjectLabels {
            kind: "Instance".into(),
            namespace: namespace.into(),
            phase: phase.into(),
        };
        for object in [
            instance("a", "web", Some(InstancePhase::Running)),
            instance("a", "api", Some(InstancePhase::Running)),
            instance("a", "new", None),
            instance("b", "db", Some(InstancePhase::Stopped)),
        ] {
            instances.apply_watcher_event(&Event::Apply(object));
        }
        let tally = metrics.objects.tally();
        assert_eq!(tally.get(&key("a", "Running")), Some(&2));
        assert_eq!(tally.get(&key("a", "Pending")), Some(&1));
        assert_eq!(tally.get(&key("b", "Stopped")), Some(&1));

        // A phase change moves the count; a namespace emptied disappears.
        instances.apply_watcher_event(&Event::Apply(instance(
            "a",
            "new",
            Some(InstancePhase::Failed),
        )));
        instances.apply_watcher_event(&Event::Delete(instance(
            "b",
            "db",
            Some(InstancePhase::Stopped),
        )));
        let tally = metrics.objects.tally();
        assert_eq!(tally.get(&key("a", "Failed")), Some(&1));
        assert_eq!(tally.get(&key("a", "Pending")), None);
        assert!(tally.keys().all(|k| k.namespace != "b"), "{tally:?}");
    }
}
