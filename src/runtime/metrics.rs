//! Prometheus metrics: reconciles, their errors and duration, phase
//! transitions, status writes, every request the operator makes to the
//! Kubernetes API (counted by a layer on the client, so nothing escapes it),
//! and the objects there are, by kind, namespace and phase.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub kind: String,
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// succeeded, retrying, failed or gone.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub verb: String,
    /// The resource, with its subresource: `deployments`, `instances/status`.
    pub resource: String,
}

impl RequestLabels {
    /// The verb and resource of a request to the API server, read off its
    /// method and path as the API server's own authorizer does.
    pub fn of(method: &http::Method, uri: &http::Uri) -> Self {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        // /api/v1/... or /apis/<group>/<version>/...
        let rest: &[&str] = match segments.as_slice() {
            ["api", _, rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => &[],
        };
        let rest = match rest {
            ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
            other => other,
        };
        let (resource, named) = match rest {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
            [] => (uri.path().to_string(), false),
        };
        let watching = uri.query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let verb = match *method {
            http::Method::GET if watching => "watch",
            http::Method::GET if named => "get",
            http::Method::GET => "list",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE if named => "delete",
            http::Method::DELETE => "deletecollection",
            _ => "other",
        };
        Self {
            verb: verb.to_string(),
            resource,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ObjectLabels {
    /// Instance, Sandbox, Webhook or WebhookDelivery.
    pub kind: String,
    pub namespace: String,
    /// The object's phase; for a Webhook, Ready or NotReady. Pending while
    /// the operator has written no status yet.
    pub phase: String,
}

/// Adds what one set of caches holds to a tally of objects.
pub type ObjectCounter = Box<dyn Fn(&mut BTreeMap<ObjectLabels, i64>) + Send + Sync>;

/// `ctrlplane_objects`, counted afresh on every scrape from the counters
/// registered now (each scope's caches, while its controllers run). A
/// namespace, kind or phase with no object left is simply not there: no
/// stale series, and nothing to reset. A replica that does not lead has
/// no caches, and exports no counts.
#[derive(Default)]
pub struct ObjectCounts {
    counters: Mutex<BTreeMap<u64, ObjectCounter>>,
    next: AtomicU64,
}

impl std::fmt::Debug for ObjectCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCounts").finish_non_exhaustive()
    }
}

impl ObjectCounts {
    /// Adds a counter until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, counter: ObjectCounter) -> ObjectCountsRegistration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, counter);
        ObjectCountsRegistration {
            counts: self.clone(),
            id,
        }
    }

    /// Objects by kind, namespace and phase, now.
    pub fn tally(&self) -> BTreeMap<ObjectLabels, i64> {
        let mut tally = BTreeMap::new();
        for counter in self.lock().values() {
            counter(&mut tally);
        }
        tally
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ObjectCounter>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collector for ObjectCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.lock().is_empty() {
            return Ok(());
        }
        let family = Family::<ObjectLabels, Gauge>::default();
        for (labels, count) in self.tally() {
            family.get_or_create(&labels).set(count);
        }
        let metric = encoder.encode_descriptor(
            "objects",
            "Objects in the operator's caches, by kind, namespace and phase",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// Keeps a counter registered; dropping it removes the counter.
pub struct ObjectCountsRegistration {
    counts: Arc<ObjectCounts>,
    id: u64,
}

impl Drop for ObjectCountsRegistration {
    fn drop(&mut self) {
        self.counts.lock().remove(&self.id);
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub delivery_latency: Histogram,
    pub events_dropped: Counter,
    pub ready: Gauge,
    pub leader: Gauge,
    pub in_flight: Family<KindLabels, Gauge>,
    pub objects: Arc<ObjectCounts>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ctrlplane");
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by kind and reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, by kind",
            reconcile_duration.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "transitions",
            "Phase transitions written, by kind, from and to",
            transitions.clone(),
        );
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status subresource writes, by kind",
            status_writes.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "kube_api_requests",
            "Requests the operator made to the Kubernetes API, by verb and resource (watches included)",
            api_requests.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome (succeeded, retrying, failed, gone)",
            deliveries.clone(),
        );
        let delivery_latency = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "webhook_delivery_latency_seconds",
            "From the lifecycle event to its successful delivery",
            delivery_latency.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "webhook_events_dropped",
            "Deliveries not created because their namespace (and its Webhooks) was being deleted",
            events_dropped.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once every cache is synced and the controllers run",
            ready.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease (or runs without leader election)",
            leader.clone(),
        );
        let in_flight = Family::<KindLabels, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by kind: the part of the work queue being worked on",
            in_flight.clone(),
        );
        let objects = Arc::new(ObjectCounts::default());
        registry.register_collector(Box::new(objects.clone()));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            transitions,
            status_writes,
            api_requests,
            deliveries,
            delivery_latency,
            events_dropped,
            ready,
            leader,
            in_flight,
            objects,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The total of API requests made so far.
    pub fn api_request_total(&self) -> u64 {
        let mut total = 0;
        let text = self.encode();
        for line in text
            .lines()
            .filter(|l| l.starts_with("ctrlplane_kube_api_requests_total"))
        {
            total += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        total
    }
}

/// A tower layer that counts every request a kube Client sends.
#[derive(Clone)]
pub struct CountRequestsLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for CountRequests<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.metrics
            .api_requests
            .get_or_create(&RequestLabels::of(request.method(), request.uri()))
            .inc();
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, namespace: &str, phase: &str) -> ObjectLabels {
        ObjectLabels {
            kind: kind.into(),
            namespace: namespace.into(),
            phase: phase.into(),
        }
    }

