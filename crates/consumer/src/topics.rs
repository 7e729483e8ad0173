//! Topic state: for each topic this node serves, its position, its history
//! ring and its subscribers; sequencing (on the owner) and fan-out.
//!
//! A node serves every topic. For the topics it owns (in its view of the
//! node list) it is the sequencer; for the others it is an *edge*: it holds
//! one upstream subscription at the owner over a peer link and fans out
//! what arrives, the same bytes. The handoff between owners when the node
//! list changes lives in [`crate::handoff`].
//!
//! Each topic is a [`TopicCell`] behind a `std::sync::Mutex` that is never
//! held across an `.await`: fan-out only pushes to outboxes and links send
//! by pushing to theirs, which never wait. Cells live in a sharded map; an
//! idle cell is removed (a `removed` flag makes late arrivals retry).
//!
//! Lock order: shard, then cell(s) in topic order, then the history FIFO or
//! a link's state.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arc_swap::ArcSwap;
use bytes::Bytes;
use rand::RngExt;
use shardq_protocol::frame::encode_message_into;
use shardq_protocol::{
    Ack, CloseCode, Frame, Position, RawValue, Router, Subscribe, Topic, TopicFilter,
    TopicPosition, Unsubscribe, legacy,
};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::history::{FirstRetained, HistoryBudget, Retains, Ring};
use crate::metrics::ConsumerMetrics;
use crate::net::link::{HANDLER_ID_BIT, Links};
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
    /// A peer consumer (an edge) on `/v1/cluster`: it also gets `moved`.
    pub peer: bool,
}

/// This node's view of the node list: who owns which topic.
#[derive(Debug)]
pub struct View {
    /// This node's id.
    pub own_id: String,
    /// The consumer ids, in file order.
    pub ids: Vec<String>,
    /// Routing over them.
    pub router: Router,
    /// The node list's fingerprint ([`shardq_protocol::ClusterConfig::node_list_hash`]).
    pub hash: String,
    /// Increases with every change.
    pub generation: u64,
}

impl View {
    /// The id of the topic's owner.
    pub fn owner(&self, topic: &Topic) -> Option<&str> {
        self.router
            .owner(topic)
            .map(|index| self.ids[index].as_str())
    }

    /// Whether this node owns the topic.
    pub fn owns(&self, topic: &Topic) -> bool {
        self.owner(topic) == Some(self.own_id.as_str())
    }
}

/// The sequencer's state of an owned topic.
#[derive(Debug, Default)]
pub(crate) struct Owner {
    /// Set while the previous owner's stream is still arriving (a fresh
    /// owner that was an edge): what it sequences is kept, not yet sent.
    pub deferred: Option<Deferred>,
}

/// A new owner waiting for its predecessor's `moved`.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// The consumer whose stream is still arriving.
    pub predecessor: String,
    /// The predecessor stream's last position received.
    pub last: Position,
    /// What this node sequenced meanwhile, sent (and kept) on release, so
    /// the ring holds each epoch as one run.
    pub held: Vec<(Position, Bytes)>,
}

/// An edge's upstream subscription.
#[derive(Debug, Default)]
pub(crate) struct Edge {
    /// The consumer it follows (or is about to).
    pub upstream: Option<String>,
    /// The subscribe sent to `upstream` and not answered yet.
    pub request: Option<u64>,
    /// `upstream` acked the subscription.
    pub acked: bool,
    /// The subscribe re-attached an existing stream (a gap in its answer
    /// means local subscribers missed messages).
    pub resuming: bool,
    /// `upstream` sent `moved`: its epoch ended; it relays the next owner.
    pub sealed: bool,
    /// The old upstream, still subscribed until `upstream` acks.
    pub previous: Option<String>,
    /// The owner this node's view names, while waiting for `upstream`'s `moved`.
    pub waiting: Option<String>,
}

/// What a cell does.
#[derive(Debug)]
pub(crate) enum Mode {
    /// Sequences the topic.
    Owner(Owner),
    /// Relays the owner's stream.
    Edge(Edge),
}

pub(crate) struct TopicState {
    pub mode: Mode,
    /// The latest position of the stream subscribers get (owner: the last
    /// sequenced; edge: the last received). Epoch 0: nothing yet.
    pub last: Position,
    pub subscribers: Vec<Subscriber>,
    pub ring: Ring,
    pub removed: bool,
    /// The view generation the mode was decided under.
    pub generation: u64,
}

