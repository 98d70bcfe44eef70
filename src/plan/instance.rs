//! The Instance planner: `plan(&instance, &observation, now) -> InstancePlan`.
//!
//! It decides, from the spec, the current status and what the provider
//! reports:
//! - the release to run (a new one for every image change, a rollback to the
//!   last good one when a release fails and spec.rollback is Auto);
//! - the desired workload (zero replicas while stopped or suspended);
//! - the phase, moved one table-checked step at a time until nothing more
//!   follows from the observation, each step recorded in the history;
//! - the conditions, the provider actions and when to look again.
//!
//! Planning again on its own result, with the same observation, changes
//! nothing: the property tests below hold it to that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::conditions::{self, DesiredCondition, types};
use super::history::{self, NewEvent};
use super::{
    FINALIZER, FinalizerAction, PlannedEvent, REQUEUE_PROGRESSING, REQUEUE_SETTLED, announce,
    finalizer_action, finalizer_needed, synced,
};
use crate::api::{
    AppliedScale, DesiredState, Endpoint, EventType, Instance, InstancePhase, InstanceStatus,
    Protocol, Release, ReleaseOutcome, RollbackPolicy, Text,
};
use crate::lifecycle::{Lifecycle, TransitionError, validate_transition};
use crate::provider::{Cleanup, INSTANCE_LABEL, InstanceWorkload, UnknownProvider, WorkloadStatus};

/// The Ready reason of a Running Instance whose replicas are unready with
/// no spec change to explain it.
const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
/// Progressing reasons of a spec change under way.
const UPDATE_REASONS: &[&str] = &["RollingOut", "Restarting", "Scaling"];

/// The health of a Running Instance with no spec change under way, from the
/// readiness of its replicas. A change from one to another is a health event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Every replica ready.
    Healthy,
    /// Some replicas ready, not all.
    Degraded,
    /// No replica ready.
    Failed,
}

impl Health {
    /// From the Ready condition (True: healthy) and the ready replicas.
    fn of(ready: bool, ready_replicas: i32) -> Self {
        if ready {
            Self::Healthy
        } else if ready_replicas > 0 {
            Self::Degraded
        } else {
            Self::Failed
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Degraded => "Degraded",
            Self::Failed => "Failed",
        }
    }
}

/// How many releases status.releases keeps.
pub const RELEASE_LIMIT: usize = 10;

/// What the reconciler observed before planning.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceObservation {
    /// The provider that spec.provider (or the default) names, or why none.
    pub provider: Result<String, UnknownProvider>,
    /// How that provider's children go when the Instance is deleted.
    pub cleanup: Cleanup,
    /// What the provider reports; `None` when nothing exists.
    pub workload: Option<WorkloadStatus>,
    /// Whether a Webhook in the namespace may want the Instance's events, so
    /// that a deletion must wait until its last ones are sent.
    pub webhooks_listen: bool,
}

/// Why the provider is called, in the order the plan decided them. Every
/// one but `Deprovision` is the same call (make the workload match); the
/// most telling reason is passed along and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderAction {
    Provision,
    Deploy,
    Rollback,
    Scale,
    Restart,
    Start,
    Stop,
    Deprovision,
}

/// Everything the reconciler has to do.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePlan {
    /// The status to write.
    pub status: InstanceStatus,
    /// The workload the provider should run; `None` when there is nothing to
    /// run (deleting, or no provider).
    pub workload: Option<InstanceWorkload>,
    /// The provider calls to make, in order.
    pub actions: Vec<ProviderAction>,
    /// Kubernetes Events to publish.
    pub events: Vec<PlannedEvent>,
    /// Look again after this long if nothing else happens first.
    pub requeue_after: Duration,
    /// What to do with the finalizer.
    pub finalizer: FinalizerAction,
}

/// Decides what should happen to an Instance. Pure: same input, same plan.
pub fn plan(
    instance: &Instance,
    observed: &InstanceObservation,
    now: DateTime<Utc>,
) -> InstancePlan {
    Planner::new(instance, observed, now).run()
}

/// What the user asks for, after suspension and deletion are taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Running,
    Stopped,
    Gone,
}

struct Planner<'a> {
    instance: &'a Instance,
    observed: &'a InstanceObservation,
    now: DateTime<Utc>,
    generation: Option<i64>,
    status: InstanceStatus,
    events: Vec<PlannedEvent>,
    actions: Vec<ProviderAction>,
    refused: Option<TransitionError>,
    /// A failure decided in this plan, to be entered into the phase machine.
    failure: Option<(String, String)>,
    /// A rollback started in this plan: a reason to leave Failed at once.
    rollback_started: bool,
    /// spec.restartedAt asked for a restart in this plan.
    restart_requested: bool,
    requeue_after: Duration,
}

