//! Publishes in flight on one link, keyed by the link-local id the link gave
//! them. Ids are consecutive, so the table is a ring indexed by id: insert,
//! answer and expiry are all O(1), and the oldest entry is at the front.

use std::collections::VecDeque;

use tokio::time::Instant;

/// In-flight entries with consecutive ids and deadlines in id order.
#[derive(Debug)]
pub struct PendingRing<T> {
    /// Id of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<(Instant, T)>>,
    live: usize,
}

impl<T> Default for PendingRing<T> {
    fn default() -> Self {
        PendingRing {
            base: 1,
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> PendingRing<T> {
    /// Adds an entry; returns its id. Deadlines must not decrease.
    pub fn push(&mut self, deadline: Instant, item: T) -> u64 {
        let id = self.base + self.slots.len() as u64;
        self.slots.push_back(Some((deadline, item)));
        self.live += 1;
        id
    }

    /// Removes the entry with this id, if it is still there.
    pub fn take(&mut self, id: u64) -> Option<T> {
        let index = usize::try_from(id.checked_sub(self.base)?).ok()?;
        let (_, item) = self.slots.get_mut(index)?.take()?;
        self.live -= 1;
        self.trim();
        Some(item)
    }

    /// Removes every entry whose deadline is at or before `now`: the id
    /// of the first slot, and the slots from it (`None` for ids answered
    /// already).
    pub fn expire_with_ids(&mut self, now: Instant) -> (u64, Vec<Option<T>>) {
        let first = self.base;
        let mut expired = Vec::new();
        while let Some(front) = self.slots.front_mut() {
            match front {
                Some((deadline, _)) if *deadline > now => break,
                slot => {
                    if let Some((_, item)) = slot.take() {
                        expired.push(Some(item));
                        self.live -= 1;
                    } else {
                        expired.push(None);
                    }
                }
            }
            self.slots.pop_front();
            self.base += 1;
        }
        (first, expired)
    }

    /// Removes every entry whose deadline is at or before `now`.
    #[cfg(test)]
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        self.expire_with_ids(now).1.into_iter().flatten().collect()
    }

    /// Removes everything (the connection broke); ids keep increasing. The
    /// id of the first slot, and the slots (`None` for answered ids).
    pub fn drain_with_ids(&mut self) -> (u64, Vec<Option<T>>) {
        let first = self.base;
        self.base += self.slots.len() as u64;
        let items = self
            .slots
            .drain(..)
            .map(|slot| slot.map(|(_, item)| item))
            .collect();
        self.live = 0;
        (first, items)
    }

    /// Removes everything (the connection broke); ids keep increasing.
    #[cfg(test)]
    pub fn drain(&mut self) -> Vec<T> {
        self.drain_with_ids().1.into_iter().flatten().collect()
    }

    fn trim(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Whether the entry with this id is still there.
    pub fn contains(&self, id: u64) -> bool {
        id.checked_sub(self.base)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| self.slots.get(index))
            .is_some_and(Option::is_some)
    }

    /// Entries in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn answers_in_any_order_and_expires_the_oldest() {
        let start = Instant::now();
        let mut ring = PendingRing::default();
        let ids: Vec<u64> = (0..5)
            .map(|i| ring.push(start + Duration::from_secs(i), i))
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert_eq!(ring.take(3), Some(2));
        assert_eq!(ring.take(3), None);
        assert_eq!(ring.take(1), Some(0));
        assert_eq!(ring.len(), 3);
        // Ids 2 and 4 have deadlines at +1 s and +3 s.
        assert_eq!(ring.expire(start + Duration::from_secs(3)), vec![1, 3]);
        assert_eq!(ring.take(5), Some(4));
        assert!(ring.is_empty());
        assert_eq!(ring.push(start, 9), 6);
        assert_eq!(ring.take(99), None);
        assert_eq!(ring.take(0), None);
    }

    #[test]
    fn drain_keeps_ids_increasing() {
        let now = Instant::now();
        let mut ring = PendingRing::default();
        ring.push(now, 'a');
        ring.push(now, 'b');
        ring.take(1);
        assert_eq!(ring.drain(), vec!['b']);
        assert_eq!(ring.push(now, 'c'), 3);
    }
}
