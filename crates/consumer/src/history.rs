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
use shardq_protocol::Position;

/// Bookkeeping bytes charged per retained message on top of its frame.
pub const ENTRY_OVERHEAD: usize = 64;

/// One retained message.
#[derive(Debug, Clone)]
struct Entry {
    /// Position in this ring's own sequence (never reused, whatever the epoch).
    seq: u64,
    at: Position,
    frame: Bytes,
}

/// Epoch ends remembered per ring (to resume across an epoch change).
const SEALED_KEPT: usize = 8;

/// One topic's retained messages, oldest first. A ring can hold several
/// epochs in turn (a topic that changed owners); each epoch is one
/// contiguous run, and the ends of finished epochs are remembered.
#[derive(Debug, Default)]
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
    sealed: VecDeque<Position>,
}

impl Ring {
    /// Appends a message; returns its sequence number and the bytes it costs.
    pub fn push(&mut self, at: Position, frame: Bytes) -> (u64, usize) {
        let cost = frame.len() + ENTRY_OVERHEAD;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry { seq, at, frame });
        self.bytes += cost;
        (seq, cost)
    }

    /// Drops the oldest message; returns the bytes freed.
    pub fn pop_front(&mut self) -> Option<usize> {
        let entry = self.entries.pop_front()?;
        let cost = entry.frame.len() + ENTRY_OVERHEAD;
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

    /// Records that an epoch ended at `end` (its last offset).
    pub fn seal(&mut self, end: Position) {
        if end.epoch != 0 && !self.sealed.contains(&end) {
            self.sealed.push_back(end);
            if self.sealed.len() > SEALED_KEPT {
                self.sealed.pop_front();
            }
        }
    }

    /// Whether this epoch is known to have ended here.
    pub fn is_sealed(&self, epoch: u64) -> bool {
        self.sealed.iter().any(|end| end.epoch == epoch)
    }

    /// Sequence number of the oldest retained message.
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.seq)
    }

    /// The retained messages, oldest first: position and frame.
    pub fn entries(&self) -> impl Iterator<Item = (Position, &Bytes)> {
        self.entries.iter().map(|entry| (entry.at, &entry.frame))
    }

    /// The ends of finished epochs remembered, oldest first.
    pub fn sealed(&self) -> impl Iterator<Item = Position> + '_ {
        self.sealed.iter().copied()
    }

    /// Number of messages retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// [`replay`](Self::replay), at most `budget` bytes of it: the newest
    /// messages that fit (a subscriber's outbox must take the whole replay
    /// at once). Older ones count as missed: not complete, and `after` is
    /// the last one left out.
    pub fn replay_within(&self, since: Position, current: Position, budget: usize) -> Replay {
        let mut replay = self.replay(since, current);
        let mut bytes: usize = replay.frames.iter().map(Bytes::len).sum();
        if bytes <= budget {
            return replay;
        }
        // A replay is always the ring's tail.
        let first = self.entries.len() - replay.frames.len();
        let mut skip = 0;
        while bytes > budget && skip < replay.frames.len() {
            bytes -= replay.frames[skip].len();
            skip += 1;
        }
        replay.frames.drain(..skip);
        replay.after = self.entries[first + skip - 1].at;
        replay.complete = false;
        replay
    }

    /// What to replay to resume after `since`, given the stream's latest
    /// position `current`. `since.epoch == 0` asks for the start of the
    /// current epoch.
    pub fn replay(&self, since: Position, current: Position) -> Replay {
        // The frames from entry `from` on, in order.
        let from = |start: usize| -> Replay {
            let frames: Vec<Bytes> = self
                .entries
                .iter()
                .skip(start)
                .map(|entry| entry.frame.clone())
                .collect();
            let after = self.entries.get(start).map_or(current, |first| Position {
                epoch: first.at.epoch,
                offset: first.at.offset - 1,
            });
            Replay {
                frames,
                complete: false,
                after,
            }
        };
        let nothing = |complete| Replay {
            frames: Vec::new(),
            complete,
            after: current,
        };
        let current_epoch_start = self
            .entries
            .iter()
            .position(|e| e.at.epoch == current.epoch);
        if since.epoch == 0 {
            return match current_epoch_start {
                Some(start) => Replay {
                    complete: self.entries[start].at.offset == 1,
                    ..from(start)
                },
                None => nothing(current.offset == 0),
            };
        }
        // Another epoch, or one this ring no longer reaches, or one that
        // ended without a known end (its owner restarted without its
        // history): what the current epoch holds, not recovered — the
        // owner's own answer.
        let elsewhere = || match current_epoch_start {
            Some(start) => from(start),
            None => nothing(false),
        };
        if let Some(next) = self
            .entries
            .iter()
            .position(|e| e.at.epoch == since.epoch && e.at.offset > since.offset)
        {
            if !self.bridged_from(next, current) {
                return elsewhere();
            }
            return Replay {
                complete: self.entries[next].at.offset == since.offset + 1,
                ..from(next)
            };
        }
        if since.epoch == current.epoch && since.offset >= current.offset {
            // Up to date; or beyond the latest position, which this stream
            // never reached: not recovered, live from here.
            return nothing(since.offset == current.offset);
        }
        if self.sealed.contains(&since) {
            // `since` was the last message of its epoch: resume with what came next.
            let after = self
                .entries
                .iter()
                .rposition(|e| e.at.epoch == since.epoch)
                .map_or(0, |last| last + 1);
            return match self.entries.get(after) {
                Some(_) if !self.bridged_from(after, current) => elsewhere(),
                Some(entry) => Replay {
                    complete: entry.at.offset == 1,
                    ..from(after)
                },
                None => nothing(current.epoch == since.epoch || current.offset == 0),
            };
        }
        elsewhere()
    }

    /// Whether every change of epoch from entry `start` on, up to the
    /// stream's position `current`, follows the sealed end of the epoch
    /// before (a handoff): one stream with nothing missing between epochs.
    fn bridged_from(&self, start: usize, current: Position) -> bool {
        let mut previous: Option<Position> = None;
        for at in self
            .entries
            .iter()
            .skip(start)
            .map(|entry| entry.at)
            .chain([current])
        {
            if let Some(before) = previous
                && before.epoch != at.epoch
                && !(self.sealed.contains(&before) && at.offset <= 1)
            {
                return false;
            }
            previous = Some(at);
        }
        true
    }
}

