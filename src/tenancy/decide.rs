//! What to do with each event, what to report around it, where the cursor
//! goes, and how long to wait before asking again. Pure: `poller` does the
//! I/O these decisions call for.

use std::time::Duration;

use super::naming::Tenant;
use super::protocol::{
    EVENT_CREATED, EVENT_DELETED, Event, RESOURCE_ORG, RESOURCE_PROJECT, Status, Uuid,
};

/// What an event asks of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// A project exists: its namespace, quota and RoleBindings are made so.
    EnsureProject(Tenant),
    /// A project is gone: its namespace goes.
    RemoveProject(Uuid),
    /// An org is gone: the namespaces of all its projects go.
    RemoveOrg(Uuid),
    /// Nothing to do: an org on its own has no namespace, and a resource or
    /// event type this operator does not know (the protocol reserves
    /// folders) is acknowledged rather than retried for ever.
    Nothing(&'static str),
}

/// An event the handler cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("a project event must carry orgId")]
    ProjectWithoutOrg,
}

/// The work an event calls for.
pub fn work_for(event: &Event) -> Result<Work, EventError> {
    match (event.resource_type.as_str(), event.event_type.as_str()) {
        (RESOURCE_PROJECT, EVENT_CREATED) => {
            let org_id = event.org_id.clone().ok_or(EventError::ProjectWithoutOrg)?;
            Ok(Work::EnsureProject(Tenant {
                org_id,
                org_name: event.org_name.clone().unwrap_or_default(),
                project_id: event.resource_id.clone(),
                project_name: event.resource_name.clone(),
            }))
        }
        (RESOURCE_PROJECT, EVENT_DELETED) => Ok(Work::RemoveProject(event.resource_id.clone())),
        (RESOURCE_ORG, EVENT_DELETED) => Ok(Work::RemoveOrg(event.resource_id.clone())),
        (RESOURCE_ORG, EVENT_CREATED) => Ok(Work::Nothing("an org has no namespace of its own")),
        (RESOURCE_ORG | RESOURCE_PROJECT, _) => Ok(Work::Nothing("unknown event type")),
        _ => Ok(Work::Nothing("unknown resource type")),
    }
}

/// What the Tenant Manager is told once the handler has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `PUT /v1/status` with this status and message.
    Put(Status, String),
    /// `DELETE /v1/status`: the deletion is done, the row can go.
    Delete,
}

/// After the handler: a deleted event that succeeded deletes the status row;
/// any event that failed reports `error` with the handler's message, wrapped
/// as the Go poller wraps it (`handle <eventType> <resourceType>/<name>: ...`);
/// anything else is `completed`.
pub fn report_after(event: &Event, outcome: Result<(), String>) -> Report {
    match outcome {
        Ok(()) if event.event_type == EVENT_DELETED => Report::Delete,
        Ok(()) => Report::Put(Status::Completed, String::new()),
        Err(error) => Report::Put(
            Status::Error,
            format!(
                "handle {} {}/{}: {error}",
                event.event_type, event.resource_type, event.resource_name
            ),
        ),
    }
}

/// Where the poller is in the Tenant Manager's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

/// Whether to go on with the next event of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

impl Cursor {
    /// After replay the cursor is the answer's `lastEventId`, whatever
    /// became of the replayed events: a failed one was reported and is
    /// skipped (it comes again with the next replay, at the next start).
    pub fn after_replay(last_event_id: i64) -> Self {
        Cursor(last_event_id)
    }

    /// During polling: a handled event moves the cursor to it; the first
    /// failure stops the page and leaves the cursor at the last success, so
    /// the next poll (`after=<cursor>`) brings the failed event again:
    /// at-least-once.
    pub fn handled(&mut self, event_id: i64, succeeded: bool) -> Next {
        if succeeded {
            self.0 = event_id;
            Next::Continue
        } else {
            Next::Stop
        }
    }
}

