//! Sans-IO: one queue group's dispatch at a topic's owner. Messages wait in
//! a bounded backlog ordered by the queue's discipline; each goes to one
//! live member (the one with the fewest unacked messages), stays in flight
//! until that member acks it, and is redelivered when its ack timeout
//! passes or its member leaves — until `max_deliveries`, after which it is
//! dead-lettered. Events in ([`Dispatch::offer`], [`Dispatch::join`],
//! [`Dispatch::leave`], [`Dispatch::ack`], [`Dispatch::expire`]), effects
//! out ([`Effect`]); time is passed in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A member of the group (a subscription), unique within the group.
pub type MemberId = u64;
/// A message, by its offset in the topic's epoch.
pub type Seq = u64;

pub use shardq_protocol::work::{Discipline, Overflow};

/// A group's settings (per queue, from the cluster file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Waiting order.
    pub discipline: Discipline,
    /// Time a member has to ack a message before it is redelivered.
    pub ack_timeout: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// Messages in flight to one member at most.
    pub max_unacked_per_member: usize,
    /// Messages held (waiting and in flight) at most.
    pub backlog_messages: usize,
    /// Payload bytes held at most.
    pub backlog_bytes: usize,
    /// What a full backlog does.
    pub overflow: Overflow,
}

impl From<&shardq_protocol::work::WorkConfig> for GroupLimits {
    fn from(work: &shardq_protocol::work::WorkConfig) -> GroupLimits {
        GroupLimits {
            discipline: work.discipline,
            ack_timeout: Duration::from_millis(work.ack_timeout_ms),
            max_deliveries: work.max_deliveries,
            max_unacked_per_member: work.max_unacked_per_member,
            backlog_messages: work.backlog_messages,
            backlog_bytes: work.backlog_bytes,
            overflow: work.overflow,
        }
    }
}

impl Default for GroupLimits {
    fn default() -> GroupLimits {
        GroupLimits {
            discipline: Discipline::Fifo,
            ack_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            max_unacked_per_member: 16,
            backlog_messages: 10_000,
            backlog_bytes: 64 << 20,
            overflow: Overflow::Refuse,
        }
    }
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Its ack timeout passed on its last allowed delivery.
    AckTimeout,
    /// Its member left without acking it, on its last allowed delivery.
    MemberLeft,
}

/// What the owner must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send message `seq` to `member`; `delivery` counts from 1 (above 1:
    /// a redelivery).
    Deliver {
        /// Who gets it.
        member: MemberId,
        /// Which message.
        seq: Seq,
        /// The how-manieth delivery this is.
        delivery: u32,
    },
    /// Publish message `seq` to the dead-letter topic, then forget it.
    DeadLetter {
        /// Which message.
        seq: Seq,
        /// Deliveries it had.
        deliveries: u32,
        /// Why.
        reason: DeadReason,
    },
    /// Message `seq` was dropped, unhandled, to make room (`DropOldest`).
    Dropped {
        /// Which message.
        seq: Seq,
    },
}

/// Why a message was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The backlog holds its limit of messages or bytes.
    #[error("the group's backlog is full ({messages} messages, {bytes} bytes held)")]
    Full {
        /// Messages held.
        messages: usize,
        /// Bytes held.
        bytes: usize,
    },
    /// The message alone exceeds the byte limit.
    #[error("a {bytes}-byte message exceeds the group's backlog of {limit} bytes")]
    TooLarge {
        /// Its bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why an ack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The message is not in flight to this member (acked already, or
    /// redelivered elsewhere after its ack timeout).
    #[error("message {seq} is not in flight to this member")]
    NotInFlight {
        /// Which message.
        seq: Seq,
    },
}

/// A message held by the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    seq: Seq,
    priority: u8,
    bytes: usize,
    /// Deliveries so far.
    deliveries: u32,
}

/// Where a waiting message sorts: first is handed out first.
type WaitKey = (u8, u64);

#[derive(Debug, Clone, Copy)]
struct InFlight {
    member: MemberId,
    deadline: Instant,
    held: Held,
}

