//! No input makes a CRD type, a planner or a pure helper panic.
//!
//! Objects come from mutated samples ([`object`]): a full, valid object of
//! the kind with up to six random edits, among those that still
//! deserialize. Observations and times are as wide as their types allow.
//! Where it is cheap, each test also holds a basic invariant: a phase
//! change recorded in the history is one the lifecycle table allows, and
//! the recorded changes lead from the old phase to the new.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::arbitrary::*;
use crate::api::{
    HistoryEntry, Instance, Sandbox, SandboxCommand, SandboxSnapshot, Webhook, WebhookDelivery,
};
use crate::lifecycle::{Lifecycle, validate_transition};
use crate::plan;
use crate::provider::WorkloadStatus;

/// `cases` cases, or PROPTEST_CASES when set, for a longer search.
pub(super) fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        // Inputs are large: shrinking a failure can take long, but a
        // small counterexample is worth it.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// Deserializing gives an object or an error; an object serializes again.
fn deserializes_or_fails<T: DeserializeOwned + Serialize>(
    value: &serde_json::Value,
) -> Result<(), TestCaseError> {
    if let Ok(object) = serde_json::from_value::<T>(value.clone()) {
        let again = serde_json::to_value(&object);
        prop_assert!(again.is_ok(), "{:?}", again.err());
    }
    Ok(())
}

fn every_kind(value: &serde_json::Value) -> Result<(), TestCaseError> {
    deserializes_or_fails::<Instance>(value)?;
    deserializes_or_fails::<Sandbox>(value)?;
    deserializes_or_fails::<Webhook>(value)?;
    deserializes_or_fails::<WebhookDelivery>(value)?;
    deserializes_or_fails::<SandboxCommand>(value)?;
    deserializes_or_fails::<SandboxSnapshot>(value)?;
    Ok(())
}

/// The history entries a plan appended: those after the last entry it had,
/// numbered past both it and dispatchedSeq.
fn appended<'a>(
    before: &[HistoryEntry],
    dispatched: i64,
    after: &'a [HistoryEntry],
) -> Option<Vec<&'a HistoryEntry>> {
    let base = before.last().map_or(0, |e| e.sequence).max(dispatched);
    // Sequences saturate at the very top: new entries cannot be told apart.
    if base > i64::MAX - 1000 {
        return None;
    }
    let mut new: Vec<&HistoryEntry> = after
        .iter()
        .rev()
        .take_while(|e| e.sequence > base)
        .collect();
    new.reverse();
    Some(new)
}

/// Every phase change the plan recorded is allowed by the table, each
/// starts where the one before ended (the first at the old phase), and the
/// last ends at the new phase.
fn recorded_changes_are_allowed<P: Lifecycle + DeserializeOwned>(
    before: Option<P>,
    before_history: &[HistoryEntry],
    dispatched: i64,
    after: Option<P>,
    after_history: &[HistoryEntry],
) -> Result<(), TestCaseError> {
    let Some(new) = appended(before_history, dispatched, after_history) else {
        return Ok(());
    };
    let mut current = before;
    for entry in new {
        let Some(to) = &entry.to else { continue };
        let to: P = serde_json::from_value(serde_json::json!(to))
            .map_err(|e| TestCaseError::fail(format!("{} is no {}: {e}", to, P::KIND)))?;
        match current {
            Some(from) => {
                prop_assert!(
                    validate_transition(from, to).is_ok(),
                    "recorded {} -> {}",
                    from,
                    to
                );
                prop_assert_eq!(
                    entry.from.as_ref().map(String::from),
                    Some(from.to_string())
                );
            }
            None => prop_assert_eq!(entry.from.clone(), None),
        }
        current = Some(to);
    }
    prop_assert_eq!(
        current,
        after,
        "the recorded changes do not lead to the new phase"
    );
    Ok(())
}

// ---------------------------------------------------------------- CRD types

proptest! {
    #![proptest_config(config(2000))]

    /// Any JSON value, and any bytes, deserialize into each CRD type or
    /// fail with an error; what deserializes serializes again.
    #[test]
    fn any_json_deserializes_into_every_kind_or_fails_with_an_error(
        value in json_value(),
        bytes in any_bytes(),
    ) {
        every_kind(&value)?;
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            every_kind(&value)?;
        }
        let _ = serde_json::from_slice::<Instance>(&bytes);
        let _ = serde_json::from_slice::<WebhookDelivery>(&bytes);
    }

    /// Any mutated sample of any kind deserializes into each CRD type or
    /// fails with an error.
    #[test]
    fn any_mutated_sample_deserializes_or_fails_with_an_error(
        value in prop::sample::select(Kind::ALL).prop_flat_map(mutated_sample),
    ) {
        every_kind(&value)?;
    }
}

