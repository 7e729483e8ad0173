//! An edge's state, sans-IO: how a consumer that does not own a topic
//! follows its owner's stream over a peer link. Events go in (a local
//! subscriber wants the topic, the upstream answers, a message or `moved`
//! arrives, a link goes down or up, the view names another owner, a timer
//! fires); effects come out (subscribe or unsubscribe upstream, wake the
//! waiting subscribes, tell local subscribers of a gap or a stall, relay a
//! `moved`, set a timer). No sockets and no clock: the driver is
//! `topics::edge`, and every transition has a row in the tests below.
//!
//! How an edge follows the owner:
//! - **A new edge mirrors the owner's history.** Its first subscribe asks
//!   for the start of the owner's epoch; the owner's ack says where that
//!   replay starts (`replay`) and where live messages start (the topic's
//!   position). The replayed messages are kept in the edge's ring but not
//!   fanned out; the edge is ready once it caught up. A local subscriber
//!   that resumes with `since` is then served from that ring, exactly as
//!   at the owner.
//! - **A lost upstream is resumed** from the last position received. If the
//!   owner can replay everything after it, nothing shows; if not (it
//!   restarted and lost its history), local subscribers get one `gap`
//!   notice for this topic and the stream goes on.
//! - **While the upstream is unreachable** local subscribers are told
//!   (`stalled`), and told again when it flows (`resumed`).
//! - **Ownership moves** (the view names another owner): the edge follows
//!   the old owner until its `moved` (the end of its epoch), then re-points,
//!   keeping the old upstream until the new one acks (no gap).

use std::time::Duration;

use shardq_protocol::Position;

use crate::history::Ring;

/// How long an edge waits for the old owner's `moved` before re-pointing.
pub const SEAL_PATIENCE: Duration = Duration::from_secs(5);
/// Pause before asking an upstream again after it refused.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The start of the owner's current epoch (what a new edge asks for).
const EPOCH_START: Position = Position {
    epoch: 0,
    offset: 0,
};

/// The subscription at the consumer an edge follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The consumer.
    pub peer: String,
    /// The subscribe sent and not answered yet.
    pub request: Option<u64>,
    /// It acked the subscription: its messages flow.
    pub acked: bool,
    /// It sent `moved`: its epoch ended and it relays the next owner.
    pub sealed: bool,
    /// The subscribe resumed a stream this edge already had (a gap in the
    /// answer is a gap for local subscribers).
    pub resuming: bool,
}

/// A notice for the edge's local subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Messages after `after` may be missing; the stream goes on after
    /// `(epoch, offset)`.
    Gap {
        /// The last position delivered.
        after: Position,
        /// Where the stream goes on.
        resume: Position,
    },
    /// The upstream `owner` cannot be reached.
    Stalled {
        /// The consumer.
        owner: String,
    },
    /// The stream flows again.
    Resumed,
}

/// A timer the edge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Stop waiting for the old owner's `moved` and re-point.
    SealPatience,
    /// Ask the upstream again after a refusal.
    Retry,
}

/// What the driver does for the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send `subscribe {id, topic, since}` to consumer `peer`.
    Subscribe {
        /// The consumer.
        peer: String,
        /// Where to start.
        since: Position,
        /// The request id (the answer names it).
        id: u64,
    },
    /// Send `unsubscribe` to consumer `peer`.
    Unsubscribe {
        /// The consumer.
        peer: String,
    },
    /// Wake the subscribes waiting for the edge to be ready.
    Ready,
    /// Send a notice to the local subscribers.
    Notify(Notice),
    /// Relay the `moved` just received to this node's peer subscribers.
    RelayMoved,
    /// Call back with `timer` after `delay`.
    After {
        /// The delay.
        delay: Duration,
        /// Which timer.
        timer: Timer,
    },
}

