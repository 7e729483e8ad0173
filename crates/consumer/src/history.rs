//! Message history: a ring per topic (the last N messages) under one byte
//! budget for the whole node, where the node's oldest message goes first.
//!
//! Each topic's ring lives inside its `TopicState` (under the topic's lock).
//! The node-wide [`HistoryBudget`] keeps a FIFO of every retained message in
//! arrival order, so eviction can find the globally oldest one.
//!
//! Lock order: a topic's lock may be held while taking the FIFO's lock,
//! never the reverse; eviction pops from the FIFO, releases it, and only then
//! locks the topic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use bytes::Bytes;

/// Bookkeeping bytes charged per retained message on top of its frame.
pub const ENTRY_OVERHEAD: usize = 64;

/// One topic's retained messages, oldest first.
#[derive(Debug, Default)]
pub struct Ring {
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Ring {
    /// Appends a message; returns the bytes it costs.
    pub fn push(&mut self, offset: u64, frame: Bytes) -> usize {
        let cost = frame.len() + ENTRY_OVERHEAD;
        self.entries.push_back((offset, frame));
        self.bytes += cost;
        cost
    }

    /// Drops the oldest message; returns the bytes freed.
    pub fn pop_front(&mut self) -> Option<usize> {
        let (_, frame) = self.entries.pop_front()?;
        let cost = frame.len() + ENTRY_OVERHEAD;
        self.bytes -= cost;
        Some(cost)
    }

    /// Drops everything; returns the bytes and entries freed.
    pub fn clear(&mut self) -> (usize, usize) {
        let freed = (self.bytes, self.entries.len());
        self.entries = VecDeque::new();
        self.bytes = 0;
        freed
    }

    /// Offset of the oldest retained message.
    pub fn first_offset(&self) -> Option<u64> {
        self.entries.front().map(|(offset, _)| *offset)
    }

    /// Number of messages retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The frames with offsets greater than `after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Bytes> {
        // Offsets are consecutive within a ring, so the start is computed.
        let skip = match self.first_offset() {
            Some(first) if after >= first => (after - first + 1) as usize,
            _ => 0,
        };
        self.entries.iter().skip(skip).map(|(_, frame)| frame)
    }
}

/// What a FIFO entry points at: a topic's cell, which tells whether the
/// entry's message is still retained.
pub trait Retains: Send + Sync {
    /// Offset of the oldest message the topic still retains (`u64::MAX` when none).
    fn first_retained(&self) -> u64;
}

struct FifoEntry<T> {
    topic: Weak<T>,
    offset: u64,
}

impl<T: Retains> FifoEntry<T> {
    fn is_stale(&self) -> bool {
        self.topic
            .upgrade()
            .is_none_or(|topic| topic.first_retained() > self.offset)
    }
}

/// The node-wide history budget.
pub struct HistoryBudget<T> {
    limit: usize,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    fifo: Mutex<VecDeque<FifoEntry<T>>>,
}

impl<T: Retains> HistoryBudget<T> {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        HistoryBudget {
            limit,
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            fifo: Mutex::new(VecDeque::new()),
        }
    }

    fn fifo(&self) -> std::sync::MutexGuard<'_, VecDeque<FifoEntry<T>>> {
        self.fifo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a message just pushed onto `topic`'s ring. Called with the
    /// topic's lock held.
    pub fn added(&self, topic: Weak<T>, offset: u64, cost: usize) {
        self.bytes.fetch_add(cost, Ordering::Relaxed);
        let live = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fifo = self.fifo();
        fifo.push_back(FifoEntry { topic, offset });
        // Entries of messages a ring dropped by itself are stale: drop them
        // from the front, and compact when they pile up behind a live one.
        while fifo.front().is_some_and(FifoEntry::is_stale) {
            fifo.pop_front();
        }
        if fifo.len() > 2 * live + 1024 {
            fifo.retain(|entry| !entry.is_stale());
        }
    }

    /// Records messages a ring dropped by itself (its per-topic limit, or the
    /// topic going away).
    pub fn removed(&self, cost: usize, count: usize) {
        self.bytes.fetch_sub(cost, Ordering::Relaxed);
        self.entries.fetch_sub(count, Ordering::Relaxed);
    }

    /// Whether the budget is exceeded.
    pub fn over(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.limit
    }

    /// Takes the oldest entry, for eviction. Call [`removed`](Self::removed)
    /// for what the eviction frees.
    pub fn oldest(&self) -> Option<(std::sync::Arc<T>, u64)> {
        let mut fifo = self.fifo();
        while let Some(entry) = fifo.pop_front() {
            if let Some(topic) = entry.topic.upgrade() {
                if topic.first_retained() <= entry.offset {
                    return Some((topic, entry.offset));
                }
            }
        }
        None
    }

    /// Bytes retained, overhead included.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Messages retained.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// FIFO length (for tests of its compaction).
    pub fn fifo_len(&self) -> usize {
        self.fifo().len()
    }
}

