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

/// Reader, outbox and keepalive of one authenticated connection.
pub struct Channel {
    reader: Reader,
    /// An event [`try_next_text`](Channel::try_next_text) read but could not return.
    pending: Option<Incoming>,
    outbox: Arc<Outbox>,
    ping: Interval,
    missed_pongs: u32,
    max_missed_pongs: u32,
    stop: CancellationToken,
}

impl Channel {
    /// Wraps a connection whose handshake just succeeded: lifts the
    /// pre-auth limits and pings every `limits.ping_interval_ms`.
    pub fn new(
        mut reader: Reader,
        outbox: Arc<Outbox>,
        limits: &Limits,
        stop: CancellationToken,
    ) -> Channel {
        reader.authenticated();
        let ping_interval = limits.ping_interval();
        let max_missed_pongs = limits.max_missed_pongs;
        let mut ping = interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Channel {
            reader,
            pending: None,
            outbox,
            ping,
            missed_pongs: 0,
            max_missed_pongs,
            stop,
        }
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
                    if self.missed_pongs >= self.max_missed_pongs {
                        return Err(self.close(CloseCode::PingTimeout));
                    }
                    self.missed_pongs += 1;
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
                Incoming::Pong => self.missed_pongs = 0,
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
            Incoming::Pong => {
                self.missed_pongs = 0;
                None
            }
            Incoming::Binary => {
                let _ = self.send(&binary_refusal());
                None
            }
            Incoming::PeerClosed(_) | Incoming::Closed => {
                self.outbox.finish();
                Some(Err(Ended::Peer))
            }
            Incoming::Violation(code, why) => {
                tracing::info!(%why, "closing connection: the peer broke the protocol");
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
