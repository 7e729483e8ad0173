//! Queue groups in the table: members join a group of a topic this node
//! owns, ack what they handled; ack timeouts are swept; what a group gives
//! up on is published to the topic's dead-letter topic (`event.dead`), at
//! its owner wherever that is. The rules are [`crate::groups`]'.

use std::time::Instant;

use shardq_net::codec::encode;
use shardq_net::link::{self, Batches, Body, Request};
use shardq_protocol::frame::is_valid_key;
use shardq_protocol::topic::DEAD_LETTER_SUFFIX;
use shardq_protocol::{Ack, Frame, RawValue, Topic, TopicPosition};

use super::TopicTable;
use super::cell::{Mode, Owner, Subscriber};
use crate::groups::dispatch::{AckError, GroupLimits};
use crate::groups::{DeadLetter, Groups};

/// Why a member could not join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    /// This node does not sequence the topic now: its owner does.
    NotOwner(Option<String>),
}

impl TopicTable {
    /// `subscriber` joins group `group` of `topic`, owned here; the ack
    /// (`ack_id`) is queued first, then whatever the group has waiting.
    pub fn join_group(
        &self,
        topic: &Topic,
        group: &str,
        subscriber: &Subscriber,
        limits: GroupLimits,
        ack_id: u64,
    ) -> Result<(), JoinRefused> {
        debug_assert!(is_valid_key(group));
        let cell = self.cell(topic);
        let mut state = cell.lock();
        self.sync(&cell, &mut state);
        let owning = matches!(&state.mode, Mode::Owner(Owner { deferred: None }));
        if state.removed || !owning {
            let owner = self.view.load().owner(topic).map(str::to_owned);
            return Err(JoinRefused::NotOwner(owner));
        }
        let ack = Frame::Ack(Ack::subscribed(
            ack_id,
            vec![TopicPosition {
                topic: topic.clone(),
                epoch: state.last.epoch,
                offset: state.last.offset,
            }],
            None,
        ));
        let _ = subscriber
            .outbox
            .push(encode::text_frame(ack.encode().as_bytes()));
        let mut dead = Vec::new();
        state.groups.get_or_insert_default().join(
            group,
            subscriber.conn,
            subscriber.outbox.clone(),
            limits,
            Instant::now(),
            &mut dead,
        );
        let epoch = state.last.epoch;
        drop(state);
        self.lock_group_topics().insert(topic.clone());
        self.dead_letters(topic, epoch, dead);
        Ok(())
    }

    /// Connection `conn` leaves group `group` of `topic`: what it had in
    /// flight goes to the other members.
    pub fn leave_group(&self, topic: &Topic, group: &str, conn: u64) {
        let Some(cell) = self.existing(topic.as_str()) else {
            return;
        };
        let mut state = cell.lock();
        let epoch = state.last.epoch;
        let mut dead = Vec::new();
        if let Some(groups) = &mut state.groups {
            groups.leave(group, conn, Instant::now(), &mut dead);
        }
        drop(state);
        self.dead_letters(topic, epoch, dead);
    }

    /// Member `member` of `group` handled `topic`'s message at `(epoch,
    /// offset)`: `answer` is queued to it first, then what the ack frees.
    pub fn ack_group(
        &self,
        topic: &Topic,
        group: &str,
        member: &Subscriber,
        (epoch, offset): (u64, u64),
        answer: bytes::Bytes,
    ) -> Result<(), AckError> {
        let refused = AckError::NotInFlight { seq: offset };
        let cell = self.existing(topic.as_str()).ok_or(refused)?;
        let mut state = cell.lock();
        if state.last.epoch != epoch {
            return Err(refused);
        }
        let mut dead = Vec::new();
        let groups = state.groups.as_mut().ok_or(refused)?;
        groups.ack(
            group,
            member.conn,
            offset,
            Instant::now(),
            &mut dead,
            || {
                let _ = member.outbox.push(answer);
            },
        )?;
        drop(state);
        self.dead_letters(topic, epoch, dead);
        Ok(())
    }

    /// Redelivers what was not acked in time, in every topic with groups.
    pub fn expire_groups(&self, now: Instant) {
        let topics: Vec<Topic> = self.lock_group_topics().iter().cloned().collect();
        for topic in topics {
            let Some(cell) = self.existing(topic.as_str()) else {
                self.lock_group_topics().remove(&topic);
                continue;
            };
            let mut state = cell.lock();
            let epoch = state.last.epoch;
            let mut dead = Vec::new();
            let empty = match &mut state.groups {
                Some(groups) => {
                    groups.expire(now, &mut dead);
                    groups.is_empty()
                }
                None => true,
            };
            if empty {
                state.groups = None;
            }
            drop(state);
            if empty {
                self.lock_group_topics().remove(&topic);
            }
            self.dead_letters(&topic, epoch, dead);
        }
    }

    /// Offers freshly sequenced messages to the topic's groups (under the
    /// cell's lock, from the sequencer).
    /// Each message: its offset, priority, frame and payload bytes.
    pub(super) fn offer_to_groups(
        groups: &mut Groups,
        messages: &[(u64, u8, bytes::Bytes, usize)],
        dead: &mut Vec<DeadLetter>,
    ) {
        let now = Instant::now();
        for (offset, priority, frame, bytes) in messages {
            groups.offer(*offset, *priority, frame, *bytes, now, dead);
        }
    }

    /// Publishes each dead letter to `topic`'s dead-letter topic: here if
    /// this node owns it, else at its owner over the peer link (never
    /// waiting; a refusal is counted).
    pub(super) fn dead_letters(&self, topic: &Topic, epoch: u64, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        let dead_event = format!("{}{DEAD_LETTER_SUFFIX}", topic.event());
        let Ok(dead) = Topic::new(topic.queue(), &dead_event).map(|t| t.in_tenant(topic.tenant()))
        else {
            // Too long a name for a dead-letter topic: counted, not kept.
            self.metrics.dead_letters_lost.inc_by(letters.len() as u64);
            return;
        };
        let view = self.view.load();
        let here = view.owns(&dead);
        let link = (!here)
            .then(|| view.owner(&dead))
            .flatten()
            .and_then(|owner| {
                self.peers
                    .get()
                    .and_then(|peers| peers.current().link(owner).cloned())
            });
        drop(view);
        let mut batches = Batches::default();
        for letter in letters {
            let text = letter.payload(topic.name(), epoch);
            let Ok(payload) = RawValue::from_string(text) else {
                self.metrics.dead_letters_lost.inc();
                continue;
            };
            self.metrics.dead_letters.inc();
            if here {
                if self.publish(&dead, &payload).is_err() {
                    self.metrics.dead_letters_lost.inc();
                }
                continue;
            }
            let Some(link) = &link else {
                self.metrics.dead_letters_lost.inc();
                continue;
            };
            let body = Body::new(dead.as_str(), None, &payload);
            let Ok(permit) = link::permit(link, body.len()) else {
                self.metrics.dead_letters_lost.inc();
                continue;
            };
            let (answer, answered) = tokio::sync::oneshot::channel();
            batches.add(
                link,
                Request {
                    body,
                    forwarded: true,
                    reply: link::Reply::Http(answer),
                    permit,
                },
            );
            let metrics = self.metrics.clone();
            self.tasks.spawn(async move {
                if !matches!(answered.await, Ok(link::Answer::Acked { .. })) {
                    metrics.dead_letters_lost.inc();
                }
            });
        }
        batches.flush();
    }

    fn lock_group_topics(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Topic>> {
        self.group_topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
