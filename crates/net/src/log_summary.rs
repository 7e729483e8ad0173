//! Failures a peer can cause at will (failed handshakes, junk frames,
//! refused connections) are logged as summaries: the first one at once,
//! then at most one line per [`SUMMARY_EVERY`] per kind with the count
//! since the last line. So what an attacker can write to the log is
//! bounded by time, not by its effort.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One kind of failure, counted and logged in summaries.
pub struct Summary {
    what: &'static str,
    pending: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Summary {
    /// A summary of failures described as `what` (e.g. "failed handshakes").
    pub const fn new(what: &'static str) -> Summary {
        Summary {
            what,
            pending: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one failure; logs a line (with `detail` of this one) when
    /// the last line of this kind is older than [`SUMMARY_EVERY`].
    pub fn note(&self, detail: &str) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.due(Instant::now()) {
            tracing::warn!(
                count,
                last = %detail,
                "{count} {} since the last report (reported at most every {}s)",
                self.what,
                SUMMARY_EVERY.as_secs()
            );
        }
    }

    /// The count to log now, if a line is due.
    fn due(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < SUMMARY_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// Failed handshakes (both dialects).
pub static HANDSHAKE_FAILURES: Summary = Summary::new("failed handshakes");
/// Legacy frames dropped (malformed, not valid on the endpoint, refused,
/// undeliverable): the dialect has no error frames, so only the log and
/// the metrics tell.
pub static LEGACY_DROPPED: Summary = Summary::new("legacy frames dropped");
/// Authenticated connections closed for breaking the protocol.
pub static PROTOCOL_BREACHES: Summary =
    Summary::new("connections closed for breaking the protocol");
/// Failed accepts (out of file descriptors and the like).
pub static ACCEPT_FAILURES: Summary = Summary::new("failed accepts (file descriptors?)");
/// Connections refused by a connection cap.
pub static REFUSED_CONNECTIONS: Summary = Summary::new("connections refused by a cap");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let summary = Summary::new("test failures");
        let start = Instant::now();
        summary.pending.fetch_add(1, Ordering::Relaxed);
        assert_eq!(summary.due(start), Some(1));
        for _ in 0..1000 {
            summary.pending.fetch_add(1, Ordering::Relaxed);
            assert_eq!(summary.due(start + Duration::from_secs(1)), None);
        }
        assert_eq!(summary.due(start + SUMMARY_EVERY), Some(1000));
        assert_eq!(summary.due(start + SUMMARY_EVERY), None);
    }
}