impl<'a> Planner<'a> {
    fn new(instance: &'a Instance, observed: &'a InstanceObservation, now: DateTime<Utc>) -> Self {
        Self {
            instance,
            observed,
            now,
            generation: instance.metadata.generation,
            status: instance.status.clone().unwrap_or_default(),
            events: Vec::new(),
            actions: Vec::new(),
            refused: None,
            failure: None,
            rollback_started: false,
            restart_requested: false,
            requeue_after: REQUEUE_SETTLED,
        }
    }

    fn deleting(&self) -> bool {
        self.instance.metadata.deletion_timestamp.is_some()
    }

    fn intent(&self) -> Intent {
        let spec = &self.instance.spec;
        if self.deleting() {
            Intent::Gone
        } else if spec.suspend.is_some() || spec.state == DesiredState::Stopped {
            Intent::Stopped
        } else {
            Intent::Running
        }
    }

    fn target_replicas(&self) -> i32 {
        match self.intent() {
            Intent::Running => self.instance.spec.replicas,
            Intent::Stopped | Intent::Gone => 0,
        }
    }

    fn run(mut self) -> InstancePlan {
        let has_finalizer = self.instance.finalizers().iter().any(|f| f == FINALIZER);

        let provider = match &self.observed.provider {
            Ok(name) => name.clone(),
            Err(unknown) => return self.unknown_provider(unknown.clone(), has_finalizer),
        };

        if !self.deleting() {
            self.plan_suspension();
            self.plan_restart();
            self.plan_scale();
            self.plan_release();
        }
        let mut workload = (!self.deleting()).then(|| self.desired_workload());
        if let Some(desired) = &workload {
            self.judge_rollout(desired);
            if self.rollback_started {
                // The rollback changed the current release, and so the image.
                workload = Some(self.desired_workload());
            }
        }
        if let Some(desired) = &workload {
            self.judge_crash(desired);
        }
        self.advance_phase(workload.as_ref());
        self.plan_actions();
        self.update_observed_fields(&provider);
        self.update_conditions(workload.as_ref());
        history::trim(&mut self.status.history, self.status.dispatched_seq);
        self.status.observed_generation = self.generation;

        let finalizer = finalizer_action(
            self.deleting(),
            has_finalizer,
            self.status.phase == Some(InstancePhase::Destroyed),
            finalizer_needed(self.observed.cleanup, self.observed.webhooks_listen),
        );
        let settled = match self.status.phase {
            Some(InstancePhase::Running) => self.is_healthy(workload.as_ref()),
            Some(InstancePhase::Stopped) | Some(InstancePhase::Failed) => true,
            _ => false,
        };
        if !settled {
            self.requeue_after = self.requeue_after.min(REQUEUE_PROGRESSING);
        }
        InstancePlan {
            status: self.status,
            workload,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue_after,
            finalizer,
        }
    }

    /// spec.provider names no registered provider: say so, change nothing.
    fn unknown_provider(mut self, unknown: UnknownProvider, has_finalizer: bool) -> InstancePlan {
        let message = unknown.to_string();
        let synced = conditions::find(&self.status.conditions, types::SYNCED);
        if synced.is_none_or(|c| c.reason != "UnknownProvider" || c.message != message) {
            self.events.push(PlannedEvent {
                warning: true,
                reason: "UnknownProvider".into(),
                message: message.clone(),
            });
        }
        self.set(types::SYNCED, false, "UnknownProvider", message.clone());
        self.set_desired(conditions::stalled(Some((
            "UnknownProvider".into(),
            message,
        ))));
        self.status.observed_generation = self.generation;
        // Nothing was ever provisioned without a provider, so a deleted
        // Instance that never had one can go at once.
        let never_provisioned = self.status.provider_ref.is_none();
        let finalizer = finalizer_action(
            self.deleting(),
            has_finalizer,
            never_provisioned,
            self.observed.webhooks_listen,
        );
        InstancePlan {
            status: self.status,
            workload: None,
            actions: Vec::new(),
            events: self.events,
            requeue_after: REQUEUE_SETTLED,
            finalizer,
        }
    }

    // ----------------------------------------------------------------- spec

    fn plan_suspension(&mut self) {
        let suspend = self.instance.spec.suspend.as_ref();
        let was_suspended = self.status.suspended_at.is_some();
        match (suspend, was_suspended) {
            (Some(s), false) => {
                self.status.suspended_at = Some(self.now);
                self.status.suspend_reason = Some(s.reason.clone());
                self.record(NewEvent::new(
                    EventType::InstanceSuspended,
                    "Suspended",
                    s.reason.clone(),
                ));
            }
            (Some(s), true) => self.status.suspend_reason = Some(s.reason.clone()),
            (None, true) => {
                self.status.suspended_at = None;
                self.status.suspend_reason = None;
                self.record(NewEvent::new(
                    EventType::InstanceUnsuspended,
                    "Unsuspended",
                    "spec.suspend was removed",
                ));
            }
            (None, false) => {}
        }
    }

