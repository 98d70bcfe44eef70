//! The Sandbox planner: `plan(&sandbox, &observation, now) -> SandboxPlan`.
//!
//! A sandbox is a claim (its data, kept across stops), a Pod while it runs,
//! and a Service when it declares ports. The planner decides, from the
//! spec, the status and what the provider reports:
//! - expiry: when the TTL or `expiresAt` passes, the sandbox is stopped or
//!   deleted as its policy says, once, with a `sandbox.expired` event;
//! - placement: the host with room for it, or why there is none;
//! - the phase, one table-checked step at a time, and the provider actions.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::capacity::{Request, choose_host};
use super::conditions::{self, DesiredCondition, types};
use super::history::{self, NewEvent};
use super::{
    FINALIZER, FinalizerAction, PlannedEvent, REQUEUE_PROGRESSING, REQUEUE_SETTLED, announce,
    finalizer_action, finalizer_needed, synced,
};
use crate::api::{
    CommandCursor, CommandMark, CommandPhase, DesiredState, EventType, ExpiryPolicy, ProviderRef,
    RecordedCommand, Sandbox, SandboxPhase, SandboxStatus, SnapshotPhase,
};
use crate::lifecycle::{Lifecycle, TransitionError, validate_transition};
use crate::provider::{
    AGENT_LABEL, Cleanup, Host, JOB_LABEL, PodObserved, RestoreSource, RunWanted, SANDBOX_LABEL,
    SandboxObserved, SandboxWorkload, UnknownProvider, milli,
};

/// While waiting for room, look again this often.
pub const REQUEUE_WAITING_FOR_ROOM: Duration = Duration::from_secs(5);

/// How long a new claim may take to bind before Ready says the Sandbox waits
/// for it (`WaitingForClaim`). Most bind well within it (a busy provisioner
/// or a cloud disk can take tens of seconds): saying so for each would cost
/// every Sandbox a status write for a wait nobody needs to hear about. A
/// Sandbox still starting is looked at again after [`REQUEUE_PROGRESSING`]
/// anyway, which is when a claim that has not bound by then is reported.
pub const CLAIM_BINDING_GRACE: Duration = REQUEUE_PROGRESSING;

/// What the reconciler observed before planning.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxObservation {
    pub provider: Result<String, UnknownProvider>,
    /// How that provider's children go when the Sandbox is deleted.
    pub cleanup: Cleanup,
    /// Whether a Webhook in the namespace may want the Sandbox's events, so
    /// that a deletion must wait until its last ones are sent.
    pub webhooks_listen: bool,
    pub observed: SandboxObserved,
    /// The hosts and what they have free, for placing a new Pod.
    pub hosts: Vec<Host>,
    /// Its commands, in the order they run: by creation, then name.
    pub commands: Vec<CommandView>,
    /// The snapshot spec.source names; `None` when it does not exist (or
    /// spec.source names none).
    pub source: Option<SourceView>,
}

/// A command of the sandbox, as its history needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandView {
    pub mark: CommandMark,
    pub phase: Option<CommandPhase>,
    /// Whether it was started (it has a startedAt).
    pub started: bool,
    pub exit_code: Option<i32>,
    /// Why it ended, when it did not succeed.
    pub reason: String,
    pub message: String,
}

/// The snapshot a sandbox's data starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    pub phase: Option<SnapshotPhase>,
    /// The volume snapshot behind it, once taken.
    pub volume_snapshot: Option<String>,
    pub restore_size: Option<String>,
    /// What its Ready condition says.
    pub message: String,
}

/// Why the provider is called. `Provision`, `Start` and `Stop` are one
/// call (make the sandbox match the workload, whose `run` says whether it
/// runs); `Deprovision` removes everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxAction {
    /// Create or repair the claim (and the Service).
    Provision,
    /// Run it on the workload's host.
    Start,
    /// Stop it; the claim stays.
    Stop,
    /// Delete everything.
    Deprovision,
}

/// Everything the reconciler has to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPlan {
    pub status: SandboxStatus,
    pub workload: Option<SandboxWorkload>,
    pub actions: Vec<SandboxAction>,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Duration,
    pub finalizer: FinalizerAction,
    /// The sandbox expired with policy Delete: delete the Sandbox itself.
    pub delete_sandbox: bool,
    /// Labels the Sandbox itself should carry (agent and job), when they differ.
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Running,
    Stopped,
    Gone,
}

/// Decides what should happen to a Sandbox. Pure.
pub fn plan(
    sandbox: &Sandbox,
    observation: &SandboxObservation,
    now: DateTime<Utc>,
) -> SandboxPlan {
    Planner::new(sandbox, observation, now).run()
}

