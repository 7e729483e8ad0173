//! Ownership changes: what a topic's cell does when the node list changes
//! (every cell is brought in line with the view on its next use, and all
//! of them right after a reload).
//!
//! When ownership of a topic moves from A to B:
//! - A seals its epoch, sends `moved` to its peer subscribers (the edges),
//!   and becomes an edge itself: it subscribes at B from the start of B's
//!   epoch and relays it to everyone still subscribed at A.
//! - B, if it was an edge following A, sequences at once but holds back
//!   fan-out until A's `moved` (the rest of A's epoch reaches its
//!   subscribers first); then it drops A and sends what it held.
//! - Every other edge follows A until A's `moved`, then subscribes at B
//!   (from the start of B's epoch, or from where A's relay got it) and drops
//!   A once B acks. Duplicates are dropped by `(epoch, offset)`.
//!
//! B keeps its epoch's history, so nothing published between producers
//! switching and edges arriving is lost. Waits for a `moved` are bounded
//! ([`SEAL_PATIENCE`]) in case the old owner is gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardq_net::codec::encode;
use shardq_protocol::{Frame, Moved, Position, Topic};

use super::TopicTable;
use super::cell::{Deferred, Mode, Owner, TopicCell, TopicState, View, new_epoch};
use super::edge_state::{Edge, Effect, SEAL_PATIENCE};

impl TopicTable {
    /// Brings a cell's mode in line with the current view (called with the
    /// cell locked, on every use and for every cell after a reload).
    pub(crate) fn sync(&self, cell: &TopicCell, state: &mut TopicState) {
        let view = self.view.load();
        if state.generation == view.generation {
            return;
        }
        state.generation = view.generation;
        let owner = view.owner(&cell.topic).map(str::to_owned);
        let owns = owner.as_deref() == Some(view.own_id.as_str());
        match (&mut state.mode, owns) {
            (Mode::Owner(_), true) => {}
            (Mode::Owner(_), false) => self.relinquish(cell, state, owner),
            (Mode::Edge(_), true) => self.take_over(cell, state),
            (Mode::Edge(_), false) => {
                let wanted = !state.subscribers.is_empty();
                self.with_edge(cell, state, |edge, stream, ids, out| {
                    edge.view(owner.as_deref(), wanted, stream, ids, out)
                });
            }
        }
        cell.ready.notify_waiters();
    }

    /// This node no longer owns the topic: seal, tell the edges, relay the
    /// new owner.
    fn relinquish(&self, cell: &TopicCell, state: &mut TopicState, owner: Option<String>) {
        let predecessor = match &mut state.mode {
            Mode::Owner(Owner { deferred }) => deferred.take().map(|d| d.predecessor),
            Mode::Edge(_) => None,
        };
        state.ring.seal(state.last);
        if let Some(mut groups) = state.groups.take() {
            // Groups live at the owner: their members rejoin at the new one.
            // What they held here is not carried over (see PROTOCOL.md 15).
            groups.disband();
        }
        if let Some(owner) = &owner {
            let moved = Frame::Moved(Moved {
                topic: cell.topic.clone(),
                epoch: state.last.epoch,
                offset: state.last.offset,
                owner: owner.clone(),
            });
            let frame = encode::text_frame(moved.encode().as_bytes());
            for subscriber in state.subscribers.iter().filter(|s| s.peer) {
                let _ = subscriber.outbox.push(frame.clone());
            }
        }
        tracing::info!(topic = %cell.topic, ?owner, at = ?state.last, "no longer the owner; sealed and relaying");
        let edge = match predecessor {
            // Still subscribed at the predecessor, which is the owner again.
            Some(predecessor) if Some(&predecessor) == owner.as_ref() => {
                Edge::following(predecessor)
            }
            Some(predecessor) => {
                self.send_unsubscribe(&predecessor, &cell.topic);
                Edge::default()
            }
            None => Edge::default(),
        };
        state.mode = Mode::Edge(edge);
        if !state.subscribers.is_empty() {
            // From the start of the new owner's epoch (this one is sealed).
            self.with_edge(cell, state, |edge, stream, ids, out| {
                edge.want(owner.as_deref(), stream, ids, out)
            });
        }
    }