/// What became of a message from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not for this edge (another upstream, old, or an abandoned epoch).
    Drop,
    /// Keep it in the ring.
    Keep {
        /// Fan it out too: a live message, not mirrored history.
        fan_out: bool,
        /// The mirror is complete with it: wake the waiting subscribes.
        ready: bool,
    },
}

/// The state the edge reads and updates in its topic's cell.
pub struct Stream<'a> {
    /// The last position received (epoch 0: none).
    pub last: &'a mut Position,
    /// The history ring (its sealed epochs).
    pub ring: &'a mut Ring,
}

/// An edge's state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Edge {
    upstream: Option<Upstream>,
    /// The old upstream, kept until `upstream` acks.
    previous: Option<String>,
    /// The owner the view names, while waiting for `upstream`'s `moved`.
    waiting: Option<String>,
    /// The mirror of the owner's history ends here: messages up to it are
    /// kept, not fanned out, and the edge is ready once it is reached.
    catch_up: Option<Position>,
    /// Epochs left without a known end: late messages of theirs are dropped.
    abandoned: Vec<u64>,
    /// The owner local subscribers were told is unreachable.
    stalled: Option<String>,
}

/// Epochs remembered as abandoned.
const ABANDONED_KEPT: usize = 8;

impl Edge {
    /// An edge still subscribed (and acked) at `peer`: a new owner that
    /// was following `peer` and gives the topic back to it.
    pub fn following(peer: String) -> Edge {
        Edge {
            upstream: Some(Upstream {
                peer,
                request: None,
                acked: true,
                sealed: false,
                resuming: false,
            }),
            ..Edge::default()
        }
    }

    /// Whether its subscribers were told the owner is unreachable.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether a new local subscriber can be answered now.
    pub fn is_ready(&self) -> bool {
        let acked = self.upstream.as_ref().is_some_and(|up| up.acked);
        (acked && self.catch_up.is_none()) || self.previous.is_some()
    }

    /// Whether a message from `from` would come from a followed consumer.
    fn follows(&self, from: &str) -> bool {
        self.upstream.as_ref().is_some_and(|up| up.peer == from)
            || self.previous.as_deref() == Some(from)
    }

    /// Where a subscribe to the upstream starts: the owner's epoch start
    /// for a new edge or after a sealed epoch; else after the last message.
    fn since(stream: &Stream<'_>) -> Position {
        let last = *stream.last;
        if last.epoch == 0 || stream.ring.is_sealed(last.epoch) {
            EPOCH_START
        } else {
            last
        }
    }

    /// Local subscribers want the topic: make sure an upstream subscription
    /// is requested (at the current upstream, else at `owner`).
    pub fn want(
        &mut self,
        owner: Option<&str>,
        stream: &Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        if let Some(up) = &self.upstream
            && (up.acked || up.request.is_some())
        {
            return;
        }
        let Some(peer) = self
            .upstream
            .as_ref()
            .map(|up| up.peer.clone())
            .or(owner.map(str::to_owned))
        else {
            return;
        };
        let id = ids();
        let sealed = self.upstream.as_ref().is_some_and(|up| up.sealed);
        out.push(Effect::Subscribe {
            peer: peer.clone(),
            since: Self::since(stream),
            id,
        });
        self.upstream = Some(Upstream {
            peer,
            request: Some(id),
            acked: false,
            sealed,
            resuming: stream.last.epoch != 0,
        });
    }

    /// The subscribe `id` could not be sent (its link is down): it is sent
    /// again when the link is up.
    pub fn unsent(&mut self, id: u64) {
        if let Some(up) = &mut self.upstream
            && up.request == Some(id)
        {
            up.request = None;
        }
    }

    /// No local subscriber is left: drop the upstream subscriptions (the
    /// driver then drops the edge).
    pub fn idle(&mut self, out: &mut Vec<Effect>) {
        for peer in [self.upstream.take().map(|up| up.peer), self.previous.take()]
            .into_iter()
            .flatten()
        {
            out.push(Effect::Unsubscribe { peer });
        }
    }

