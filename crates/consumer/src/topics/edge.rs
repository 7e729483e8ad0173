//! The driver of edges: a node serving a topic it does not own holds one
//! upstream subscription at the owner over a peer link and relays what
//! arrives, the same bytes. The decisions are the sans-IO [`Edge`] machine's
//! (`edge_state`); here they are carried out: subscribes and unsubscribes
//! sent over peer links (and the requests in flight remembered), notices
//! pushed to local subscribers, timers set; and the [`PeerHandler`] that
//! feeds a link's frames and ups and downs in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, Weak};

use shardq_net::codec::encode;
use shardq_net::link::{ConsumerLink, HANDLER_ID_BIT, LinkHandler};
use shardq_net::outbox::FrameBatch;
use shardq_protocol::{
    Frame, Gap, Message, Position, Resumed, Stalled, Subscribe, Topic, TopicFilter, Unsubscribe,
};

use super::cell::{Mode, Owner, TopicCell, TopicState};
use super::edge_state::{Edge, Effect, Fate, Notice, Stream};
use super::{TopicTable, Upstream};

/// An upstream's answer to a subscribe.
pub(super) enum Answer {
    /// Acked: live messages start after `position`; with `since`, the
    /// replay starts after the second position and the bool says whether
    /// it covers everything asked for.
    Acked {
        position: Position,
        resume: Option<(bool, Position)>,
    },
    /// Refused (not the owner yet, unavailable).
    Refused,
}

