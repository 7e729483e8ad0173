//! Sequencing on the owner and fan-out: a run of publishes to one topic
//! becomes consecutive offsets, one encoded frame each shared by every
//! subscriber (one push per subscriber per run, never a wait), and history.

use std::sync::Arc;

use bytes::Bytes;
use shardq_net::codec::encode;
use shardq_net::outbox::{FrameBatch, PushError};
use shardq_protocol::frame::encode_message_into;
use shardq_protocol::{Frame, Position, RawValue, Topic, legacy};

use super::TopicTable;
use super::cell::{Mode, Owner, Subscriber, View};
use super::keys::KeyEntry;

/// Why this node did not sequence a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSequenced {
    /// Another consumer owns the topic in this node's view: forward it there.
    OwnedBy(String),
    /// This node's node list names no consumer: the topic has no owner.
    NoOwner,
    /// Not a valid `queue/event` topic.
    BadTopic,
    /// A queue group of the topic has no room: nothing was sequenced.
    BacklogFull(String),
}

impl NotSequenced {
    /// Why a topic this node does not sequence was refused, per `view`.
    fn of(view: &View, topic: &Topic) -> NotSequenced {
        match view.owner(topic) {
            Some(owner) => NotSequenced::OwnedBy(owner.to_owned()),
            None => NotSequenced::NoOwner,
        }
    }
}

/// One publish of a run handed to [`TopicTable::publish_many`].
#[derive(Debug, Clone, Copy)]
pub struct Publishing<'a> {
    /// The payload.
    pub payload: &'a RawValue,
    /// Its idempotency key, if it has one.
    pub key: Option<&'a str>,
    /// Its priority (0–9) for the topic's queue groups.
    pub priority: u8,
}

/// Where a publish was sequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Its position.
    pub at: Position,
    /// Its key was seen before: this is the first publish's position, and
    /// nothing new was sequenced.
    pub duplicate: bool,
}