/// The first wait after a failed replay request.
pub const REPLAY_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between replay requests.
pub const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long to wait after the `failures`-th failed replay request (1 or
/// more): 1 s, doubling, at most 30 s, no jitter (the Go poller's schedule).
pub fn replay_backoff(failures: u32) -> Duration {
    REPLAY_BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(REPLAY_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORG: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    const PROJECT: &str = "11111111-2222-3333-4444-555555555555";

    fn event(resource_type: &str, event_type: &str) -> Event {
        let project = resource_type == RESOURCE_PROJECT;
        Event {
            id: 7,
            event_type: event_type.into(),
            resource_type: resource_type.into(),
            resource_id: Uuid::parse(if project { PROJECT } else { ORG }).unwrap(),
            resource_name: if project { "web" } else { "acme" }.into(),
            org_id: project.then(|| Uuid::parse(ORG).unwrap()),
            org_name: project.then(|| "acme".to_string()),
            folder_id: None,
            created_at: None,
        }
    }

    #[test]
    fn each_event_gets_its_work() {
        let Ok(Work::EnsureProject(tenant)) = work_for(&event("project", "created")) else {
            panic!("a created project is ensured");
        };
        assert_eq!(
            (tenant.org_name.as_str(), tenant.project_name.as_str()),
            ("acme", "web")
        );
        assert_eq!(tenant.org_id.as_str(), ORG);
        assert_eq!(
            work_for(&event("project", "deleted")),
            Ok(Work::RemoveProject(Uuid::parse(PROJECT).unwrap()))
        );
        assert_eq!(
            work_for(&event("org", "deleted")),
            Ok(Work::RemoveOrg(Uuid::parse(ORG).unwrap()))
        );
        for (resource, kind) in [
            ("org", "created"),
            ("org", "renamed"),
            ("folder", "created"),
        ] {
            assert!(matches!(
                work_for(&event(resource, kind)),
                Ok(Work::Nothing(_))
            ));
        }
    }

    #[test]
    fn a_project_without_its_org_is_an_error() {
        let mut orphan = event("project", "created");
        orphan.org_id = None;
        assert_eq!(work_for(&orphan), Err(EventError::ProjectWithoutOrg));
    }

    #[test]
    fn reports_follow_the_go_poller() {
        assert_eq!(
            report_after(&event("project", "created"), Ok(())),
            Report::Put(Status::Completed, String::new())
        );
        assert_eq!(
            report_after(&event("project", "deleted"), Ok(())),
            Report::Delete
        );
        for kind in ["created", "deleted"] {
            assert_eq!(
                report_after(&event("project", kind), Err("namespace x is taken".into())),
                Report::Put(
                    Status::Error,
                    format!("handle {kind} project/web: namespace x is taken")
                )
            );
        }
    }

    #[test]
    fn the_replay_backoff_doubles_from_one_second_to_thirty() {
        let waits: Vec<u64> = (1..=8).map(|n| replay_backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(replay_backoff(u32::MAX), REPLAY_BACKOFF_MAX);
    }

    #[test]
    fn replay_moves_the_cursor_to_last_event_id() {
        assert_eq!(Cursor::after_replay(42), Cursor(42));
    }

    proptest! {
        /// Polling a page of events with any outcomes: the cursor ends at
        /// the last event handled before the first failure (or where it
        /// was), nothing after a failure is handled, and handling the rest
        /// again from there reaches the same place as an all-success run.
        #[test]
        fn the_cursor_never_passes_a_failed_event(
            start in 0i64..1000,
            outcomes in proptest::collection::vec(any::<bool>(), 0..30),
        ) {
            let ids: Vec<i64> = (1..=outcomes.len() as i64).map(|i| start + i).collect();
            let mut cursor = Cursor(start);
            let mut handled = Vec::new();
            for (id, ok) in ids.iter().zip(&outcomes) {
                handled.push(*id);
                if cursor.handled(*id, *ok) == Next::Stop {
                    break;
                }
            }
            let first_failure = outcomes.iter().position(|ok| !ok);
            match first_failure {
                Some(i) => {
                    prop_assert_eq!(cursor.0, if i == 0 { start } else { ids[i - 1] });
                    prop_assert_eq!(handled.len(), i + 1, "nothing after the failure");
                }
                None => prop_assert_eq!(cursor.0, ids.last().copied().unwrap_or(start)),
            }
            // The next poll asks for everything after the cursor; once it
            // all succeeds, the cursor is where an all-success run ends.
            let mut retry = cursor;
            for id in ids.iter().filter(|id| **id > cursor.0) {
                prop_assert_eq!(retry.handled(*id, true), Next::Continue);
            }
            prop_assert_eq!(retry.0, ids.last().copied().unwrap_or(start));
        }

        /// The backoff never shrinks and never exceeds 30 s.
        #[test]
        fn the_backoff_grows_to_its_cap(failures in 1u32..100) {
            prop_assert!(replay_backoff(failures) <= REPLAY_BACKOFF_MAX);
            prop_assert!(replay_backoff(failures + 1) >= replay_backoff(failures));
        }
    }
}
