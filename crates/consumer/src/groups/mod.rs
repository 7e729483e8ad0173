//! Queue groups (work queues) at a topic's owner: the members of a group
//! share the topic's messages, each message handled by one member, acked,
//! redelivered on timeout or departure, dead-lettered after too many
//! deliveries.
//!
//! - `dispatch`: one group's rules, sans-IO ([`dispatch::Dispatch`]).
//! - here: a topic's groups ([`Groups`]), which carry out the dispatch's
//!   effects: the frames a member gets (the message frame the fan-out
//!   encoded, with `group` and `redelivered` spliced in before `payload`),
//!   the messages held for the group, the dead letters to publish.
//!
//! A [`Groups`] lives in its topic's cell, under the cell's lock: every
//! effect is a push to an outbox, which never waits.

pub mod dispatch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardq_net::codec::encode;
use shardq_net::outbox::Outbox;

use dispatch::{AckError, DeadReason, Dispatch, Effect, GroupLimits, MemberId, Refused, Seq};

/// How long a group without members is kept, with what it holds.
pub const FORGET_MEMBERLESS_AFTER: Duration = Duration::from_secs(300);

/// A message a group gave up on, to publish to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The group.
    pub group: Box<str>,
    /// The message frame (as the fan-out encoded it).
    pub frame: Bytes,
    /// Its offset.
    pub offset: Seq,
    /// Deliveries it had.
    pub deliveries: u32,
    /// Why it was given up.
    pub reason: DeadReason,
}

impl DeadLetter {
    /// The dead letter's payload: where the message was, why it died, and
    /// its payload as published.
    pub fn payload(&self, topic: &str, epoch: u64) -> String {
        let json = encode::payload_of(&self.frame);
        let original = json
            .windows(PAYLOAD_KEY.len())
            .position(|window| window == PAYLOAD_KEY)
            .and_then(|at| json.get(at + PAYLOAD_KEY.len()..json.len().saturating_sub(1)))
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .unwrap_or("null");
        let reason = match self.reason {
            DeadReason::AckTimeout => "ack_timeout",
            DeadReason::MemberLeft => "member_left",
        };
        format!(
            r#"{{"topic":"{topic}","epoch":{epoch},"offset":{},"group":"{}","deliveries":{},"reason":"{reason}","payload":{original}}}"#,
            self.offset, self.group, self.deliveries
        )
    }
}

/// Where a message frame's payload starts (the encoder writes it last).
const PAYLOAD_KEY: &[u8] = br#","payload":"#;

