//! The tenancy source: an organisation's projects, as a Tenant Manager
//! reports them, become namespaces (with a quota and RoleBindings for the
//! project's groups), and go again when the project or its org is deleted.
//!
//! It speaks the protocol of the orch-library `tenancy` poller (v0.6.x):
//!
//! 1. **Replay**, at start: `GET /v1/events?controller=<name>&replay=true`
//!    answers every existing (and soft-deleted) resource as an event,
//!    synthesized from the current state, plus `lastEventId`. Asked again
//!    with a backoff of 1 s doubling to 30 s until it answers. Each event is
//!    handled; one that fails is reported and skipped. The cursor becomes
//!    `lastEventId`.
//! 2. **Poll**, every 5 s: `GET /v1/events?controller=<name>&after=<cursor>&limit=100`.
//!    Events are handled in order; the first failure ends the page and the
//!    cursor stays at the last success, so the failed event comes again
//!    next time (at-least-once). A failed poll is tried again next interval.
//!
//! Around each event: `PUT /v1/status` `in_progress`, then the handler, then
//! `completed` or `error` (with the message); a deleted event that succeeded
//! sends `DELETE /v1/status` instead. Status calls expect 200; a failed one
//! is logged and never holds events up. Every request times out after 30 s.
//! A restart replays from scratch, so every handler is idempotent.
//!
//! Decisions are pure ([`decide`], [`naming`], [`objects`]); [`client`]
//! (HTTP) and [`cluster`] (Kubernetes) do the I/O. The source runs as a task
//! of the operator, only while it holds the leader lease.

pub mod client;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod naming;
pub mod objects;
pub mod protocol;

use std::time::Duration;

use tracing::{Instrument, debug, info, warn};

use client::{EventsQuery, TenantManagerClient};
use cluster::{Cluster, ClusterError};
use config::{HTTP_TIMEOUT, POLL_LIMIT, TenancyConfig};
use decide::{Cursor, EventError, Next, Report, Work};
use protocol::{Event, Status};

pub use config::TenancyArgs;

/// Why an event could not be handled. The message goes to the Tenant
/// Manager as the status message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("building the tenant manager client: {0}")]
    Client(#[from] client::ClientError),
}

/// The tenancy source, ready to run.
pub struct TenancySource {
    tenant_manager: TenantManagerClient,
    cluster: Cluster,
    poll_interval: Duration,
}

impl TenancySource {
    pub fn new(kube: kube::Client, config: TenancyConfig) -> Result<Self, HandleError> {
        Ok(Self {
            tenant_manager: TenantManagerClient::new(
                &config.url,
                &config.controller,
                HTTP_TIMEOUT,
            )?,
            cluster: Cluster::new(kube, config.templates, config.deletion_timeout),
            poll_interval: config.poll_interval,
        })
    }

    /// Replays, then polls, until `shutdown` resolves. An event being
    /// handled then is dropped where it stands; the next leader replays it.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = self.replay_then_poll() => {}
            _ = shutdown => {}
        }
    }

    async fn replay_then_poll(&self) {
        let mut cursor = self.replay().await;
        info!(cursor = cursor.0, "tenancy replay done; polling");
        // Like Go's ticker: a tick every interval, the first one interval
        // after the replay; a slow page delays the next tick, never doubles it.
        let start = tokio::time::Instant::now() + self.poll_interval;
        let mut ticks = tokio::time::interval_at(start, self.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.poll(&mut cursor).await;
        }
    }

    /// Asks for the replay until it is answered, then handles every event.
    async fn replay(&self) -> Cursor {
        let mut failures = 0u32;
        let page = loop {
            match self.tenant_manager.events(EventsQuery::Replay).await {
                Ok(page) => break page,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = decide::replay_backoff(failures);
                    warn!(
                        %error,
                        failures,
                        retry_in_seconds = wait.as_secs(),
                        "tenancy replay failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        };
        info!(
            events = page.events.len(),
            last_event_id = page.last_event_id,
            "tenancy replay"
        );
        for event in &page.events {
            // A failed replayed event was reported; replay goes on.
            let _ = self.process(event).await;
        }
        Cursor::after_replay(page.last_event_id)
    }

    /// One poll: the events after the cursor, in order, until one fails.
    async fn poll(&self, cursor: &mut Cursor) {
        let query = EventsQuery::After {
            after: cursor.0,
            limit: POLL_LIMIT,
        };
        let page = match self.tenant_manager.events(query).await {
            Ok(page) => page,
            Err(error) => {
                warn!(%error, cursor = cursor.0, "tenancy poll failed; trying again next interval");
                return;
            }
        };
        if !page.events.is_empty() {
            debug!(
                events = page.events.len(),
                cursor = cursor.0,
                "tenancy poll"
            );
        }
        for event in &page.events {
            let succeeded = self.process(event).await.is_ok();
            if cursor.handled(event.id, succeeded) == Next::Stop {
                info!(
                    cursor = cursor.0,
                    "the failed event comes again with the next poll"
                );
                break;
            }
        }
    }

    /// Reports in_progress, handles the event, reports the outcome.
    async fn process(&self, event: &Event) -> Result<(), String> {
        let span = tracing::info_span!(
            "tenancy_event",
            id = event.id,
            event_type = event.event_type,
            resource_type = event.resource_type,
            resource = event.resource_name,
            resource_id = %event.resource_id,
        );
        async {
            self.report(event, Report::Put(Status::InProgress, String::new()))
                .await;
            let outcome = self.handle(event).await.map_err(|e| e.to_string());
            match &outcome {
                Ok(()) => info!("tenancy event handled"),
                Err(error) => warn!(error, "tenancy event failed"),
            }
            self.report(event, decide::report_after(event, outcome.clone()))
                .await;
            outcome
        }
        .instrument(span)
        .await
    }

    /// Tells the Tenant Manager. A failure is logged and nothing more: the
    /// status is brought up to date by the next report or replay.
    async fn report(&self, event: &Event, report: Report) {
        let result = match &report {
            Report::Put(status, message) => {
                self.tenant_manager
                    .put_status(&event.resource_type, &event.resource_id, *status, message)
                    .await
            }
            Report::Delete => {
                self.tenant_manager
                    .delete_status(&event.resource_type, &event.resource_id)
                    .await
            }
        };
        if let Err(error) = result {
            warn!(%error, ?report, "reporting tenancy status failed; going on");
        }
    }

    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        match decide::work_for(event)? {
            Work::EnsureProject(tenant) => {
                let namespace = self.cluster.ensure_project(&tenant).await?;
                info!(namespace, "project namespace in place");
            }
            Work::RemoveProject(project_id) => {
                let removed = self
                    .cluster
                    .remove_namespaces(&objects::project_selector(&project_id))
                    .await?;
                info!(namespaces = ?removed, "project namespace gone");
            }
            Work::RemoveOrg(org_id) => {
                let removed = self
                    .cluster
                    .remove_namespaces(&objects::org_selector(&org_id))
                    .await?;
                info!(namespaces = ?removed, "the org's project namespaces gone");
            }
            Work::Nothing(why) => debug!(why, "nothing to do"),
        }
        Ok(())
    }
}
