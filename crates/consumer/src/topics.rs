//! Topic state: for each topic its epoch, its offset counter, its history
//! ring and its subscribers; sequencing and fan-out.
//!
//! Each topic is a [`TopicCell`] behind a `std::sync::Mutex` that is never
//! held across an `.await`: fan-out only pushes to outboxes, which never
//! wait. Cells live in a sharded map; a cell with no subscribers and no
//! history is removed (a `removed` flag makes late arrivals retry).
//!
//! Lock order: shard, then cell(s) in topic order, then the history FIFO.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rand::RngExt;
use shardq_protocol::frame::encode_message_into;
use shardq_protocol::{Ack, Frame, Position, RawValue, Topic, TopicPosition, legacy};

use crate::history::{FirstRetained, HistoryBudget, Retains, Ring};
use crate::metrics::ConsumerMetrics;
use crate::net::outbox::{FrameBatch, Outbox, PushError};
use crate::net::ws;

const SHARDS: usize = 64;

/// Identifies one connection in subscriber sets.
pub type ConnId = u64;

/// One subscription of one connection to one topic.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
    /// For legacy subscribers, the topic string they subscribed with (their
    /// frames are legacy frames carrying it).
    pub legacy_name: Option<Arc<str>>,
}

struct TopicState {
    last_offset: u64,
    subscribers: Vec<Subscriber>,
    ring: Ring,
    removed: bool,
}

/// One topic's state.
pub struct TopicCell {
    topic: Topic,
    epoch: u64,
    first_retained: FirstRetained,
    state: Mutex<TopicState>,
}

impl Retains for TopicCell {
    fn first_retained(&self) -> u64 {
        self.first_retained.get()
    }
}

impl TopicCell {
    fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A random epoch in 1..2^53 (exact in JavaScript numbers).
pub fn new_epoch() -> u64 {
    rand::rng().random_range(1..(1u64 << 53))
}

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// Each topic and where its live delivery starts.
    pub positions: Vec<TopicPosition>,
    /// With `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
}

/// Limits of the topic table.
#[derive(Debug, Clone)]
pub struct TableLimits {
    /// Messages kept per topic.
    pub history_per_topic: usize,
    /// Bytes of history per node.
    pub history_bytes: usize,
}

type Shard = Mutex<HashMap<Topic, Arc<TopicCell>>>;

/// Every topic this node has state for.
pub struct TopicTable {
    shards: Box<[Shard]>,
    hasher: RandomState,
    budget: HistoryBudget<TopicCell>,
    limits: TableLimits,
    metrics: Arc<ConsumerMetrics>,
}

