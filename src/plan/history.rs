//! The bounded lifecycle history that every state change appends to, and
//! that webhook dispatch reads. Trimming never drops an event that has not
//! been dispatched yet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::api::{EventType, HistoryEntry, Text};

/// How many entries a status keeps once they are dispatched.
pub const HISTORY_LIMIT: usize = 50;

/// The next sequence number: one past the newest entry, or 1.
///
/// Trimming keeps the newest entries, so the last entry always carries the
/// highest sequence ever given out; `dispatched` covers the case where every
/// entry was trimmed (it never is, but a sequence must never be reused).
/// A status that already holds i64::MAX (written by hand: no object lives
/// that long) stays there rather than overflowing.
pub fn next_sequence(history: &[HistoryEntry], dispatched: i64) -> i64 {
    history
        .last()
        .map(|e| e.sequence)
        .unwrap_or(0)
        .max(dispatched)
        .saturating_add(1)
}

/// One event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub type_: EventType,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

impl NewEvent {
    pub fn new(type_: EventType, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            from: None,
            to: None,
            reason: reason.into(),
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    pub fn transition(mut self, from: Option<impl ToString>, to: impl ToString) -> Self {
        self.from = from.map(|f| f.to_string());
        self.to = Some(to.to_string());
        self
    }

    pub fn detail(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_string(), value.to_string());
        self
    }
}

/// Appends an event with the next sequence number and returns that entry.
pub fn append(
    history: &mut Vec<HistoryEntry>,
    dispatched: i64,
    event: NewEvent,
    now: DateTime<Utc>,
) -> HistoryEntry {
    let entry = HistoryEntry {
        sequence: next_sequence(history, dispatched),
        type_: event.type_,
        from: event.from.map(Text::from),
        to: event.to.map(Text::from),
        reason: event.reason.into(),
        message: event.message.into(),
        details: event.details,
        time: now,
    };
    history.push(entry.clone());
    entry
}

/// Drops the oldest dispatched entries beyond [`HISTORY_LIMIT`]. Entries past
/// `dispatched` are kept whatever their number, so no event is ever lost.
pub fn trim(history: &mut Vec<HistoryEntry>, dispatched: i64) {
    while history.len() > HISTORY_LIMIT && history.first().is_some_and(|e| e.sequence <= dispatched)
    {
        history.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> NewEvent {
        NewEvent::new(EventType::InstanceScaled, "Scaled", "")
    }

    #[test]
    fn sequences_start_at_one_and_increase() {
        let mut history = Vec::new();
        let now = Utc::now();
        assert_eq!(append(&mut history, 0, event(), now).sequence, 1);
        assert_eq!(append(&mut history, 0, event(), now).sequence, 2);
    }

    #[test]
    fn a_sequence_at_i64_max_stays_there() {
        // dispatchedSeq (or the last entry's sequence) at i64::MAX panicked:
        // attempt to add with overflow.
        let mut history = Vec::new();
        assert_eq!(next_sequence(&history, i64::MAX), i64::MAX);
        let entry = append(&mut history, i64::MAX, event(), Utc::now());
        assert_eq!(entry.sequence, i64::MAX);
        assert_eq!(next_sequence(&history, 0), i64::MAX);
    }

    proptest! {
        /// Whatever is appended and trimmed: sequences stay strictly
        /// increasing, nothing undispatched is ever dropped, and the bound
        /// holds once everything is dispatched.
        #[test]
        fn trimming_never_loses_an_undispatched_event(
            steps in proptest::collection::vec((1usize..8, 0i64..4, any::<bool>()), 1..60)
        ) {
            let mut history = Vec::new();
            let mut dispatched = 0i64;
            let mut appended = 0i64;
            let now = Utc::now();
            for (count, advance, dispatch_all) in steps {
                for _ in 0..count {
                    append(&mut history, dispatched, event(), now);
                    appended += 1;
                }
                dispatched = if dispatch_all { appended } else { (dispatched + advance).min(appended) };
                trim(&mut history, dispatched);
                for pair in history.windows(2) {
                    prop_assert!(pair[0].sequence < pair[1].sequence);
                }
                let undispatched = history.iter().filter(|e| e.sequence > dispatched).count() as i64;
                prop_assert_eq!(undispatched, appended - dispatched);
                prop_assert_eq!(history.last().map(|e| e.sequence), Some(appended));
                if dispatched == appended {
                    prop_assert!(history.len() <= HISTORY_LIMIT);
                }
            }
        }
    }
}
