//! Fencing for leader election: with it on, a write reaches the API server
//! only while this replica is sure, by its own monotonic clock, that it
//! still holds the Lease.
//!
//! Why: a leader that is frozen (SIGSTOP, a stalled VM, a long GC-like
//! pause) past its lease finds out it lost the lease only at its next
//! renewal. When it runs again, every reconcile that was under way, and every
//! timer that fired meanwhile, goes on at once, before that renewal has had
//! an answer: without a fence it wrote status, Pods and Events over the new
//! leader's work (tests/chaos.rs caught seven such writes within 30 ms of
//! SIGCONT). The lease manager (kube-lease-manager) tells only whether we
//! lead, not until when, so the fence keeps that itself: a successful write
//! of our own Lease (acquiring or renewing it) that left at `t` makes the
//! lease ours until `t + duration`; writes go until `margin` before that.
//! The margin is half the renewal grace, so a leader that renews on time
//! never closes its own fence. Reads (and watches) always go; so do the
//! lease manager's own requests.
//!
//! What it cannot close: a write that passed the fence and was frozen before
//! its bytes left the process. The API server has no fencing token for it;
//! that window is one request long, not one renewal long.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tower::BoxError;

/// Whether writes may go, and until when.
#[derive(Debug)]
pub struct Fence {
    /// `None` without leader election: every write goes.
    lease: Option<LeaseFence>,
}

#[derive(Debug)]
struct LeaseFence {
    /// The path of our Lease, as the client requests it.
    path: String,
    /// How long a successful write of the Lease makes writes safe.
    validity: Duration,
    /// Set while the lease manager says we lead.
    leading: AtomicBool,
    /// Writes go until then (monotonic clock).
    until: Mutex<Option<Instant>>,
}

/// A write refused by the fence.
#[derive(Debug, thiserror::Error)]
#[error("not writing: this replica is not sure it still holds the lease ({0})")]
pub struct Fenced(String);

impl Fence {
    /// No leader election: nothing is fenced.
    pub fn open() -> Self {
        Self { lease: None }
    }

    /// Writes go only while the Lease `namespace/name`, held for
    /// `duration`, is surely ours; `grace` is how long before it runs out
    /// the lease manager renews it.
    pub fn lease(namespace: &str, name: &str, duration: Duration, grace: Duration) -> Self {
        Self {
            lease: Some(LeaseFence {
                path: format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"),
                validity: duration.saturating_sub(grace / 2),
                leading: AtomicBool::new(false),
                until: Mutex::new(None),
            }),
        }
    }

    /// What the lease manager says: we lead, or no longer.
    pub fn set_leading(&self, leading: bool) {
        if let Some(lease) = &self.lease {
            lease.leading.store(leading, Ordering::SeqCst);
        }
    }

    /// `Ok` when a write may go now, else why not.
    pub fn check(&self, now: Instant) -> Result<(), Fenced> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if !lease.leading.load(Ordering::SeqCst) {
            return Err(Fenced("it does not lead".into()));
        }
        match *lease.until.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(until) if now < until => Ok(()),
            Some(until) => Err(Fenced(format!(
                "its last renewal ran out {:.1}s ago",
                now.duration_since(until).as_secs_f64()
            ))),
            None => Err(Fenced("it never renewed".into())),
        }
    }

    /// A write of our Lease that left at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        if let Some(lease) = &self.lease {
            let mut until = lease.until.lock().unwrap_or_else(|e| e.into_inner());
            let new = sent + lease.validity;
            if until.is_none_or(|u| u < new) {
                *until = Some(new);
            }
        }
    }

    /// A request of the lease manager's: one to our Lease, or the create
    /// of it (a POST to the namespace's leases).
    fn is_lease(&self, method: &http::Method, uri: &http::Uri) -> bool {
        self.lease.as_ref().is_some_and(|l| {
            uri.path() == l.path
                || (*method == http::Method::POST
                    && l.path
                        .rsplit_once('/')
                        .is_some_and(|(leases, _)| uri.path() == leases))
        })
    }
}