    fn plan_restart(&mut self) {
        let requested = self.instance.spec.restarted_at;
        if requested.is_none() || requested == self.status.restarted_at {
            return;
        }
        self.status.restarted_at = requested;
        // A restartedAt already present when the Instance is created asks for
        // nothing: there is nothing to restart yet.
        if self.status.current_release.is_some() {
            self.restart_requested = true;
            self.actions.push(ProviderAction::Restart);
            let at = requested.map(|t| t.to_rfc3339()).unwrap_or_default();
            self.record(
                NewEvent::new(
                    EventType::InstanceRestarted,
                    "RestartRequested",
                    format!("spec.restartedAt set to {at}; replacing every replica"),
                )
                .detail("restartedAt", at),
            );
        }
    }

    fn plan_scale(&mut self) {
        let spec = &self.instance.spec;
        let resources = spec.resources.as_ref();
        let desired = AppliedScale {
            replicas: spec.replicas,
            cpu: resources.and_then(|r| r.cpu.as_ref()).map(|q| q.0.clone()),
            memory: resources
                .and_then(|r| r.memory.as_ref())
                .map(|q| q.0.clone()),
        };
        let Some(applied) = self.status.applied_scale.clone() else {
            self.status.applied_scale = Some(desired);
            return;
        };
        if applied == desired {
            return;
        }
        let mut event = NewEvent::new(
            EventType::InstanceScaled,
            "Scaled",
            describe_scale(&applied, &desired),
        )
        .detail("oldReplicas", applied.replicas)
        .detail("newReplicas", desired.replicas);
        for (key, old, new) in [
            ("Cpu", &applied.cpu, &desired.cpu),
            ("Memory", &applied.memory, &desired.memory),
        ] {
            if old != new {
                event = event
                    .detail(&format!("old{key}"), old.as_deref().unwrap_or("unset"))
                    .detail(&format!("new{key}"), new.as_deref().unwrap_or("unset"));
            }
        }
        self.record(event);
        self.actions.push(ProviderAction::Scale);
        self.status.applied_scale = Some(desired);
    }

    fn plan_release(&mut self) {
        let image = self.instance.spec.image.clone();
        let Some(current) = self.status.current_release.clone() else {
            self.push_release(image);
            return;
        };
        if current.image == image {
            return;
        }
        // An image that was rolled back is not deployed again by itself; a
        // new image or a restart request tries again.
        let rolled_back = self
            .status
            .releases
            .iter()
            .rev()
            .find(|r| r.image == image)
            .is_some_and(|r| r.outcome == ReleaseOutcome::RolledBack);
        if rolled_back && !self.restart_requested {
            return;
        }
        if current.outcome == ReleaseOutcome::Pending {
            self.set_release_outcome(current.version, ReleaseOutcome::Failed);
        }
        let release = self.push_release(image.clone());
        self.actions.push(ProviderAction::Deploy);
        self.record(
            NewEvent::new(
                EventType::DeployStarted,
                "ImageChanged",
                format!(
                    "release {} rolls out {} (was {})",
                    release.version, image, current.image
                ),
            )
            .detail("version", release.version)
            .detail("image", &image)
            .detail("previousImage", &current.image),
        );
    }

    fn push_release(&mut self, image: String) -> Release {
        let version = self
            .status
            .current_release
            .as_ref()
            .map_or(0, |r| r.version)
            // A version at i64::MAX was written by hand: stay there.
            .saturating_add(1);
        let release = Release {
            version,
            image: image.into(),
            created_at: self.now,
            outcome: ReleaseOutcome::Pending,
        };
        self.status.releases.push(release.clone());
        if self.status.releases.len() > RELEASE_LIMIT {
            let excess = self.status.releases.len() - RELEASE_LIMIT;
            self.status.releases.drain(..excess);
        }
        self.status.current_release = Some(release.clone());
        release
    }

    fn set_release_outcome(&mut self, version: i64, outcome: ReleaseOutcome) {
        for release in self
            .status
            .releases
            .iter_mut()
            .chain(self.status.current_release.iter_mut())
            .filter(|r| r.version == version)
        {
            release.outcome = outcome;
        }
    }

    fn desired_workload(&self) -> InstanceWorkload {
        let spec = &self.instance.spec;
        let meta = &self.instance.metadata;
        let image = self
            .status
            .current_release
            .as_ref()
            .map_or_else(|| spec.image.clone(), |r| r.image.to_string());
        InstanceWorkload {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            owner: owner_reference(self.instance),
            labels: meta.labels.clone().unwrap_or_default(),
            image,
            replicas: self.target_replicas(),
            resources: spec.resources.clone(),
            env: spec.env.clone(),
            ports: spec.ports.clone(),
            health_check: spec.health_check.clone(),
            region: spec.region.clone(),
            restart_token: self.status.restarted_at.map(|t| t.to_rfc3339()),
            progress_deadline_seconds: spec.progress_deadline_seconds,
        }
    }

    // ----------------------------------------------------------- observation