    /// The link to `peer` is up again: resubscribe where it was lost.
    pub fn link_up(
        &mut self,
        peer: &str,
        stream: &Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        if self
            .upstream
            .as_ref()
            .is_some_and(|up| up.peer == peer && !up.acked && up.request.is_none())
        {
            self.want(None, stream, ids, out);
        }
    }

    /// The link to `peer` went down: its subscription is gone (local
    /// subscribers are told when it was the upstream).
    pub fn link_down(&mut self, peer: &str, out: &mut Vec<Effect>) {
        if self.previous.as_deref() == Some(peer) {
            self.previous = None;
        }
        let Some(up) = &mut self.upstream else {
            return;
        };
        if up.peer != peer {
            return;
        }
        up.acked = false;
        up.request = None;
        if self.stalled.is_none() {
            self.stalled = Some(peer.to_owned());
            out.push(Effect::Notify(Notice::Stalled {
                owner: peer.to_owned(),
            }));
        }
    }

    /// The upstream acked subscribe `id`: live messages start after
    /// `position`; with `since`, the replay starts after `replay` and
    /// `recovered` says whether it covers everything asked for.
    pub fn acked(
        &mut self,
        id: u64,
        position: Position,
        resume: Option<(bool, Position)>,
        stream: &mut Stream<'_>,
        out: &mut Vec<Effect>,
    ) {
        let Some(up) = &mut self.upstream else {
            return;
        };
        if up.request != Some(id) {
            return;
        }
        up.request = None;
        up.acked = true;
        let resuming = std::mem::take(&mut up.resuming);
        if let Some(previous) = self.previous.take() {
            out.push(Effect::Unsubscribe { peer: previous });
        }
        if self.stalled.take().is_some() {
            out.push(Effect::Notify(Notice::Resumed));
        }
        // An owner that answers without `replay` replays nothing.
        let (recovered, replay) = resume.unwrap_or((true, position));
        let last = *stream.last;
        if last.epoch == 0 {
            // A new edge: mirror from where the replay starts.
            *stream.last = replay;
            if replay.epoch == position.epoch && replay.offset < position.offset {
                self.catch_up = Some(position);
                return;
            }
        } else if resuming && !recovered {
            // The upstream cannot replay what this edge missed.
            out.push(Effect::Notify(Notice::Gap {
                after: last,
                resume: replay,
            }));
            if replay.epoch != last.epoch {
                self.abandon(last.epoch);
            }
            *stream.last = replay;
        }
        out.push(Effect::Ready);
    }

    /// The upstream refused subscribe `id` (not the owner yet, or
    /// unavailable): ask again soon.
    pub fn refused(&mut self, id: u64, out: &mut Vec<Effect>) {
        if let Some(up) = &mut self.upstream
            && up.request == Some(id)
        {
            up.request = None;
            out.push(Effect::After {
                delay: RETRY_AFTER,
                timer: Timer::Retry,
            });
        }
    }

    /// A message at `at` from `from`.
    pub fn message(&mut self, from: &str, at: Position, stream: &mut Stream<'_>) -> Fate {
        let last = *stream.last;
        let old = at.epoch == last.epoch && at.offset <= last.offset;
        let ended_epoch = at.epoch != last.epoch
            && (stream.ring.is_sealed(at.epoch) || self.abandoned.contains(&at.epoch));
        if !self.follows(from) || old || ended_epoch {
            return Fate::Drop;
        }
        if at.epoch != last.epoch && last.epoch != 0 && !stream.ring.is_sealed(last.epoch) {
            // A new epoch while the old one never ended cleanly here.
            self.abandon(last.epoch);
        }
        *stream.last = at;
        match self.catch_up {
            Some(end) if at.epoch == end.epoch && at.offset < end.offset => Fate::Keep {
                fan_out: false,
                ready: false,
            },
            Some(end) => {
                // The mirror's last message; or past it, if its end never
                // came (the owner's epoch changed meanwhile).
                self.catch_up = None;
                Fate::Keep {
                    fan_out: at.epoch != end.epoch || at.offset > end.offset,
                    ready: true,
                }
            }
            None => Fate::Keep {
                fan_out: true,
                ready: false,
            },
        }
    }

