//! End-to-end tests of SandboxCommands and SandboxSnapshots against the real
//! control plane. kwok answers `pods/exec` by running the command as a local
//! process in a directory of the pod's own (see hack/controlplane.sh), so
//! these commands really run: their output and exit codes are real. kwok
//! plays the snapshot controller for VolumeSnapshots.

mod common;

use std::time::Duration;

use common::storage::Storage;
use common::*;
use ctrlplane_operator::api::{
    CommandPhase, EventType, HistoryEntry, Sandbox, SandboxCommand, SandboxPhase, SandboxSnapshot,
    SnapshotPhase,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

const WAIT: Duration = Duration::from_secs(120);

struct Fixture {
    operator: Operator,
    ns: TestNamespace,
    storage: Storage,
    sandboxes: Api<Sandbox>,
    commands: Api<SandboxCommand>,
    snapshots: Api<SandboxSnapshot>,
    claims: Api<PersistentVolumeClaim>,
}

async fn fixture(prefix: &str, volumes: usize) -> Fixture {
    ensure_crds();
    let ns = TestNamespace::create(prefix);
    let storage = Storage::create(&ns.name, volumes);
    let operator = Operator::start(&ns.name);
    let client = client().await;
    Fixture {
        sandboxes: Api::namespaced(client.clone(), &ns.name),
        commands: Api::namespaced(client.clone(), &ns.name),
        snapshots: Api::namespaced(client.clone(), &ns.name),
        claims: Api::namespaced(client, &ns.name),
        operator,
        storage,
        ns,
    }
}

impl Fixture {
    fn apply(&self, manifest: &str) {
        apply_manifest(&self.ns.name, manifest).expect_success("applying");
    }

    /// The history of Sandbox `box`, as the API server has it now.
    async fn box_history(&self) -> Result<Vec<HistoryEntry>, String> {
        let sandbox = self.sandboxes.get("box").await.map_err(|e| e.to_string())?;
        Ok(sandbox.status.map(|s| s.history).unwrap_or_default())
    }

    fn sandbox(&self, name: &str, extra: &str) {
        self.apply(&format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: ghcr.io/acme/devbox:1\n  resources: {{cpu: 250m, memory: 256Mi, storage: 1Gi, storageClassName: {}}}\n{extra}",
            self.storage.class
        ));
    }

    /// A command; `argv` as YAML flow sequence, `extra` more spec lines.
    fn command(&self, name: &str, sandbox: &str, argv: &str, extra: &str) {
        self.apply(&format!(
            "apiVersion: ctrlplane.dev/v1alpha1\nkind: SandboxCommand\nmetadata:\n  name: {name}\nspec:\n  sandboxRef: {{name: {sandbox}}}\n  command: {argv}\n{extra}"
        ));
    }

    async fn running(&self, name: &str) -> Sandbox {
        wait_until(&format!("Sandbox {name} Running"), WAIT, || async {
            let s = self.sandboxes.get(name).await.map_err(|e| e.to_string())?;
            let phase = s.status.as_ref().and_then(|s| s.phase);
            Ok((phase == Some(SandboxPhase::Running)).then_some(s))
        })
        .await
    }

    async fn finished(&self, name: &str) -> SandboxCommand {
        wait_until(&format!("SandboxCommand {name} to end"), WAIT, || async {
            let c = self.commands.get(name).await.map_err(|e| e.to_string())?;
            let status = c.status.clone().unwrap_or_default();
            match status.phase {
                Some(phase) if phase.is_finished() => Ok(Some(c)),
                phase => Err(format!(
                    "phase {phase:?}, {:?}",
                    describe_conditions(&status.conditions)
                )),
            }
        })
        .await
    }

    async fn phase_of(&self, name: &str, wanted: CommandPhase) -> SandboxCommand {
        wait_until(&format!("SandboxCommand {name} {wanted}"), WAIT, || async {
            let c = self.commands.get(name).await.map_err(|e| e.to_string())?;
            let phase = c.status.as_ref().and_then(|s| s.phase);
            Ok((phase == Some(wanted)).then_some(c))
        })
        .await
    }
}

fn failed_reason(command: &SandboxCommand) -> String {
    command
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Failed"))
        .map(|c| c.reason.to_string())
        .unwrap_or_default()
}