    /// The observation describes exactly the workload we want: the same
    /// template, caught up with our last change.
    fn matches(&self, workload: &InstanceWorkload) -> Option<&'a WorkloadStatus> {
        self.observed.workload.as_ref().filter(|w| {
            w.current
                && !w.terminating
                && w.image == workload.image
                && w.restart_token == workload.restart_token
                && w.desired_replicas == workload.replicas
        })
    }

    fn is_healthy(&self, workload: Option<&InstanceWorkload>) -> bool {
        let Some(workload) = workload else {
            return false;
        };
        self.matches(workload).is_some_and(|w| {
            w.rollout_complete
                && w.ready_replicas >= workload.replicas
                && (workload.ports.is_empty() || w.endpoint_ready)
        })
    }

    /// Decides the outcome of a release that is rolling out.
    fn judge_rollout(&mut self, workload: &InstanceWorkload) {
        let Some(release) = self.status.current_release.clone() else {
            return;
        };
        if release.outcome != ReleaseOutcome::Pending {
            return;
        }
        let Some(observed) = self.matches(workload) else {
            return;
        };
        if observed.rollout_complete && observed.ready_replicas >= workload.replicas {
            self.set_release_outcome(release.version, ReleaseOutcome::Succeeded);
            if release.version > 1 {
                self.record(
                    NewEvent::new(
                        EventType::DeploySucceeded,
                        "RolloutComplete",
                        format!("release {} ({}) rolled out", release.version, release.image),
                    )
                    .detail("version", release.version)
                    .detail("image", &release.image),
                );
            }
            return;
        }
        // A verdict from before this release began (the Deployment keeps
        // it until its controller has looked at the new template) is not
        // about this release.
        if observed
            .progress_deadline_exceeded
            .is_none_or(|at| at < release.created_at)
        {
            return;
        }
        let why = failure_message(
            &format!(
                "release {} ({}) made no progress within {}s",
                release.version, release.image, workload.progress_deadline_seconds
            ),
            &observed.problems,
        );
        self.set_release_outcome(release.version, ReleaseOutcome::Failed);
        if release.version > 1 {
            self.record(
                NewEvent::new(
                    EventType::DeployFailed,
                    "ProgressDeadlineExceeded",
                    why.clone(),
                )
                .detail("version", release.version)
                .detail("image", &release.image),
            );
        }
        self.failure = Some(("ProgressDeadlineExceeded".into(), why));

        if self.instance.spec.rollback != RollbackPolicy::Auto {
            return;
        }
        // The last good release with another image: rolling back to the
        // image that just failed would only fail again.
        let last_good = self
            .status
            .releases
            .iter()
            .rev()
            .find(|r| r.outcome == ReleaseOutcome::Succeeded && r.image != release.image)
            .cloned();
        if let Some(good) = last_good {
            self.set_release_outcome(release.version, ReleaseOutcome::RolledBack);
            let rollback = self.push_release(good.image.to_string());
            self.actions.push(ProviderAction::Rollback);
            self.rollback_started = true;
            self.record(
                NewEvent::new(
                    EventType::DeployRolledBack,
                    "AutoRollback",
                    format!(
                        "release {} failed; release {} returns to {} from release {}",
                        release.version, rollback.version, good.image, good.version
                    ),
                )
                .detail("failedVersion", release.version)
                .detail("failedImage", &release.image)
                .detail("version", rollback.version)
                .detail("image", &good.image),
            );
        }
    }

    /// A Running Instance whose replicas stay unready, with a reason, for
    /// longer than the progress deadline has failed.
    fn judge_crash(&mut self, workload: &InstanceWorkload) {
        if self.failure.is_some() || self.status.phase != Some(InstancePhase::Running) {
            return;
        }
        let Some(observed) = self.matches(workload) else {
            return;
        };
        if observed.ready_replicas >= workload.replicas || observed.problems.is_empty() {
            return;
        }
        let Some(ready) = conditions::find(&self.status.conditions, types::READY) else {
            return;
        };
        if ready.status != crate::api::ConditionStatus::False {
            return;
        }
        let deadline = chrono::Duration::seconds(workload.progress_deadline_seconds.into());
        let failing_since = ready.last_transition_time;
        if self.now - failing_since < deadline {
            let left = (failing_since + deadline - self.now)
                .to_std()
                .unwrap_or_default();
            self.requeue_after = self.requeue_after.min(left + Duration::from_secs(1));
            return;
        }
        let why = failure_message(
            &format!(
                "only {} of {} replicas ready for more than {}s",
                observed.ready_replicas, workload.replicas, workload.progress_deadline_seconds
            ),
            &observed.problems,
        );
        self.failure = Some(("ReplicasUnhealthy".into(), why));
    }

    // ----------------------------------------------------------------- phase

    /// Moves the phase as far as the observation allows, one table-checked
    /// step at a time, never entering the same phase twice in one plan.
    fn advance_phase(&mut self, workload: Option<&InstanceWorkload>) {
        use InstancePhase::*;
        let mut visited = vec![];
        for _ in 0..InstancePhase::ALL.len() {
            let phase = self.status.phase;
            let next = match phase {
                None => Some((
                    Provisioning,
                    "Created".to_string(),
                    "the Instance was created".to_string(),
                )),
                Some(Provisioning) => {
                    if self.deleting() {
                        Some((
                            Destroying,
                            "Deleted".into(),
                            "the Instance was deleted".into(),
                        ))
                    } else {
                        // The provider is asked to create the workload in
                        // this very reconcile; whether that worked shows in
                        // Synced, and what runs in the replica counts.
                        Some((
                            Starting,
                            "Provisioned".into(),
                            "the workload is created; starting it".into(),
                        ))
                    }
                }
                Some(Starting) => {
                    if self.deleting() {
                        Some((
                            Failed,
                            "DeletedWhileStarting".into(),
                            "the Instance was deleted before it was running".into(),
                        ))
                    } else if let Some((reason, message)) = self.failure.clone() {
                        Some((Failed, reason, message))
                    } else if self.is_healthy(workload) {
                        let replicas = workload.map_or(0, |w| w.replicas);
                        Some((
                            Running,
                            "ReplicasReady".into(),
                            format!("{replicas} of {replicas} replicas ready"),
                        ))
                    } else {
                        None
                    }
                }
                Some(Running) => {
                    if self.deleting() {
                        Some((
                            Destroying,
                            "Deleted".into(),
                            "the Instance was deleted".into(),
                        ))
                    } else if let Some((reason, message)) = self.failure.clone() {
                        Some((Failed, reason, message))
                    } else if self.intent() == Intent::Stopped {
                        Some((Stopping, self.stop_reason().into(), self.stop_message()))
                    } else {
                        None
                    }
                }
                Some(Stopping) => {
                    let gone =
                        self.observed.workload.as_ref().is_none_or(|w| {
                            w.current && w.desired_replicas == 0 && w.replicas == 0
                        });
                    if gone {
                        Some((
                            Stopped,
                            self.stop_reason().into(),
                            "every replica has stopped".into(),
                        ))
                    } else if self.deleting() {
                        // Deprovisioning removes the remaining replicas with
                        // the rest; the table leaves Stopping only for Stopped.
                        Some((
                            Stopped,
                            "DeletedWhileStopping".into(),
                            "deleted before every replica stopped".into(),
                        ))
                    } else if self.intent() == Intent::Running {
                        // Started again before every replica stopped. The
                        // table only leaves Stopping for Stopped, so the stop
                        // ends here and the start follows at once.
                        Some((
                            Stopped,
                            "StopCancelled".into(),
                            "asked to run again before every replica stopped".into(),
                        ))
                    } else {
                        None
                    }
                }
                Some(Stopped) => {
                    if self.deleting() {
                        Some((
                            Destroying,
                            "Deleted".into(),
                            "the Instance was deleted".into(),
                        ))
                    } else if self.intent() == Intent::Running {
                        Some((
                            Starting,
                            "StartRequested".into(),
                            "spec.state is Running".into(),
                        ))
                    } else {
                        None
                    }
                }
                Some(Failed) => {
                    // Without a record of when it failed, nothing says the
                    // current spec is the one that failed: try it.
                    let spec_changed = self
                        .status
                        .failed_generation
                        .is_none_or(|failed| self.generation.is_some_and(|g| g > failed));
                    if self.deleting() {
                        Some((
                            Destroying,
                            "Deleted".into(),
                            "the Instance was deleted".into(),
                        ))
                    } else if self.rollback_started {
                        Some((
                            Starting,
                            "RollingBack".into(),
                            "rolling back to the last good release".into(),
                        ))
                    } else if self.restart_requested || spec_changed {
                        Some((
                            Starting,
                            "Retrying".into(),
                            "the spec changed; starting again".into(),
                        ))
                    } else {
                        None
                    }
                }
                // Children owned by the Instance go with it (the garbage
                // collector); others must be gone first.
                Some(Destroying) => match self.observed.cleanup {
                    Cleanup::GarbageCollected => Some((
                        Destroyed,
                        "Deprovisioned".into(),
                        "its children are owned by it and go with it".into(),
                    )),
                    Cleanup::Deprovision => self.observed.workload.is_none().then(|| {
                        (
                            Destroyed,
                            "Deprovisioned".into(),
                            "every child object is gone".into(),
                        )
                    }),
                },
                Some(Destroyed) => None,
            };
            let Some((to, reason, message)) = next else {
                break;
            };
            if visited.contains(&to) {
                break;
            }
            if !self.transition(to, &reason, message) {
                break;
            }
            visited.push(to);
            if to == Failed {
                self.status.failed_generation = self.generation;
            }
            if to == Running {
                self.health_check_passed(workload);
            }
        }
    }

    /// Reaching Running, every replica has passed the health check, if the
    /// Instance has one: the first health event since it started, so a
    /// health.* subscriber knows where it stands before anything degrades.
    fn health_check_passed(&mut self, workload: Option<&InstanceWorkload>) {
        let replicas = workload.map_or(0, |w| w.replicas);
        if self.instance.spec.health_check.is_none() || replicas == 0 {
            return;
        }
        self.record(
            NewEvent::new(
                EventType::HealthPassed,
                "HealthCheckPassed",
                format!("{replicas} of {replicas} replicas passed the health check"),
            )
            .detail("readyReplicas", replicas)
            .detail("replicas", replicas),
        );
    }

    fn stop_reason(&self) -> &'static str {
        if self.instance.spec.suspend.is_some() {
            "Suspended"
        } else {
            "StopRequested"
        }
    }

    fn stop_message(&self) -> String {
        match &self.instance.spec.suspend {
            Some(s) => format!("suspended: {}", s.reason),
            None => "spec.state is Stopped".into(),
        }
    }

    /// Validates and records one phase change. A refused change is not made.
    fn transition(&mut self, to: InstancePhase, reason: &str, message: String) -> bool {
        let from = self.status.phase;
        if let Some(from) = from
            && let Err(refused) = validate_transition(from, to)
        {
            self.refused = Some(refused);
            return false;
        }
        self.status.phase = Some(to);
        let type_ = match to {
            InstancePhase::Provisioning => EventType::InstanceCreated,
            InstancePhase::Starting => EventType::InstanceStarting,
            InstancePhase::Running => EventType::InstanceStarted,
            InstancePhase::Stopping => EventType::InstanceStopping,
            InstancePhase::Stopped => EventType::InstanceStopped,
            InstancePhase::Failed => EventType::InstanceFailed,
            InstancePhase::Destroying => EventType::InstanceDeleting,
            InstancePhase::Destroyed => EventType::InstanceDeleted,
        };
        self.record(NewEvent::new(type_, reason, message).transition(from, to));
        true
    }

    fn record(&mut self, event: NewEvent) {
        let entry = history::append(
            &mut self.status.history,
            self.status.dispatched_seq,
            event,
            self.now,
        );
        self.events.extend(announce(&entry));
    }

    // --------------------------------------------------------------- actions

    fn plan_actions(&mut self) {
        use InstancePhase::*;
        let phase = self.status.phase;
        if self.deleting() {
            self.actions.clear();
            if matches!(phase, Some(Destroying) | Some(Destroyed)) {
                self.actions.push(ProviderAction::Deprovision);
            }
            return;
        }
        // Provision first, every time: it is how a deleted or edited child is
        // put back, and costs nothing when everything already matches.
        self.actions.insert(0, ProviderAction::Provision);
        let verb = match phase {
            Some(Starting) => Some(ProviderAction::Start),
            Some(Stopping) | Some(Stopped) => Some(ProviderAction::Stop),
            _ => None,
        };
        if let Some(verb) = verb {
            self.actions.push(verb);
        }
        let mut seen = Vec::new();
        self.actions.retain(|a| {
            let first = !seen.contains(a);
            seen.push(*a);
            first
        });
    }

    // ---------------------------------------------------------------- status

    fn update_observed_fields(&mut self, provider: &str) {
        let meta = &self.instance.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let observed = self.observed.workload.as_ref();
        self.status.replicas = observed.map_or(0, |w| w.replicas);
        self.status.ready_replicas = observed.map_or(0, |w| w.ready_replicas);
        self.status.selector = Some(format!("{INSTANCE_LABEL}={name}"));
        self.status.provider_ref = match observed {
            Some(w) => Some(w.provider_ref.clone()),
            None if self.status.phase == Some(InstancePhase::Destroyed) => None,
            None => self
                .status
                .provider_ref
                .clone()
                .filter(|r| r.provider == provider),
        };
        let endpoint_ready = observed.is_some_and(|w| w.endpoint_ready) && !self.deleting();
        self.status.endpoints = if endpoint_ready {
            self.instance
                .spec
                .ports
                .iter()
                .map(|p| Endpoint {
                    name: Text::from(&p.name),
                    url: format!(
                        "{}://{name}.{namespace}.svc.cluster.local:{}",
                        url_scheme(&p.name, p.protocol),
                        p.port
                    ),
                })
                .collect()
        } else {
            Vec::new()
        };
    }

    fn update_conditions(&mut self, workload: Option<&InstanceWorkload>) {
        use InstancePhase::*;
        let phase = self.status.phase;
        let healthy = self.is_healthy(workload);
        let target = workload.map_or(0, |w| w.replicas);
        let observed = self.observed.workload.as_ref();
        let ready_count = observed.map_or(0, |w| w.ready_replicas);
        let problems = observed.map(|w| w.problems.clone()).unwrap_or_default();
        let progress = failure_message(
            &format!("{ready_count} of {target} replicas ready"),
            &problems,
        );
        let failed_message = self
            .status
            .history
            .iter()
            .rev()
            .find(|e| e.type_ == EventType::InstanceFailed)
            .map(|e| e.message.to_string())
            .unwrap_or_else(|| "the Instance failed".into());
        let rolled_back = self.rolled_back_release();

        // Whether the last status said Ready, when it said something about
        // health: Ready, or unready replicas with no spec change under way.
        let previously_ready = conditions::find(&self.status.conditions, types::READY)
            .filter(|c| {
                c.status == crate::api::ConditionStatus::True || c.reason == REPLICAS_NOT_READY
            })
            .map(|c| c.status == crate::api::ConditionStatus::True);
        let pending_release = self
            .status
            .current_release
            .as_ref()
            .is_some_and(|r| r.outcome == ReleaseOutcome::Pending && r.version > 1);
        // A spec change under way (ours, this time or before) explains
        // unready replicas; without one they are a health problem.
        let change_reason = if pending_release
            || self
                .actions
                .iter()
                .any(|a| matches!(a, ProviderAction::Deploy | ProviderAction::Rollback))
        {
            Some("RollingOut")
        } else if self.actions.contains(&ProviderAction::Restart) {
            Some("Restarting")
        } else if self.actions.contains(&ProviderAction::Scale) {
            Some("Scaling")
        } else {
            conditions::find(&self.status.conditions, types::PROGRESSING)
                .filter(|c| c.status == crate::api::ConditionStatus::True)
                .and_then(|c| UPDATE_REASONS.iter().find(|r| **r == c.reason).copied())
        };

        let ready = match phase {
            Some(Running) if healthy => DesiredCondition::new(
                types::READY,
                true,
                "Running",
                format!("{target} of {target} replicas ready"),
            ),
            Some(Running) if change_reason.is_some() => {
                DesiredCondition::new(types::READY, false, "Updating", progress.clone())
            }
            Some(Running) => {
                DesiredCondition::new(types::READY, false, REPLICAS_NOT_READY, progress.clone())
            }
            Some(Provisioning) => {
                DesiredCondition::new(types::READY, false, "Provisioning", "creating the workload")
            }
            Some(Starting) => {
                DesiredCondition::new(types::READY, false, "Starting", progress.clone())
            }
            Some(Stopping) => {
                DesiredCondition::new(types::READY, false, "Stopping", "stopping every replica")
            }
            Some(Stopped) => match &self.instance.spec.suspend {
                Some(s) => DesiredCondition::new(
                    types::READY,
                    false,
                    "Suspended",
                    format!("suspended: {}", s.reason),
                ),
                None => {
                    DesiredCondition::new(types::READY, false, "Stopped", "spec.state is Stopped")
                }
            },
            Some(Failed) => {
                DesiredCondition::new(types::READY, false, "Failed", failed_message.clone())
            }
            Some(Destroying) | Some(Destroyed) => DesiredCondition::new(
                types::READY,
                false,
                "Deleting",
                "the Instance is being deleted",
            ),
            None => DesiredCondition::new(types::READY, false, "Pending", "not reconciled yet"),
        };
        // Replicas of a Running Instance that go unready with no change to
        // explain it, or come back, are health events.
        let stayed_running = self.instance.status.as_ref().and_then(|s| s.phase) == Some(Running)
            && phase == Some(Running);
        if stayed_running {
            let ready_before = self
                .instance
                .status
                .as_ref()
                .map_or(0, |s| s.ready_replicas);
            let before = previously_ready.map(|ready| Health::of(ready, ready_before));
            let now_ready = ready.status == crate::api::ConditionStatus::True;
            let now = (now_ready || ready.reason == REPLICAS_NOT_READY)
                .then(|| Health::of(now_ready, ready_count));
            if let (Some(before), Some(now)) = (before, now)
                && before != now
            {
                let (type_, reason, message) = match now {
                    Health::Healthy => (
                        EventType::HealthRecovered,
                        "ReplicasReady",
                        format!("{target} of {target} replicas ready"),
                    ),
                    Health::Degraded => (
                        EventType::HealthDegraded,
                        REPLICAS_NOT_READY,
                        progress.clone(),
                    ),
                    Health::Failed => (EventType::HealthFailed, "NoReplicaReady", progress.clone()),
                };
                self.record(
                    NewEvent::new(type_, reason, message)
                        .detail("readyReplicas", ready_count)
                        .detail("replicas", target)
                        .detail("previousHealth", before.as_str()),
                );
            }
        }
        self.set_desired(ready);

        let progressing = match phase {
            Some(Running) if healthy => match &rolled_back {
                Some(message) => {
                    DesiredCondition::new(types::PROGRESSING, false, "RolledBack", message.clone())
                }
                None => DesiredCondition::new(
                    types::PROGRESSING,
                    false,
                    "Complete",
                    "the workload matches the spec",
                ),
            },
            Some(Running) => match change_reason {
                Some(reason) => {
                    DesiredCondition::new(types::PROGRESSING, true, reason, progress.clone())
                }
                None => DesiredCondition::new(
                    types::PROGRESSING,
                    false,
                    REPLICAS_NOT_READY,
                    progress.clone(),
                ),
            },
            Some(Starting) if pending_release => {
                DesiredCondition::new(types::PROGRESSING, true, "RollingOut", progress.clone())
            }
            Some(Provisioning) => DesiredCondition::new(
                types::PROGRESSING,
                true,
                "Provisioning",
                "creating the workload",
            ),
            Some(Starting) => {
                DesiredCondition::new(types::PROGRESSING, true, "Starting", progress.clone())
            }
            Some(Stopping) => DesiredCondition::new(
                types::PROGRESSING,
                true,
                "Stopping",
                "stopping every replica",
            ),
            Some(Stopped) => {
                DesiredCondition::new(types::PROGRESSING, false, "Stopped", "no replicas run")
            }
            Some(Failed) => {
                DesiredCondition::new(types::PROGRESSING, false, "Failed", failed_message.clone())
            }
            Some(Destroying) => DesiredCondition::new(
                types::PROGRESSING,
                true,
                "Deleting",
                "removing the workload",
            ),
            Some(Destroyed) => {
                DesiredCondition::new(types::PROGRESSING, false, "Deleted", "the workload is gone")
            }
            None => {
                DesiredCondition::new(types::PROGRESSING, false, "Pending", "not reconciled yet")
            }
        };
        self.set_desired(progressing);

        let suspended = match (&self.instance.spec.suspend, self.status.suspended_at) {
            (Some(s), Some(at)) => DesiredCondition::new(
                types::SUSPENDED,
                true,
                "Suspended",
                format!("suspended since {}: {}", at.to_rfc3339(), s.reason),
            ),
            _ => DesiredCondition::new(
                types::SUSPENDED,
                false,
                "NotSuspended",
                "spec.suspend is not set",
            ),
        };
        self.set_desired(suspended);

        let (condition, warning) = synced(self.refused.as_ref());
        self.events.extend(warning);
        self.set_desired(condition);

        // Failed stays Failed until the spec changes: stuck, in kstatus' words.
        let stuck = (phase == Some(Failed)).then(|| {
            let reason = self
                .status
                .history
                .iter()
                .rev()
                .find(|e| e.type_ == EventType::InstanceFailed)
                .map_or_else(|| "Failed".to_string(), |e| e.reason.to_string());
            (reason, failed_message)
        });
        self.set_desired(conditions::stalled(stuck));
    }

    /// While spec.image names a release that was rolled back, says so.
    fn rolled_back_release(&self) -> Option<String> {
        let current = self.status.current_release.as_ref()?;
        if current.image == self.instance.spec.image {
            return None;
        }
        let failed = self.status.releases.iter().rev().find(|r| {
            r.image == self.instance.spec.image && r.outcome == ReleaseOutcome::RolledBack
        })?;
        Some(format!(
            "release {} ({}) failed and was rolled back; running release {} ({}). Change spec.image, or set spec.restartedAt to try it again",
            failed.version, failed.image, current.version, current.image
        ))
    }

    fn set(&mut self, type_: &'static str, status: bool, reason: &str, message: impl Into<String>) {
        self.set_desired(DesiredCondition::new(type_, status, reason, message));
    }

    fn set_desired(&mut self, desired: DesiredCondition) {
        conditions::set_condition(
            &mut self.status.conditions,
            desired,
            self.generation,
            self.now,
        );
    }
}

