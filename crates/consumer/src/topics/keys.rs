//! Idempotency keys: a topic's owner remembers the key of each publish
//! that carried one, with the position it was sequenced at, so a retry with
//! the same key is answered with that position instead of being sequenced
//! again. Each topic keeps its keys in its cell; this node-wide FIFO
//! forgets them after the window, and the oldest first beyond the node's
//! cap.
//!
//! Lock order (as for the history budget): a topic's lock may be held
//! while taking the FIFO's lock, never the reverse; forgetting pops entries
//! from the FIFO, releases it, and only then locks their topics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// One remembered key.
pub struct KeyEntry<T> {
    /// The topic's cell.
    pub cell: Weak<T>,
    /// The key.
    pub key: Box<str>,
    /// When it was remembered.
    pub at: Instant,
}

/// Every key this node remembers, oldest first.
pub struct KeyBudget<T> {
    fifo: Mutex<VecDeque<KeyEntry<T>>>,
    count: AtomicUsize,
    cap: usize,
    window: Duration,
}

/// Most entries forgotten per call to [`KeyBudget::due`], so one call
/// never holds the FIFO long.
const FORGET_BATCH: usize = 4096;

impl<T> KeyBudget<T> {
    /// Keys kept for `window`, at most `cap` of them.
    pub fn new(window: Duration, cap: usize) -> KeyBudget<T> {
        KeyBudget {
            fifo: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
            cap,
            window,
        }
    }

    fn fifo(&self) -> std::sync::MutexGuard<'_, VecDeque<KeyEntry<T>>> {
        self.fifo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records keys just remembered by a topic.
    pub fn added(&self, entries: impl IntoIterator<Item = KeyEntry<T>>) {
        let mut fifo = self.fifo();
        let before = fifo.len();
        fifo.extend(entries);
        self.count.fetch_add(fifo.len() - before, Ordering::Relaxed);
    }

    /// Takes the entries to forget now: older than the window, or beyond
    /// the cap (at most a batch; call again while it returns a full one).
    pub fn due(&self, now: Instant) -> Vec<KeyEntry<T>> {
        let mut fifo = self.fifo();
        let mut due = Vec::new();
        while due.len() < FORGET_BATCH {
            let over = fifo.len() > self.cap;
            match fifo.front() {
                Some(front) if over || now.duration_since(front.at) >= self.window => {
                    if let Some(entry) = fifo.pop_front() {
                        due.push(entry);
                    }
                }
                _ => break,
            }
        }
        self.count.fetch_sub(due.len(), Ordering::Relaxed);
        due
    }

    /// Every entry: its cell (as an address, to match cells by), key and
    /// when it was remembered.
    pub fn entries(&self) -> Vec<(usize, Box<str>, Instant)> {
        self.fifo()
            .iter()
            .map(|entry| (entry.cell.as_ptr() as usize, entry.key.clone(), entry.at))
            .collect()
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, at: Instant) -> KeyEntry<()> {
        KeyEntry {
            cell: Weak::new(),
            key: key.into(),
            at,
        }
    }

    #[test]
    fn forgets_after_the_window_and_beyond_the_cap() {
        let start = Instant::now();
        let budget = KeyBudget::new(Duration::from_secs(60), 3);
        budget.added([
            entry("a", start),
            entry("b", start + Duration::from_secs(30)),
        ]);
        assert!(budget.due(start + Duration::from_secs(59)).is_empty());
        let due = budget.due(start + Duration::from_secs(60));
        assert_eq!(due.iter().map(|e| &*e.key).collect::<Vec<_>>(), ["a"]);
        assert_eq!(budget.len(), 1);
        let later = start + Duration::from_secs(40);
        budget.added([entry("c", later), entry("d", later), entry("e", later)]);
        // Four kept, cap three: the oldest goes first.
        let due = budget.due(later);
        assert_eq!(due.iter().map(|e| &*e.key).collect::<Vec<_>>(), ["b"]);
        assert_eq!(budget.len(), 3);
    }
}