impl TopicState {
    /// Whether a new local subscriber can be answered now.
    pub fn is_ready(&self) -> bool {
        match &self.mode {
            Mode::Owner(owner) => owner.deferred.is_none(),
            Mode::Edge(edge) => edge.acked || edge.previous.is_some(),
        }
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty()
            && match &self.mode {
                Mode::Owner(owner) => self.ring.is_empty() && owner.deferred.is_none(),
                Mode::Edge(_) => true,
            }
    }
}

/// One topic's state.
pub struct TopicCell {
    pub(crate) topic: Topic,
    me: OnceLock<Weak<TopicCell>>,
    first_retained: FirstRetained,
    /// Wakes subscribes waiting for the cell to become ready.
    pub(crate) ready: Notify,
    state: Mutex<TopicState>,
}

impl Retains for TopicCell {
    fn first_retained(&self) -> u64 {
        self.first_retained.get()
    }
}

impl TopicCell {
    /// A weak handle on the cell (for the history FIFO).
    fn weak(&self) -> Weak<TopicCell> {
        self.me.get().cloned().unwrap_or_default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A random epoch in 1..2^53 (exact in JavaScript numbers; 0 means none).
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
    pub(crate) metrics: Arc<ConsumerMetrics>,
    pub(crate) view: ArcSwap<View>,
    /// Links to the other consumers (set once at start).
    pub(crate) peers: OnceLock<Arc<Links>>,
    /// Upstream subscribes in flight: request id → topic.
    pub(crate) requests: Mutex<HashMap<u64, Topic>>,
    next_request: AtomicU64,
    pub(crate) tasks: TaskTracker,
    me: OnceLock<Weak<TopicTable>>,
}

impl TopicTable {
    /// An empty table for the node `view.own_id`.
    pub fn new(
        limits: TableLimits,
        metrics: Arc<ConsumerMetrics>,
        view: View,
        tasks: TaskTracker,
    ) -> TopicTable {
        TopicTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            budget: HistoryBudget::new(limits.history_bytes),
            limits,
            metrics,
            view: ArcSwap::from_pointee(view),
            peers: OnceLock::new(),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            tasks,
            me: OnceLock::new(),
        }
    }

    fn shard(&self, topic: &str) -> MutexGuard<'_, HashMap<Topic, Arc<TopicCell>>> {
        let index = self.hasher.hash_one(topic) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cell of a topic, if it has one.
    pub(crate) fn existing(&self, topic: &str) -> Option<Arc<TopicCell>> {
        self.shard(topic).get(topic).cloned()
    }

    /// The cell of a topic, created (as owner or edge, by the current view)
    /// when missing.
    pub(crate) fn cell(&self, topic: &Topic) -> Arc<TopicCell> {
        let mut shard = self.shard(topic.as_str());
        if let Some(cell) = shard.get(topic.as_str()) {
            return cell.clone();
        }
        let view = self.view.load();
        let (mode, last) = if view.owns(topic) {
            (
                Mode::Owner(Owner::default()),
                Position {
                    epoch: new_epoch(),
                    offset: 0,
                },
            )
        } else {
            (
                Mode::Edge(Edge::default()),
                Position {
                    epoch: 0,
                    offset: 0,
                },
            )
        };
        let cell = Arc::new(TopicCell {
            topic: topic.clone(),
            me: OnceLock::new(),
            first_retained: FirstRetained::default(),
            ready: Notify::new(),
            state: Mutex::new(TopicState {
                mode,
                last,
                subscribers: Vec::new(),
                ring: Ring::default(),
                removed: false,
                generation: view.generation,
            }),
        });
        let _ = cell.me.set(Arc::downgrade(&cell));
        shard.insert(topic.clone(), cell.clone());
        self.metrics.topics.inc();
        cell
    }