/// The frame a member gets: the message frame with `"group"` (and
/// `"redelivered"` after the first delivery) before `payload`.
pub fn member_frame(frame: &Bytes, group: &str, redelivered: u32) -> Bytes {
    let json = encode::payload_of(frame);
    let at = json
        .windows(PAYLOAD_KEY.len())
        .position(|window| window == PAYLOAD_KEY)
        .unwrap_or(json.len());
    encode::text_frame_with(|out| {
        out.extend_from_slice(&json[..at]);
        out.extend_from_slice(br#","group":""#);
        out.extend_from_slice(group.as_bytes());
        out.push(b'"');
        if redelivered > 0 {
            out.extend_from_slice(br#","redelivered":"#);
            out.extend_from_slice(itoa::Buffer::new().format(redelivered).as_bytes());
        }
        out.extend_from_slice(&json[at..]);
    })
}

/// One group of a topic.
struct Group {
    dispatch: Dispatch,
    members: HashMap<MemberId, Arc<Outbox>>,
    /// The frames of the messages it holds (waiting or in flight).
    held: HashMap<Seq, Bytes>,
    /// Since when it has had no member.
    memberless_since: Option<Instant>,
}

impl Group {
    /// Carries out `effects`.
    fn apply(&mut self, name: &str, effects: Vec<Effect>, dead: &mut Vec<DeadLetter>) {
        for effect in effects {
            match effect {
                Effect::Deliver {
                    member,
                    seq,
                    delivery,
                } => {
                    let (Some(outbox), Some(frame)) =
                        (self.members.get(&member), self.held.get(&seq))
                    else {
                        continue;
                    };
                    // A full outbox closes itself as a slow consumer: its
                    // session ends, and the member's departure redelivers.
                    let _ = outbox.push(member_frame(frame, name, delivery - 1));
                }
                Effect::DeadLetter {
                    seq,
                    deliveries,
                    reason,
                } => {
                    if let Some(frame) = self.held.remove(&seq) {
                        dead.push(DeadLetter {
                            group: name.into(),
                            frame,
                            offset: seq,
                            deliveries,
                            reason,
                        });
                    }
                }
                Effect::Dropped { seq } => {
                    self.held.remove(&seq);
                }
            }
        }
    }

    fn note_empty(&mut self, now: Instant) {
        self.memberless_since = match (self.members.is_empty(), self.memberless_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
        };
    }
}

/// The groups of one topic, by name.
#[derive(Default)]
pub struct Groups {
    groups: HashMap<Box<str>, Group>,
}

impl Groups {
    /// Whether it holds no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether every group can take `messages` more messages of `bytes`
    /// payload bytes in all (the owner asks before sequencing them).
    pub fn room(&self, messages: usize, bytes: usize) -> Result<(), Refused> {
        self.groups
            .values()
            .try_for_each(|group| group.dispatch.room(messages, bytes))
    }

    /// A new message of the topic, for every group.
    pub fn offer(
        &mut self,
        seq: Seq,
        priority: u8,
        frame: &Bytes,
        bytes: usize,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) {
        for (name, group) in &mut self.groups {
            match group.dispatch.offer(seq, priority, bytes, now) {
                Ok(effects) => {
                    group.held.insert(seq, frame.clone());
                    group.apply(name, effects, dead);
                    group.note_empty(now);
                }
                // `room` said yes; nothing else refuses.
                Err(refused) => {
                    tracing::warn!(%refused, group = %name, "a group refused a message it had room for")
                }
            }
        }
    }

    /// `member` joins group `name` (created with `limits` if new).
    pub fn join(
        &mut self,
        name: &str,
        member: MemberId,
        outbox: Arc<Outbox>,
        limits: GroupLimits,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) {
        let group = self.groups.entry(name.into()).or_insert_with(|| Group {
            dispatch: Dispatch::new(limits),
            members: HashMap::new(),
            held: HashMap::new(),
            memberless_since: None,
        });
        group.members.insert(member, outbox);
        let effects = group.dispatch.join(member, now);
        group.apply(name, effects, dead);
        group.note_empty(now);
    }

    /// `member` leaves group `name`: what it had in flight goes to the others.
    pub fn leave(
        &mut self,
        name: &str,
        member: MemberId,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) {
        if let Some(group) = self.groups.get_mut(name) {
            group.members.remove(&member);
            let effects = group.dispatch.leave(member, now);
            group.apply(name, effects, dead);
            group.note_empty(now);
        }
    }

    /// `member` of group `name` handled message `seq`; `answered` runs
    /// when the ack is taken, before what it frees is delivered.
    pub fn ack(
        &mut self,
        name: &str,
        member: MemberId,
        seq: Seq,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
        answered: impl FnOnce(),
    ) -> Result<(), AckError> {
        let group = self
            .groups
            .get_mut(name)
            .ok_or(AckError::NotInFlight { seq })?;
        let effects = group.dispatch.ack(member, seq, now)?;
        answered();
        group.held.remove(&seq);
        group.apply(name, effects, dead);
        group.note_empty(now);
        Ok(())
    }

    /// Closes every member's connection (the topic moved to another
    /// owner: members rejoin there).
    pub fn disband(&mut self) {
        for group in self.groups.values() {
            for outbox in group.members.values() {
                outbox.close(shardq_protocol::CloseCode::GoingAway);
            }
        }
        self.groups.clear();
    }

    /// Ack timeouts past by `now`; groups without members for
    /// [`FORGET_MEMBERLESS_AFTER`] are forgotten, with what they held.
    pub fn expire(&mut self, now: Instant, dead: &mut Vec<DeadLetter>) {
        for (name, group) in &mut self.groups {
            if group.dispatch.next_deadline().is_some_and(|due| due <= now) {
                let effects = group.dispatch.expire(now);
                group.apply(name, effects, dead);
                group.note_empty(now);
            }
        }
        self.groups.retain(|name, group| {
            let keep = group
                .memberless_since
                .is_none_or(|since| now.duration_since(since) < FORGET_MEMBERLESS_AFTER);
            if !keep && !group.held.is_empty() {
                tracing::info!(group = %name, messages = group.held.len(), "a queue group without members for 5 minutes is forgotten with what it held");
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Bytes {
        encode::text_frame(text.as_bytes())
    }

    #[test]
    fn members_get_the_frame_with_their_group_spliced_in() {
        let message =
            frame(r#"{"type":"message","topic":"a/b","epoch":7,"offset":3,"payload":{"x":1}}"#);
        let first = member_frame(&message, "billing", 0);
        assert_eq!(
            encode::payload_of(&first),
            br#"{"type":"message","topic":"a/b","epoch":7,"offset":3,"group":"billing","payload":{"x":1}}"#
        );
        let again = member_frame(&message, "billing", 2);
        assert_eq!(
            encode::payload_of(&again),
            br#"{"type":"message","topic":"a/b","epoch":7,"offset":3,"group":"billing","redelivered":2,"payload":{"x":1}}"#
        );
    }

    #[test]
    fn a_dead_letter_carries_where_and_why_and_the_payload() {
        let letter = DeadLetter {
            group: "billing".into(),
            frame: frame(
                r#"{"type":"message","topic":"a/b","epoch":7,"offset":3,"payload":[1, 2]}"#,
            ),
            offset: 3,
            deliveries: 5,
            reason: DeadReason::AckTimeout,
        };
        let payload = letter.payload("a/b", 7);
        assert_eq!(
            payload,
            r#"{"topic":"a/b","epoch":7,"offset":3,"group":"billing","deliveries":5,"reason":"ack_timeout","payload":[1, 2]}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&payload).is_ok());
    }
}