// ----------------------------------------------------------------- planners

/// How far an arbitrary workload is made to agree with its Instance, so
/// that the deeper branches (rollouts judged, health events, crashes) are
/// reached too: the image, the replica count, the restart token, and
/// whether it is rolled out and ready.
#[derive(Debug, Clone, Copy)]
struct Align {
    image: bool,
    replicas: bool,
    token: bool,
    ready: bool,
}

fn align() -> BoxedStrategy<Align> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.4),
    )
        .prop_map(|(image, replicas, token, ready)| Align {
            image,
            replicas,
            token,
            ready,
        })
        .boxed()
}

fn align_workload(instance: &Instance, workload: &mut WorkloadStatus, align: Align) {
    let status = instance.status.as_ref();
    if align.image {
        workload.image = status
            .and_then(|s| s.current_release.as_ref())
            .map_or_else(|| instance.spec.image.clone(), |r| r.image.to_string());
    }
    let stopped =
        instance.spec.suspend.is_some() || instance.spec.state == crate::api::DesiredState::Stopped;
    let desired = if stopped { 0 } else { instance.spec.replicas };
    if align.replicas {
        workload.desired_replicas = desired;
        workload.current = true;
        workload.terminating = false;
    }
    if align.token {
        workload.restart_token = instance
            .spec
            .restarted_at
            .or(status.and_then(|s| s.restarted_at))
            .map(|t| t.to_rfc3339());
    }
    if align.ready {
        workload.replicas = desired;
        workload.ready_replicas = desired;
        workload.rollout_complete = true;
        workload.endpoint_ready = true;
    }
}

const INSTANCE_PROGRESS: &[&str] = &["replicas", "readyReplicas", "dispatchedSeq", "endpoints"];

