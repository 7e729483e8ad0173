//! Topic state: for each topic this node serves, its position, its history
//! ring and its subscribers; sequencing (on the owner) and fan-out.
//!
//! A node serves every topic. For the topics it owns (in its view of the
//! node list) it is the sequencer; for the others it is an *edge*: it holds
//! one upstream subscription at the owner over a peer link and fans out
//! what arrives, the same bytes.
//!
//! - `cell`: one topic's state ([`TopicCell`]) and this node's [`View`].
//! - `publish`: sequencing and fan-out.
//! - `subscribe`: local subscribers (ready, subscribe, unsubscribe).
//! - `edge`: upstream subscriptions at owners, the peer-link handler.
//! - `handoff`: what a cell does when ownership moves.
//! - `dormant`: the positions of owned topics without state.
//! - `keys`: idempotency keys, remembered for a window.
//! - `persist`: owned topics to and from a snapshot (graceful restarts).
//! - `groups`: queue groups (members join, ack; timeouts; dead letters).
//!
//! Each topic is a [`TopicCell`] behind a `std::sync::Mutex` that is never
//! held across an `.await`: fan-out only pushes to outboxes and links send
//! by pushing to theirs, which never wait. Cells live in a sharded map; an
//! idle cell is removed (a `removed` flag makes late arrivals retry).
//!
//! Lock order: shard, then cell(s) in topic order, then the history FIFO,
//! the dormant positions, the upstream requests, or a link's state.

mod cell;
mod dormant;
mod edge;
mod edge_state;
mod groups;
mod handoff;
mod keys;
mod persist;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arc_swap::ArcSwap;
use bytes::Bytes;
use shardq_net::link::Links;
use shardq_protocol::{Position, Topic};
use tokio_util::task::TaskTracker;

use crate::history::HistoryBudget;
use crate::metrics::ConsumerMetrics;
use dormant::{DORMANT_KEPT, Dormant};
use keys::KeyBudget;

use cell::{Mode, Owner, TopicCell, TopicState, new_epoch};
pub use cell::{Subscriber, TableLimits, View};
pub use edge::PeerHandler;
use edge_state::{Edge, Effect};
pub use groups::JoinRefused;
pub use publish::{NotSequenced, Publishing, Sequenced};

const SHARDS: usize = 64;

/// One topic as `GET /v1/topics` lists it.
#[derive(Debug, Clone)]
pub struct TopicSummary {
    /// The topic (its key names a tenant outside the default one).
    pub topic: Topic,
    /// Whether this node sequences it (else it relays it as an edge).
    pub owned: bool,
    /// The last position sequenced or relayed (epoch 0: none yet).
    pub last: Position,
    /// Local subscribers (clients).
    pub subscribers: usize,
    /// Edge consumers subscribed here (owner only).
    pub edges: usize,
}

/// Topic counts for the status route and the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TopicCounts {
    /// Topics it sequences.
    pub owned: usize,
    /// Topics it relays from their owner.
    pub edges: usize,
    /// Relayed topics whose owner is unreachable (`stalled` told).
    pub stalled: usize,
}

/// An upstream subscribe in flight: where it went, and for which topic.
struct Upstream {
    peer: String,
    topic: Topic,
}

type Shard = Mutex<HashMap<Topic, Arc<TopicCell>>>;

/// Every topic this node has state for.
pub struct TopicTable {
    shards: Box<[Shard]>,
    hasher: RandomState,
    budget: HistoryBudget<TopicCell>,
    keys: KeyBudget<TopicCell>,
    limits: TableLimits,
    metrics: Arc<ConsumerMetrics>,
    view: ArcSwap<View>,
    /// Links to the other consumers (set once at start).
    peers: OnceLock<Arc<Links>>,
    /// Upstream subscribes in flight, by request id. An entry leaves when
    /// its answer comes or its link goes down.
    requests: Mutex<HashMap<u64, Upstream>>,
    next_request: AtomicU64,
    /// Positions of owned topics without state (their epochs stay).
    dormant: Mutex<Dormant>,
    tasks: TaskTracker,
    me: OnceLock<Weak<TopicTable>>,
    /// Topics with queue groups (their ack timeouts are swept).
    group_topics: Mutex<std::collections::HashSet<Topic>>,
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
            keys: KeyBudget::new(limits.key_window, limits.keys_per_node),
            limits,
            metrics,
            view: ArcSwap::from_pointee(view),
            peers: OnceLock::new(),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            dormant: Mutex::new(Dormant::new(DORMANT_KEPT)),
            tasks,
            me: OnceLock::new(),
            group_topics: Mutex::new(std::collections::HashSet::new()),
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
            // A topic owned before keeps its epoch and offsets.
            let last = self.lock_dormant().take(topic).unwrap_or(Position {
                epoch: new_epoch(),
                offset: 0,
            });
            (Mode::Owner(Owner::default()), last)
        } else {
            (
                Mode::Edge(Edge::default()),
                Position {
                    epoch: 0,
                    offset: 0,
                },
            )
        };
        let cell = TopicCell::new(topic.clone(), mode, last, view.generation);
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
            let mut effects = Vec::new();
            edge.idle(&mut effects);
            for effect in effects {
                if let Effect::Unsubscribe { peer } = effect {
                    self.send_unsubscribe(&peer, topic);
                }
            }
        }
        if matches!(state.mode, Mode::Owner(_)) {
            self.lock_dormant().keep(topic.clone(), state.last);
        }
        let (bytes, count) = state.ring.clear();
        self.budget.removed(bytes, count);
        cell.first_retained.update(&state.ring);
        shard.remove(topic);
        self.metrics.topics.dec();
        // Anyone waiting on this cell retries on a fresh one.
        cell.ready.notify_waiters();
    }

    /// How many topics have state.
    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|map| map.len()).unwrap_or(0))
            .sum()
    }

    /// How many topics it owns, relays, and relays from an unreachable owner.
    pub fn counts(&self) -> TopicCounts {
        let mut counts = TopicCounts::default();
        for cell in self.cells() {
            match &cell.lock().mode {
                Mode::Owner(_) => counts.owned += 1,
                Mode::Edge(edge) => {
                    counts.edges += 1;
                    counts.stalled += usize::from(edge.is_stalled());
                }
            }
        }
        counts
    }

    /// Every topic it holds now, in key order (`GET /v1/topics`).
    pub fn listing(&self) -> Vec<TopicSummary> {
        let mut topics: Vec<TopicSummary> = self
            .cells()
            .iter()
            .map(|cell| {
                let state = cell.lock();
                let (subscribers, edges) =
                    state.subscribers.iter().fold((0, 0), |(local, edges), s| {
                        if s.peer {
                            (local, edges + 1)
                        } else {
                            (local + 1, edges)
                        }
                    });
                TopicSummary {
                    topic: cell.topic.clone(),
                    owned: matches!(state.mode, Mode::Owner(_)),
                    last: state.last,
                    subscribers,
                    edges,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        topics
    }

    /// Bytes of history retained.
    #[cfg(test)]
    pub fn history_bytes(&self) -> usize {
        self.budget.bytes()
    }

    /// The latest position of a topic, if it has state.
    #[cfg(test)]
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let cell = self.existing(topic.as_str())?;
        let state = cell.lock();
        Some(state.last)
    }

    fn lock_dormant(&self) -> MutexGuard<'_, Dormant> {
        self.dormant
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands the table the links to the other consumers (once, at start).
    pub fn set_peers(&self, peers: Arc<Links>) {
        let _ = self.peers.set(peers);
    }
}
