//! Tests of the SandboxCommand planner and of output redaction.

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::api::{SandboxCommandSpec, SandboxReference};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
}

fn command(phase: Option<CommandPhase>) -> SandboxCommand {
    let mut command = SandboxCommand::new(
        "build",
        SandboxCommandSpec {
            sandbox_ref: SandboxReference { name: "box".into() },
            command: vec!["sh".into(), "-c".into(), "make".into()],
            env: Vec::new(),
            working_dir: None,
            timeout_seconds: 60,
            ttl_seconds_after_finished: None,
        },
    );
    command.metadata.generation = Some(1);
    command.status = phase.map(|phase| SandboxCommandStatus {
        phase: Some(phase),
        ..SandboxCommandStatus::default()
    });
    command
}

fn running_sandbox() -> Option<SandboxView> {
    Some(SandboxView {
        running: true,
        not_running: false,
        deleting: false,
        pod: Some("box".into()),
    })
}

fn observation(sandbox: Option<SandboxView>, run: Run) -> CommandObservation {
    CommandObservation {
        sandbox,
        earlier_unfinished: false,
        run,
        secrets: SecretValues::default(),
    }
}

fn tail(text: &str) -> Tail {
    let mut tail = Tail::new(OUTPUT_LIMIT);
    tail.push(text.as_bytes());
    tail
}

fn exited(code: i32, stdout: &str) -> Run {
    Run::Ended(
        RunEnd::Exited(ExecOutcome {
            exit_code: code,
            stdout: tail(stdout),
            stderr: tail(""),
        }),
        t0(),
    )
}

fn condition(plan: &CommandPlan, type_: &str) -> (bool, String) {
    let c = conditions::find(&plan.decision.status.conditions, type_).unwrap();
    (
        c.status == crate::api::ConditionStatus::True,
        c.reason.to_string(),
    )
}

#[test]
fn a_new_command_is_recorded_running_before_it_is_started() {
    let plan = plan(
        &command(None),
        &observation(running_sandbox(), Run::Unknown),
        t0(),
    );
    assert_eq!(plan.decision.status.phase, Some(CommandPhase::Running));
    assert_eq!(plan.decision.status.started_at, Some(t0()));
    assert_eq!(plan.decision.status.pod.as_deref(), Some("box"));
    assert_eq!(plan.action, Some(CommandAction::Start));
    assert!(
        plan.decision.record_first,
        "the start is written before it happens"
    );
}

#[test]
fn a_command_waits_for_its_sandbox_and_for_the_commands_before_it() {
    let starting = SandboxView {
        running: false,
        not_running: false,
        deleting: false,
        pod: None,
    };
    let plan1 = plan(
        &command(None),
        &observation(Some(starting), Run::Unknown),
        t0(),
    );
    assert_eq!(plan1.decision.status.phase, Some(CommandPhase::Pending));
    assert_eq!(plan1.action, None);
    assert!(
        conditions::find(&plan1.decision.status.conditions, types::COMPLETE)
            .unwrap()
            .message
            .contains("Sandbox to run")
    );
    let mut queued = observation(running_sandbox(), Run::Unknown);
    queued.earlier_unfinished = true;
    let plan2 = plan(&command(Some(CommandPhase::Pending)), &queued, t0());
    assert_eq!(plan2.decision.status.phase, Some(CommandPhase::Pending));
    assert_eq!(plan2.action, None);
}

#[test]
fn a_command_waits_until_every_command_of_its_creation_second_can_have_arrived() {
    let mut command = command(None);
    command.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(t0().timestamp()).unwrap(),
        ));
    let ready = observation(running_sandbox(), Run::Unknown);
    let early = plan(&command, &ready, t0() + chrono::Duration::milliseconds(400));
    assert_eq!(early.decision.status.phase, Some(CommandPhase::Pending));
    assert_eq!(early.action, None);
    assert_eq!(
        early.decision.requeue_after,
        std::time::Duration::from_millis(1100)
    );
    let settled = plan(
        &command,
        &ready,
        t0() + chrono::Duration::milliseconds(1500),
    );
    assert_eq!(settled.decision.status.phase, Some(CommandPhase::Running));
    assert_eq!(settled.action, Some(CommandAction::Start));
}