/// An `AtomicU64` holding a ring's first offset, readable without the topic lock.
#[derive(Debug)]
pub struct FirstRetained(AtomicU64);

impl Default for FirstRetained {
    fn default() -> Self {
        FirstRetained(AtomicU64::new(u64::MAX))
    }
}

impl FirstRetained {
    /// Publishes the ring's current first offset.
    pub fn update(&self, ring: &Ring) {
        self.0
            .store(ring.first_offset().unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The last published first offset.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Cell {
        ring: Mutex<Ring>,
        first: FirstRetained,
    }

    impl Retains for Cell {
        fn first_retained(&self) -> u64 {
            self.first.get()
        }
    }

    fn cell() -> Arc<Cell> {
        Arc::new(Cell {
            ring: Mutex::new(Ring::default()),
            first: FirstRetained::default(),
        })
    }

    fn push(budget: &HistoryBudget<Cell>, cell: &Arc<Cell>, offset: u64, len: usize, cap: usize) {
        let mut ring = cell.ring.lock().unwrap();
        let cost = ring.push(offset, Bytes::from(vec![0; len]));
        if ring.len() > cap {
            let freed = ring.pop_front().unwrap();
            budget.removed(freed, 1);
        }
        cell.first.update(&ring);
        budget.added(Arc::downgrade(cell), offset, cost);
    }

    #[test]
    fn ring_replays_after_an_offset() {
        let mut ring = Ring::default();
        for offset in 5..=9 {
            ring.push(offset, Bytes::from(offset.to_string()));
        }
        let after: Vec<_> = ring.after(7).map(|b| b.to_vec()).collect();
        assert_eq!(after, [b"8".to_vec(), b"9".to_vec()]);
        assert_eq!(ring.after(2).count(), 5);
        assert_eq!(ring.after(9).count(), 0);
        assert_eq!(ring.after(100).count(), 0);
    }

    #[test]
    fn oldest_is_global_across_topics() {
        let budget = HistoryBudget::new(1_000_000);
        let (a, b) = (cell(), cell());
        push(&budget, &a, 1, 10, 100);
        push(&budget, &b, 1, 10, 100);
        push(&budget, &a, 2, 10, 100);
        let (first, offset) = budget.oldest().unwrap();
        assert!(Arc::ptr_eq(&first, &a) && offset == 1);
        let (second, _) = budget.oldest().unwrap();
        assert!(Arc::ptr_eq(&second, &b));
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        // One busy topic capped at 10 messages: its FIFO entries go stale as
        // the ring drops them, and must not accumulate.
        let budget = HistoryBudget::new(usize::MAX);
        let busy = cell();
        for offset in 1..=100_000 {
            push(&budget, &busy, offset, 1, 10);
        }
        assert_eq!(budget.entries(), 10);
        assert!(budget.fifo_len() <= 11, "fifo holds {}", budget.fifo_len());
        // Behind a quiet topic's old live entry, compaction bounds the FIFO.
        let quiet = cell();
        push(&budget, &quiet, 1, 1, 10);
        for offset in 100_001..=200_000 {
            push(&budget, &busy, offset, 1, 10);
        }
        assert!(
            budget.fifo_len() <= 2 * 11 + 1024 + 1,
            "fifo holds {}",
            budget.fifo_len()
        );
        assert_eq!(budget.bytes(), 11 * (1 + ENTRY_OVERHEAD));
    }
}
