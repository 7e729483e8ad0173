//! The state of one topic on this node: its [`TopicCell`] (behind a mutex
//! never held across an `.await`) and what the cell holds — the mode
//! (owner or edge, with the handoff state of each), the latest position,
//! the history ring and the local subscribers — plus this node's [`View`]
//! of who owns what.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;
use rand::RngExt;
use shardq_net::outbox::Outbox;
use shardq_protocol::{Position, Router, Topic, TopicPosition};
use tokio::sync::Notify;

use super::edge_state::Edge;
use crate::history::{FirstRetained, Retains, Ring};

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
    /// Owner: the idempotency keys remembered, with where their publish went.
    pub keys: HashMap<Box<str>, Position>,
    pub removed: bool,
    /// The view generation the mode was decided under.
    pub generation: u64,
    /// Owner: the topic's queue groups, if any member ever joined.
    pub groups: Option<Box<crate::groups::Groups>>,
}

impl TopicState {
    /// Whether a new local subscriber can be answered now.
    pub fn is_ready(&self) -> bool {
        match &self.mode {
            Mode::Owner(owner) => owner.deferred.is_none(),
            Mode::Edge(edge) => edge.is_ready(),
        }
    }

    /// Whether the cell holds nothing worth keeping: no subscriber, and
    /// (as owner) no history and nothing held back.
    pub(super) fn is_idle(&self) -> bool {
        self.subscribers.is_empty()
            && self.groups.is_none()
            && match &self.mode {
                Mode::Owner(owner) => {
                    self.ring.is_empty() && owner.deferred.is_none() && self.keys.is_empty()
                }
                Mode::Edge(_) => true,
            }
    }
}

/// One topic's state.
pub struct TopicCell {
    pub(super) topic: Topic,
    me: OnceLock<Weak<TopicCell>>,
    /// The ring's first sequence number, readable without the lock (the
    /// history FIFO asks).
    pub(super) first_retained: FirstRetained,
    /// Wakes subscribes waiting for the cell to become ready.
    pub(super) ready: Notify,
    state: Mutex<TopicState>,
}

impl Retains for TopicCell {
    fn first_retained(&self) -> u64 {
        self.first_retained.get()
    }
}

impl TopicCell {
    /// A new cell for `topic` in `mode`, at `last`, decided under view
    /// `generation`.
    pub(super) fn new(topic: Topic, mode: Mode, last: Position, generation: u64) -> Arc<TopicCell> {
        let cell = Arc::new(TopicCell {
            topic,
            me: OnceLock::new(),
            first_retained: FirstRetained::default(),
            ready: Notify::new(),
            state: Mutex::new(TopicState {
                mode,
                last,
                subscribers: Vec::new(),
                ring: Ring::default(),
                keys: HashMap::new(),
                removed: false,
                generation,
                groups: None,
            }),
        });
        let _ = cell.me.set(Arc::downgrade(&cell));
        cell
    }

    /// A weak handle on the cell (for the history FIFO).
    pub(super) fn weak(&self) -> Weak<TopicCell> {
        self.me.get().cloned().unwrap_or_default()
    }

    /// The cell's state, locked (never across an `.await`).
    pub(super) fn lock(&self) -> MutexGuard<'_, TopicState> {
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
    /// With `since`: whether every message after it was replayed, and the
    /// position right before the replay.
    pub resume: Option<(bool, Position)>,
}

/// Limits of the topic table.
#[derive(Debug, Clone)]
pub struct TableLimits {
    /// Messages kept per topic.
    pub history_per_topic: usize,
    /// Bytes of history per node.
    pub history_bytes: usize,
    /// How long an idempotency key is remembered.
    pub key_window: std::time::Duration,
    /// Most idempotency keys remembered per node.
    pub keys_per_node: usize,
}