#[test]
fn a_missing_sandbox_is_waited_for_briefly_then_fails_the_command() {
    // Applied together, a command can reach the operator before its Sandbox.
    let mut young = command(None);
    young.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t0().timestamp()).unwrap(),
    ));
    let missing = observation(None, Run::Unknown);
    let waiting = plan(&young, &missing, t0() + chrono::Duration::seconds(5));
    assert_eq!(waiting.decision.status.phase, Some(CommandPhase::Pending));
    assert_eq!(waiting.action, None);
    assert_eq!(
        waiting.decision.requeue_after,
        std::time::Duration::from_secs(25),
        "looks again when the wait is over"
    );
    assert!(
        conditions::find(&waiting.decision.status.conditions, types::COMPLETE)
            .unwrap()
            .message
            .contains("Sandbox to exist")
    );
    let over = plan(&young, &missing, t0() + chrono::Duration::seconds(31));
    assert_eq!(over.decision.status.phase, Some(CommandPhase::Failed));
    assert_eq!(
        condition(&over, types::FAILED),
        (true, "SandboxNotFound".to_string())
    );
}

#[test]
fn a_sandbox_that_goes_or_stops_fails_its_pending_commands_with_a_reason() {
    for (sandbox, reason) in [
        (None, "SandboxNotFound"),
        (
            Some(SandboxView {
                running: false,
                not_running: false,
                deleting: true,
                pod: None,
            }),
            "SandboxDeleted",
        ),
        (
            Some(SandboxView {
                running: false,
                not_running: true,
                deleting: false,
                pod: None,
            }),
            "SandboxStopped",
        ),
    ] {
        let plan = plan(
            &command(Some(CommandPhase::Pending)),
            &observation(sandbox, Run::Unknown),
            t0(),
        );
        assert_eq!(plan.decision.status.phase, Some(CommandPhase::Failed));
        assert_eq!(condition(&plan, types::FAILED), (true, reason.to_string()));
        assert!(
            plan.decision
                .events
                .iter()
                .any(|e| e.warning && e.reason == reason)
        );
        assert_eq!(plan.action, None);
    }
}

#[test]
fn a_running_command_this_process_does_not_run_was_interrupted_and_never_runs_again() {
    let plan = plan(
        &command(Some(CommandPhase::Running)),
        &observation(running_sandbox(), Run::Unknown),
        t0(),
    );
    assert_eq!(plan.decision.status.phase, Some(CommandPhase::Failed));
    assert_eq!(condition(&plan, types::FAILED).1, "Interrupted");
    assert_ne!(plan.action, Some(CommandAction::Start));
}

#[test]
fn how_it_ended_is_recorded_with_its_output() {
    let succeeded = plan(
        &command(Some(CommandPhase::Running)),
        &observation(running_sandbox(), exited(0, "hello\n")),
        t0(),
    );
    let status = &succeeded.decision.status;
    assert_eq!(status.phase, Some(CommandPhase::Succeeded));
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.stdout.as_ref().unwrap().text, "hello\n");
    assert_eq!(status.finished_at, Some(t0()));
    assert_eq!(
        condition(&succeeded, types::COMPLETE),
        (true, "Succeeded".into())
    );
    assert_eq!(succeeded.action, Some(CommandAction::Forget));

    let failed = plan(
        &command(Some(CommandPhase::Running)),
        &observation(running_sandbox(), exited(3, "")),
        t0(),
    );
    assert_eq!(failed.decision.status.phase, Some(CommandPhase::Failed));
    assert_eq!(failed.decision.status.exit_code, Some(3));
    assert_eq!(
        condition(&failed, types::FAILED),
        (true, "NonZeroExitCode".into())
    );

    let timed_out = plan(
        &command(Some(CommandPhase::Running)),
        &observation(running_sandbox(), Run::Ended(RunEnd::TimedOut, t0())),
        t0(),
    );
    assert_eq!(
        timed_out.decision.status.phase,
        Some(CommandPhase::TimedOut)
    );
}

#[test]
fn a_finished_command_with_a_time_to_live_is_deleted_when_it_is_up() {
    let mut done = command(Some(CommandPhase::Succeeded));
    done.spec.ttl_seconds_after_finished = Some(30);
    done.status.as_mut().unwrap().finished_at = Some(t0());
    let early = plan(&done, &observation(running_sandbox(), Run::Unknown), t0());
    assert!(!early.decision.delete_object);
    assert_eq!(early.decision.requeue_after, Duration::from_secs(30));
    let late = plan(
        &done,
        &observation(running_sandbox(), Run::Unknown),
        t0() + chrono::Duration::seconds(30),
    );
    assert!(late.decision.delete_object);
}

#[test]
fn secret_values_are_replaced_in_recorded_output() {
    let secrets = vec![("DB_PASSWORD".to_string(), "s3cr3t".to_string())];
    let output = redact(&tail("password=s3cr3t; again s3cr3t\n"), &secrets);
    assert_eq!(
        output.text,
        "password=[REDACTED:DB_PASSWORD]; again [REDACTED:DB_PASSWORD]\n"
    );
    assert!(!output.truncated);
}