impl TopicTable {
    /// A fresh request id for the handler's requests on peer links.
    fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed) | HANDLER_ID_BIT
    }

    /// Runs `step` on the cell's edge (if it is one) with its stream, then
    /// carries out the effects.
    pub(super) fn with_edge(
        &self,
        cell: &TopicCell,
        state: &mut TopicState,
        step: impl FnOnce(&mut Edge, &mut Stream<'_>, &mut dyn FnMut() -> u64, &mut Vec<Effect>),
    ) {
        let mut effects = Vec::new();
        {
            let TopicState {
                mode, last, ring, ..
            } = &mut *state;
            let Mode::Edge(edge) = mode else {
                return;
            };
            let mut ids = || self.next_request_id();
            step(edge, &mut Stream { last, ring }, &mut ids, &mut effects);
        }
        self.apply(cell, state, effects);
    }

    /// Carries out an edge's effects (the cell's lock held).
    pub(super) fn apply(&self, cell: &TopicCell, state: &mut TopicState, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Subscribe { peer, since, id } => {
                    if !self.send_subscribe(&peer, &cell.topic, since, id)
                        && let Mode::Edge(edge) = &mut state.mode
                    {
                        edge.unsent(id);
                    }
                }
                Effect::Unsubscribe { peer } => self.send_unsubscribe(&peer, &cell.topic),
                Effect::Ready => cell.ready.notify_waiters(),
                Effect::Notify(notice) => self.notify(cell, state, notice),
                // The caller that received the `moved` relays it.
                Effect::RelayMoved => {}
                Effect::After { delay, timer } => {
                    self.after(
                        delay,
                        &cell.topic,
                        state.generation,
                        move |table, cell, state| {
                            table.with_edge(cell, state, |edge, stream, ids, out| {
                                edge.timer(timer, stream, ids, out)
                            });
                        },
                    );
                }
            }
        }
    }

    /// Makes sure an edge cell with (or about to get) subscribers has an
    /// upstream subscription requested at the owner of this node's view.
    pub(super) fn ensure_upstream(&self, cell: &TopicCell, state: &mut TopicState) {
        let view = self.view.load();
        let owner = view.owner(&cell.topic);
        self.with_edge(cell, state, |edge, stream, ids, out| {
            edge.want(owner, stream, ids, out)
        });
    }

    /// Sends `subscribe {id}` for `topic` to consumer `peer`; `false` when
    /// its link is down (the edge asks again when it is up).
    fn send_subscribe(&self, peer: &str, topic: &Topic, since: Position, id: u64) -> bool {
        let Some(link) = self
            .peers
            .get()
            .and_then(|links| links.current().link(peer).cloned())
        else {
            return false;
        };
        let frame = Frame::Subscribe(Subscribe {
            id,
            topic: TopicFilter::Exact(topic.clone()),
            since: Some(since),
            group: None,
        });
        if !link.send_frame(&frame) {
            return false;
        }
        tracing::debug!(%topic, %peer, ?since, id = id & !HANDLER_ID_BIT, "upstream subscribe sent");
        self.lock_requests().insert(
            id,
            Upstream {
                peer: peer.to_owned(),
                topic: topic.clone(),
            },
        );
        true
    }

    /// Sends `unsubscribe` for `topic` to consumer `peer` (best effort).
    pub(super) fn send_unsubscribe(&self, peer: &str, topic: &Topic) {
        let Some(link) = self
            .peers
            .get()
            .and_then(|links| links.current().link(peer).cloned())
        else {
            return;
        };
        link.send_frame(&Frame::Unsubscribe(Unsubscribe {
            id: self.next_request_id(),
            topic: TopicFilter::Exact(topic.clone()),
        }));
    }

    pub(super) fn lock_requests(&self) -> MutexGuard<'_, HashMap<u64, Upstream>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pushes a notice to the cell's local subscribers (not to peer
    /// consumers, and not to legacy subscribers, whose dialect has none).
    fn notify(&self, cell: &TopicCell, state: &TopicState, notice: Notice) {
        let topic = cell.topic.clone();
        let frame = match notice {
            Notice::Gap { after, resume } => {
                self.metrics.gaps_reported.inc();
                tracing::warn!(%topic, ?after, ?resume, "the upstream could not replay what this edge missed; subscribers are told");
                Frame::Gap(Gap {
                    topic,
                    after,
                    epoch: resume.epoch,
                    offset: resume.offset,
                })
            }
            Notice::Stalled { owner } => Frame::Stalled(Stalled { topic, owner }),
            Notice::Resumed => Frame::Resumed(Resumed { topic }),
        };
        let frame = encode::text_frame(frame.encode().as_bytes());
        for subscriber in state
            .subscribers
            .iter()
            .filter(|s| !s.peer && s.legacy_name.is_none())
        {
            let _ = subscriber.outbox.push(frame.clone());
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
        let fan_out = match &mut state.mode {
            Mode::Edge(_) => {
                let TopicState {
                    mode, last, ring, ..
                } = &mut *state;
                let Mode::Edge(edge) = mode else { return };
                match edge.message(from, at, &mut Stream { last, ring }) {
                    Fate::Drop => return,
                    Fate::Keep { fan_out, ready } => {
                        if ready {
                            cell.ready.notify_waiters();
                        }
                        fan_out
                    }
                }
            }
            Mode::Owner(Owner {
                deferred: Some(deferred),
            }) => {
                let in_order = at.epoch != deferred.last.epoch || at.offset > deferred.last.offset;
                if deferred.predecessor != from || !in_order {
                    return;
                }
                deferred.last = at;
                true
            }
            Mode::Owner(_) => return,
        };
        let frame = encode::text_frame(text.as_bytes());
        if fan_out && !state.subscribers.is_empty() {
            let batch = FrameBatch::new(vec![frame.clone()]);
            self.fan_out(&state.subscribers, &batch, &[&*message.payload]);
        }
        self.retain(&cell, &mut state, at, frame);
        drop(state);
        self.evict_over_budget();
    }

    /// The answer to an upstream subscribe.
    fn on_answer(&self, id: u64, answer: Answer) {
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
        self.with_edge(&cell, &mut state, |edge, stream, _, out| match answer {
            Answer::Acked { position, resume } => edge.acked(id, position, resume, stream, out),
            Answer::Refused => edge.refused(id, out),
        });
    }

    /// A peer link (re)connected: send what its edges need.
    fn on_link_up(&self, peer: &str) {
        for cell in self.cells() {
            let mut state = cell.lock();
            if state.removed {
                continue;
            }
            self.sync(&cell, &mut state);
            self.with_edge(&cell, &mut state, |edge, stream, ids, out| {
                edge.link_up(peer, stream, ids, out)
            });
        }
    }

    /// A peer link broke: its edges wait for it to come back (and then
    /// resume), their subscribers told; a take-over waiting on it stops
    /// waiting.
    pub(super) fn on_link_down(&self, peer: &str) {
        // Requests that went out on it will get no answer: forget them
        // (edges ask again when it is back).
        self.lock_requests()
            .retain(|_, upstream| upstream.peer != peer);
        for cell in self.cells() {
            let mut state = cell.lock();
            if state.removed {
                continue;
            }
            if let Mode::Owner(Owner {
                deferred: Some(deferred),
            }) = &state.mode
                && deferred.predecessor == peer
            {
                tracing::warn!(topic = %cell.topic, %peer, "old owner unreachable during take-over; sending what was held");
                self.end_take_over(&cell, &mut state);
                continue;
            }
            self.with_edge(&cell, &mut state, |edge, _, _, out| {
                edge.link_down(peer, out)
            });
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
                let position = ack
                    .topics
                    .as_ref()
                    .and_then(|topics| topics.first())
                    .map(|topic| Position {
                        epoch: topic.epoch,
                        offset: topic.offset,
                    });
                let answer = match position {
                    Some(position) => Answer::Acked {
                        position,
                        resume: ack.recovered.zip(ack.replay),
                    },
                    // An ack without the topic's position is no answer
                    // this edge can follow.
                    None => Answer::Refused,
                };
                table.on_answer(ack.id, answer);
            }
            Frame::Error(error) => {
                if let Some(id) = error.id {
                    tracing::debug!(link = %link.id, code = %error.code, message = %error.message, "upstream refused");
                    table.on_answer(id, Answer::Refused);
                }
            }
            _ => {}
        }
    }
}