/// A write that acquires or renews a lease (the create only makes an empty one).
fn is_renewal(method: &http::Method) -> bool {
    matches!(*method, http::Method::PATCH | http::Method::PUT)
}

fn is_write(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// The client layer that applies a [`Fence`] to every request.
#[derive(Clone)]
pub struct FenceLayer {
    pub fence: std::sync::Arc<Fence>,
}

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FenceService {
            inner,
            fence: self.fence.clone(),
        }
    }
}

/// [`FenceLayer`]'s service.
#[derive(Clone)]
pub struct FenceService<S> {
    inner: S,
    fence: std::sync::Arc<Fence>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for FenceService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let write = is_write(request.method());
        if write && self.fence.is_lease(request.method(), request.uri()) {
            // The lease manager's own write: it is what keeps the fence open.
            let fence = self.fence.clone();
            let renewal = is_renewal(request.method());
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await.map_err(Into::into)?;
                if renewal && response.status().is_success() {
                    fence.renewed(now);
                }
                Ok(response)
            });
        }
        if write && let Err(fenced) = self.fence.check(now) {
            tracing::debug!(
                method = %request.method(),
                path = request.uri().path(),
                "{fenced}"
            );
            return Box::pin(async move { Err(fenced.into()) });
        }
        if write {
            // Which writes went, and when: tests/chaos.rs tells a write that
            // was on its way when the process froze from one decided later.
            tracing::trace!(
                method = %request.method(),
                path = request.uri().path(),
                "write passed the fence"
            );
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn without_leader_election_every_write_goes() {
        assert!(Fence::open().check(Instant::now()).is_ok());
    }

    #[test]
    fn a_leader_writes_until_half_the_grace_before_its_lease_runs_out() {
        let fence = Fence::lease("ns", "lease", 6 * SECOND, 2 * SECOND);
        let t = Instant::now();
        assert!(fence.check(t).is_err(), "not before it leads");
        fence.renewed(t);
        assert!(
            fence.check(t).is_err(),
            "not before the lease manager says so"
        );
        fence.set_leading(true);
        assert!(fence.check(t + 4 * SECOND).is_ok());
        assert!(fence.check(t + 5 * SECOND - SECOND / 10).is_ok());
        let err = fence.check(t + 5 * SECOND).unwrap_err();
        assert!(err.to_string().contains("ran out"), "{err}");
        // Renewing on time (grace before the end) keeps it open.
        fence.renewed(t + 4 * SECOND);
        assert!(fence.check(t + 8 * SECOND).is_ok());
        // An older renewal's answer coming late does not shorten it.
        fence.renewed(t + SECOND);
        assert!(fence.check(t + 8 * SECOND).is_ok());
        fence.set_leading(false);
        assert!(fence.check(t + 8 * SECOND).is_err());
    }

    #[test]
    fn only_our_lease_is_the_lease_and_reads_are_never_writes() {
        let fence = Fence::lease("ns", "ctrlplane-operator", 15 * SECOND, 5 * SECOND);
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let (patch, post) = (http::Method::PATCH, http::Method::POST);
        assert!(fence.is_lease(
            &patch,
            &uri("/apis/coordination.k8s.io/v1/namespaces/ns/leases/ctrlplane-operator?fieldManager=x")
        ));
        assert!(fence.is_lease(
            &post,
            &uri("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
        ));
        assert!(!fence.is_lease(
            &patch,
            &uri("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
        ));
        assert!(!fence.is_lease(
            &patch,
            &uri("/apis/coordination.k8s.io/v1/namespaces/other/leases/ctrlplane-operator")
        ));
        assert!(!Fence::open().is_lease(
            &patch,
            &uri("/apis/coordination.k8s.io/v1/namespaces/ns/leases/ctrlplane-operator")
        ));
        assert!(is_renewal(&patch) && !is_renewal(&post));
        assert!(!is_write(&http::Method::GET));
        for method in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ] {
            assert!(is_write(&method));
        }
    }
}