#[test]
fn a_secret_cut_by_the_tail_never_shows_even_in_part() {
    let secret = "0123456789abcdef";
    let secrets = vec![("TOKEN".to_string(), secret.to_string())];
    let keep = keep_bytes(&secrets);
    // The secret straddles the front of what the tail kept.
    let mut text = "x".repeat(10_000);
    text.push_str(secret);
    text.push_str(&"y".repeat(keep - 5));
    let mut tail = Tail::new(keep);
    tail.push(text.as_bytes());
    let output = redact(&tail, &secrets);
    assert!(output.truncated);
    assert_eq!(output.bytes, text.len() as i64);
    assert!(output.text.len() <= OUTPUT_LIMIT);
    for piece in ["bcdef", "cdef", "def"] {
        assert!(!output.text.contains(piece), "{piece} leaked");
    }
}

proptest! {
    /// Whatever the output and wherever the secret falls: no run of five or
    /// more of its bytes is ever recorded, and the record is at most 32 KiB.
    #[test]
    fn no_piece_of_a_secret_is_recorded(
        before in 0usize..40_000,
        after in 0usize..40_000,
        chunk in 1usize..5000,
    ) {
        let secret = "S3CRET-VALUE-XYZ";
        let secrets = vec![("KEY".to_string(), secret.to_string())];
        let mut tail = Tail::new(keep_bytes(&secrets));
        let text = format!("{}{}{}", ".".repeat(before), secret, ",".repeat(after));
        for piece in text.as_bytes().chunks(chunk) {
            tail.push(piece);
        }
        let output = redact(&tail, &secrets);
        prop_assert!(output.text.len() <= OUTPUT_LIMIT);
        for window in secret.as_bytes().windows(5) {
            prop_assert!(!output.text.contains(std::str::from_utf8(window).unwrap()));
        }
        prop_assert_eq!(output.bytes as usize, text.len());
    }

    /// A command is started at most once: no plan starts a command that is
    /// not Pending, and no plan holds a move the table forbids.
    #[test]
    fn a_command_starts_at_most_once(
        phase in proptest::option::of(proptest::sample::select(vec![
            CommandPhase::Pending, CommandPhase::Running, CommandPhase::Succeeded,
            CommandPhase::Failed, CommandPhase::TimedOut,
        ])),
        sandbox in proptest::option::of((any::<bool>(), any::<bool>(), any::<bool>())),
        earlier in any::<bool>(),
        run in 0u8..4,
        code in -1i32..3,
    ) {
        let run = match run {
            0 => Run::Unknown,
            1 => Run::Running,
            2 => exited(code, "out"),
            _ => Run::Ended(RunEnd::TimedOut, t0()),
        };
        let sandbox = sandbox.map(|(running, not_running, deleting)| SandboxView {
            running, not_running, deleting, pod: Some("box".into()),
        });
        let mut observed = observation(sandbox, run);
        observed.earlier_unfinished = earlier;
        let before = command(phase);
        let plan = plan(&before, &observed, t0());
        if plan.action == Some(CommandAction::Start) {
            prop_assert!(phase.is_none_or(|p| p == CommandPhase::Pending));
            prop_assert!(plan.decision.record_first);
            prop_assert_eq!(plan.decision.status.phase, Some(CommandPhase::Running));
        }
        if let (Some(from), Some(to)) = (phase, plan.decision.status.phase)
            && from != to
        {
            prop_assert!(validate_transition(from, to).is_ok(), "{from} -> {to}");
        }
        if phase.is_some_and(CommandPhase::is_finished) {
            prop_assert_eq!(plan.decision.status.phase, phase, "an ended command stays ended");
        }
    }
}

#[test]
fn a_ttl_that_ends_past_the_end_of_time_keeps_the_command() {
    // Finished at DateTime::MAX_UTC with ttlSecondsAfterFinished 3600, the
    // plan panicked: `DateTime + TimeDelta` overflowed.
    let mut finished = command(Some(CommandPhase::Succeeded));
    finished.spec.ttl_seconds_after_finished = Some(3600);
    finished.status.as_mut().unwrap().finished_at = Some(DateTime::<Utc>::MAX_UTC);
    let planned = plan(
        &finished,
        &observation(running_sandbox(), Run::Unknown),
        t0(),
    );
    assert!(!planned.decision.delete_object);
    // A command that ended at the very end of time, as its run reports it.
    let mut running = command(Some(CommandPhase::Running));
    running.spec.ttl_seconds_after_finished = Some(i32::MAX);
    let ended = Run::Ended(RunEnd::TimedOut, DateTime::<Utc>::MAX_UTC);
    let planned = plan(&running, &observation(running_sandbox(), ended), t0());
    assert_eq!(planned.decision.status.phase, Some(CommandPhase::TimedOut));
    assert!(!planned.decision.delete_object);
}
