//! A run's progress: a spinner on a terminal and a line in the log every
//! few seconds (objects read, objects/s, requests, changes, time left).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a run logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

/// The progress line: objects read, objects/s, and the time left when the
/// lists' sizes are estimated (`None` before any estimate).
pub(super) fn progress_line(
    objects: u64,
    elapsed: Duration,
    estimate: u64,
    requests: u64,
    changes: u64,
) -> (String, Option<Duration>) {
    let rate = objects as f64 / elapsed.as_secs_f64().max(0.001);
    let eta =
        (estimate > objects && rate > 0.0).then(|| Duration::from_secs(((estimate - objects) as f64 / rate) as u64));
    let left = eta
        .map(|d| format!(", about {} left", humantime::format_duration(d)))
        .unwrap_or_default();
    (
        format!("{objects} objects, {rate:.0}/s, {requests} Stripe requests, {changes} changes{left}"),
        eta,
    )
}

/// Progress on a terminal (a spinner) and in the log (every
/// [`PROGRESS_LOG_EVERY`]).
pub(super) struct Progress {
    pub(super) bar: indicatif::ProgressBar,
    pub(super) started: Instant,
    pub(super) last_log: Instant,
    pub(super) objects: u64,
    pub(super) changes: u64,
    /// Objects the lists read so far are estimated to hold.
    pub(super) estimate: Arc<AtomicU64>,
}

impl Progress {
    pub(super) fn new(terminal: bool) -> Progress {
        let bar = if terminal {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("progress template is valid"),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            objects: 0,
            changes: 0,
            estimate: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(super) fn advance(&mut self, objects: usize, changes: usize, requests: u64) {
        self.objects += objects as u64;
        self.changes += changes as u64;
        let estimate = self.estimate.load(Ordering::Relaxed);
        let (line, eta) = progress_line(self.objects, self.started.elapsed(), estimate, requests, self.changes);
        if self.last_log.elapsed() >= PROGRESS_LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                objects = self.objects,
                estimated_objects = estimate,
                eta_s = eta.map(|d| d.as_secs()),
                stripe_requests = requests,
                "reconcile progress: {line}"
            );
        }
        self.bar.set_message(line);
        self.bar.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_table() {
        let s = Duration::from_secs;
        // (objects, elapsed, estimate, expected line, expected eta)
        let cases = [
            (0, s(1), 0, "0 objects, 0/s, 7 Stripe requests, 3 changes", None),
            (
                5_000,
                s(2),
                0,
                "5000 objects, 2500/s, 7 Stripe requests, 3 changes",
                None,
            ),
            (
                5_000,
                s(2),
                20_000,
                "5000 objects, 2500/s, 7 Stripe requests, 3 changes, about 6s left",
                Some(s(6)),
            ),
            (
                20_000,
                s(8),
                10_000,
                "20000 objects, 2500/s, 7 Stripe requests, 3 changes",
                None,
            ),
        ];
        for (objects, elapsed, estimate, line, eta) in cases {
            assert_eq!(progress_line(objects, elapsed, estimate, 7, 3), (line.to_owned(), eta));
        }
    }
}