impl TopicTable {
    /// An empty table.
    pub fn new(limits: TableLimits, metrics: Arc<ConsumerMetrics>) -> TopicTable {
        TopicTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            budget: HistoryBudget::new(limits.history_bytes),
            limits,
            metrics,
        }
    }

    fn shard(&self, topic: &Topic) -> MutexGuard<'_, HashMap<Topic, Arc<TopicCell>>> {
        let index = self.hasher.hash_one(topic.as_str()) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cell(&self, topic: &Topic) -> Arc<TopicCell> {
        let mut shard = self.shard(topic);
        if let Some(cell) = shard.get(topic) {
            return cell.clone();
        }
        let cell = Arc::new(TopicCell {
            topic: topic.clone(),
            epoch: new_epoch(),
            first_retained: FirstRetained::default(),
            state: Mutex::new(TopicState {
                last_offset: 0,
                subscribers: Vec::new(),
                ring: Ring::default(),
                removed: false,
            }),
        });
        shard.insert(topic.clone(), cell.clone());
        self.metrics.topics.inc();
        cell
    }

    /// Sequences a message, fans it out, keeps it in history, and returns
    /// its position.
    pub fn publish(&self, topic: &Topic, payload: &RawValue) -> Position {
        self.publish_many(topic, &[payload])
    }

    /// Sequences several messages of one topic as one step (consecutive
    /// offsets), fans them out with one push per subscriber, keeps them in
    /// history, and returns the position of the first.
    pub fn publish_many(&self, topic: &Topic, payloads: &[&RawValue]) -> Position {
        loop {
            let cell = self.cell(topic);
            let mut state = cell.lock();
            if state.removed {
                continue;
            }
            let first = Position {
                epoch: cell.epoch,
                offset: state.last_offset + 1,
            };
            state.last_offset += payloads.len() as u64;
            let frames: Vec<Bytes> = payloads
                .iter()
                .zip(first.offset..)
                .map(|(payload, offset)| {
                    let at = Position { offset, ..first };
                    let estimate = 80 + topic.as_str().len() + payload.get().len();
                    ws::text_frame_with(estimate, |out| {
                        encode_message_into(out, topic, at, payload)
                    })
                })
                .collect();
            if !state.subscribers.is_empty() {
                let batch = FrameBatch::new(frames.clone());
                self.fan_out(&state.subscribers, &batch, payloads);
            }
            for (frame, offset) in frames.into_iter().zip(first.offset..) {
                self.retain(&cell, &mut state, offset, frame);
            }
            drop(state);
            self.metrics.messages_in.inc_by(payloads.len() as u64);
            self.evict_over_budget();
            return first;
        }
    }

    /// Queues `frames` on every subscriber's outbox. Never waits: a full
    /// outbox closes itself as a slow consumer and is counted.
    fn fan_out(&self, subscribers: &[Subscriber], batch: &Arc<FrameBatch>, payloads: &[&RawValue]) {
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
                                    ws::text_frame(legacy::encode_message(name, payload).as_bytes())
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
                    delivered += payloads.len() as u64;
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

    fn retain(&self, cell: &Arc<TopicCell>, state: &mut TopicState, offset: u64, frame: Bytes) {
        let cost = state.ring.push(offset, frame);
        let mut freed = 0;
        let mut count = 0;
        while state.ring.len() > self.limits.history_per_topic {
            freed += state.ring.pop_front().unwrap_or(0);
            count += 1;
        }
        cell.first_retained.update(&state.ring);
        self.budget.added(Arc::downgrade(cell), offset, cost);
        if count > 0 {
            self.budget.removed(freed, count);
        }
    }

    fn evict_over_budget(&self) {
        while self.budget.over() {
            let Some((cell, offset)) = self.budget.oldest() else {
                break;
            };
            let mut state = cell.lock();
            if state.ring.first_offset() == Some(offset) {
                if let Some(freed) = state.ring.pop_front() {
                    self.budget.removed(freed, 1);
                }
                cell.first_retained.update(&state.ring);
            }
            let idle = state.subscribers.is_empty() && state.ring.is_empty();
            drop(state);
            if idle {
                self.remove_if_idle(&cell.topic);
            }
        }
        self.metrics.history_bytes.set(self.budget.bytes() as i64);
        self.metrics
            .history_messages
            .set(self.budget.entries() as i64);
    }

    /// Subscribes one connection to `topics` (sorted and distinct) as one
    /// step: with `ack_id`, the ack is queued before any message of any of
    /// the topics, then the replay (`since`, one topic only), then live
    /// messages — no gap, no duplicate.
    pub fn subscribe(
        &self,
        topics: &[Topic],
        subscriber: &Subscriber,
        since: Option<Position>,
        ack_id: Option<u64>,
    ) -> Result<Subscribed, PushError> {
        loop {
            let cells: Vec<_> = topics.iter().map(|topic| self.cell(topic)).collect();
            let mut states: Vec<_> = cells.iter().map(|cell| cell.lock()).collect();
            if states.iter().any(|state| state.removed) {
                continue;
            }
            let positions: Vec<_> = cells
                .iter()
                .zip(&states)
                .map(|(cell, state)| TopicPosition {
                    topic: cell.topic.clone(),
                    epoch: cell.epoch,
                    offset: state.last_offset,
                })
                .collect();
            let mut recovered = None;
            let mut replay: Vec<Bytes> = Vec::new();
            if let (Some(since), [cell], [state]) = (since, &cells[..], &states[..]) {
                let (frames, complete) = replay_after(cell.epoch, state, since);
                replay = frames;
                recovered = Some(complete);
            }
            if let Some(id) = ack_id {
                let ack = Frame::Ack(Ack::subscribed(id, positions.clone(), recovered));
                subscriber
                    .outbox
                    .push(ws::text_frame(ack.encode().as_bytes()))?;
            }
            for frame in replay {
                subscriber.outbox.push(frame)?;
            }
            for state in &mut states {
                state.subscribers.push(subscriber.clone());
            }
            self.metrics.subscriptions.inc_by(topics.len() as i64);
            return Ok(Subscribed {
                positions,
                recovered,
            });
        }
    }

    /// Removes one connection's subscription to a topic.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) {
        let cell = match self.shard(topic).get(topic) {
            Some(cell) => cell.clone(),
            None => return,
        };
        let mut state = cell.lock();
        let before = state.subscribers.len();
        state
            .subscribers
            .retain(|subscriber| subscriber.conn != conn);
        self.metrics
            .subscriptions
            .dec_by((before - state.subscribers.len()) as i64);
        let idle = state.subscribers.is_empty() && state.ring.is_empty();
        drop(state);
        if idle {
            self.remove_if_idle(topic);
        }
    }

    fn remove_if_idle(&self, topic: &Topic) {
        let mut shard = self.shard(topic);
        let Some(cell) = shard.get(topic).cloned() else {
            return;
        };
        let mut state = cell.lock();
        if state.subscribers.is_empty() && state.ring.is_empty() && !state.removed {
            state.removed = true;
            shard.remove(topic);
            self.metrics.topics.dec();
        }
    }

    /// How many topics have state.
    pub fn topic_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|map| map.len()).unwrap_or(0))
            .sum()
    }

    /// Bytes of history retained.
    pub fn history_bytes(&self) -> usize {
        self.budget.bytes()
    }

    /// The position of the last message of a topic, if it has state.
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let cell = self.shard(topic).get(topic).cloned()?;
        let state = cell.lock();
        Some(Position {
            epoch: cell.epoch,
            offset: state.last_offset,
        })
    }
}

