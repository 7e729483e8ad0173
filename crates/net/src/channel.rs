//! An authenticated connection's event loop helper: the next text message,
//! with keepalive pings, the stop signal and the outbox closing folded in.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use shardq_protocol::{CloseCode, Frame, Limits};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::codec::{Text, encode};
use crate::conn::{Incoming, Reader, binary_refusal};
use crate::outbox::{Outbox, PushError};

/// How an authenticated connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed or the socket broke.
    Peer,
    /// The node closed it with this code.
    Closed(CloseCode),
    /// The node is stopping: nothing more is read; the caller finishes what
    /// is in flight and closes (usually with "going away").
    Stopped,
}

/// How a connection's peer is checked for life: a ping every `ping_every`,
/// and the connection is closed (4009) after `down_after` in which nothing
/// at all arrived from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Interval between pings.
    pub ping_every: Duration,
    /// Silence after which the peer is declared gone.
    pub down_after: Duration,
}

impl Liveness {
    /// For clients (publishers, subscribers): `ping_interval_ms`, and gone
    /// after `max_missed_pongs` pings in a row went unanswered.
    pub fn clients(limits: &Limits) -> Liveness {
        let ping_every = limits.ping_interval();
        Liveness {
            ping_every,
            down_after: ping_every.saturating_mul(limits.max_missed_pongs.saturating_add(1)),
        }
    }

    /// For node-to-node links (both ends): `link_ping_interval_ms` and
    /// `link_down_after_ms`, so a hung or cut-off node is noticed in seconds.
    pub fn links(limits: &Limits) -> Liveness {
        Liveness {
            ping_every: limits.link_ping_interval(),
            down_after: limits.link_down_after(),
        }
    }
}

/// Reader, outbox and keepalive of one authenticated connection.
pub struct Channel {
    reader: Reader,
    /// An event [`try_next_text`](Channel::try_next_text) read but could not return.
    pending: Option<Incoming>,
    outbox: Arc<Outbox>,
    ping: Interval,
    down_after: Duration,
    stop: CancellationToken,
}

impl Channel {
    /// Wraps a connection whose handshake just succeeded: lifts the
    /// pre-auth limits and checks the peer's life as `liveness` says.
    pub fn new(
        mut reader: Reader,
        outbox: Arc<Outbox>,
        liveness: Liveness,
        stop: CancellationToken,
    ) -> Channel {
        reader.authenticated();
        let every = liveness.ping_every;
        let mut ping = interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Channel {
            reader,
            pending: None,
            outbox,
            ping,
            down_after: liveness.down_after,
            stop,
        }
    }

    /// After the stop signal: keeps reading until `done` completes (what
    /// the connection has in flight is answered) or `patience` passes, and
    /// answers every frame the peer still sends with `refusal` (e.g.
    /// `shutting_down`, carrying its id): nothing the node read goes
    /// unanswered. `false` when `patience` ran out first.
    pub async fn drain_refusing(
        &mut self,
        done: impl Future<Output = ()>,
        patience: Duration,
        refusal: impl Fn(&str) -> Frame,
    ) -> bool {
        // The stop signal has fired: read on regardless of it.
        self.stop = CancellationToken::new();
        let deadline = Instant::now() + patience;
        tokio::pin!(done);
        let finished = loop {
            tokio::select! {
                () = &mut done => break true,
                text = self.next_text() => match text {
                    Ok(text) => {
                        let _ = self.send(&refusal(&text));
                    }
                    // The peer is gone: nothing more to answer.
                    Err(_) => break true,
                },
                () = tokio::time::sleep_until(deadline) => break false,
            }
        };
        // What already arrived is answered too.
        while let Some(text) = self.try_next_text() {
            let _ = self.send(&refusal(&text));
        }
        finished
    }

    /// The connection's outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The next text message, or how the connection ended (the close is
    /// already arranged).
    pub async fn next_text(&mut self) -> Result<Text, Ended> {
        if let Some(incoming) = self.pending.take()
            && let Some(result) = self.take(incoming)
        {
            return result;
        }
        if self.outbox.is_backed_up() {
            // The peer is not reading what we send: stop reading what it
            // sends until it catches up (TCP backpressure), instead of
            // queueing answers without bound.
            tokio::select! {
                () = self.outbox.drained() => {}
                () = self.stop.cancelled() => return Err(Ended::Stopped),
            }
            if self.outbox.is_closed() {
                return Err(Ended::Closed(
                    self.outbox.close_code().unwrap_or(CloseCode::Normal),
                ));
            }
        }
        loop {
            tokio::select! {
                incoming = self.reader.next() => {
                    if let Some(result) = self.take(incoming) {
                        return result;
                    }
                }
                _ = self.ping.tick() => {
                    if self.reader.last_read().elapsed() >= self.down_after {
                        return Err(self.close(CloseCode::PingTimeout));
                    }
                    let _ = self.outbox.push_unbounded(encode::ping_frame(self.outbox.role()));
                }
                () = self.outbox.closed() => {
                    return Err(Ended::Closed(self.outbox.close_code().unwrap_or(CloseCode::Normal)));
                }
                () = self.stop.cancelled() => return Err(Ended::Stopped),
            }
        }
    }

    /// A text message that is already here, without waiting: for reading a
    /// burst of frames and handling them together.
    pub fn try_next_text(&mut self) -> Option<Text> {
        if self.pending.is_some() {
            return None;
        }
        loop {
            // What is buffered first; then one read that does not wait.
            let incoming = match self.reader.next_buffered() {
                Some(incoming) => incoming,
                None => self.reader.next().now_or_never()?,
            };
            match incoming {
                Incoming::Text(text) => return Some(text),
                Incoming::Pong => {}
                other => {
                    self.pending = Some(other);
                    return None;
                }
            }
        }
    }

    /// Handles one event: `Some` ends the wait for text.
    fn take(&mut self, incoming: Incoming) -> Option<Result<Text, Ended>> {
        match incoming {
            Incoming::Text(text) => Some(Ok(text)),
            Incoming::Pong => None,
            Incoming::Binary => {
                let _ = self.send(&binary_refusal());
                None
            }
            Incoming::PeerClosed(_) | Incoming::Closed => {
                self.outbox.finish();
                Some(Err(Ended::Peer))
            }
            Incoming::Violation(code, why) => {
                crate::log_summary::PROTOCOL_BREACHES.note(&why);
                Some(Err(self.close(code)))
            }
        }
    }

    /// Queues a frame (bounded by the outbox limit).
    pub fn send(&self, frame: &Frame) -> Result<(), PushError> {
        self.outbox
            .push(encode::text_frame(frame.encode().as_bytes()))
    }

    /// After the node closed the connection: reads (and drops) what the peer
    /// still sends until it answers the close or `grace` passes. Closing a
    /// socket with unread input makes the kernel reset it, and the reset can
    /// destroy the answers and close frame still on their way to the peer.
    pub async fn linger(mut self, grace: Duration) {
        let _ = tokio::time::timeout(grace, async {
            loop {
                match self.reader.next().await {
                    Incoming::Closed | Incoming::PeerClosed(_) | Incoming::Violation(..) => return,
                    Incoming::Text(_) | Incoming::Binary | Incoming::Pong => {}
                }
            }
        })
        .await;
    }

    /// Closes with `code` after what is queued.
    pub fn close(&self, code: CloseCode) -> Ended {
        self.outbox.close(code);
        Ended::Closed(code)
    }
}