/// How long after its creation a command may still reach the cache late,
/// behind commands created after it (see `plan_commands`).
pub const LATE_COMMAND_WINDOW: Duration = Duration::from_secs(60);

/// The history entry of a command's end.
fn command_ended(command: &CommandView) -> NewEvent {
    let name = &command.mark.name;
    let phase = command.phase.unwrap_or(CommandPhase::Failed);
    let (type_, reason, message) = match (phase, command.exit_code) {
        (CommandPhase::Succeeded, _) => (
            EventType::SandboxCommandSucceeded,
            "Succeeded".to_string(),
            format!("command {name} exited with code 0"),
        ),
        (_, Some(code)) => (
            EventType::SandboxCommandFailed,
            command.reason.clone(),
            format!("command {name} exited with code {code}"),
        ),
        _ => (
            EventType::SandboxCommandFailed,
            command.reason.clone(),
            format!("command {name} {}", command.message),
        ),
    };
    let mut event = NewEvent::new(type_, reason, message)
        .detail("command", name)
        .detail("phase", phase);
    if let Some(code) = command.exit_code {
        event = event.detail("exitCode", code);
    }
    event
}

/// When a sandbox expires: spec.expiresAt, or creation plus ttlSeconds.
pub fn expiry(sandbox: &Sandbox) -> Option<DateTime<Utc>> {
    if let Some(at) = sandbox.spec.expires_at {
        return Some(at);
    }
    let ttl = sandbox.spec.ttl_seconds?;
    // A TTL longer than a chrono duration holds never ends; one as far
    // below zero ended long ago.
    let ttl = chrono::Duration::try_seconds(ttl).unwrap_or(if ttl < 0 {
        chrono::Duration::MIN
    } else {
        chrono::Duration::MAX
    });
    Some(super::saturating_add(
        super::created_at(&sandbox.metadata)?,
        ttl,
    ))
}

struct Planner<'a> {
    sandbox: &'a Sandbox,
    observation: &'a SandboxObservation,
    now: DateTime<Utc>,
    generation: Option<i64>,
    status: SandboxStatus,
    events: Vec<PlannedEvent>,
    actions: Vec<SandboxAction>,
    refused: Option<TransitionError>,
    expired: bool,
    retry: bool,
    no_room: Option<String>,
    waiting_for_claim: bool,
    /// The claim is new and not bound yet: its wait, and its pod's, is no
    /// news yet (see [`CLAIM_BINDING_GRACE`]).
    claim_in_grace: bool,
    /// Where a new Pod goes, when one is to be made.
    chosen_host: Option<String>,
    /// Its data is to start from a snapshot that is not ready: why.
    waiting_for_snapshot: Option<String>,
    requeue_after: Duration,
}

impl<'a> Planner<'a> {
    fn new(sandbox: &'a Sandbox, observation: &'a SandboxObservation, now: DateTime<Utc>) -> Self {
        Self {
            sandbox,
            observation,
            now,
            generation: sandbox.metadata.generation,
            status: sandbox.status.clone().unwrap_or_default(),
            events: Vec::new(),
            actions: Vec::new(),
            refused: None,
            expired: false,
            retry: false,
            no_room: None,
            waiting_for_claim: false,
            claim_in_grace: false,
            chosen_host: None,
            waiting_for_snapshot: None,
            requeue_after: REQUEUE_SETTLED,
        }
    }

    fn deleting(&self) -> bool {
        self.sandbox.metadata.deletion_timestamp.is_some()
    }

    fn intent(&self) -> Intent {
        let expired_for_deletion =
            self.expired && self.sandbox.spec.expiry_policy == ExpiryPolicy::Delete;
        if self.deleting() || expired_for_deletion {
            Intent::Gone
        } else if self.expired || self.sandbox.spec.state == DesiredState::Stopped {
            Intent::Stopped
        } else {
            Intent::Running
        }
    }