impl TopicTable {
    /// Sequences a run of publishes of one topic (consecutive offsets for
    /// the new ones), fans them out with one push per subscriber, keeps
    /// them in history, and appends where each went to `out`, in order; a
    /// publish whose key the topic remembers is answered with the first
    /// one's position instead. [`NotSequenced`] when this node does not own
    /// the topic. A topic that already has a cell costs one map lookup;
    /// each new message one allocation, its frame (shared by every
    /// subscriber and the history).
    pub fn publish_many(
        &self,
        topic: &str,
        publishes: &[Publishing<'_>],
        out: &mut Vec<Sequenced>,
    ) -> Result<(), NotSequenced> {
        let mut cell = match self.existing(topic) {
            Some(cell) => cell,
            None => {
                let topic = Topic::parse_key(topic).map_err(|_| NotSequenced::BadTopic)?;
                let view = self.view.load();
                if !view.owns(&topic) {
                    return Err(NotSequenced::of(&view, &topic));
                }
                self.cell(&topic)
            }
        };
        loop {
            let mut state = cell.lock();
            if state.removed {
                // Removed meanwhile: a fresh cell takes over.
                drop(state);
                cell = self.cell(&cell.topic);
                continue;
            }
            self.sync(&cell, &mut state);
            let deferred = match &state.mode {
                Mode::Owner(owner) => owner.deferred.is_some(),
                Mode::Edge(_) => {
                    return Err(NotSequenced::of(&self.view.load(), &cell.topic));
                }
            };
            // Every queue group must have room for the run, or nothing of
            // it is sequenced.
            if let Some(groups) = &state.groups {
                let bytes = publishes.iter().map(|p| p.payload.get().len()).sum();
                if let Err(full) = groups.room(publishes.len(), bytes) {
                    self.metrics.backlog_full.inc_by(publishes.len() as u64);
                    return Err(NotSequenced::BacklogFull(format!(
                        "{}: {full}",
                        cell.topic.name()
                    )));
                }
            }
            // The new ones get the next offsets; remembered keys answer
            // with their first position.
            let mut fresh: Vec<(&RawValue, Position, u8)> = Vec::with_capacity(publishes.len());
            let mut remembered = Vec::new();
            for publish in publishes {
                if let Some(key) = publish.key
                    && let Some(&at) = state.keys.get(key)
                {
                    out.push(Sequenced {
                        at,
                        duplicate: true,
                    });
                    continue;
                }
                state.last.offset += 1;
                let at = state.last;
                if let Some(key) = publish.key {
                    state.keys.insert(key.into(), at);
                    remembered.push(key);
                }
                fresh.push((publish.payload, at, publish.priority));
                out.push(Sequenced {
                    at,
                    duplicate: false,
                });
            }
            let duplicates = publishes.len() - fresh.len();
            let frames: Vec<Bytes> = fresh
                .iter()
                .map(|(payload, at, _)| {
                    encode::text_frame_with(|out| encode_message_into(out, topic, *at, payload))
                })
                .collect();
            // The groups hold the frames too (shared, not copied).
            let group_frames = if state.groups.is_some() {
                frames.clone()
            } else {
                Vec::new()
            };
            if deferred {
                if let Mode::Owner(Owner {
                    deferred: Some(deferred),
                }) = &mut state.mode
                {
                    for (frame, (_, at, _)) in frames.into_iter().zip(&fresh) {
                        deferred.held.push((*at, frame));
                    }
                }
            } else {
                if !state.subscribers.is_empty() && !frames.is_empty() {
                    let payloads: Vec<&RawValue> =
                        fresh.iter().map(|(payload, _, _)| *payload).collect();
                    let batch = FrameBatch::new(frames.clone());
                    self.fan_out(&state.subscribers, &batch, &payloads);
                }
                for (frame, (_, at, _)) in frames.into_iter().zip(&fresh) {
                    self.retain(&cell, &mut state, *at, frame);
                }
            }
            let mut dead = Vec::new();
            if let Some(groups) = &mut state.groups {
                let messages: Vec<_> = fresh
                    .iter()
                    .zip(&group_frames)
                    .map(|((payload, at, priority), frame)| {
                        (at.offset, *priority, frame.clone(), payload.get().len())
                    })
                    .collect();
                Self::offer_to_groups(groups, &messages, &mut dead);
            }
            let epoch = state.last.epoch;
            drop(state);
            self.dead_letters(&cell.topic, epoch, dead);
            if !remembered.is_empty() {
                let now = tokio::time::Instant::now();
                self.keys.added(remembered.into_iter().map(|key| KeyEntry {
                    cell: cell.weak(),
                    key: key.into(),
                    at: now,
                }));
                self.forget_keys(now);
            }
            if duplicates > 0 {
                self.metrics.duplicates_absorbed.inc_by(duplicates as u64);
            }
            self.metrics.messages_in.inc_by(fresh.len() as u64);
            self.evict_over_budget();
            return Ok(());
        }
    }

    /// Sequences one message without a key (see
    /// [`publish_many`](Self::publish_many)).
    pub fn publish(&self, topic: &Topic, payload: &RawValue) -> Result<Position, NotSequenced> {
        let mut out = Vec::with_capacity(1);
        self.publish_many(
            topic.as_str(),
            &[Publishing {
                payload,
                key: None,
                priority: 0,
            }],
            &mut out,
        )?;
        Ok(out[0].at)
    }

    /// Forgets the idempotency keys past their window (or beyond the
    /// node's cap); a topic left with nothing to keep goes.
    pub fn forget_keys(&self, now: tokio::time::Instant) {
        loop {
            let due = self.keys.due(now);
            let full = due.len() >= 4096;
            for entry in due {
                let Some(cell) = entry.cell.upgrade() else {
                    continue;
                };
                let mut state = cell.lock();
                state.keys.remove(&entry.key);
                let idle = state.is_idle();
                drop(state);
                if idle {
                    self.remove_if_idle(&cell.topic);
                }
            }
            if !full {
                break;
            }
        }
        self.metrics.idempotency_keys.set(self.keys.len() as i64);
    }

    /// Queues a batch on every subscriber's outbox (legacy subscribers get
    /// frames made from `payloads`, the batch's payloads in order). Never
    /// waits: a full outbox closes itself as a slow consumer and is counted.
    pub(crate) fn fan_out(
        &self,
        subscribers: &[Subscriber],
        batch: &Arc<FrameBatch>,
        payloads: &[&RawValue],
    ) {
        let mut delivered = 0u64;
        let mut bytes = 0u64;
        let mut legacy_batches: Vec<(Arc<str>, Arc<FrameBatch>)> = Vec::new();
        for subscriber in subscribers {
            let pushed = match &subscriber.legacy_name {
                None => subscriber.outbox.push_batch(batch).map(|()| batch.bytes()),
                Some(name) => {
                    let index = match legacy_batches.iter().position(|(n, _)| n == name) {
                        Some(index) => index,
                        None => {
                            let encoded = payloads
                                .iter()
                                .map(|payload| {
                                    encode::text_frame(
                                        legacy::encode_message(name, payload).as_bytes(),
                                    )
                                })
                                .collect();
                            legacy_batches.push((name.clone(), FrameBatch::new(encoded)));
                            legacy_batches.len() - 1
                        }
                    };
                    let encoded = &legacy_batches[index].1;
                    subscriber
                        .outbox
                        .push_batch(encoded)
                        .map(|()| encoded.bytes())
                }
            };
            match pushed {
                Ok(len) => {
                    delivered += batch.frames().len() as u64;
                    bytes += len as u64;
                }
                Err(PushError::Overflow) => {
                    self.metrics.slow_consumers.inc();
                    tracing::warn!(
                        conn = subscriber.conn,
                        "slow consumer: more than the outbox bound queued; disconnecting"
                    );
                }
                Err(PushError::Closed) => {}
            }
        }
        self.metrics.messages_out.inc_by(delivered);
        self.metrics.bytes_out.inc_by(bytes);
    }

    /// Fans out `message` frames already encoded; legacy subscribers' frames
    /// are made from the payloads read back out of them.
    pub(crate) fn fan_out_frames(&self, subscribers: &[Subscriber], frames: Vec<Bytes>) {
        if subscribers.is_empty() || frames.is_empty() {
            return;
        }
        let payloads: Vec<Box<RawValue>> = if subscribers.iter().any(|s| s.legacy_name.is_some()) {
            frames
                .iter()
                .filter_map(
                    |frame| match Frame::decode(encode::payload_of(frame), usize::MAX) {
                        Ok(Frame::Message(message)) => Some(message.payload),
                        _ => None,
                    },
                )
                .collect()
        } else {
            Vec::new()
        };
        let payloads: Vec<&RawValue> = payloads.iter().map(|payload| &**payload).collect();
        self.fan_out(subscribers, &FrameBatch::new(frames), &payloads);
    }
}