    #[test]
    fn object_counts_are_what_the_counters_hold_at_scrape_time() {
        let metrics = Metrics::default();
        assert!(
            !metrics.encode().contains("ctrlplane_objects"),
            "nothing counted, nothing exported"
        );
        let held = Arc::new(Mutex::new(vec![
            object("Instance", "a", "Running"),
            object("Instance", "a", "Running"),
            object("Instance", "b", "Stopped"),
        ]));
        let source = held.clone();
        let registration = metrics.objects.register(Box::new(move |tally| {
            for l in source.lock().unwrap().iter() {
                *tally.entry(l.clone()).or_insert(0) += 1;
            }
        }));
        let text = metrics.encode();
        assert!(text.contains("# TYPE ctrlplane_objects gauge"), "{text}");
        assert!(
            text.contains(r#"ctrlplane_objects{kind="Instance",namespace="a",phase="Running"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ctrlplane_objects{kind="Instance",namespace="b",phase="Stopped"} 1"#),
            "{text}"
        );
        // Namespace b emptied: its series goes, it does not keep its old count.
        held.lock().unwrap().retain(|l| l.namespace != "b");
        let text = metrics.encode();
        assert!(!text.contains(r#"namespace="b""#), "{text}");
        drop(registration);
        assert!(!metrics.encode().contains("ctrlplane_objects"));
    }

    fn labels(method: http::Method, uri: &str) -> (String, String) {
        let labels = RequestLabels::of(&method, &uri.parse().unwrap());
        (labels.verb, labels.resource)
    }

    #[test]
    fn requests_are_counted_by_kubernetes_verb_and_resource() {
        use http::Method;
        let cases = [
            (
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments?watch=true&resourceVersion=5",
                "watch",
                "deployments",
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments?limit=500",
                "list",
                "deployments",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/secrets/signing",
                "get",
                "secrets",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/web?fieldManager=x",
                "patch",
                "deployments",
            ),
            (
                Method::PUT,
                "/apis/ctrlplane.dev/v1alpha1/namespaces/a/instances/web/status",
                "update",
                "instances/status",
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                "create",
                "events",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/pods/box",
                "delete",
                "pods",
            ),
            (Method::GET, "/api/v1/nodes?watch=1", "watch", "nodes"),
            (Method::POST, "/api/v1/namespaces", "create", "namespaces"),
        ];
        for (method, uri, verb, resource) in cases {
            assert_eq!(
                labels(method, uri),
                (verb.to_string(), resource.to_string()),
                "{uri}"
            );
        }
    }
}
