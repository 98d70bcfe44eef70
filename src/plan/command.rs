//! The SandboxCommand planner: `plan(&command, &observation, now)`. Pure.
//!
//! A command runs at most once. It is recorded Running (with when it
//! started) before it is started, and the engine writes that before it acts
//! (`record_first`): a reconcile that cannot write it does not start it. A
//! command found Running that this process is not running was interrupted
//! (the operator restarted under it): it ends Failed, reason Interrupted,
//! and is never run again.
//!
//! Commands of one Sandbox run one at a time, in creation order: a command
//! waits while an earlier one has not ended. It waits, too, until its
//! Sandbox runs; a Sandbox deleted or stopped under it fails it.
//!
//! Recorded output keeps the last 32 KiB of each stream, with every value
//! that came from a Secret replaced by `[REDACTED:<NAME>]` ([`redact`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::conditions::{self, DesiredCondition, types};
use super::{Decision, FinalizerAction, PlannedEvent, synced};
use crate::api::{CommandOutput, CommandPhase, OUTPUT_LIMIT, SandboxCommand, SandboxCommandStatus};
use crate::lifecycle::{TransitionError, validate_transition};
use crate::provider::{ExecOutcome, Tail};

/// The Sandbox a command runs in, as far as the command cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxView {
    /// Running and ready: a command can start.
    pub running: bool,
    /// Stopped, stopping, failed or expired: it will not run until asked to.
    pub not_running: bool,
    /// Being deleted.
    pub deleting: bool,
    /// Its pod, where commands run.
    pub pod: Option<String>,
}

/// How a run ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// It ran to its end.
    Exited(ExecOutcome),
    /// It ran out of time and was stopped (what it printed so far, if any).
    TimedOut,
    /// It could not be started, or broke off.
    Broken(String),
    /// It was stopped, for this reason (CamelCase) and message.
    Cancelled(String, String),
}

/// What this process knows of a command's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Not run by this process.
    Unknown,
    /// Running now.
    Running,
    /// Ended, when.
    Ended(RunEnd, DateTime<Utc>),
}

/// Values that came from Secrets, by variable name: replaced wherever they
/// appear in recorded output. Debug shows the names only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValues(pub Vec<(String, String)>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// What the reconciler observed before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandObservation {
    /// Its Sandbox; `None` when it does not exist.
    pub sandbox: Option<SandboxView>,
    /// An earlier command of the same Sandbox has not ended.
    pub earlier_unfinished: bool,
    pub run: Run,
    pub secrets: SecretValues,
}

/// What the command's plan asks the runner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandAction {
    /// Start it (after its Running status is written).
    Start,
    /// Stop it: its Sandbox is going.
    Cancel,
    /// Its end is recorded: forget it.
    Forget,
}

/// Everything the reconciler has to do.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandPlan {
    pub decision: Decision<SandboxCommandStatus>,
    pub action: Option<CommandAction>,
}

/// How long after its creation second a command waits before it starts.
/// Commands of one Sandbox run in creation order, and creation times are
/// whole seconds: commands created in the same second go by name. So a
/// command starts only once every command created in its second has had
/// time to reach the operator's cache; otherwise a later one could start
/// before an earlier one arrived.
pub const SAME_SECOND_SETTLE: Duration = Duration::from_millis(1500);

