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

/// Why this node did not sequence a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSequenced {
    /// Another consumer owns the topic in this node's view: forward it there.
    OwnedBy(String),
    /// This node's node list names no consumer: the topic has no owner.
    NoOwner,
    /// Not a valid `queue/event` topic.
    BadTopic,
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

impl TopicTable {
    /// Sequences a run of messages of one topic (consecutive offsets), fans
    /// them out with one push per subscriber, keeps them in history, and
    /// returns the position of the first; [`NotSequenced`] when this node
    /// does not own the topic. A topic that already has a cell costs one
    /// map lookup; each message costs one allocation, its frame (shared by
    /// every subscriber and the history).
    pub fn publish_many(
        &self,
        topic: &str,
        payloads: &[&RawValue],
    ) -> Result<Position, NotSequenced> {
        let mut cell = match self.existing(topic) {
            Some(cell) => cell,
            None => {
                let topic = Topic::parse(topic).map_err(|_| NotSequenced::BadTopic)?;
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
            let first = Position {
                epoch: state.last.epoch,
                offset: state.last.offset + 1,
            };
            state.last.offset += payloads.len() as u64;
            let frames: Vec<Bytes> = payloads
                .iter()
                .zip(first.offset..)
                .map(|(payload, offset)| {
                    let at = Position { offset, ..first };
                    encode::text_frame_with(|out| encode_message_into(out, topic, at, payload))
                })
                .collect();
            if deferred {
                if let Mode::Owner(Owner {
                    deferred: Some(deferred),
                }) = &mut state.mode
                {
                    for (frame, offset) in frames.into_iter().zip(first.offset..) {
                        deferred.held.push((Position { offset, ..first }, frame));
                    }
                }
            } else {
                if !state.subscribers.is_empty() {
                    let batch = FrameBatch::new(frames.clone());
                    self.fan_out(&state.subscribers, &batch, payloads);
                }
                for (frame, offset) in frames.into_iter().zip(first.offset..) {
                    self.retain(&cell, &mut state, Position { offset, ..first }, frame);
                }
            }
            drop(state);
            self.metrics.messages_in.inc_by(payloads.len() as u64);
            self.evict_over_budget();
            return Ok(first);
        }
    }

    /// Sequences one message (see [`publish_many`](Self::publish_many)).
    pub fn publish(&self, topic: &Topic, payload: &RawValue) -> Result<Position, NotSequenced> {
        self.publish_many(topic.as_str(), &[payload])
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