/// The frames to replay for `since` and whether they cover the gap.
fn replay_after(epoch: u64, state: &TopicState, since: Position) -> (Vec<Bytes>, bool) {
    if since.epoch != epoch {
        // Another epoch: everything this one still holds, and a gap reported.
        return (state.ring.after(0).cloned().collect(), false);
    }
    if since.offset >= state.last_offset {
        return (Vec::new(), true);
    }
    let complete = state
        .ring
        .first_offset()
        .is_some_and(|first| first <= since.offset + 1);
    (state.ring.after(since.offset).cloned().collect(), complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::outbox::Drained;
    use std::collections::VecDeque;

    fn table(per_topic: usize, bytes: usize) -> TopicTable {
        let (metrics, _) = ConsumerMetrics::new();
        TopicTable::new(
            TableLimits {
                history_per_topic: per_topic,
                history_bytes: bytes,
            },
            Arc::new(metrics),
        )
    }

    fn subscriber(conn: ConnId, limit: usize) -> Subscriber {
        Subscriber {
            conn,
            outbox: Arc::new(Outbox::new(limit)),
            legacy_name: None,
        }
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).unwrap()
    }

    async fn drain_texts(outbox: &Outbox) -> Vec<String> {
        let Drained::Frames { frames, bytes } = outbox.drain(VecDeque::new()).await else {
            return Vec::new();
        };
        outbox.written(bytes);
        frames
            .iter()
            .flat_map(|chunk| chunk.frames().to_vec())
            .map(|frame| {
                let header = if frame[1] < 126 { 2 } else { 4 };
                String::from_utf8(frame[header..].to_vec()).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn sequences_and_fans_out_in_order() {
        let table = table(10, 1 << 20);
        let topic = Topic::parse("a/b").unwrap();
        let (one, two) = (subscriber(1, 1 << 20), subscriber(2, 1 << 20));
        table
            .subscribe(std::slice::from_ref(&topic), &one, None, Some(7))
            .unwrap();
        table
            .subscribe(std::slice::from_ref(&topic), &two, None, None)
            .unwrap();
        let first = table.publish(&topic, &raw("1"));
        let second = table.publish(&topic, &raw("2"));
        assert_eq!(first.epoch, second.epoch);
        assert_eq!((first.offset, second.offset), (1, 2));
        let texts = drain_texts(&one.outbox).await;
        assert_eq!(texts.len(), 3);
        assert!(texts[0].starts_with(r#"{"type":"ack","id":7,"topics":[{"topic":"a/b""#));
        assert!(texts[1].ends_with(r#""offset":1,"payload":1}"#));
        assert!(texts[2].ends_with(r#""offset":2,"payload":2}"#));
        assert_eq!(drain_texts(&two.outbox).await.len(), 2);
    }

    #[tokio::test]
    async fn resume_replays_exactly_the_missed_messages() {
        let table = table(3, 1 << 20);
        let topic = Topic::parse("a/b").unwrap();
        let mut last = Position {
            epoch: 0,
            offset: 0,
        };
        for i in 1..=5 {
            last = table.publish(&topic, &raw(&i.to_string()));
        }
        // The ring holds 3..=5.
        let sub = subscriber(1, 1 << 20);
        let result = table
            .subscribe(
                std::slice::from_ref(&topic),
                &sub,
                Some(Position {
                    epoch: last.epoch,
                    offset: 2,
                }),
                Some(1),
            )
            .unwrap();
        assert_eq!(result.recovered, Some(true));
        let texts = drain_texts(&sub.outbox).await;
        assert_eq!(texts.len(), 4);
        assert!(texts[1].ends_with(r#""offset":3,"payload":3}"#));
        // Too far back: what is held, and not recovered.
        let late = subscriber(2, 1 << 20);
        let result = table
            .subscribe(
                std::slice::from_ref(&topic),
                &late,
                Some(Position {
                    epoch: last.epoch,
                    offset: 1,
                }),
                Some(1),
            )
            .unwrap();
        assert_eq!(result.recovered, Some(false));
        assert_eq!(drain_texts(&late.outbox).await.len(), 4);
        // Up to date: nothing to replay, recovered.
        let current = subscriber(3, 1 << 20);
        let result = table
            .subscribe(std::slice::from_ref(&topic), &current, Some(last), Some(1))
            .unwrap();
        assert_eq!(result.recovered, Some(true));
        assert_eq!(drain_texts(&current.outbox).await.len(), 1);
        // Another epoch: the whole ring, not recovered.
        let stranger = subscriber(4, 1 << 20);
        let result = table
            .subscribe(
                &[topic],
                &stranger,
                Some(Position {
                    epoch: last.epoch + 1,
                    offset: 4,
                }),
                Some(1),
            )
            .unwrap();
        assert_eq!(result.recovered, Some(false));
        assert_eq!(drain_texts(&stranger.outbox).await.len(), 4);
    }

    #[tokio::test]
    async fn slow_subscriber_is_cut_and_others_are_not() {
        let table = table(10, 1 << 20);
        let topic = Topic::parse("a/b").unwrap();
        let (slow, fast) = (subscriber(1, 500), subscriber(2, 1 << 20));
        table
            .subscribe(std::slice::from_ref(&topic), &slow, None, None)
            .unwrap();
        table
            .subscribe(std::slice::from_ref(&topic), &fast, None, None)
            .unwrap();
        for _ in 0..20 {
            table.publish(&topic, &raw(&format!("\"{}\"", "x".repeat(50))));
        }
        assert!(slow.outbox.is_closed());
        assert!(!fast.outbox.is_closed());
        assert_eq!(drain_texts(&fast.outbox).await.len(), 20);
        assert_eq!(table.metrics.slow_consumers.get(), 1);
    }

    #[test]
    fn node_budget_drops_the_oldest_and_idle_topics() {
        let table = table(1000, 10_000);
        for i in 0..500 {
            let topic = Topic::new("t", &format!("e{i}")).unwrap();
            table.publish(&topic, &raw("\"0123456789\""));
        }
        assert!(table.history_bytes() <= 10_000);
        // Evicted topics without subscribers are gone; the newest remain.
        assert!(table.topic_count() < 500);
        assert!(table.position(&Topic::parse("t/e499").unwrap()).is_some());
        assert!(table.position(&Topic::parse("t/e0").unwrap()).is_none());
    }

    #[test]
    fn unsubscribe_removes_idle_topics() {
        let table = table(10, 1 << 20);
        let topic = Topic::parse("a/b").unwrap();
        let sub = subscriber(1, 1 << 20);
        table
            .subscribe(std::slice::from_ref(&topic), &sub, None, None)
            .unwrap();
        assert_eq!(table.topic_count(), 1);
        table.unsubscribe(&topic, 1);
        assert_eq!(table.topic_count(), 0);
        assert_eq!(table.metrics.subscriptions.get(), 0);
    }
}
