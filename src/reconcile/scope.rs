//! What a run reads (pure): the scope asked for, the stored event cursor
//! and the time decide between a full scan, an incremental run from the
//! Events API, and a backfill window; and the cursor a successful run
//! stores next.
//!
//! Choices (each a row of `choice_table` or `cursor_table`):
//! - the cursor is `{"created": <unix s>, "seen": [event ids]}`: the run's
//!   start time and the events already handled inside the overlap window,
//!   so an event that arrives late for its second is handled once, not twice;
//! - a cursor older than [`EVENT_RETENTION`] (Stripe keeps events 30 days)
//!   is not trusted: the run scans everything;
//! - a `--since` window inside the retention is replayed from events, an
//!   older one reads every subscription and the sessions and invoices
//!   created in the window.

use std::collections::HashSet;

use chrono::DateTime;
use serde::{Deserialize, Serialize};

pub use crate::domain::RunMode;
use crate::domain::Timestamp;
use crate::stripe::CreatedRange;

/// How much of Stripe a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Incremental from the event cursor when it is fresh, else full.
    Auto,
    /// Every subscription, completed payment-mode session and paid invoice.
    Full,
    /// Everything that changed in a window (backfill after an outage).
    Since { since: Timestamp, until: Option<Timestamp> },
}

/// Name of the Events API cursor in `sync_state`.
pub const EVENTS_CURSOR: &str = "events";
/// Events of one second can be listed late: every incremental run re-reads
/// this much before its cursor and skips the event ids it already handled.
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(5);
/// Stripe keeps events 30 days; past 25 the cursor is too old to trust.
pub const EVENT_RETENTION: chrono::Duration = chrono::Duration::days(25);

/// The stored Events API cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    /// Unix seconds: events created at or after `created - OVERLAP` are read next time.
    pub created: i64,
    /// Events already handled with `created >= self.created - OVERLAP`.
    pub seen: Vec<String>,
}

/// What a run reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Every purchase (and the events of the last [`OVERLAP`], to start the cursor).
    Full,
    /// Events created at or after `from`, without those in `seen`.
    Incremental { from: Timestamp, seen: HashSet<String> },
    /// A window replayed from its events.
    WindowEvents { since: Timestamp, until: Option<Timestamp> },
    /// A window older than the event retention: scanned.
    WindowScan { range: CreatedRange },
}

/// The reading chosen and why, for the report's `note`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub reading: Reading,
    pub note: Option<String>,
}

/// The mode a run records when it starts (before it knows whether an
/// event turns an incremental run into a full one).
pub fn planned_mode(scope: Scope, has_cursor: bool) -> RunMode {
    match scope {
        Scope::Full => RunMode::Full,
        Scope::Since { .. } => RunMode::Since,
        Scope::Auto if has_cursor => RunMode::Incremental,
        Scope::Auto => RunMode::Full,
    }
}

/// Chooses what to read.
pub fn choose(scope: Scope, cursor: Option<EventCursor>, now: Timestamp) -> Choice {
    match scope {
        Scope::Full => Choice {
            reading: Reading::Full,
            note: None,
        },
        Scope::Auto => {
            let fresh = cursor.filter(|c| now.timestamp() - c.created < EVENT_RETENTION.num_seconds());
            match fresh {
                None => Choice {
                    reading: Reading::Full,
                    note: Some("no event cursor, or older than 25 days: full scan".into()),
                },
                Some(c) => Choice {
                    reading: Reading::Incremental {
                        from: DateTime::from_timestamp(c.created, 0).unwrap_or(now) - OVERLAP,
                        seen: c.seen.into_iter().collect(),
                    },
                    note: None,
                },
            }
        }
        Scope::Since { since, until } => {
            let until_ts = until.unwrap_or(now);
            if now - since <= EVENT_RETENTION {
                Choice {
                    reading: Reading::WindowEvents { since, until },
                    note: Some(format!("window {since} .. {until_ts}: replayed from Stripe events")),
                }
            } else {
                Choice {
                    reading: Reading::WindowScan {
                        range: CreatedRange {
                            gte: Some(since),
                            lt: until,
                        },
                    },
                    note: Some(format!(
                        "window {since} .. {until_ts} starts before Stripe's event retention: \
                         all subscriptions, and sessions and invoices created in the window"
                    )),
                }
            }
        }
    }
}