    fn pod(&self) -> Option<&'a PodObserved> {
        self.observation.observed.pod.as_ref()
    }

    fn everything_gone(&self) -> bool {
        let o = &self.observation.observed;
        o.pod.is_none() && o.claim.is_none() && !o.service
    }

    fn run(mut self) -> SandboxPlan {
        let has_finalizer = self.sandbox.finalizers().iter().any(|f| f == FINALIZER);
        let provider = match &self.observation.provider {
            Ok(name) => name.clone(),
            Err(unknown) => return self.unknown_provider(unknown.clone(), has_finalizer),
        };
        self.plan_expiry();
        self.plan_restart();
        self.plan_commands();
        self.waiting_for_snapshot = self.snapshot_not_ready();
        let mut workload =
            (!self.deleting() && self.intent() != Intent::Gone).then(|| self.workload());
        let revision = workload.as_ref().map(|w| w.revision.clone());
        // A Pod made from an older revision, or one that failed and is to
        // be tried again, is replaced.
        let stale_pod = self
            .pod()
            .is_some_and(|p| revision.is_some() && p.revision != revision);

        // Where a new Pod would go. It is made at once, with its claim: a
        // claim that binds only when a pod uses it (WaitForFirstConsumer)
        // would never bind otherwise, and a pod waiting for its claim is
        // not taken for a failure.
        let needs_pod = self.intent() == Intent::Running && (self.pod().is_none() || stale_pod);
        let claim = self.observation.observed.claim.as_ref();
        // Within its grace, a new claim's wait is not reported.
        let in_grace = claim.and_then(|c| c.created_at).is_some_and(|created| {
            (self.now - created)
                .to_std()
                .map_or(true, |waited| waited < CLAIM_BINDING_GRACE)
        });
        self.claim_in_grace = in_grace && claim.is_some_and(|c| !c.bound);
        self.waiting_for_claim = !in_grace
            && (claim.is_some_and(|c| !c.bound) || self.pod().is_some_and(|p| p.waiting_for_data));
        if needs_pod && workload.is_some() && self.waiting_for_snapshot.is_none() {
            let request = self.request();
            match choose_host(
                &self.observation.hosts,
                request,
                self.sandbox.spec.placement.as_ref(),
            ) {
                Ok(host) => self.chosen_host = Some(host),
                Err(no_room) => self.no_room = Some(no_room.message),
            }
        }

        self.advance_phase(stale_pod);
        self.plan_actions(&mut workload, stale_pod);
        self.update_status(&provider, workload.as_ref());
        history::trim(&mut self.status.history, self.status.dispatched_seq);
        self.status.observed_generation = self.generation;

        let finalizer = finalizer_action(
            self.deleting(),
            has_finalizer,
            self.status.phase == Some(SandboxPhase::Destroyed),
            // A deletion also waits for the commands: pending ones fail
            // with SandboxDeleted, a running one is let finish.
            finalizer_needed(self.observation.cleanup, self.observation.webhooks_listen)
                || self.commands_unfinished(),
        );
        let settled = matches!(
            self.status.phase,
            Some(SandboxPhase::Running | SandboxPhase::Stopped | SandboxPhase::Error)
        ) && self
            .pod()
            .is_none_or(|p| p.ready || self.status.phase != Some(SandboxPhase::Running));
        // Room frees up without telling us; a claim that binds does tell.
        if self.no_room.is_some() {
            self.requeue_after = self.requeue_after.min(REQUEUE_WAITING_FOR_ROOM);
        } else if !settled {
            self.requeue_after = self.requeue_after.min(REQUEUE_PROGRESSING);
        }
        let delete_sandbox = self.expired
            && self.sandbox.spec.expiry_policy == ExpiryPolicy::Delete
            && !self.deleting();
        SandboxPlan {
            labels: self.wanted_labels(),
            status: self.status,
            workload,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue_after,
            finalizer,
            delete_sandbox,
        }
    }

    fn unknown_provider(mut self, unknown: UnknownProvider, has_finalizer: bool) -> SandboxPlan {
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
        let finalizer = finalizer_action(
            self.deleting(),
            has_finalizer,
            self.status.provider_ref.is_none(),
            self.observation.webhooks_listen,
        );
        SandboxPlan {
            labels: self.wanted_labels(),
            status: self.status,
            workload: None,
            actions: Vec::new(),
            events: self.events,
            requeue_after: REQUEUE_SETTLED,
            finalizer,
            delete_sandbox: false,
        }
    }

    /// The agent and job labels the Sandbox should carry, if they are not
    /// there yet.
    fn wanted_labels(&self) -> Option<BTreeMap<String, String>> {
        let current = self.sandbox.labels();
        let mut wanted = BTreeMap::new();
        for (key, value) in [
            (AGENT_LABEL, &self.sandbox.spec.agent_id),
            (JOB_LABEL, &self.sandbox.spec.job_id),
        ] {
            if let Some(value) = value
                && current.get(key) != Some(value)
            {
                wanted.insert(key.to_string(), value.clone());
            }
        }
        (!wanted.is_empty() && !self.deleting()).then_some(wanted)
    }

    // ----------------------------------------------------------------- spec

    fn plan_expiry(&mut self) {
        let expires_at = expiry(self.sandbox);
        self.status.expires_at = expires_at;
        let Some(at) = expires_at else {
            if conditions::is_true(&self.status.conditions, types::EXPIRED) {
                self.set(
                    types::EXPIRED,
                    false,
                    "NoExpiry",
                    "the sandbox has no TTL or expiry time any more",
                );
            }
            return;
        };
        let was_expired = conditions::is_true(&self.status.conditions, types::EXPIRED);
        self.expired = at <= self.now;
        if self.expired && !was_expired {
            let (reason, what) = match self.sandbox.spec.expiry_policy {
                ExpiryPolicy::Delete => ("ExpiredDelete", "deleting it"),
                ExpiryPolicy::Stop => ("ExpiredStop", "stopping it; its data is kept"),
            };
            let message = format!("expired at {}; {what}", at.to_rfc3339());
            self.record(
                NewEvent::new(EventType::SandboxExpired, reason, message.clone())
                    .detail("expiresAt", at.to_rfc3339()),
            );
            self.set(types::EXPIRED, true, reason, message);
        } else if !self.expired {
            let left = (at - self.now).to_std().unwrap_or_default();
            // Look again exactly at the deadline: no polling in between.
            self.requeue_after = self.requeue_after.min(left + Duration::from_millis(50));
            // Once extended past an expiry, it stays "Extended" until the
            // next expiry, so planning again does not flip the reason.
            let extended = was_expired
                || conditions::find(&self.status.conditions, types::EXPIRED)
                    .is_some_and(|c| c.reason == "Extended");
            let reason = if extended { "Extended" } else { "NotExpired" };
            self.set(
                types::EXPIRED,
                false,
                reason,
                format!("expires at {}", at.to_rfc3339()),
            );
        }
    }

    fn plan_restart(&mut self) {
        let requested = self.sandbox.spec.restarted_at;
        if requested.is_some() && requested != self.status.restarted_at {
            // One restart per value; a value present at creation asks for nothing.
            self.retry = self.status.phase.is_some();
            self.status.restarted_at = requested;
        }
        // A changed spec is another reason to leave Error.
        let failed_generation = conditions::find(&self.status.conditions, types::READY)
            .filter(|c| c.reason == "Error")
            .and_then(|c| c.observed_generation);
        if let (Some(failed), Some(generation)) = (failed_generation, self.generation)
            && generation > failed
        {
            self.retry = true;
        }
    }

    /// Whether any of its commands has not ended.
    fn commands_unfinished(&self) -> bool {
        self.observation
            .commands
            .iter()
            .any(|c| !c.phase.is_some_and(CommandPhase::is_finished))
    }

    /// When its data is to start from a snapshot that is not ready, and
    /// none is made yet: why it waits.
    fn snapshot_not_ready(&self) -> Option<String> {
        let wanted = self.sandbox.spec.source.as_ref()?;
        if self.observation.observed.claim.is_some() || self.deleting() {
            return None;
        }
        let name = &wanted.snapshot_ref.name;
        match &self.observation.source {
            None => Some(format!("SandboxSnapshot {name} does not exist")),
            Some(source) if source.phase == Some(SnapshotPhase::Ready) => source
                .volume_snapshot
                .is_none()
                .then(|| format!("SandboxSnapshot {name} is ready but has no volume snapshot")),
            Some(source) if source.phase == Some(SnapshotPhase::Failed) => {
                Some(format!("SandboxSnapshot {name} failed: {}", source.message))
            }
            Some(_) => Some(format!("waiting for SandboxSnapshot {name} to be ready")),
        }
    }

    /// Records in the history how its commands started and ended, in the
    /// order they run, each once: `status.commands` remembers how far the
    /// history has got.
    /// Records each command's start and end in the history, once.
    ///
    /// Commands run in creation order, but one created in the same second
    /// as another can reach the cache late, after a later one ran. So the
    /// cursor remembers each recent command it recorded, by uid, and moves
    /// its mark past a command only once it is fully recorded and older
    /// than [`LATE_COMMAND_WINDOW`]: a command arriving late is still after
    /// the mark, and recorded like any other.
    fn plan_commands(&mut self) {
        let mut cursor = self.status.commands.clone().unwrap_or_default();
        let order = |m: &CommandMark| (m.created, m.name.clone());
        let after_mark = |m: &CommandMark, mark: &Option<CommandMark>| {
            mark.as_ref().is_none_or(|mark| order(m) > order(mark))
        };
        // Recorded as started, and gone before its end was recorded.
        let present: std::collections::HashSet<&str> = self
            .observation
            .commands
            .iter()
            .map(|c| c.mark.uid.as_str())
            .collect();
        let mut gone = Vec::new();
        cursor.recorded.retain(|r| {
            let kept = present.contains(r.uid.as_str());
            if !kept && !r.finished {
                gone.push(r.name.clone());
            }
            kept
        });
        for name in gone {
            self.record(
                NewEvent::new(
                    EventType::SandboxCommandFailed,
                    "Deleted",
                    format!("command {name} was deleted before it ended"),
                )
                .detail("command", &name),
            );
        }
        let commands = self.observation.commands.clone();
        for command in commands
            .iter()
            .filter(|c| after_mark(&c.mark, &cursor.finished))
        {
            let name = command.mark.name.clone();
            let finished = command.phase.is_some_and(CommandPhase::is_finished);
            let started = command.started || command.phase == Some(CommandPhase::Running);
            let index = cursor
                .recorded
                .iter()
                .position(|r| r.uid == command.mark.uid);
            if index.is_none() && (started || finished) {
                if started {
                    self.record_command_started(&name);
                }
                cursor.recorded.push(RecordedCommand {
                    name: name.clone(),
                    uid: command.mark.uid.clone(),
                    finished: false,
                });
            }
            let Some(record) = cursor
                .recorded
                .iter_mut()
                .find(|r| r.uid == command.mark.uid)
            else {
                continue;
            };
            if finished && !record.finished {
                record.finished = true;
                self.record(command_ended(command));
            }
        }
        // The mark moves over the fully recorded commands that are too old
        // to be overtaken by a late one.
        let settled_before = self
            .now
            .checked_sub_signed(chrono::Duration::from_std(LATE_COMMAND_WINDOW).unwrap_or_default())
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let unmarked: Vec<&CommandView> = commands
            .iter()
            .filter(|c| after_mark(&c.mark, &cursor.finished))
            .collect();
        for command in unmarked {
            let fully_recorded = cursor
                .recorded
                .iter()
                .any(|r| r.uid == command.mark.uid && r.finished);
            if !fully_recorded || command.mark.created >= settled_before {
                break;
            }
            cursor.recorded.retain(|r| r.uid != command.mark.uid);
            cursor.finished = Some(command.mark.clone());
        }
        let empty = cursor == CommandCursor::default();
        self.status.commands = (!empty).then_some(cursor);
    }

    fn record_command_started(&mut self, name: &str) {
        self.record(
            NewEvent::new(
                EventType::SandboxCommandStarted,
                "Started",
                format!("command {name} started"),
            )
            .detail("command", name),
        );
    }

    fn request(&self) -> Request {
        let resources = &self.sandbox.spec.resources;
        let cpu = kube_quantity::ParsedQuantity::try_from(&resources.cpu)
            .ok()
            .and_then(|q| milli(&q, true))
            .unwrap_or(0);
        let memory = kube_quantity::ParsedQuantity::try_from(&resources.memory)
            .ok()
            .and_then(|q| milli(&q, false))
            .unwrap_or(0);
        Request { cpu, memory }
    }

    fn workload(&self) -> SandboxWorkload {
        let spec = &self.sandbox.spec;
        let meta = &self.sandbox.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let mut labels = BTreeMap::from([(SANDBOX_LABEL.to_string(), name.clone())]);
        if let Some(agent) = &spec.agent_id {
            labels.insert(AGENT_LABEL.to_string(), agent.clone());
        }
        if let Some(job) = &spec.job_id {
            labels.insert(JOB_LABEL.to_string(), job.clone());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &spec.image,
            &spec.resources.cpu.0,
            &spec.resources.memory.0,
            serde_json::to_string(&spec.env).unwrap_or_default(),
            serde_json::to_string(&spec.ports).unwrap_or_default(),
            serde_json::to_string(&spec.placement).unwrap_or_default(),
            self.status.restarted_at,
        )
            .hash(&mut hasher);
        SandboxWorkload {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: name.clone(),
            owner: owner_reference(self.sandbox),
            labels,
            image: spec.image.clone(),
            cpu: spec.resources.cpu.0.clone(),
            memory: spec.resources.memory.0.clone(),
            storage: spec.resources.storage.0.clone(),
            storage_class: spec.resources.storage_class_name.clone(),
            env: spec.env.clone(),
            ports: spec.ports.clone(),
            run: RunWanted::AsIs,
            revision: format!("{:016x}", hasher.finish()),
            restore_from: self.observation.source.as_ref().and_then(|source| {
                Some(RestoreSource {
                    volume_snapshot: source.volume_snapshot.clone()?,
                    restore_size: source.restore_size.clone(),
                })
            }),
        }
    }

    // ----------------------------------------------------------------- phase

    fn advance_phase(&mut self, stale_pod: bool) {
        use SandboxPhase::*;
        let mut visited = Vec::new();
        for _ in 0..SandboxPhase::ALL.len() {
            let pod = self.pod();
            let intent = self.intent();
            let pod_gone = pod.is_none();
            let current_pod = pod.filter(|p| !stale_pod && !p.terminating);
            // A pod is made in this very reconcile: starting has begun.
            let starting_now = pod_gone && self.chosen_host.is_some() && intent == Intent::Running;
            let next: Option<(SandboxPhase, String, String)> = match self.status.phase {
                None => Some((Created, "Created".into(), "the sandbox was created".into())),
                Some(Destroyed) => None,
                // Children owned by the Sandbox go with it (the garbage
                // collector); others must be gone first. Its commands end
                // first (they fail, as the sandbox goes), so their last
                // events are in its history.
                Some(_) if intent == Intent::Gone && self.deleting() => {
                    ((self.observation.cleanup == Cleanup::GarbageCollected
                        || self.everything_gone())
                        && !self.commands_unfinished())
                    .then(|| {
                        (
                            Destroyed,
                            "Deleted".into(),
                            "the sandbox was deleted; its pod, claim and service go with it".into(),
                        )
                    })
                }
                Some(Created) => match intent {
                    Intent::Stopped | Intent::Gone => pod_gone.then(|| {
                        (
                            Stopped,
                            self.stop_reason(),
                            "the sandbox is stopped; its data is kept".into(),
                        )
                    }),
                    Intent::Running => (current_pod.is_some() || starting_now)
                        .then(|| (Starting, "PodCreated".into(), "its pod was created".into())),
                },
                Some(Starting) => match intent {
                    Intent::Stopped | Intent::Gone => pod_gone.then(|| {
                        (
                            Stopped,
                            self.stop_reason(),
                            "the sandbox is stopped; its data is kept".into(),
                        )
                    }),
                    Intent::Running => match current_pod {
                        Some(p) if p.failed => Some((Error, "PodFailed".into(), failure(p))),
                        Some(p) if p.ready => {
                            Some((Running, "PodReady".into(), "the sandbox is running".into()))
                        }
                        _ => None,
                    },
                },
                Some(Running) => match intent {
                    Intent::Stopped | Intent::Gone => pod_gone.then(|| {
                        (
                            Stopped,
                            self.stop_reason(),
                            "the sandbox is stopped; its data is kept".into(),
                        )
                    }),
                    Intent::Running => match pod {
                        // Gone from under it (deleted, evicted) or to be
                        // replaced: it stops, then starts again.
                        None => Some((
                            Stopped,
                            "PodGone".into(),
                            "its pod is gone; starting it again".into(),
                        )),
                        Some(p) if stale_pod && p.terminating => None,
                        Some(_) if stale_pod => None,
                        Some(p) if p.failed => Some((Error, "PodFailed".into(), failure(p))),
                        _ => None,
                    },
                },
                Some(Stopped) => match intent {
                    Intent::Running => (current_pod.is_some() || starting_now)
                        .then(|| (Starting, "PodCreated".into(), "its pod was created".into())),
                    _ => None,
                },
                Some(Error) => match intent {
                    Intent::Stopped | Intent::Gone => pod_gone.then(|| {
                        (
                            Stopped,
                            self.stop_reason(),
                            "the sandbox is stopped; its data is kept".into(),
                        )
                    }),
                    Intent::Running if self.retry || stale_pod => (current_pod.is_some()
                        || starting_now)
                        .then(|| (Starting, "Retrying".into(), "a new pod was created".into())),
                    // A pod that got better on its own (a passing crash):
                    // through Starting, back to Running.
                    Intent::Running => current_pod
                        .filter(|p| p.ready && !p.failed)
                        .map(|_| (Starting, "Recovered".into(), "its pod recovered".into())),
                },
            };
            let Some((to, reason, message)) = next else {
                break;
            };
            if visited.contains(&to) || !self.transition(to, &reason, message) {
                break;
            }
            visited.push(to);
            if to == Running {
                self.status.started_at = Some(self.now);
            }
        }
    }

    fn stop_reason(&self) -> String {
        if self.expired {
            "Expired".into()
        } else if self.deleting() {
            "Deleted".into()
        } else {
            "StopRequested".into()
        }
    }

    fn transition(&mut self, to: SandboxPhase, reason: &str, message: String) -> bool {
        let from = self.status.phase;
        if let Some(from) = from
            && let Err(refused) = validate_transition(from, to)
        {
            self.refused = Some(refused);
            return false;
        }
        self.status.phase = Some(to);
        let type_ = match to {
            SandboxPhase::Created => EventType::SandboxCreated,
            SandboxPhase::Starting => EventType::SandboxStarting,
            SandboxPhase::Running => EventType::SandboxStarted,
            SandboxPhase::Stopped => EventType::SandboxStopped,
            SandboxPhase::Error => EventType::SandboxFailed,
            SandboxPhase::Destroyed => EventType::SandboxDestroyed,
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

    fn plan_actions(&mut self, workload: &mut Option<SandboxWorkload>, stale_pod: bool) {
        if self.deleting() {
            // Providers whose children go with the Sandbox do nothing here;
            // the others remove everything before the phase moves on.
            self.actions.push(SandboxAction::Deprovision);
            return;
        }
        if self.intent() == Intent::Gone {
            // Expired with policy Delete: the Sandbox itself is deleted,
            // and the finalizer does the rest.
            return;
        }
        if self.waiting_for_snapshot.is_some() {
            // Nothing is made before the data it starts from is ready.
            return;
        }
        self.actions.push(SandboxAction::Provision);
        let pod = self.pod();
        let failed_pod_to_retry = pod.is_some_and(|p| p.failed) && self.retry;
        let run = match self.intent() {
            Intent::Running => {
                if pod.is_some_and(|p| !p.terminating) && (stale_pod || failed_pod_to_retry) {
                    self.actions.push(SandboxAction::Stop);
                    RunWanted::Stopped
                } else if let (None, Some(host)) = (pod, &self.chosen_host) {
                    self.actions.push(SandboxAction::Start);
                    RunWanted::On(host.clone())
                } else {
                    RunWanted::AsIs
                }
            }
            Intent::Stopped | Intent::Gone => {
                if pod.is_some_and(|p| !p.terminating) {
                    self.actions.push(SandboxAction::Stop);
                    RunWanted::Stopped
                } else {
                    RunWanted::AsIs
                }
            }
        };
        if let Some(workload) = workload {
            workload.run = run;
        }
    }

    // ---------------------------------------------------------------- status

    fn update_status(&mut self, provider: &str, workload: Option<&SandboxWorkload>) {
        use SandboxPhase::*;
        let observed = &self.observation.observed;
        let pod = observed.pod.as_ref();
        self.status.pod_ip = pod
            .and_then(|p| p.ip.clone())
            .filter(|_| self.status.phase == Some(Running));
        // Where it runs now; a stopped sandbox runs nowhere. While it starts,
        // the host it was placed on is in the Scheduled condition, and its
        // pod being bound there is no news to write by itself (it comes
        // with Running).
        let starting = matches!(self.status.phase, Some(Created | Starting));
        let bound_host = pod.and_then(|p| p.host.clone()).filter(|_| !starting);
        self.status.host = bound_host.clone();
        // What is being made is named in the write that asks for it, not in
        // one more write once it shows up.
        let starting_pod = self.actions.contains(&SandboxAction::Start);
        let provisioning = self.actions.contains(&SandboxAction::Provision);
        let claim = observed.claim.as_ref().map(|c| &c.name);
        if let Some(claim) = claim.or(observed.claim_name.as_ref().filter(|_| provisioning)) {
            self.status.claim_name = Some(claim.clone());
        }
        self.status.provider_ref = match (pod, self.status.phase) {
            (_, Some(Destroyed)) => None,
            (Some(p), _) => Some(ProviderRef {
                provider: provider.into(),
                kind: "Pod".into(),
                name: p.name.clone(),
            }),
            (None, _) => match workload.filter(|_| starting_pod) {
                Some(workload) => Some(ProviderRef {
                    provider: provider.into(),
                    kind: "Pod".into(),
                    name: workload.name.clone(),
                }),
                None => self
                    .status
                    .provider_ref
                    .clone()
                    .filter(|r| r.provider == provider),
            },
        };
        let phase = self.status.phase;
        let last_failure = self
            .status
            .history
            .iter()
            .rev()
            .find(|e| e.type_ == EventType::SandboxFailed)
            .map(|e| e.message.to_string())
            .unwrap_or_default();
        let ready = match phase {
            Some(Running) if pod.is_some_and(|p| p.ready) => DesiredCondition::new(
                types::READY,
                true,
                "Running",
                "the sandbox is running and ready",
            ),
            Some(Running) => DesiredCondition::new(
                types::READY,
                false,
                "NotReady",
                pod.map(|p| p.problems.join("; "))
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "its pod is not ready".into()),
            ),
            Some(Created) if self.waiting_for_snapshot.is_some() => DesiredCondition::new(
                types::READY,
                false,
                "WaitingForSnapshot",
                self.waiting_for_snapshot.clone().unwrap_or_default(),
            ),
            Some(Created) if self.no_room.is_some() => DesiredCondition::new(
                types::READY,
                false,
                "WaitingForRoom",
                self.no_room.clone().unwrap_or_default(),
            ),
            Some(Created | Starting) if self.waiting_for_claim => DesiredCondition::new(
                types::READY,
                false,
                "WaitingForClaim",
                format!(
                    "waiting for claim {} to bind to a PersistentVolume",
                    self.status.claim_name.clone().unwrap_or_default()
                ),
            ),
            Some(Created) => {
                DesiredCondition::new(types::READY, false, "Created", "creating its pod")
            }
            Some(Starting) => DesiredCondition::new(
                types::READY,
                false,
                "Starting",
                // A pod waiting for a claim that is still in its grace is
                // just starting.
                pod.filter(|p| !(p.waiting_for_data && self.claim_in_grace))
                    .map(|p| p.problems.join("; "))
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "its pod is starting".into()),
            ),
            Some(Stopped) if self.expired => DesiredCondition::new(
                types::READY,
                false,
                "Expired",
                "the sandbox expired and was stopped",
            ),
            Some(Stopped) => {
                DesiredCondition::new(types::READY, false, "Stopped", "stopped; its data is kept")
            }
            Some(Error) => {
                DesiredCondition::new(types::READY, false, "Error", last_failure.clone())
            }
            Some(Destroyed) => {
                DesiredCondition::new(types::READY, false, "Destroyed", "the sandbox is gone")
            }
            None => DesiredCondition::new(types::READY, false, "Pending", "not reconciled yet"),
        };
        // The Ready condition's generation is also how a failure remembers
        // the spec it failed with; keep it while Error stays.
        let keep_generation = phase == Some(Error)
            && conditions::find(&self.status.conditions, types::READY)
                .is_some_and(|c| c.reason == "Error");
        let ready_generation = if keep_generation {
            conditions::find(&self.status.conditions, types::READY)
                .and_then(|c| c.observed_generation)
        } else {
            self.generation
        };
        conditions::set_condition(
            &mut self.status.conditions,
            ready,
            ready_generation,
            self.now,
        );

        let scheduled = match (
            &self.no_room,
            bound_host,
            workload
                .and(self.chosen_host.clone())
                .or_else(|| pod.and_then(|p| p.placed_on.clone())),
        ) {
            (Some(message), _, _) => DesiredCondition::new(
                types::SCHEDULED,
                false,
                "InsufficientCapacity",
                message.clone(),
            ),
            (None, Some(host), _) => DesiredCondition::new(
                types::SCHEDULED,
                true,
                "Scheduled",
                format!("runs on {host}"),
            ),
            // The same reason as once bound there: that the kube-scheduler
            // has bound it is progress, written with the next decision.
            (None, None, Some(host)) => DesiredCondition::new(
                types::SCHEDULED,
                true,
                "Scheduled",
                format!("placed on {host}; starting there"),
            ),
            (None, None, None) => {
                DesiredCondition::new(types::SCHEDULED, false, "NotRunning", "no pod runs now")
            }
        };
        self.set_desired(scheduled);
        if conditions::find(&self.status.conditions, types::EXPIRED).is_none() {
            self.set(
                types::EXPIRED,
                false,
                "NoExpiry",
                "the sandbox has no TTL or expiry time",
            );
        }
        let (condition, warning) = synced(self.refused.as_ref());
        self.events.extend(warning);
        self.set_desired(condition);

        // Error stays Error until the spec changes or a restart is asked for.
        let stuck = (phase == Some(Error)).then(|| ("Error".to_string(), last_failure));
        self.set_desired(conditions::stalled(stuck));
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

fn failure(pod: &PodObserved) -> String {
    if pod.problems.is_empty() {
        format!("pod {} failed", pod.name)
    } else {
        pod.problems.join("; ")
    }
}

/// The Sandbox as the controlling owner of its children.
pub fn owner_reference(sandbox: &Sandbox) -> OwnerReference {
    OwnerReference {
        api_version: Sandbox::api_version(&()).into_owned(),
        kind: Sandbox::kind(&()).into_owned(),
        name: sandbox.name_any(),
        uid: sandbox.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests;