proptest! {
    #![proptest_config(config(1000))]

    /// The Instance planner returns on any Instance, any observation and
    /// any time, and records only phase changes the table allows; planning
    /// again on its own result does too.
    #[test]
    fn instance_plans_never_panic_and_record_only_allowed_changes(
        mut instance in object::<Instance>(Kind::Instance),
        steps in prop::collection::vec(
            (instance_observation(), align(), any_datetime()),
            1..=3,
        ),
    ) {
        for (mut observation, align, now) in steps {
            if let Some(workload) = observation.workload.as_mut() {
                align_workload(&instance, workload, align);
            }
            let before = instance.status.clone().unwrap_or_default();
            let planned = plan::instance::plan(&instance, &observation, now);
            recorded_changes_are_allowed(
                before.phase,
                &before.history,
                before.dispatched_seq,
                planned.status.phase,
                &planned.status.history,
            )?;
            let _ = plan::only_progress(&before, &planned.status, INSTANCE_PROGRESS);
            let _ = plan::instance::owner_reference(&instance);
            instance.status = Some(planned.status);
        }
    }

    /// The Sandbox planner returns on any Sandbox, any observation (hosts,
    /// commands, its pod, claim and source) and any time, and records only
    /// phase changes the table allows; so does the next plan, with a pod
    /// of the revision the first one asked for.
    #[test]
    fn sandbox_plans_never_panic_and_record_only_allowed_changes(
        mut sandbox in object::<Sandbox>(Kind::Sandbox),
        steps in prop::collection::vec(
            (sandbox_observation(), any::<bool>(), any_datetime()),
            1..=3,
        ),
    ) {
        let _ = plan::sandbox::expiry(&sandbox);
        let mut revision = None;
        for (mut observation, align, now) in steps {
            if align
                && let Some(pod) = observation.observed.pod.as_mut()
            {
                pod.revision = revision.clone();
            }
            let before = sandbox.status.clone().unwrap_or_default();
            let planned = plan::sandbox::plan(&sandbox, &observation, now);
            recorded_changes_are_allowed(
                before.phase,
                &before.history,
                before.dispatched_seq,
                planned.status.phase,
                &planned.status.history,
            )?;
            revision = planned.workload.as_ref().map(|w| w.revision.clone());
            if let Some(labels) = planned.labels {
                sandbox.metadata.labels = Some(labels);
            }
            sandbox.status = Some(planned.status);
        }
    }

    /// The SandboxCommand planner returns on any command, any observation
    /// (any exit code, any bytes of output, any Secret values, some of them
    /// in the output) and any time, and moves only as the table allows.
    #[test]
    fn command_plans_never_panic_and_move_only_as_the_table_allows(
        mut command in object::<SandboxCommand>(Kind::SandboxCommand),
        steps in prop::collection::vec(
            (command_observation(), any::<prop::sample::Index>(), 0usize..64, any_datetime()),
            1..=3,
        ),
    ) {
        for (mut observation, at, len, now) in steps {
            // A Secret value that is in the output, when there is output.
            if let plan::command::Run::Ended(plan::command::RunEnd::Exited(outcome), _) = &observation.run {
                let bytes: Vec<u8> = outcome.stdout.bytes.iter().copied().collect();
                if !bytes.is_empty() {
                    let start = at.index(bytes.len());
                    let end = (start + len).min(bytes.len());
                    if let Ok(value) = std::str::from_utf8(&bytes[start..end]) {
                        observation.secrets.0.push(("FOUND".into(), value.to_string()));
                    }
                }
            }
            let before = command.status.as_ref().and_then(|s| s.phase);
            let planned = plan::command::plan(&command, &observation, now);
            // A command without a phase is Pending.
            let from = before.unwrap_or(crate::api::CommandPhase::Pending);
            let to = planned.decision.status.phase;
            prop_assert!(to.is_some());
            if let Some(to) = to.filter(|to| *to != from) {
                prop_assert!(validate_transition(from, to).is_ok(), "{} -> {}", from, to);
            }
            let _ = plan::command::keep_bytes(&observation.secrets.0);
            command.status = Some(planned.decision.status);
        }
    }

    /// The SandboxSnapshot planner returns on any snapshot, any observation
    /// and any time, and records only phase changes the table allows.
    #[test]
    fn snapshot_plans_never_panic_and_record_only_allowed_changes(
        mut snapshot in object::<SandboxSnapshot>(Kind::SandboxSnapshot),
        steps in prop::collection::vec((snapshot_observation(), any_datetime()), 1..=3),
    ) {
        for (observation, now) in steps {
            let before = snapshot.status.clone().unwrap_or_default();
            let (decision, _action) = plan::snapshot::plan(&snapshot, &observation, now);
            recorded_changes_are_allowed(
                before.phase,
                &before.history,
                before.dispatched_seq,
                decision.status.phase,
                &decision.status.history,
            )?;
            snapshot.status = Some(decision.status);
        }
    }

    /// The Webhook planner returns on any Webhook, any count of pending
    /// deliveries, any tally (counts at their limits, attempts added) and
    /// any time; so do its retry policy and whether it accepts events.
    #[test]
    fn webhook_plans_never_panic(
        webhook in object::<Webhook>(Kind::Webhook),
        pending in any_i64(),
        mut tally in delivery_tally(),
        attempts in prop::collection::vec((last_delivery(), attempt_end()), 0..4),
        observation in webhook_observation(),
        now in any_datetime(),
    ) {
        let _ = plan::webhook::DeliveryTally::from_status(webhook.status.as_ref());
        for (attempt, end) in attempts {
            tally.add(attempt, end);
        }
        let status = plan::webhook::plan(&webhook, pending, &tally, &observation, now);
        prop_assert_eq!(status.pending, pending);
        let _ = crate::controller::delivery::policy(&webhook);
        let _ = plan::dispatch::webhook_accepts(&webhook);
    }

    /// A delivery record's next step is decided for any record, any Webhook
    /// or none, any retention and any time; a redelivery, its body and its
    /// signature are made for any of them too.
    #[test]
    fn delivery_steps_never_panic(
        delivery in object::<WebhookDelivery>(Kind::WebhookDelivery),
        webhook in prop::option::of(object::<Webhook>(Kind::Webhook)),
        blocked in any::<bool>(),
        keep in any_std_duration(),
        now in any_datetime(),
        namespace in any_string(),
        secret in any_bytes(),
    ) {
        let step = plan::delivery::next_step(&delivery, webhook.as_ref(), blocked, keep, now);
        if plan::delivery::is_pending(&delivery) {
            prop_assert_ne!(step, plan::delivery::DeliveryStep::Expire);
        } else {
            prop_assert_ne!(step, plan::delivery::DeliveryStep::Attempt);
        }
        let status = delivery.status.clone().unwrap_or_default();
        let again = plan::delivery::redelivered(&status, now);
        prop_assert_eq!(again.next_attempt_at, None);
        let body = crate::delivery::body(&delivery.spec.event, &namespace);
        let keys: Vec<_> = crate::delivery::signing::SigningKey::parse(&secret).into_iter().collect();
        let event = &delivery.spec.event;
        let _ = crate::delivery::signing::signature_header(&keys, &event.id, event.timestamp.timestamp(), &body);
        if let Some(webhook) = &webhook {
            let record = plan::dispatch::delivery_record(webhook, event.clone());
            prop_assert!(record.metadata.name.is_some());
        }
    }
}

// ------------------------------------------------------------ pure helpers