/// The Instance as the controlling owner of its children.
pub fn owner_reference(instance: &Instance) -> OwnerReference {
    OwnerReference {
        api_version: Instance::api_version(&()).into_owned(),
        kind: Instance::kind(&()).into_owned(),
        name: instance.name_any(),
        uid: instance.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn describe_scale(old: &AppliedScale, new: &AppliedScale) -> String {
    let mut parts = Vec::new();
    if old.replicas != new.replicas {
        parts.push(format!("replicas {} -> {}", old.replicas, new.replicas));
    }
    if old.cpu != new.cpu {
        parts.push(format!(
            "cpu {} -> {}",
            old.cpu.as_deref().unwrap_or("unset"),
            new.cpu.as_deref().unwrap_or("unset")
        ));
    }
    if old.memory != new.memory {
        parts.push(format!(
            "memory {} -> {}",
            old.memory.as_deref().unwrap_or("unset"),
            new.memory.as_deref().unwrap_or("unset")
        ));
    }
    parts.join(", ")
}

fn failure_message(summary: &str, problems: &[String]) -> String {
    if problems.is_empty() {
        summary.to_string()
    } else {
        format!("{summary}: {}", problems.join("; "))
    }
}

/// The URL scheme of an endpoint, guessed from the port's name and protocol.
fn url_scheme(port_name: &str, protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        Protocol::Tcp if port_name.starts_with("https") => "https",
        Protocol::Tcp if port_name.starts_with("http") || port_name.starts_with("web") => "http",
        Protocol::Tcp if port_name.starts_with("grpc") => "grpc",
        Protocol::Tcp => "tcp",
    }
}

#[cfg(test)]
mod tests;