/// Decides what should happen to a command. Pure.
pub fn plan(
    command: &SandboxCommand,
    observation: &CommandObservation,
    now: DateTime<Utc>,
) -> CommandPlan {
    let generation = command.metadata.generation;
    let mut status = command.status.clone().unwrap_or_default();
    let mut refused: Option<TransitionError> = None;
    let mut action = None;
    let mut record_first = false;
    let mut requeue_after = super::REQUEUE_SETTLED;
    let mut delete_object = false;
    let mut events = Vec::new();
    let mut move_to = |status: &mut SandboxCommandStatus, to: CommandPhase| -> bool {
        if let Some(from) = status.phase
            && let Err(error) = validate_transition(from, to)
        {
            refused = Some(error);
            return false;
        }
        status.phase = Some(to);
        true
    };
    if status.phase.is_none() {
        status.phase = Some(CommandPhase::Pending);
    }
    let mut ended: Option<(CommandPhase, String, String)> = None;
    match status.phase {
        Some(CommandPhase::Pending) => match &observation.sandbox {
            None => match super::wait_left(&command.metadata, super::MISSING_SANDBOX_GRACE, now) {
                Some(left) => requeue_after = requeue_after.min(left),
                None => ended = Some(failed("SandboxNotFound", "its Sandbox does not exist")),
            },
            Some(sandbox) if sandbox.deleting => {
                ended = Some(failed(
                    "SandboxDeleted",
                    "its Sandbox was deleted before it ran",
                ))
            }
            Some(sandbox) if sandbox.not_running => {
                ended = Some(failed(
                    "SandboxStopped",
                    "its Sandbox stopped before it ran; it is not run when the Sandbox starts again",
                ))
            }
            Some(sandbox) if sandbox.running && !observation.earlier_unfinished => {
                if let Some(left) = super::wait_left(&command.metadata, SAME_SECOND_SETTLE, now) {
                    requeue_after = requeue_after.min(left);
                } else if move_to(&mut status, CommandPhase::Running) {
                    status.started_at = Some(now);
                    status.pod = sandbox.pod.clone();
                    action = Some(CommandAction::Start);
                    record_first = true;
                }
            }
            // Its Sandbox is not running yet, or an earlier command runs:
            // both wake it when that changes.
            Some(_) => {}
        },
        Some(CommandPhase::Running) => match &observation.run {
            Run::Ended(end, at) => {
                let (phase, reason, message) = match end {
                    RunEnd::Exited(outcome) => {
                        status.exit_code = Some(outcome.exit_code);
                        let secrets = &observation.secrets.0;
                        status.stdout = Some(redact(&outcome.stdout, secrets));
                        status.stderr = Some(redact(&outcome.stderr, secrets));
                        status.redacted = redacted_names(outcome, secrets);
                        if outcome.exit_code == 0 {
                            (
                                CommandPhase::Succeeded,
                                "Succeeded".into(),
                                "exited with code 0".into(),
                            )
                        } else {
                            (
                                CommandPhase::Failed,
                                "NonZeroExitCode".into(),
                                format!("exited with code {}", outcome.exit_code),
                            )
                        }
                    }
                    RunEnd::TimedOut => (
                        CommandPhase::TimedOut,
                        "TimedOut".into(),
                        format!(
                            "ran longer than its timeoutSeconds ({}) and was stopped",
                            command.spec.timeout_seconds
                        ),
                    ),
                    RunEnd::Broken(why) => (CommandPhase::Failed, "ExecFailed".into(), why.clone()),
                    RunEnd::Cancelled(reason, why) => {
                        (CommandPhase::Failed, reason.clone(), why.clone())
                    }
                };
                status.finished_at = Some(*at);
                ended = Some((phase, reason, message));
                action = Some(CommandAction::Forget);
            }
            Run::Running => {
                if observation.sandbox.as_ref().is_none_or(|s| s.deleting) {
                    action = Some(CommandAction::Cancel);
                }
            }
            Run::Unknown => {
                ended = Some(failed(
                    "Interrupted",
                    "the operator restarted while it ran; a command runs at most once, so it is not run again",
                ))
            }
        },
        _ => {}
    }
    if let Some((phase, reason, message)) = ended
        && move_to(&mut status, phase)
    {
        status.finished_at.get_or_insert(now);
        if phase == CommandPhase::Failed || phase == CommandPhase::TimedOut {
            events.push(PlannedEvent {
                warning: true,
                reason: reason.clone(),
                message: format!(
                    "command {}: {message}",
                    command.metadata.name.as_deref().unwrap_or_default()
                ),
            });
        }
        set(
            &mut status,
            done_conditions(phase, &reason, &message),
            generation,
            now,
        );
    }
    if status.phase == Some(CommandPhase::Pending) {
        let waiting_for = match &observation.sandbox {
            None => "waiting for its Sandbox to exist",
            Some(s) if !s.running => "waiting for its Sandbox to run",
            _ if observation.earlier_unfinished => "waiting for the commands before it",
            _ => "about to start",
        };
        set(
            &mut status,
            vec![
                DesiredCondition::new(types::COMPLETE, false, "Pending", waiting_for),
                DesiredCondition::new(types::FAILED, false, "Pending", waiting_for),
            ],
            generation,
            now,
        );
    }
    if status.phase == Some(CommandPhase::Running) {
        set(
            &mut status,
            vec![
                DesiredCondition::new(types::COMPLETE, false, "Running", "it runs"),
                DesiredCondition::new(types::FAILED, false, "Running", "it runs"),
            ],
            generation,
            now,
        );
        requeue_after = requeue_after.min(Duration::from_secs(
            u64::try_from(command.spec.timeout_seconds).unwrap_or(600) + 5,
        ));
    }
    // Finished, with a time to live: deleted when it is up.
    if let (Some(phase), Some(ttl), Some(finished)) = (
        status.phase,
        command.spec.ttl_seconds_after_finished,
        status.finished_at,
    ) && phase.is_finished()
    {
        let expires = super::saturating_add(finished, chrono::Duration::seconds(ttl.into()));
        if expires <= now {
            delete_object = true;
        } else {
            requeue_after = requeue_after.min((expires - now).to_std().unwrap_or_default());
        }
    }
    let (synced, warning) = synced(refused.as_ref());
    events.extend(warning);
    conditions::set_condition(&mut status.conditions, synced, generation, now);
    status.observed_generation = generation;
    CommandPlan {
        decision: Decision {
            status,
            events,
            requeue_after,
            // Nothing of a command outlives it that needs cleaning up.
            finalizer: FinalizerAction::Keep,
            labels: None,
            delete_object,
            record_first,
        },
        action,
    }
}