    /// `from` sent `moved`: its epoch ended at `end`.
    pub fn moved(
        &mut self,
        from: &str,
        end: Position,
        stream: &mut Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(up) = &mut self.upstream else {
            return;
        };
        if up.peer != from {
            return;
        }
        up.sealed = true;
        stream.ring.seal(end);
        out.push(Effect::RelayMoved);
        if let Some(target) = self.waiting.take() {
            self.switch(target, stream, ids, out);
        }
    }

    /// The view names `owner` as the topic's owner (another consumer).
    pub fn view(
        &mut self,
        owner: Option<&str>,
        wanted: bool,
        stream: &Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(target) = owner else {
            return;
        };
        match &self.upstream {
            Some(up) if up.peer == target => {}
            Some(up) if up.sealed => self.switch(target.to_owned(), stream, ids, out),
            Some(_) => {
                // Follow the old owner until its epoch is sealed.
                self.waiting = Some(target.to_owned());
                out.push(Effect::After {
                    delay: SEAL_PATIENCE,
                    timer: Timer::SealPatience,
                });
            }
            None if wanted => self.want(Some(target), stream, ids, out),
            None => {}
        }
    }

    /// A timer the edge asked for fired.
    pub fn timer(
        &mut self,
        timer: Timer,
        stream: &Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        match timer {
            Timer::SealPatience => {
                if let Some(target) = self.waiting.take() {
                    tracing::warn!(%target, "no moved from the old owner in time; switching anyway");
                    self.switch(target, stream, ids, out);
                }
            }
            Timer::Retry => self.want(None, stream, ids, out),
        }
    }

    /// Re-points at `target`: subscribe there, and keep the old upstream
    /// until `target` acks.
    fn switch(
        &mut self,
        target: String,
        stream: &Stream<'_>,
        ids: &mut dyn FnMut() -> u64,
        out: &mut Vec<Effect>,
    ) {
        if let Some(old) = self.previous.take() {
            out.push(Effect::Unsubscribe { peer: old });
        }
        match self.upstream.take() {
            Some(up) if up.acked => self.previous = Some(up.peer),
            Some(up) => out.push(Effect::Unsubscribe { peer: up.peer }),
            None => {}
        }
        self.waiting = None;
        let id = ids();
        out.push(Effect::Subscribe {
            peer: target.clone(),
            since: Self::since(stream),
            id,
        });
        self.upstream = Some(Upstream {
            peer: target,
            request: Some(id),
            acked: false,
            sealed: false,
            resuming: stream.last.epoch != 0,
        });
    }

    /// This node owns the topic now: the upstream to keep following until
    /// its epoch is sealed (if it is acked and not sealed yet), and the
    /// subscriptions to drop.
    pub fn into_predecessor(mut self, out: &mut Vec<Effect>) -> Option<String> {
        if let Some(previous) = self.previous.take() {
            out.push(Effect::Unsubscribe { peer: previous });
        }
        match self.upstream.take() {
            Some(up) if up.acked && !up.sealed => Some(up.peer),
            Some(up) => {
                out.push(Effect::Unsubscribe { peer: up.peer });
                None
            }
            None => None,
        }
    }

    fn abandon(&mut self, epoch: u64) {
        if !self.abandoned.contains(&epoch) {
            self.abandoned.push(epoch);
            if self.abandoned.len() > ABANDONED_KEPT {
                self.abandoned.remove(0);
            }
        }
    }
}

#[cfg(test)]
#[path = "edge_state_tests.rs"]
mod tests;
