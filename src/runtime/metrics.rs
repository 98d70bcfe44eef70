//! Prometheus metrics: reconciles, their errors and duration, phase
//! transitions, status writes, and every request the operator makes to the
//! Kubernetes API (counted by a layer on the client, so nothing escapes it).

use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
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
    pub verb: String,
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
            "Requests the operator made to the Kubernetes API, by HTTP verb (watches included)",
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
        ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|verb| {
                self.api_requests
                    .get_or_create(&RequestLabels {
                        verb: verb.to_string(),
                    })
                    .get()
            })
            .sum()
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
            .get_or_create(&RequestLabels {
                verb: request.method().as_str().to_string(),
            })
            .inc();
        self.inner.call(request)
    }
}