/// The cursor a successful run started at `now` stores: `now`, and the
/// events listed (handled or already seen) inside the overlap window, so
/// `seen` never outgrows the window.
pub fn next_cursor(now: Timestamp, listed: &[(Timestamp, String)]) -> EventCursor {
    let window_start = now - OVERLAP;
    let mut seen: Vec<String> = listed
        .iter()
        .filter(|(created, _)| *created >= window_start)
        .map(|(_, id)| id.clone())
        .collect();
    seen.sort();
    seen.dedup();
    EventCursor {
        created: now.timestamp(),
        seen,
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table rows
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn choice_table() {
        let cursor = |created: i64, seen: &[&str]| EventCursor {
            created,
            seen: seen.iter().map(|s| (*s).to_owned()).collect(),
        };
        let cases: Vec<(&str, Scope, Option<EventCursor>, Reading, Option<&str>, RunMode)> = vec![
            (
                "--full",
                Scope::Full,
                Some(cursor(NOW - 60, &[])),
                Reading::Full,
                None,
                RunMode::Full,
            ),
            (
                "auto without a cursor scans everything",
                Scope::Auto,
                None,
                Reading::Full,
                Some("no event cursor"),
                RunMode::Full,
            ),
            (
                "auto with a fresh cursor reads events from it, less the overlap",
                Scope::Auto,
                Some(cursor(NOW - 3600, &["evt_1"])),
                Reading::Incremental {
                    from: at(NOW - 3600) - OVERLAP,
                    seen: ["evt_1".to_owned()].into(),
                },
                None,
                RunMode::Incremental,
            ),
            (
                "auto with a cursor past the retention scans everything",
                Scope::Auto,
                Some(cursor(NOW - 25 * DAY, &[])),
                Reading::Full,
                Some("older than 25 days"),
                RunMode::Incremental,
            ),
            (
                "a recent window replays its events",
                Scope::Since {
                    since: at(NOW - 2 * DAY),
                    until: Some(at(NOW - DAY)),
                },
                None,
                Reading::WindowEvents {
                    since: at(NOW - 2 * DAY),
                    until: Some(at(NOW - DAY)),
                },
                Some("replayed from Stripe events"),
                RunMode::Since,
            ),
            (
                "an old window is scanned",
                Scope::Since {
                    since: at(NOW - 40 * DAY),
                    until: None,
                },
                None,
                Reading::WindowScan {
                    range: CreatedRange {
                        gte: Some(at(NOW - 40 * DAY)),
                        lt: None,
                    },
                },
                Some("before Stripe's event retention"),
                RunMode::Since,
            ),
        ];
        for (case, scope, cursor, reading, note, mode) in cases {
            let has_cursor = cursor.is_some();
            let choice = choose(scope, cursor, at(NOW));
            assert_eq!(choice.reading, reading, "{case}");
            match note {
                Some(n) => assert!(
                    choice.note.as_deref().is_some_and(|t| t.contains(n)),
                    "{case}: {choice:?}"
                ),
                None => assert_eq!(choice.note, None, "{case}"),
            }
            assert_eq!(planned_mode(scope, has_cursor), mode, "{case}");
        }
    }

    #[test]
    fn cursor_table() {
        let listed = |items: &[(i64, &str)]| -> Vec<(Timestamp, String)> {
            items.iter().map(|(t, id)| (at(*t), (*id).to_owned())).collect()
        };
        let overlap = OVERLAP.num_seconds();
        let cases: Vec<(&str, Vec<(Timestamp, String)>, Vec<&str>)> = vec![
            ("nothing listed", vec![], vec![]),
            (
                "events inside the overlap are remembered, sorted",
                listed(&[(NOW - 1, "evt_b"), (NOW - overlap, "evt_a")]),
                vec!["evt_a", "evt_b"],
            ),
            (
                "older events are forgotten",
                listed(&[(NOW - overlap - 1, "evt_old"), (NOW - 10, "evt_new")]),
                vec!["evt_new"],
            ),
            (
                "an event listed twice is kept once",
                listed(&[(NOW - 5, "evt_x"), (NOW - 5, "evt_x")]),
                vec!["evt_x"],
            ),
        ];
        for (case, listed, seen) in cases {
            let c = next_cursor(at(NOW), &listed);
            assert_eq!(c.created, NOW, "{case}");
            assert_eq!(c.seen, seen, "{case}");
        }
    }

    #[test]
    fn run_modes_read_as_the_runs_table_stores_them() {
        for (mode, text) in [
            (RunMode::Full, "full"),
            (RunMode::Incremental, "incremental"),
            (RunMode::Since, "since"),
        ] {
            assert_eq!(mode.as_ref(), text);
            assert_eq!(text.parse::<RunMode>().unwrap(), mode);
            assert_eq!(serde_json::to_value(mode).unwrap(), text);
        }
    }
}