fn stdout(command: &SandboxCommand) -> String {
    command
        .status
        .as_ref()
        .and_then(|s| s.stdout.as_ref())
        .map(|o| o.text.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_command_runs_in_its_sandbox_and_records_real_output_and_exit_code() {
    let f = fixture("cmd-run", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.command(
        "probe",
        "box",
        r#"["sh", "-c", "echo out; echo err >&2; pwd; exit 3"]"#,
        "",
    );
    let done = f.finished("probe").await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(CommandPhase::Failed));
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(failed_reason(&done), "NonZeroExitCode");
    let out = stdout(&done);
    assert!(out.starts_with("out\n"), "{out:?}");
    // It ran in the sandbox pod's own directory (kwok's local exec).
    assert!(out.contains(&format!("/exec/{}/box", f.ns.name)), "{out:?}");
    let err = status.stderr.unwrap();
    assert_eq!(
        (err.text.as_str(), err.truncated, err.bytes),
        ("err\n", false, 4)
    );
    assert!(status.started_at.is_some() && status.finished_at >= status.started_at);
    assert_eq!(status.pod.as_deref(), Some("box"));

    // The Sandbox's history says so, and kubectl shows it.
    let history = wait_until(
        "the command's events in the Sandbox history",
        WAIT,
        || async {
            let history = f.box_history().await?;
            Ok(history
                .iter()
                .any(|e| e.type_ == EventType::SandboxCommandFailed)
                .then_some(history))
        },
    )
    .await;
    let started = history
        .iter()
        .position(|e| e.type_ == EventType::SandboxCommandStarted)
        .expect("started recorded");
    let failed = history
        .iter()
        .position(|e| e.type_ == EventType::SandboxCommandFailed)
        .unwrap();
    assert!(started < failed);
    assert_eq!(
        history[failed].details.get("exitCode").map(String::as_str),
        Some("3")
    );
    let table = kubectl(["get", "sbxcmd", "-n", &f.ns.name]).expect_success("kubectl get sbxcmd");
    assert!(
        table.stdout.contains("Failed") && table.stdout.contains("box"),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn commands_of_one_sandbox_run_one_at_a_time_in_creation_order() {
    let f = fixture("cmd-order", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    // Made together; the second must see what the first wrote.
    f.command(
        "first",
        "box",
        r#"["sh", "-c", "sleep 2; echo one > order.txt"]"#,
        "",
    );
    f.command("second", "box", r#"["sh", "-c", "cat order.txt"]"#, "");
    let first = f.finished("first").await;
    let second = f.finished("second").await;
    assert_eq!(
        second.status.as_ref().unwrap().phase,
        Some(CommandPhase::Succeeded)
    );
    assert_eq!(stdout(&second), "one\n");
    assert!(
        second.status.as_ref().unwrap().started_at >= first.status.as_ref().unwrap().finished_at,
        "the second started only once the first had ended"
    );
}

/// Created all at once (mostly in the same second, so ordered by name), a
/// burst of commands runs one at a time in creation order, every one of
/// them, without waiting on a timed requeue.
#[tokio::test]
async fn a_burst_of_commands_runs_every_one_in_creation_order() {
    let f = fixture("cmd-burst", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    let names: Vec<String> = (0..12).map(|i| format!("c-{i:02}")).collect();
    let creates = names.iter().rev().map(|name| {
        let command: SandboxCommand = serde_json::from_value(serde_json::json!({
            "apiVersion": "ctrlplane.dev/v1alpha1",
            "kind": "SandboxCommand",
            "metadata": {"name": name},
            "spec": {"sandboxRef": {"name": "box"}, "command": ["sh", "-c", format!("echo {name} >> burst.log")]},
        }))
        .unwrap();
        let commands = f.commands.clone();
        async move { commands.create(&Default::default(), &command).await }
    });
    for created in futures::future::join_all(creates).await {
        created.expect("creating a command");
    }
    let mut finished = Vec::new();
    for name in &names {
        finished.push(f.finished(name).await);
    }
    assert!(
        finished
            .iter()
            .all(|c| c.status.as_ref().unwrap().phase == Some(CommandPhase::Succeeded)),
        "every command succeeded"
    );
    let mut expected: Vec<(String, String)> = finished
        .iter()
        .map(|c| {
            let created = c
                .metadata
                .creation_timestamp
                .as_ref()
                .unwrap()
                .0
                .to_string();
            (created, c.metadata.name.clone().unwrap())
        })
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, name)| name).collect();
    // What ran, in the order it ran: the Sandbox's history, and the file.
    // The Sandbox records the commands in its own later reconcile (woken by
    // the command watch), so the last one ending does not mean it has yet.
    let started: Vec<String> = wait_until(
        "the Sandbox's history to record every command started",
        WAIT,
        || async {
            let started: Vec<String> = f
                .box_history()
                .await?
                .iter()
                .filter(|e| e.type_ == EventType::SandboxCommandStarted)
                .map(|e| e.details["command"].clone())
                .collect();
            if started.len() >= names.len() {
                Ok(Some(started))
            } else {
                Err(format!("started so far: {started:?}"))
            }
        },
    )
    .await;
    assert_eq!(started, expected);
    f.command("read", "box", r#"["cat", "burst.log"]"#, "");
    let read = f.finished("read").await;
    assert_eq!(stdout(&read), format!("{}\n", expected.join("\n")));
}

#[tokio::test]
async fn a_command_past_its_timeout_is_stopped_and_recorded_timed_out() {
    let f = fixture("cmd-timeout", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.command(
        "slow",
        "box",
        r#"["sh", "-c", "echo begun; sleep 60"]"#,
        "  timeoutSeconds: 2\n",
    );
    let done = f.finished("slow").await;
    assert_eq!(
        done.status.as_ref().unwrap().phase,
        Some(CommandPhase::TimedOut)
    );
    let complete = done
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert!(
        complete.message.contains("timeoutSeconds (2)"),
        "{}",
        complete.message
    );
}

#[tokio::test]
async fn secret_values_are_replaced_in_the_recorded_output() {
    let f = fixture("cmd-secret", 1).await;
    f.apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-s3cr3t\n");
    f.sandbox("box", "");
    f.running("box").await;
    f.command(
        "leak",
        "box",
        r#"["sh", "-c", "echo \"password=$DB_PASSWORD user=$DB_USER\"; echo \"$DB_PASSWORD\" >&2"]"#,
        "  env:\n  - {name: DB_PASSWORD, secretKeyRef: {name: db, key: password}}\n  - {name: DB_USER, value: app}\n",
    );
    let done = f.finished("leak").await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(CommandPhase::Succeeded));
    assert_eq!(stdout(&done), "password=[REDACTED:DB_PASSWORD] user=app\n");
    assert_eq!(status.stderr.unwrap().text, "[REDACTED:DB_PASSWORD]\n");
    assert_eq!(status.redacted, ["DB_PASSWORD"]);
    // Nowhere else either: not in the object, its Events, nor the log.
    let yaml =
        kubectl(["get", "sbxcmd", "leak", "-n", &f.ns.name, "-o", "yaml"]).expect_success("get");
    let events = kubectl(["get", "events", "-n", &f.ns.name]).expect_success("events");
    for (what, text) in [
        ("the object", yaml.stdout),
        ("the Events", events.stdout),
        ("the operator log", f.operator.log()),
    ] {
        assert!(
            !text.contains("hunter2-s3cr3t"),
            "the secret value is in {what}"
        );
    }
}

#[tokio::test]
async fn a_command_runs_at_most_once_across_an_operator_kill() {
    let mut f = fixture("cmd-once", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.command(
        "once",
        "box",
        r#"["sh", "-c", "echo ran >> runs.txt; sleep 8"]"#,
        "",
    );
    f.phase_of("once", CommandPhase::Running).await;
    f.operator.kill();
    f.operator.restart();
    let done = f.finished("once").await;
    assert_eq!(
        done.status.as_ref().unwrap().phase,
        Some(CommandPhase::Failed)
    );
    assert_eq!(failed_reason(&done), "Interrupted");
    // Whatever it did before the kill, it was not started again.
    f.command(
        "count",
        "box",
        r#"["sh", "-c", "sleep 9; wc -l < runs.txt"]"#,
        "",
    );
    let count = f.finished("count").await;
    assert_eq!(stdout(&count).trim(), "1", "runs.txt: {:?}", stdout(&count));
}

#[tokio::test]
async fn pending_commands_fail_when_their_sandbox_is_stopped_or_deleted() {
    let f = fixture("cmd-gone", 2).await;
    f.sandbox("stopped", "  state: Stopped\n");
    wait_until("Sandbox stopped to be Stopped", WAIT, || async {
        let s = f
            .sandboxes
            .get("stopped")
            .await
            .map_err(|e| e.to_string())?;
        Ok((s.status.and_then(|s| s.phase) == Some(SandboxPhase::Stopped)).then_some(()))
    })
    .await;
    f.command("never", "stopped", r#"["true"]"#, "");
    let never = f.finished("never").await;
    assert_eq!(failed_reason(&never), "SandboxStopped");
    assert!(
        never.status.as_ref().unwrap().started_at.is_none(),
        "it never ran"
    );

    f.sandbox("doomed", "");
    f.running("doomed").await;
    f.command("long", "doomed", r#"["sh", "-c", "sleep 60"]"#, "");
    f.command("queued", "doomed", r#"["true"]"#, "");
    f.phase_of("long", CommandPhase::Running).await;
    f.sandboxes
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let long = f.finished("long").await;
    let queued = f.finished("queued").await;
    assert_eq!(failed_reason(&long), "SandboxDeleted");
    assert_eq!(failed_reason(&queued), "SandboxDeleted");
    wait_until("the Sandbox to be gone", WAIT, || async {
        Ok(f.sandboxes
            .get_opt("doomed")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
}

#[tokio::test]
async fn a_command_with_a_time_to_live_is_deleted_after_it_ends() {
    let f = fixture("cmd-ttl", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.command(
        "brief",
        "box",
        r#"["true"]"#,
        "  ttlSecondsAfterFinished: 2\n",
    );
    wait_until("the command to be deleted", WAIT, || async {
        Ok(f.commands
            .get_opt("brief")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
}

#[tokio::test]
async fn a_snapshot_becomes_ready_and_a_new_sandbox_starts_from_it() {
    let f = fixture("snap-ready", 2).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.apply("apiVersion: ctrlplane.dev/v1alpha1\nkind: SandboxSnapshot\nmetadata:\n  name: snap\n  annotations: {ctrlplane.dev/test-restore-size: 2Gi}\nspec:\n  sandboxRef: {name: box}\n");
    let snap = wait_until("the snapshot to be Ready", WAIT, || async {
        let s = f.snapshots.get("snap").await.map_err(|e| e.to_string())?;
        let status = s.status.clone().unwrap_or_default();
        Ok((status.phase == Some(SnapshotPhase::Ready)).then_some(s))
    })
    .await;
    let status = snap.status.clone().unwrap();
    assert!(status.ready_to_use);
    assert_eq!(status.restore_size.map(|q| q.0).as_deref(), Some("2Gi"));
    assert!(status.creation_time.is_some());
    assert_eq!(status.source_claim.as_deref(), Some("box-data"));
    assert_eq!(
        status.history.iter().map(|e| e.type_).collect::<Vec<_>>(),
        [
            EventType::SandboxSnapshotCreated,
            EventType::SandboxSnapshotReady
        ]
    );

    // A new Sandbox from it: its claim's data source is the snapshot.
    f.sandbox("copy", "  source: {snapshotRef: {name: snap}}\n");
    let claim = wait_until("the copy's claim", WAIT, || async {
        f.claims
            .get_opt("copy-data")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let spec = claim.spec.unwrap();
    let source = spec.data_source.unwrap();
    assert_eq!(
        (source.kind.as_str(), source.name.as_str()),
        ("VolumeSnapshot", "snap")
    );
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    f.running("copy").await;

    // Deleting it deletes its VolumeSnapshot first.
    f.snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the snapshot to be gone", WAIT, || async {
        Ok(f.snapshots
            .get_opt("snap")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
            .then_some(()))
    })
    .await;
    let left = kubectl(["get", "volumesnapshots", "-n", &f.ns.name, "-o", "name"])
        .expect_success("volumesnapshots");
    assert!(left.stdout.trim().is_empty(), "{}", left.stdout);
}

#[tokio::test]
async fn a_sandbox_waits_for_its_snapshot_and_a_failed_snapshot_says_why() {
    let f = fixture("snap-fail", 1).await;
    f.sandbox("box", "");
    f.running("box").await;
    f.sandbox("early", "  source: {snapshotRef: {name: later}}\n");
    let waiting = wait_until("the copy to wait for its snapshot", WAIT, || async {
        let s = f.sandboxes.get("early").await.map_err(|e| e.to_string())?;
        let ready = s
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        Ok(ready.filter(|c| c.reason == "WaitingForSnapshot"))
    })
    .await;
    assert!(
        waiting.message.contains("does not exist"),
        "{}",
        waiting.message
    );
    assert!(f.claims.get_opt("early-data").await.unwrap().is_none());

    f.apply("apiVersion: ctrlplane.dev/v1alpha1\nkind: SandboxSnapshot\nmetadata:\n  name: broken\n  annotations: {ctrlplane.dev/test-snapshot: fail}\nspec:\n  sandboxRef: {name: box}\n");
    let broken = wait_until("the snapshot to fail", WAIT, || async {
        let s = f.snapshots.get("broken").await.map_err(|e| e.to_string())?;
        let status = s.status.clone().unwrap_or_default();
        Ok((status.phase == Some(SnapshotPhase::Failed)).then_some(status))
    })
    .await;
    assert!(
        broken
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Failed to create snapshot")),
        "{:?}",
        broken.error
    );
    let stalled = broken
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "SnapshotFailed");

    // Patch an unrelated annotation onto the waiting Sandbox: it still waits.
    f.sandboxes
        .patch(
            "early",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"metadata": {"annotations": {"note": "x"}}})),
        )
        .await
        .unwrap();
    assert!(f.claims.get_opt("early-data").await.unwrap().is_none());
}
