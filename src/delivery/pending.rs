//! Outcomes of a delivery pass waiting to be recorded, and the statement
//! that records them while sending goes on.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use super::{FLUSH_AFTER, FLUSH_ROWS};
use crate::store::{Mark, Outcome, Store};

/// What a counted outcome adds to [`DeliveryCounts`] once recorded.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tally {
    Sent,
    Queued,
    Retrying,
    Failed,
    NoRecipient,
    /// Handed back unstarted: not an outcome of this pass.
    Nothing,
}

/// Outcomes waiting to be recorded.
#[derive(Default)]
pub(super) struct Pending {
    marks: Marks,
    oldest: Option<Instant>,
}

impl Pending {
    pub(super) fn push(&mut self, outbox_id: i64, attempt: i32, outcome: Outcome, tally: Tally) {
        self.oldest.get_or_insert_with(Instant::now);
        self.marks.push((
            Mark {
                outbox_id,
                attempt,
                outcome,
            },
            tally,
        ));
    }

    /// When the waiting outcomes must be recorded at the latest.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + FLUSH_AFTER)
    }

    pub(super) fn due(&self) -> bool {
        self.marks.len() >= FLUSH_ROWS || self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

/// Outcomes with what each adds to the counts once recorded.
pub(super) type Marks = Vec<(Mark, Tally)>;

/// The statement recording a set of outcomes, while one runs.
#[derive(Default)]
pub(super) struct Recording {
    running: Option<(JoinHandle<Result<Vec<i64>>>, Marks)>,
}

impl Recording {
    pub(super) fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Records every waiting outcome in one statement, off the async workers.
    pub(super) fn start(&mut self, store: &Store, pending: &mut Pending) {
        debug_assert!(!self.busy());
        let waiting = std::mem::take(pending).marks;
        if waiting.is_empty() {
            return;
        }
        let marks: Vec<Mark> = waiting.iter().map(|(mark, _)| mark.clone()).collect();
        let store = store.clone();
        let statement = tokio::task::spawn_blocking(move || store.record_outcomes(&marks));
        self.running = Some((statement, waiting));
    }

    /// The statement's end: the marks it recorded and the rows that held.
    /// Waits forever when none runs (guard with [`Recording::busy`]).
    pub(super) async fn finished(&mut self) -> Result<(Marks, HashSet<i64>)> {
        let Some((statement, _)) = &mut self.running else {
            return std::future::pending().await;
        };
        let recorded = statement.await.context("a database task stopped");
        let (_, marks) = self.running.take().expect("a statement was running");
        Ok((marks, recorded??.into_iter().collect()))
    }
}