    /// Every cell, for a pass over all topics.
    pub(crate) fn cells(&self) -> Vec<Arc<TopicCell>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .map(|map| map.values().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Whether this node sequences the topic now (its cell's mode, or the
    /// view when it has no cell).
    pub fn owns(&self, topic: &Topic) -> bool {
        match self.existing(topic.as_str()) {
            Some(cell) => {
                let mut state = cell.lock();
                self.sync(&cell, &mut state);
                matches!(state.mode, Mode::Owner(_))
            }
            None => self.view.load().owns(topic),
        }
    }

    /// Sequences a run of messages of one topic (consecutive offsets), fans
    /// them out with one push per subscriber, keeps them in history, and
    /// returns the position of the first. `Err` with the owner's id when
    /// this node does not own the topic (`Err(None)`: no owner, or not a
    /// valid topic). A topic that already has a cell costs one lookup and
    /// no allocation.
    pub fn publish_many(
        &self,
        topic: &str,
        payloads: &[&RawValue],
    ) -> Result<Position, Option<String>> {
        let mut cell = match self.existing(topic) {
            Some(cell) => cell,
            None => {
                let topic = Topic::parse(topic).map_err(|_| None)?;
                let view = self.view.load();
                if !view.owns(&topic) {
                    return Err(view.owner(&topic).map(str::to_owned));
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
                    return Err(self.view.load().owner(&cell.topic).map(str::to_owned));
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
                    ws::text_frame_with(|out| encode_message_into(out, topic, at, payload))
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
    pub fn publish(&self, topic: &Topic, payload: &RawValue) -> Result<Position, Option<String>> {
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
                    |frame| match Frame::decode(ws::payload_of(frame), usize::MAX) {
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

    /// A weak handle on this table, for timers.
    pub(crate) fn weak_self(&self) -> Option<Weak<TopicTable>> {
        self.me.get().cloned()
    }

    /// Records the `Arc` this table lives in (once, right after creating it).
    pub fn set_self(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    pub(crate) fn retain(
        &self,
        cell: &TopicCell,
        state: &mut TopicState,
        at: Position,
        frame: Bytes,
    ) {
        let (seq, cost) = state.ring.push(at, frame);
        let mut freed = 0;
        let mut count = 0;
        while state.ring.len() > self.limits.history_per_topic {
            freed += state.ring.pop_front().unwrap_or(0);
            count += 1;
        }
        cell.first_retained.update(&state.ring);
        self.budget.added(cell.weak(), seq, cost);
        if count > 0 {
            self.budget.removed(freed, count);
        }
    }

    pub(crate) fn evict_over_budget(&self) {
        while self.budget.over() {
            let Some((cell, seq)) = self.budget.oldest() else {
                break;
            };
            let mut state = cell.lock();
            if state.ring.first_seq() == Some(seq) {
                if let Some(freed) = state.ring.pop_front() {
                    self.budget.removed(freed, 1);
                }
                cell.first_retained.update(&state.ring);
            }
            let idle = state.is_idle();
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

    /// Waits until every topic's cell can answer a new local subscriber: an
    /// owned topic at once; an edge once its upstream subscription at the
    /// owner is live (requested here when needed, with `since` for a new
    /// edge). `Err` names what did not come in time.
    pub async fn ready(
        &self,
        topics: &[Topic],
        since: Option<Position>,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Ask every upstream first, then wait: the round trips overlap.
        for topic in topics {
            let cell = self.cell(topic);
            let mut state = cell.lock();
            if !state.removed {
                self.sync(&cell, &mut state);
                self.ensure_upstream(&cell, &mut state, since);
            }
        }
        for topic in topics {
            loop {
                let cell = self.cell(topic);
                let notified = cell.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut state = cell.lock();
                    if state.removed {
                        continue;
                    }
                    self.sync(&cell, &mut state);
                    if state.is_ready() {
                        break;
                    }
                    self.ensure_upstream(&cell, &mut state, since);
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    let owner = self
                        .view
                        .load()
                        .owner(topic)
                        .map(str::to_owned)
                        .unwrap_or_default();
                    return Err(format!("{topic}: its owner {owner} did not answer in time"));
                }
            }
        }
        Ok(())
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
            for (cell, state) in cells.iter().zip(states.iter_mut()) {
                self.sync(cell, state);
                // A cell that lost its upstream meanwhile asks again.
                self.ensure_upstream(cell, state, None);
            }
            let positions: Vec<_> = cells
                .iter()
                .zip(&states)
                .map(|(cell, state)| TopicPosition {
                    topic: cell.topic.clone(),
                    epoch: state.last.epoch,
                    offset: state.last.offset,
                })
                .collect();
            let mut recovered = None;
            let mut replay: Vec<Bytes> = Vec::new();
            if let (Some(since), [state]) = (since, &states[..]) {
                // Messages a new owner holds back are not in its ring yet;
                // they reach this subscriber when released.
                let held = match &state.mode {
                    Mode::Owner(Owner {
                        deferred: Some(deferred),
                    }) => deferred.held.len() as u64,
                    _ => 0,
                };
                let current = Position {
                    offset: state.last.offset - held,
                    ..state.last
                };
                let (frames, complete) = state.ring.replay(since, current);
                replay = frames;
                recovered = Some(complete);
            }
            if let Some(id) = ack_id {
                let ack = Frame::Ack(Ack::subscribed(id, positions.clone(), recovered));
                subscriber
                    .outbox
                    .push(ws::text_frame(ack.encode().as_bytes()))?;
            }
            if !replay.is_empty() {
                subscriber.outbox.push_batch(&FrameBatch::new(replay))?;
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
        let Some(cell) = self.existing(topic.as_str()) else {
            return;
        };
        let mut state = cell.lock();
        let before = state.subscribers.len();
        state
            .subscribers
            .retain(|subscriber| subscriber.conn != conn);
        self.metrics
            .subscriptions
            .dec_by((before - state.subscribers.len()) as i64);
        let idle = state.is_idle();
        drop(state);
        if idle {
            self.remove_if_idle(topic);
        }
    }

    /// Drops a cell made for a subscription that did not happen (it stays
    /// if anyone else uses it).
    pub fn release(&self, topic: &Topic) {
        self.remove_if_idle(topic);
    }

    /// Removes an idle cell; an edge drops its upstream subscriptions.
    pub(crate) fn remove_if_idle(&self, topic: &Topic) {
        let mut shard = self.shard(topic.as_str());
        let Some(cell) = shard.get(topic.as_str()).cloned() else {
            return;
        };
        let mut state = cell.lock();
        if !state.is_idle() || state.removed {
            return;
        }
        state.removed = true;
        if let Mode::Edge(edge) = &mut state.mode {
            for peer in [edge.upstream.take(), edge.previous.take()]
                .into_iter()
                .flatten()
            {
                self.send_unsubscribe(&peer, topic);
            }
        }
        let (bytes, count) = state.ring.clear();
        self.budget.removed(bytes, count);
        cell.first_retained.update(&state.ring);
        shard.remove(topic);
        self.metrics.topics.dec();
        // Anyone waiting on this cell retries on a fresh one.
        cell.ready.notify_waiters();
    }

    /// Makes sure an edge cell with (or about to get) subscribers has an
    /// upstream subscription requested at the owner of this node's view.
    pub(crate) fn ensure_upstream(
        &self,
        cell: &TopicCell,
        state: &mut TopicState,
        since: Option<Position>,
    ) {
        let last = state.last;
        // After a sealed epoch, the next stream starts at its epoch's start.
        let sealed = last.epoch != 0 && state.ring.is_sealed(last.epoch);
        let Mode::Edge(edge) = &mut state.mode else {
            return;
        };
        if edge.acked || edge.request.is_some() {
            return;
        }
        let target = match &edge.upstream {
            Some(upstream) => Some(upstream.clone()),
            None => self.view.load().owner(&cell.topic).map(str::to_owned),
        };
        let Some(target) = target else {
            return;
        };
        let since = if sealed {
            Some(Position {
                epoch: 0,
                offset: 0,
            })
        } else if last.epoch != 0 {
            Some(last)
        } else {
            since
        };
        edge.upstream = Some(target.clone());
        edge.resuming = last.epoch != 0;
        edge.request = self.send_subscribe(&target, &cell.topic, since);
    }

    /// Sends `subscribe` for `topic` to consumer `peer`; the request id when
    /// it went out (when the link is down it is sent again on reconnect).
    pub(crate) fn send_subscribe(
        &self,
        peer: &str,
        topic: &Topic,
        since: Option<Position>,
    ) -> Option<u64> {
        let link = self.peers.get()?.current().link(peer).cloned()?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed) | HANDLER_ID_BIT;
        let frame = Frame::Subscribe(Subscribe {
            id,
            topic: TopicFilter::Exact(topic.clone()),
            since,
        });
        if !link.send_frame(&frame) {
            return None;
        }
        tracing::debug!(%topic, %peer, ?since, id = id & !HANDLER_ID_BIT, "upstream subscribe sent");
        self.lock_requests().insert(id, topic.clone());
        Some(id)
    }

    /// Sends `unsubscribe` for `topic` to consumer `peer` (best effort).
    pub(crate) fn send_unsubscribe(&self, peer: &str, topic: &Topic) {
        let Some(link) = self
            .peers
            .get()
            .and_then(|links| links.current().link(peer).cloned())
        else {
            return;
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed) | HANDLER_ID_BIT;
        link.send_frame(&Frame::Unsubscribe(Unsubscribe {
            id,
            topic: TopicFilter::Exact(topic.clone()),
        }));
    }

    pub(crate) fn lock_requests(&self) -> MutexGuard<'_, HashMap<u64, Topic>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes every local subscriber of a cell whose stream has a gap it
    /// cannot tell them about: they reconnect and resume (and learn of it).
    pub(crate) fn resync(&self, state: &mut TopicState) {
        for subscriber in state.subscribers.drain(..) {
            subscriber.outbox.close(CloseCode::Resync);
        }
    }

    /// How many topics have state.
    pub fn topic_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|map| map.len()).unwrap_or(0))
            .sum()
    }

    /// Topics owned and topics served as an edge.
    pub fn owned_and_edge_counts(&self) -> (usize, usize) {
        let mut owned = 0;
        let mut edges = 0;
        for cell in self.cells() {
            match cell.lock().mode {
                Mode::Owner(_) => owned += 1,
                Mode::Edge(_) => edges += 1,
            }
        }
        (owned, edges)
    }

    /// Bytes of history retained.
    pub fn history_bytes(&self) -> usize {
        self.budget.bytes()
    }

    /// The latest position of a topic, if it has state.
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let cell = self.existing(topic.as_str())?;
        let state = cell.lock();
        Some(state.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::outbox::{Chunk, Drained};
    use std::collections::VecDeque;

    fn table(per_topic: usize, bytes: usize) -> TopicTable {
        let (metrics, _) = ConsumerMetrics::new();
        let view = View {
            own_id: "c".into(),
            ids: vec!["c".into()],
            router: Router::new(&["c"]),
            hash: String::new(),
            generation: 1,
        };
        TopicTable::new(
            TableLimits {
                history_per_topic: per_topic,
                history_bytes: bytes,
            },
            Arc::new(metrics),
            view,
            TaskTracker::new(),
        )
    }

    fn subscriber(conn: ConnId, limit: usize) -> Subscriber {
        Subscriber {
            conn,
            outbox: Arc::new(Outbox::new(limit)),
            legacy_name: None,
            peer: false,
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
            .flat_map(|chunk: &Chunk| chunk.frames().to_vec())
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
        let first = table.publish(&topic, &raw("1")).unwrap();
        let second = table.publish(&topic, &raw("2")).unwrap();
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
            last = table.publish(&topic, &raw(&i.to_string())).unwrap();
        }
        // The ring holds 3..=5.
        let sub = subscriber(1, 1 << 20);
        let since = Position {
            epoch: last.epoch,
            offset: 2,
        };
        let result = table
            .subscribe(std::slice::from_ref(&topic), &sub, Some(since), Some(1))
            .unwrap();
        assert_eq!(result.recovered, Some(true));
        let texts = drain_texts(&sub.outbox).await;
        assert_eq!(texts.len(), 4);
        assert!(texts[1].ends_with(r#""offset":3,"payload":3}"#));
        // Too far back: what is held, and not recovered.
        let late = subscriber(2, 1 << 20);
        let since = Position {
            epoch: last.epoch,
            offset: 1,
        };
        let result = table
            .subscribe(std::slice::from_ref(&topic), &late, Some(since), Some(1))
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
        let since = Position {
            epoch: last.epoch + 1,
            offset: 4,
        };
        let result = table
            .subscribe(
                std::slice::from_ref(&topic),
                &stranger,
                Some(since),
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
            table
                .publish(&topic, &raw(&format!("\"{}\"", "x".repeat(50))))
                .unwrap();
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
            table.publish(&topic, &raw("\"0123456789\"")).unwrap();
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

    #[test]
    fn a_topic_this_node_does_not_own_is_refused_with_its_owner() {
        let (metrics, _) = ConsumerMetrics::new();
        let ids = ["c0", "c1", "c2"];
        let view = View {
            own_id: "c0".into(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            router: Router::new(&ids),
            hash: String::new(),
            generation: 1,
        };
        let table = TopicTable::new(
            TableLimits {
                history_per_topic: 10,
                history_bytes: 1 << 20,
            },
            Arc::new(metrics),
            view,
            TaskTracker::new(),
        );
        let router = Router::new(&ids);
        let foreign = (0..100)
            .map(|i| Topic::new("t", &format!("e{i}")).unwrap())
            .find(|topic| router.owner_id(topic) != Some("c0"))
            .unwrap();
        let owner = router.owner_id(&foreign).map(str::to_owned);
        assert_eq!(table.publish(&foreign, &raw("1")), Err(owner));
        assert_eq!(table.topic_count(), 0);
    }
}
