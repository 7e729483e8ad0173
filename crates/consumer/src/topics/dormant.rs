//! The positions of topics this node owns but holds no state for (no
//! subscriber, no history left): kept so that a topic's epoch and offsets
//! stay the same while its owner lives, however often subscribers come and
//! go. Bounded: beyond [`DORMANT_KEPT`] the oldest are forgotten, and such a
//! topic starts a new epoch when it is used again (a resume then reports
//! `recovered: false`, which is true).

use std::collections::{HashMap, VecDeque};

use shardq_protocol::{Position, Topic};

/// Most dormant positions kept (about 150 bytes each).
pub const DORMANT_KEPT: usize = 100_000;

/// Dormant positions, oldest forgotten first.
#[derive(Debug)]
pub struct Dormant {
    /// Each topic's position and the sequence number of its entry.
    positions: HashMap<Topic, (Position, u64)>,
    /// Entries in the order they were kept (stale ones are skipped).
    order: VecDeque<(Topic, u64)>,
    next: u64,
    cap: usize,
}

impl Dormant {
    /// An empty set keeping at most `cap` positions.
    pub fn new(cap: usize) -> Dormant {
        Dormant {
            positions: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            cap,
        }
    }

    /// Keeps `topic`'s position (epoch 0 is nothing to keep).
    pub fn keep(&mut self, topic: Topic, at: Position) {
        if at.epoch == 0 {
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.order.push_back((topic.clone(), seq));
        self.positions.insert(topic, (at, seq));
        while self.positions.len() > self.cap {
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self
                .positions
                .get(&oldest)
                .is_some_and(|(_, kept)| *kept == seq)
            {
                self.positions.remove(&oldest);
            }
        }
        if self.order.len() > 2 * self.cap + 1024 {
            let positions = &self.positions;
            self.order
                .retain(|(topic, seq)| positions.get(topic).is_some_and(|(_, kept)| kept == seq));
        }
    }

    /// Takes `topic`'s position back (the topic has state again).
    pub fn take(&mut self, topic: &Topic) -> Option<Position> {
        self.positions.remove(topic).map(|(at, _)| at)
    }

    /// Forgets the topics this node no longer owns (a node-list change):
    /// another owner's epoch has started for them.
    pub fn retain_owned(&mut self, owns: impl Fn(&Topic) -> bool) {
        self.positions.retain(|topic, _| owns(topic));
        let positions = &self.positions;
        self.order
            .retain(|(topic, seq)| positions.get(topic).is_some_and(|(_, kept)| kept == seq));
    }

    /// Every position kept.
    pub fn positions(&self) -> Vec<(Topic, Position)> {
        self.positions
            .iter()
            .map(|(topic, (at, _))| (topic.clone(), *at))
            .collect()
    }

    /// How many positions are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.positions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::parse(name).unwrap()
    }

    fn at(epoch: u64, offset: u64) -> Position {
        Position { epoch, offset }
    }

    #[test]
    fn keeps_takes_and_forgets_the_oldest_beyond_the_cap() {
        let mut dormant = Dormant::new(2);
        dormant.keep(topic("a/1"), at(5, 3));
        dormant.keep(topic("a/2"), at(6, 0));
        dormant.keep(topic("a/0"), at(0, 0)); // nothing to keep
        assert_eq!(dormant.len(), 2);
        // Kept again: its newer entry counts, not the first.
        dormant.keep(topic("a/1"), at(5, 4));
        dormant.keep(topic("a/3"), at(7, 1));
        assert_eq!(dormant.take(&topic("a/2")), None, "the oldest is forgotten");
        assert_eq!(dormant.take(&topic("a/1")), Some(at(5, 4)));
        assert_eq!(dormant.take(&topic("a/1")), None);
        dormant.retain_owned(|t| t.as_str() != "a/3");
        assert_eq!(dormant.take(&topic("a/3")), None);
        assert_eq!(dormant.len(), 0);
    }
}