proptest! {
    #![proptest_config(config(2000))]

    /// History is appended to, trimmed and dispatched for any entries
    /// (any sequences, in any order) and any dispatchedSeq.
    #[test]
    fn history_and_dispatch_never_panic(
        mut history in wide_vec(history_entry, 300),
        dispatched in any_i64(),
        handed_over in any_i64(),
        now in any_datetime(),
        webhook in object::<Webhook>(Kind::Webhook),
        subject_uid in any_string(),
        name in any_string(),
        sequence in any_i64(),
    ) {
        let _ = plan::history::next_sequence(&history, dispatched);
        let event = plan::history::NewEvent::new(crate::api::EventType::InstanceScaled, "Scaled", "");
        plan::history::append(&mut history, dispatched, event, now);
        plan::history::trim(&mut history, dispatched);
        let through = plan::dispatch::dispatched_through(
            &history,
            dispatched,
            handed_over,
            |seq| seq % 3 == 0,
            |entry| entry.sequence % 2 == 0,
        );
        prop_assert!(through >= dispatched);
        let subject = crate::api::EventSubject {
            kind: "Instance".into(),
            name: name.clone(),
            uid: subject_uid.clone(),
        };
        for entry in history.iter().take(20) {
            let _ = plan::announce(entry);
            let _ = plan::dispatch::takers(&[&webhook], entry);
            let _ = plan::dispatch::delivery_event(&subject, entry);
        }
        let _ = plan::dispatch::delivery_name(&name, &subject_uid, sequence);
        let _ = plan::dispatch::event_id(&subject_uid, sequence);
    }

    /// A host is chosen, or the lack of room explained, for any hosts (any
    /// capacity, any taints), any request and any placement.
    #[test]
    fn host_choice_never_panics(
        hosts in wide_vec(host, 300),
        request in request(),
        placement in placement(),
        cpu in any_i64(),
        memory in any_i64(),
    ) {
        let chosen = plan::capacity::choose_host(&hosts, request, placement.as_ref());
        if let Ok(name) = chosen {
            prop_assert!(hosts.iter().any(|h| h.name == name));
        }
        let _ = plan::capacity::format_cpu(cpu);
        let _ = plan::capacity::format_memory(memory);
    }

    /// Output of any bytes is redacted with any Secret values, and cut to
    /// the limit.
    #[test]
    fn redaction_never_panics(tail in tail(), secrets in secrets()) {
        let output = plan::command::redact(&tail, &secrets);
        prop_assert_eq!(output.bytes, i64::try_from(tail.total).unwrap_or(i64::MAX));
        let _ = plan::command::keep_bytes(&secrets);
    }

    /// How long an object may still wait is computed for any creation time,
    /// any grace and any time.
    #[test]
    fn waiting_for_what_an_object_names_never_panics(
        command in object::<SandboxCommand>(Kind::SandboxCommand),
        grace in any_std_duration(),
        now in any_datetime(),
    ) {
        let _ = plan::created_at(&command.metadata);
        let _ = plan::wait_left(&command.metadata, grace, now);
        let _ = plan::wait_left(&command.metadata, Duration::ZERO, DateTime::<Utc>::MIN_UTC);
    }
}

/// The Instance generator is wide enough to matter: planning its objects
/// and observations reaches every phase change and event a user sees, so
/// the no-panic property above is not passing on a corner of the space.
#[test]
fn instance_inputs_reach_every_lifecycle_event() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        object::<Instance>(Kind::Instance),
        prop::collection::vec((instance_observation(), align(), any_datetime()), 1..=3),
    );
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..1500 {
        let (mut instance, steps) = strategy.new_tree(&mut runner).unwrap().current();
        for (mut observation, align, now) in steps {
            if let Some(workload) = observation.workload.as_mut() {
                align_workload(&instance, workload, align);
            }
            let before = instance.status.clone().unwrap_or_default();
            let planned = plan::instance::plan(&instance, &observation, now);
            for e in appended(
                &before.history,
                before.dispatched_seq,
                &planned.status.history,
            )
            .unwrap_or_default()
            {
                *counts
                    .entry(format!("{} {:?}->{:?}", e.type_, e.from, e.to))
                    .or_default() += 1;
            }
            instance.status = Some(planned.status);
        }
    }
    let reached: std::collections::BTreeSet<&str> =
        counts.keys().filter_map(|k| k.split(' ').next()).collect();
    for event in [
        "instance.created",
        "instance.starting",
        "instance.started",
        "instance.stopping",
        "instance.stopped",
        "instance.failed",
        "instance.deleting",
        "instance.deleted",
        "instance.restarted",
        "instance.scaled",
        "instance.suspended",
        "instance.unsuspended",
        "deploy.started",
        "deploy.succeeded",
        "deploy.failed",
        "health.passed",
        "health.failed",
    ] {
        assert!(
            reached.contains(event),
            "{event} never planned; reached: {counts:?}"
        );
    }
}