    /// This node owns the topic now. If it was following the old owner,
    /// it sequences at once but holds fan-out back until the old owner's
    /// epoch is sealed.
    fn take_over(&self, cell: &TopicCell, state: &mut TopicState) {
        let Mode::Edge(edge) = std::mem::replace(&mut state.mode, Mode::Owner(Owner::default()))
        else {
            return;
        };
        let mut effects = Vec::new();
        let predecessor = edge.into_predecessor(&mut effects);
        for effect in effects {
            if let Effect::Unsubscribe { peer } = effect {
                self.send_unsubscribe(&peer, &cell.topic);
            }
        }
        let before = state.last;
        if before.epoch != 0 && predecessor.is_none() {
            state.ring.seal(before);
        }
        state.last = Position {
            epoch: new_epoch(),
            offset: 0,
        };
        tracing::info!(topic = %cell.topic, epoch = state.last.epoch, waiting_for = ?predecessor, "now the owner");
        let deferred = predecessor.map(|predecessor| Deferred {
            predecessor,
            last: before,
            held: Vec::new(),
        });
        let waiting = deferred.is_some();
        state.mode = Mode::Owner(Owner { deferred });
        if waiting {
            let generation = state.generation;
            self.after(SEAL_PATIENCE, &cell.topic, generation, |table, cell, state| {
                if matches!(&state.mode, Mode::Owner(Owner { deferred: Some(_) })) {
                    tracing::warn!(topic = %cell.topic, "no moved from the old owner in time; sending what was held");
                    table.end_take_over(cell, state);
                }
            });
        }
    }

    /// Ends a take-over: drops the predecessor and sends what was held back.
    pub(super) fn end_take_over(&self, cell: &TopicCell, state: &mut TopicState) {
        let Mode::Owner(owner) = &mut state.mode else {
            return;
        };
        let Some(deferred) = owner.deferred.take() else {
            return;
        };
        self.send_unsubscribe(&deferred.predecessor, &cell.topic);
        let frames: Vec<Bytes> = deferred
            .held
            .iter()
            .map(|(_, frame)| frame.clone())
            .collect();
        self.fan_out_frames(&state.subscribers, frames);
        for (at, frame) in deferred.held {
            self.retain(cell, state, at, frame);
        }
        cell.ready.notify_waiters();
    }

    /// Runs `action` on the topic's cell after `delay`, unless the view
    /// changed again meanwhile.
    pub(super) fn after(
        &self,
        delay: Duration,
        topic: &Topic,
        generation: u64,
        action: impl FnOnce(&TopicTable, &TopicCell, &mut TopicState) + Send + 'static,
    ) {
        let Some(table) = self.weak_self() else {
            return;
        };
        let topic = topic.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(table) = table.upgrade() else { return };
            let Some(cell) = table.existing(topic.as_str()) else {
                return;
            };
            let mut state = cell.lock();
            if state.generation == generation && !state.removed {
                action(&table, &cell, &mut state);
            }
        });
    }

    /// A new node list: every cell follows it.
    pub fn apply_view(&self, view: View) {
        tracing::info!(hash = %view.hash, nodes = ?view.ids, "applying node list");
        self.lock_dormant().retain_owned(|topic| view.owns(topic));
        self.view.store(Arc::new(view));
        for cell in self.cells() {
            let mut state = cell.lock();
            if !state.removed {
                self.sync(&cell, &mut state);
            }
            let idle = state.subscribers.is_empty() && matches!(state.mode, Mode::Edge(_));
            drop(state);
            if idle {
                self.remove_if_idle(&cell.topic);
            }
        }
    }

    /// The upstream's epoch ended (`moved`).
    pub(super) fn on_moved(&self, from: &str, moved: Moved) {
        let Some(cell) = self.existing(moved.topic.as_str()) else {
            return;
        };
        let mut state = cell.lock();
        self.sync(&cell, &mut state);
        let end = Position {
            epoch: moved.epoch,
            offset: moved.offset,
        };
        match &mut state.mode {
            Mode::Edge(_) => {
                let mut relay = false;
                self.with_edge(&cell, &mut state, |edge, stream, ids, out| {
                    edge.moved(from, end, stream, ids, out);
                    relay = out.contains(&Effect::RelayMoved);
                });
                if relay {
                    // Edges relaying through this node learn of it too.
                    let frame = encode::text_frame(Frame::Moved(moved).encode().as_bytes());
                    for subscriber in state.subscribers.iter().filter(|s| s.peer) {
                        let _ = subscriber.outbox.push(frame.clone());
                    }
                }
            }
            Mode::Owner(Owner {
                deferred: Some(deferred),
            }) if deferred.predecessor == from => {
                state.ring.seal(end);
                self.end_take_over(&cell, &mut state);
            }
            _ => {}
        }
    }
}