fn failed(reason: &str, message: &str) -> (CommandPhase, String, String) {
    (CommandPhase::Failed, reason.into(), message.into())
}

fn done_conditions(phase: CommandPhase, reason: &str, message: &str) -> Vec<DesiredCondition> {
    let succeeded = phase == CommandPhase::Succeeded;
    vec![
        DesiredCondition::new(types::COMPLETE, succeeded, reason, message),
        DesiredCondition::new(types::FAILED, !succeeded, reason, message),
    ]
}

fn set(
    status: &mut SandboxCommandStatus,
    wanted: Vec<DesiredCondition>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    for condition in wanted {
        conditions::set_condition(&mut status.conditions, condition, generation, now);
    }
}

/// The names of the Secret-sourced variables whose values appeared in the
/// output, in order.
fn redacted_names(outcome: &ExecOutcome, secrets: &[(String, String)]) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .filter(|(_, value)| {
            [&outcome.stdout, &outcome.stderr].iter().any(|tail| {
                let bytes: Vec<u8> = tail.bytes.iter().copied().collect();
                find(&bytes, value.as_bytes(), 0).is_some()
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The bytes an output tail must keep beyond [`OUTPUT_LIMIT`] so that any
/// Secret value overlapping the kept part is whole, and can be replaced.
pub fn keep_bytes(secrets: &[(String, String)]) -> usize {
    OUTPUT_LIMIT + secrets.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
}

/// The recorded form of an output tail: Secret values replaced by
/// `[REDACTED:<NAME>]`, then cut to the last [`OUTPUT_LIMIT`] bytes.
///
/// The tail holds up to `OUTPUT_LIMIT + L` bytes (L: the longest Secret
/// value; see [`keep_bytes`]). A value that straddles the front of the
/// tail has lost its head, so it cannot be found; it lies within the first
/// L bytes, which are therefore dropped whenever earlier output was. Every
/// value past them is whole and replaced.
pub fn redact(tail: &Tail, secrets: &[(String, String)]) -> CommandOutput {
    let bytes: Vec<u8> = tail.bytes.iter().copied().collect();
    let longest = secrets.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    // Where trustworthy output begins: after the first L bytes when the
    // tail lost its beginning, else at once.
    let trusted_from = if tail.truncated() {
        longest.min(bytes.len())
    } else {
        0
    };
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut trusted_out = None;
    let mut i = 0;
    while i < bytes.len() {
        if i >= trusted_from && trusted_out.is_none() {
            trusted_out = Some(out.len());
        }
        let found = secrets
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .find(|(_, value)| bytes[i..].starts_with(value.as_bytes()));
        match found {
            Some((name, value)) => {
                out.extend_from_slice(format!("[REDACTED:{name}]").as_bytes());
                i += value.len();
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    let start = trusted_out.unwrap_or(out.len());
    let kept = &out[start..];
    let kept = &kept[kept.len().saturating_sub(OUTPUT_LIMIT)..];
    let mut text = String::from_utf8_lossy(kept).into_owned();
    // A cut in the middle of a character shows as one replacement char;
    // drop it rather than show it.
    if kept.len() < out.len() && text.starts_with('\u{FFFD}') {
        text.remove(0);
    }
    CommandOutput {
        truncated: tail.truncated() || kept.len() < out.len(),
        bytes: i64::try_from(tail.total).unwrap_or(i64::MAX),
        text,
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (from..=haystack.len() - needle.len()).find(|&i| haystack[i..].starts_with(needle))
}

#[cfg(test)]
mod tests;