#[derive(Debug, Clone, Copy, Default)]
struct Member {
    unacked: usize,
    /// When it was last handed a message (ties go to the one waiting longest).
    last_turn: u64,
}

/// One group's state.
#[derive(Debug)]
pub struct Dispatch {
    limits: GroupLimits,
    members: BTreeMap<MemberId, Member>,
    waiting: BTreeMap<WaitKey, Held>,
    /// The waiting messages' keys by offset: the oldest in O(log n).
    waiting_keys: BTreeMap<Seq, WaitKey>,
    in_flight: HashMap<Seq, InFlight>,
    bytes: usize,
    turns: u64,
}

impl Dispatch {
    /// An empty group.
    pub fn new(limits: GroupLimits) -> Dispatch {
        Dispatch {
            limits,
            members: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_keys: BTreeMap::new(),
            in_flight: HashMap::new(),
            bytes: 0,
            turns: 0,
        }
    }

    /// Messages waiting, messages in flight, bytes held.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize) {
        assert_eq!(self.waiting.len(), self.waiting_keys.len());
        (self.waiting.len(), self.in_flight.len(), self.bytes)
    }

    /// The earliest ack deadline, if a message is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.deadline).min()
    }

    fn key(&self, held: &Held) -> WaitKey {
        match self.limits.discipline {
            Discipline::Fifo => (0, held.seq),
            Discipline::Lifo => (0, u64::MAX - held.seq),
            Discipline::Priority => (9 - held.priority.min(9), held.seq),
        }
    }

    /// What a full backlog does now: the queue's choice while the group has
    /// members; without any, the oldest waiting messages go, so that a
    /// group nobody serves never refuses the topic's publishes.
    fn overflow(&self) -> Overflow {
        if self.members.is_empty() {
            Overflow::DropOldest
        } else {
            self.limits.overflow
        }
    }

    /// Whether `messages` more messages of `bytes` bytes in all would be
    /// admitted (waiting messages count as room under `DropOldest`).
    pub fn room(&self, messages: usize, bytes: usize) -> Result<(), Refused> {
        let limits = &self.limits;
        let (held, held_bytes) = match self.overflow() {
            Overflow::Refuse => (self.waiting.len() + self.in_flight.len(), self.bytes),
            Overflow::DropOldest => (
                self.in_flight.len(),
                self.in_flight.values().map(|f| f.held.bytes).sum(),
            ),
        };
        if held + messages > limits.backlog_messages || held_bytes + bytes > limits.backlog_bytes {
            return Err(Refused::Full {
                messages: self.waiting.len() + self.in_flight.len(),
                bytes: self.bytes,
            });
        }
        Ok(())
    }

    /// A new message of the topic: admitted (and handed out if a member
    /// has room) or refused.
    pub fn offer(
        &mut self,
        seq: Seq,
        priority: u8,
        bytes: usize,
        now: Instant,
    ) -> Result<Vec<Effect>, Refused> {
        let limits = self.limits;
        if bytes > limits.backlog_bytes {
            return Err(Refused::TooLarge {
                bytes,
                limit: limits.backlog_bytes,
            });
        }
        let mut effects = Vec::new();
        let full = |d: &Dispatch| {
            d.waiting.len() + d.in_flight.len() >= limits.backlog_messages
                || d.bytes + bytes > limits.backlog_bytes
        };
        while full(self) {
            let oldest = self.waiting_keys.keys().next().copied();
            match (self.overflow(), oldest) {
                (Overflow::DropOldest, Some(oldest)) => {
                    self.remove_waiting(oldest);
                    effects.push(Effect::Dropped { seq: oldest });
                }
                _ => {
                    return Err(Refused::Full {
                        messages: self.waiting.len() + self.in_flight.len(),
                        bytes: self.bytes,
                    });
                }
            }
        }
        let held = Held {
            seq,
            priority,
            bytes,
            deliveries: 0,
        };
        self.bytes += bytes;
        self.wait(held);
        self.pump(now, &mut effects);
        Ok(effects)
    }

    fn remove_waiting(&mut self, seq: Seq) {
        let key = self.waiting_keys.remove(&seq);
        if let Some(held) = key.and_then(|key| self.waiting.remove(&key)) {
            self.bytes -= held.bytes;
        }
    }

    /// Puts a message in the waiting order.
    fn wait(&mut self, held: Held) {
        let key = self.key(&held);
        self.waiting_keys.insert(held.seq, key);
        self.waiting.insert(key, held);
    }

    /// A member joined: it gets waiting messages at once.
    pub fn join(&mut self, member: MemberId, now: Instant) -> Vec<Effect> {
        self.members.entry(member).or_default();
        let mut effects = Vec::new();
        self.pump(now, &mut effects);
        effects
    }

    /// A member left (unsubscribed or disconnected): what it had in flight
    /// goes to the others (or to the dead letters).
    pub fn leave(&mut self, member: MemberId, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.members.remove(&member).is_none() {
            return effects;
        }
        let mut orphans: Vec<Seq> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.member == member)
            .map(|(seq, _)| *seq)
            .collect();
        orphans.sort_unstable();
        for seq in orphans {
            if let Some(flight) = self.in_flight.remove(&seq) {
                self.requeue(flight.held, DeadReason::MemberLeft, &mut effects);
            }
        }
        self.pump(now, &mut effects);
        effects
    }

    /// `member` handled message `seq`.
    pub fn ack(
        &mut self,
        member: MemberId,
        seq: Seq,
        now: Instant,
    ) -> Result<Vec<Effect>, AckError> {
        match self.in_flight.get(&seq) {
            Some(flight) if flight.member == member => {}
            _ => return Err(AckError::NotInFlight { seq }),
        }
        if let Some(flight) = self.in_flight.remove(&seq) {
            self.bytes -= flight.held.bytes;
            if let Some(state) = self.members.get_mut(&member) {
                state.unacked -= 1;
            }
        }
        let mut effects = Vec::new();
        self.pump(now, &mut effects);
        Ok(effects)
    }

    /// Messages whose ack timeout passed by `now` are taken back.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let mut late: Vec<(Instant, Seq)> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.deadline <= now)
            .map(|(seq, flight)| (flight.deadline, *seq))
            .collect();
        late.sort_unstable();
        let mut effects = Vec::new();
        for (_, seq) in late {
            if let Some(flight) = self.in_flight.remove(&seq) {
                if let Some(state) = self.members.get_mut(&flight.member) {
                    state.unacked -= 1;
                }
                self.requeue(flight.held, DeadReason::AckTimeout, &mut effects);
            }
        }
        self.pump(now, &mut effects);
        effects
    }

    /// A message taken back from a member: waiting again, or dead-lettered
    /// after its last allowed delivery.
    fn requeue(&mut self, held: Held, reason: DeadReason, effects: &mut Vec<Effect>) {
        if held.deliveries >= self.limits.max_deliveries {
            self.bytes -= held.bytes;
            effects.push(Effect::DeadLetter {
                seq: held.seq,
                deliveries: held.deliveries,
                reason,
            });
        } else {
            self.wait(held);
        }
    }

    /// Hands waiting messages to members with room, fewest unacked first.
    fn pump(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let cap = self.limits.max_unacked_per_member;
        while !self.waiting.is_empty() {
            let Some((&member, _)) = self
                .members
                .iter()
                .filter(|(_, state)| state.unacked < cap)
                .min_by_key(|(id, state)| (state.unacked, state.last_turn, **id))
            else {
                return;
            };
            let Some((_, mut held)) = self.waiting.pop_first() else {
                return;
            };
            self.waiting_keys.remove(&held.seq);
            held.deliveries += 1;
            self.turns += 1;
            if let Some(state) = self.members.get_mut(&member) {
                state.unacked += 1;
                state.last_turn = self.turns;
            }
            self.in_flight.insert(
                held.seq,
                InFlight {
                    member,
                    deadline: now + self.limits.ack_timeout,
                    held,
                },
            );
            effects.push(Effect::Deliver {
                member,
                seq: held.seq,
                delivery: held.deliveries,
            });
        }
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
