//! The control plane itself, for tests that disturb it (tests/chaos.rs): one
//! component stopped, started, paused or let go again through
//! `hack/controlplane.sh`, and the API server's audit log of write requests
//! (`CTRLPLANE_AUDIT_LOG=1 hack/controlplane.sh up`).
//!
//! The script acts on the control plane that `CTRLPLANE_STATE_DIR` and
//! `CTRLPLANE_PORT_BASE` name (`hack/test.sh` and `hack/controlplane.sh env`
//! export both).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{KubectlOutput, repo_root};

/// The state directory of the control plane under test.
pub fn state_dir() -> PathBuf {
    std::env::var_os("CTRLPLANE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".controlplane"))
}

/// Runs `hack/controlplane.sh ARGS...` to the end, without blocking the
/// async runtime (a receiver or a churn may run on it meanwhile).
pub async fn controlplane(args: &[&str]) -> KubectlOutput {
    let output = tokio::process::Command::new(repo_root().join("hack/controlplane.sh"))
        .args(args)
        .output()
        .await
        .expect("running hack/controlplane.sh");
    KubectlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One component of the control plane taken down or frozen by a test. The
/// fault ends with [`Fault::end`], or, if the test fails first, when it is
/// dropped, so a failed test never leaves the control plane broken for the
/// next one.
pub struct Fault {
    component: String,
    how: FaultKind,
    ended: bool,
    /// When the fault began.
    pub began: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Stopped,
    Paused,
}

impl Fault {
    /// Stops the component (`hack/controlplane.sh stop NAME`); it stays down
    /// until [`Fault::end`] starts it again.
    pub async fn stop(component: &str) -> Self {
        let began = Instant::now();
        controlplane(&["stop", component])
            .await
            .expect_success(&format!("stopping {component}"));
        Self {
            component: component.into(),
            how: FaultKind::Stopped,
            ended: false,
            began,
        }
    }

    /// Freezes the component with SIGSTOP (`hack/controlplane.sh pause NAME`).
    pub async fn pause(component: &str) -> Self {
        let began = Instant::now();
        controlplane(&["pause", component])
            .await
            .expect_success(&format!("pausing {component}"));
        Self {
            component: component.into(),
            how: FaultKind::Paused,
            ended: false,
            began,
        }
    }

    /// Ends the fault: starts the component again and waits until it is
    /// healthy, or lets it run again (SIGCONT). Returns when that was done.
    pub async fn end(mut self) -> Instant {
        self.ended = true;
        let command = match self.how {
            FaultKind::Stopped => "start",
            FaultKind::Paused => "continue",
        };
        controlplane(&[command, &self.component])
            .await
            .expect_success(&format!("{command} {}", self.component));
        Instant::now()
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let command = match self.how {
            FaultKind::Stopped => "start",
            FaultKind::Paused => "continue",
        };
        let _ = std::process::Command::new(repo_root().join("hack/controlplane.sh"))
            .args([command, &self.component])
            .output();
    }
}

/// The audit log of write requests, as `CTRLPLANE_AUDIT_LOG=1` turns it on.
pub fn audit_log_path() -> PathBuf {
    state_dir().join("logs/audit.log")
}

/// One write request, from the audit log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Who the request acted as: the impersonated user if there was one,
    /// else the authenticated one.
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP method the verb stands for (POST, PUT, PATCH, DELETE).
    pub method: String,
    /// The request's path, without the query.
    pub path: String,
    /// The HTTP status code of the answer.
    pub code: u16,
    /// When the API server received the request.
    pub received: DateTime<Utc>,
}

impl AuditEvent {
    pub fn describe(&self) -> String {
        let subresource = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!(
            "{} {} {} {}{subresource} {}/{} -> {}",
            self.received.format("%H:%M:%S%.6f"),
            self.user,
            self.verb,
            self.resource,
            self.namespace,
            self.name,
            self.code
        )
    }
}

/// Every write request logged so far (the rotated file too, if any), in the
/// order the API server received them. Panics with a hint when the control
/// plane runs without an audit log.
pub fn audit_events() -> Vec<AuditEvent> {
    let path = audit_log_path();
    assert!(
        path.exists(),
        "no audit log at {path:?}: the chaos tests need a control plane started with \
         CTRLPLANE_AUDIT_LOG=1 (hack/test.sh chaos does that)"
    );
    let mut files = vec![path.clone()];
    if let Ok(entries) = std::fs::read_dir(path.parent().unwrap()) {
        files.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
        }));
    }
    let mut events: Vec<AuditEvent> = files
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(parse_audit_line)
                .collect::<Vec<_>>()
        })
        .collect();
    events.sort_by_key(|e| e.received);
    events
}

fn parse_audit_line(line: &str) -> Option<AuditEvent> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let user = event["impersonatedUser"]["username"]
        .as_str()
        .or_else(|| event["user"]["username"].as_str())?
        .to_string();
    let object = &event["objectRef"];
    let verb = text(&event["verb"]);
    let method = match verb.as_str() {
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        _ => "",
    };
    let uri = text(&event["requestURI"]);
    Some(AuditEvent {
        user,
        method: method.into(),
        path: uri.split('?').next().unwrap_or_default().into(),
        verb,
        resource: text(&object["resource"]),
        subresource: text(&object["subresource"]),
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: event["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
        received: event["requestReceivedTimestamp"]
            .as_str()?
            .parse::<DateTime<Utc>>()
            .ok()?,
    })
}

/// A kubeconfig that acts as `user` in the group `system:masters` (the
/// admin's certificate may impersonate), so the API server's audit log tells
/// two processes apart.
pub fn impersonating_kubeconfig(user: &str) -> PathBuf {
    let original = std::fs::read_to_string(super::kubeconfig()).unwrap();
    let impersonating = original.replacen(
        "  user:\n",
        &format!("  user:\n    as: {user}\n    as-groups: [\"system:masters\"]\n"),
        1,
    );
    assert_ne!(
        impersonating, original,
        "the kubeconfig has a user to impersonate with"
    );
    let path = std::env::temp_dir().join(format!("kubeconfig-{user}-{}", std::process::id()));
    std::fs::write(&path, impersonating).unwrap();
    path
}

/// Elapsed time between two instants, in seconds, for reports.
pub fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// A `Duration` in seconds with one decimal, for reports.
pub fn fmt_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
