//! Edges: a node serving a topic it does not own holds one upstream
//! subscription at the owner over a peer link and relays what arrives, the
//! same bytes. Here: asking upstreams (and the requests in flight), taking
//! their messages and answers, following peer links up and down, and the
//! [`PeerHandler`] that feeds a link's frames in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, Weak};

use shardq_net::codec::encode;
use shardq_net::link::{ConsumerLink, HANDLER_ID_BIT, LinkHandler};
use shardq_net::outbox::FrameBatch;
use shardq_protocol::{
    CloseCode, Frame, Message, Position, Subscribe, Topic, TopicFilter, TopicPosition, Unsubscribe,
};

use super::cell::{Mode, Owner, TopicCell, TopicState};
use super::{RETRY_AFTER, TopicTable, Upstream};

impl TopicTable {
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
        self.lock_requests().insert(
            id,
            Upstream {
                peer: peer.to_owned(),
                topic: topic.clone(),
            },
        );
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

    pub(super) fn lock_requests(&self) -> MutexGuard<'_, HashMap<u64, Upstream>> {
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

    /// A message from an upstream (or a predecessor still finishing);
    /// `text` is its frame as it arrived, relayed byte for byte.
    fn on_message(&self, from: &str, message: Message, text: &str) {
        let Some(cell) = self.existing(message.topic.as_str()) else {
            return;
        };
        let mut state = cell.lock();
        if state.removed {
            return;
        }
        self.sync(&cell, &mut state);
        let at = message.position();
        match &mut state.mode {
            Mode::Edge(edge) => {
                let from_us = edge.upstream.as_deref() == Some(from)
                    || edge.previous.as_deref() == Some(from);
                let old = at.epoch == state.last.epoch && at.offset <= state.last.offset;
                let sealed_epoch = at.epoch != state.last.epoch && state.ring.is_sealed(at.epoch);
                if !from_us || old || sealed_epoch {
                    return;
                }
                let last = state.last;
                if at.epoch != last.epoch && last.epoch != 0 && !state.ring.is_sealed(last.epoch) {
                    // A new epoch without a seal of the one before: the old
                    // upstream's tail is unknown from here on.
                    state.ring.seal(last);
                }
                state.last = at;
            }
            Mode::Owner(Owner {
                deferred: Some(deferred),
            }) => {
                let in_order = at.epoch != deferred.last.epoch || at.offset > deferred.last.offset;
                if deferred.predecessor != from || !in_order {
                    return;
                }
                deferred.last = at;
            }
            Mode::Owner(_) => return,
        }
        let frame = encode::text_frame(text.as_bytes());
        if !state.subscribers.is_empty() {
            let batch = FrameBatch::new(vec![frame.clone()]);
            self.fan_out(&state.subscribers, &batch, &[&*message.payload]);
        }
        self.retain(&cell, &mut state, at, frame);
        drop(state);
        self.evict_over_budget();
    }

    /// The answer to an upstream subscribe.
    fn on_answer(&self, id: u64, positions: Option<Vec<TopicPosition>>, recovered: Option<bool>) {
        let Some(Upstream { topic, .. }) = self.lock_requests().remove(&id) else {
            tracing::debug!(
                id = id & !HANDLER_ID_BIT,
                "answer to an unknown upstream request"
            );
            return;
        };
        let Some(cell) = self.existing(topic.as_str()) else {
            tracing::debug!(%topic, "upstream answered for a topic no longer served");
            return;
        };
        let mut state = cell.lock();
        self.sync(&cell, &mut state);
        let last = state.last;
        tracing::debug!(%topic, id = id & !HANDLER_ID_BIT, ?positions, ?recovered, ?last, "upstream answered");
        let Mode::Edge(edge) = &mut state.mode else {
            return;
        };
        if edge.request != Some(id) {
            return;
        }
        edge.request = None;
        match positions {
            Some(positions) => {
                edge.acked = true;
                if let Some(previous) = edge.previous.take() {
                    self.send_unsubscribe(&previous, &topic);
                }
                let resumed = edge.resuming;
                edge.resuming = false;
                if last.epoch == 0
                    && let Some(position) = positions.first()
                {
                    state.last = Position {
                        epoch: position.epoch,
                        offset: position.offset,
                    };
                }
                if resumed && recovered == Some(false) {
                    tracing::warn!(%topic, "upstream could not replay what this edge missed; subscribers resync");
                    self.resync(&mut state);
                }
                cell.ready.notify_waiters();
            }
            None => {
                // Refused (not the owner yet, or unavailable): ask again soon.
                let generation = state.generation;
                self.after(RETRY_AFTER, &topic, generation, |table, cell, state| {
                    table.ensure_upstream(cell, state, None);
                });
            }
        }
    }

    /// A peer link (re)connected: send what its edges need.
    fn on_link_up(&self, peer: &str) {
        for cell in self.cells() {
            let mut state = cell.lock();
            if state.removed {
                continue;
            }
            self.sync(&cell, &mut state);
            if let Mode::Edge(edge) = &state.mode
                && edge.upstream.as_deref() == Some(peer)
                && !edge.acked
                && edge.request.is_none()
            {
                self.ensure_upstream(&cell, &mut state, None);
            }
        }
    }

    /// A peer link broke: its edges wait for it to come back (and then
    /// resume); a take-over waiting on it stops waiting.
    pub(super) fn on_link_down(&self, peer: &str) {
        // Requests that went out on it will get no answer: forget them
        // (edges ask again when it is back).
        self.lock_requests()
            .retain(|_, upstream| upstream.peer != peer);
        for cell in self.cells() {
            let mut state = cell.lock();
            match &mut state.mode {
                Mode::Edge(edge) => {
                    if edge.previous.as_deref() == Some(peer) {
                        edge.previous = None;
                    }
                    if edge.upstream.as_deref() == Some(peer) {
                        edge.acked = false;
                        edge.request = None;
                    }
                }
                Mode::Owner(Owner {
                    deferred: Some(deferred),
                }) if deferred.predecessor == peer => {
                    tracing::warn!(topic = %cell.topic, %peer, "old owner unreachable during take-over; sending what was held");
                    self.end_take_over(&cell, &mut state);
                }
                _ => {}
            }
        }
    }
}

/// The consumer's handler for its peer links.
pub struct PeerHandler {
    table: Weak<TopicTable>,
}

impl PeerHandler {
    /// A handler feeding `table`.
    pub fn new(table: &Arc<TopicTable>) -> PeerHandler {
        PeerHandler {
            table: Arc::downgrade(table),
        }
    }
}

impl LinkHandler for PeerHandler {
    fn on_up(&self, link: &Arc<ConsumerLink>) {
        if let Some(table) = self.table.upgrade() {
            table.on_link_up(&link.id);
        }
    }

    fn on_down(&self, link: &Arc<ConsumerLink>) {
        if let Some(table) = self.table.upgrade() {
            table.on_link_down(&link.id);
        }
    }

    fn on_frame(&self, link: &Arc<ConsumerLink>, frame: Frame, text: &str) {
        let Some(table) = self.table.upgrade() else {
            return;
        };
        match frame {
            Frame::Message(message) => table.on_message(&link.id, message, text),
            Frame::Moved(moved) => table.on_moved(&link.id, moved),
            Frame::Ack(ack) => {
                table.on_answer(ack.id, Some(ack.topics.unwrap_or_default()), ack.recovered)
            }
            Frame::Error(error) => {
                if let Some(id) = error.id {
                    tracing::debug!(link = %link.id, code = %error.code, message = %error.message, "upstream refused");
                    table.on_answer(id, None, None);
                }
            }
            _ => {}
        }
    }
}