/// What a resume replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The frames, oldest first.
    pub frames: Vec<Bytes>,
    /// Whether they continue `since` with no gap.
    pub complete: bool,
    /// The position right before the first frame (the stream's latest
    /// position when there is none).
    pub after: Position,
}

/// What a FIFO entry points at: a topic's cell, which tells whether the
/// entry's message is still retained.
pub trait Retains: Send + Sync {
    /// Sequence number of the oldest message the topic still retains
    /// (`u64::MAX` when none).
    fn first_retained(&self) -> u64;
}

struct FifoEntry<T> {
    topic: Weak<T>,
    seq: u64,
}

impl<T: Retains> FifoEntry<T> {
    fn is_stale(&self) -> bool {
        self.topic
            .upgrade()
            .is_none_or(|topic| topic.first_retained() > self.seq)
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

    /// Records a message just pushed onto `topic`'s ring (with its ring
    /// sequence number). Called with the topic's lock held.
    pub fn added(&self, topic: Weak<T>, seq: u64, cost: usize) {
        self.bytes.fetch_add(cost, Ordering::Relaxed);
        let live = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fifo = self.fifo();
        fifo.push_back(FifoEntry { topic, seq });
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

    /// Takes the oldest entry (its topic and ring sequence number), for
    /// eviction. Call [`removed`](Self::removed) for what the eviction frees.
    pub fn oldest(&self) -> Option<(std::sync::Arc<T>, u64)> {
        let mut fifo = self.fifo();
        while let Some(entry) = fifo.pop_front() {
            if let Some(topic) = entry.topic.upgrade()
                && topic.first_retained() <= entry.seq
            {
                return Some((topic, entry.seq));
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
    #[cfg(test)]
    pub fn fifo_len(&self) -> usize {
        self.fifo().len()
    }
}

/// An `AtomicU64` holding a ring's first sequence number, readable without
/// the topic lock.
#[derive(Debug)]
pub struct FirstRetained(AtomicU64);

impl Default for FirstRetained {
    fn default() -> Self {
        FirstRetained(AtomicU64::new(u64::MAX))
    }
}

impl FirstRetained {
    /// Publishes the ring's current first sequence number.
    pub fn update(&self, ring: &Ring) {
        self.0
            .store(ring.first_seq().unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The last published value.
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

    fn at(epoch: u64, offset: u64) -> Position {
        Position { epoch, offset }
    }

    fn push(budget: &HistoryBudget<Cell>, cell: &Arc<Cell>, offset: u64, len: usize, cap: usize) {
        let mut ring = cell.ring.lock().unwrap();
        let (seq, cost) = ring.push(at(1, offset), Bytes::from(vec![0; len]));
        if ring.len() > cap {
            let freed = ring.pop_front().unwrap();
            budget.removed(freed, 1);
        }
        cell.first.update(&ring);
        budget.added(Arc::downgrade(cell), seq, cost);
    }

    fn ring_of(epochs: &[(u64, std::ops::RangeInclusive<u64>)]) -> Ring {
        let mut ring = Ring::default();
        for (epoch, offsets) in epochs {
            for offset in offsets.clone() {
                ring.push(at(*epoch, offset), Bytes::from(format!("{epoch}:{offset}")));
            }
        }
        ring
    }

    fn texts(frames: Vec<Bytes>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    /// One resume: `since` → (frames replayed, recovered, replay after).
    type Row = (Position, &'static [&'static str], bool, Position);

    fn check(ring: &Ring, current: Position, rows: &[Row]) {
        for &(since, frames, complete, after) in rows {
            let replay = ring.replay(since, current);
            assert_eq!(
                (texts(replay.frames), replay.complete, replay.after),
                (
                    frames.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    complete,
                    after
                ),
                "since {since:?}"
            );
        }
    }

    #[test]
    fn a_replay_keeps_the_newest_messages_that_fit_its_budget() {
        // Frames "7:5".."7:9" are 3 bytes each.
        let ring = ring_of(&[(7, 5..=9)]);
        let cases: [(usize, &[&str], bool, Position); 4] = [
            (15, &["7:6", "7:7", "7:8", "7:9"], true, at(7, 5)),
            (12, &["7:6", "7:7", "7:8", "7:9"], true, at(7, 5)),
            (7, &["7:8", "7:9"], false, at(7, 7)),
            (2, &[], false, at(7, 9)),
        ];
        for (budget, frames, complete, after) in cases {
            let replay = ring.replay_within(at(7, 5), at(7, 9), budget);
            assert_eq!(
                (texts(replay.frames), replay.complete, replay.after),
                (
                    frames.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    complete,
                    after
                ),
                "budget {budget}"
            );
        }
    }

    #[test]
    fn replays_within_an_epoch() {
        let ring = ring_of(&[(7, 5..=9)]);
        let all = &["7:5", "7:6", "7:7", "7:8", "7:9"][..];
        check(
            &ring,
            at(7, 9),
            &[
                (at(7, 7), &["7:8", "7:9"], true, at(7, 7)),
                // Too far back: what is held, and a gap.
                (at(7, 2), all, false, at(7, 4)),
                // Up to date.
                (at(7, 9), &[], true, at(7, 9)),
                // Beyond the latest position: never reached, not recovered.
                (at(7, 12), &[], false, at(7, 9)),
                // An unknown epoch: the current one from what is held.
                (at(3, 1), all, false, at(7, 4)),
                // The start of the epoch, which is no longer held.
                (at(0, 0), all, false, at(7, 4)),
            ],
        );
    }

    #[test]
    fn replays_across_a_sealed_epoch() {
        let mut ring = ring_of(&[(7, 5..=9)]);
        ring.seal(at(7, 9));
        for offset in 1..=3 {
            ring.push(at(8, offset), Bytes::from(format!("8:{offset}")));
        }
        check(
            &ring,
            at(8, 3),
            &[
                // Behind in the old epoch: its rest, then the new one, no gap.
                (at(7, 8), &["7:9", "8:1", "8:2", "8:3"], true, at(7, 8)),
                // At the old epoch's end: the new epoch from its start.
                (at(7, 9), &["8:1", "8:2", "8:3"], true, at(8, 0)),
                // From the start of the current epoch.
                (at(0, 0), &["8:1", "8:2", "8:3"], true, at(8, 0)),
            ],
        );
        assert!(ring.is_sealed(7) && !ring.is_sealed(8));
    }

    #[test]
    fn an_epoch_without_a_known_end_is_not_bridged() {
        // The owner of epoch 7 restarted without its history: epoch 8
        // follows, but nothing says 7 ended at 9.
        let mut ring = ring_of(&[(7, 5..=9)]);
        for offset in 1..=2 {
            ring.push(at(8, offset), Bytes::from(format!("8:{offset}")));
        }
        check(
            &ring,
            at(8, 2),
            &[
                // As the owner answers: the current epoch, not recovered.
                (at(7, 6), &["8:1", "8:2"], false, at(8, 0)),
                (at(7, 9), &["8:1", "8:2"], false, at(8, 0)),
                (at(8, 1), &["8:2"], true, at(8, 1)),
            ],
        );
    }

    #[test]
    fn an_empty_ring_answers_from_the_position() {
        let empty = Ring::default();
        check(
            &empty,
            at(8, 0),
            &[
                (at(0, 0), &[], true, at(8, 0)),
                (at(8, 0), &[], true, at(8, 0)),
                (at(8, 4), &[], false, at(8, 0)),
                (at(5, 4), &[], false, at(8, 0)),
            ],
        );
        // Everything evicted: nothing to replay, and not recovered.
        check(&empty, at(8, 6), &[(at(0, 0), &[], false, at(8, 6))]);
    }

    #[test]
    fn oldest_is_global_across_topics() {
        let budget = HistoryBudget::new(1_000_000);
        let (a, b) = (cell(), cell());
        push(&budget, &a, 1, 10, 100);
        push(&budget, &b, 1, 10, 100);
        push(&budget, &a, 2, 10, 100);
        let (first, seq) = budget.oldest().unwrap();
        assert!(Arc::ptr_eq(&first, &a) && seq == 0);
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
