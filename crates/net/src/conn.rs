//! One WebSocket connection after its upgrade: the accept loop that
//! starts each, its per-connection limits, and the [`Reader`] that turns
//! the socket's read half into text messages and keepalive events (the
//! write half belongs to the connection's writer task, see [`crate::writer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use shardq_protocol::{CloseCode, ErrorCode, Frame, Limits};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::codec::{Decoder, Text, WsError, WsMessage, encode};
use crate::gate::{Admission, Gate};
use crate::outbox::Outbox;
use crate::tls::ReadHalf;
use crate::writer::WriteLimit;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Largest frame before authentication.
    pub preauth_frame_bytes: usize,
    /// Largest frame after authentication.
    pub max_frame_bytes: usize,
    /// Outbox bound (the slow-consumer threshold).
    pub outbox_bytes: usize,
    /// Most bytes queued for a peer before it authenticated (pongs
    /// included): beyond, pings go unanswered.
    pub preauth_output_bytes: usize,
    /// The writer's write timeout and its counter.
    pub write: WriteLimit,
}

impl From<&Limits> for ConnLimits {
    fn from(limits: &Limits) -> ConnLimits {
        ConnLimits {
            preauth_frame_bytes: limits.max_preauth_frame_bytes,
            max_frame_bytes: limits.max_frame_bytes,
            outbox_bytes: limits.subscriber_buffer_bytes,
            preauth_output_bytes: limits.max_preauth_output_bytes,
            write: WriteLimit {
                timeout: limits.write_timeout(),
                timeouts: Counter::default(),
            },
        }
    }
}

/// Accepts connections forever, each admitted by `gate` and served by
/// `serve` in a task of `tasks`; one over a cap is closed at once. A failed
/// accept (out of file descriptors and the like) is logged, and accepting
/// resumes after a pause.
pub async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    tasks: &TaskTracker,
    gate: &Arc<Gate>,
    serve: F,
) where
    F: Fn(TcpStream, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if let Ok(admission) = gate.admit(addr.ip()) {
                    tasks.spawn(serve(stream, admission));
                }
            }
            Err(error) => {
                crate::log_summary::ACCEPT_FAILURES.note(&error.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An upgraded connection.
pub struct Connection {
    /// The request path (without the query string).
    pub path: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The read side, as WebSocket messages.
    pub reader: Reader,
    /// The write side: queue complete frames here.
    pub outbox: Arc<Outbox>,
    /// Whether the connection is over TLS.
    pub tls: bool,
}

/// What the reader yields.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(Text),
    /// A binary message (refused with `bad_frame`; the connection stays open).
    Binary,
    /// A pong (the peer is alive).
    Pong,
    /// The peer sent a close frame, with its status code if it gave one
    /// (the reader already answered it): finish the outbox without another
    /// close frame.
    PeerClosed(Option<u16>),
    /// The connection broke.
    Closed,
    /// The peer violated a limit or the WebSocket protocol: close with this code.
    Violation(CloseCode, String),
}

/// The answer to a binary message (`bad_frame`, no id).
pub fn binary_refusal() -> Frame {
    Frame::error(
        None,
        ErrorCode::BadFrame,
        "binary messages are not accepted: send each frame as a text message",
    )
}

/// Room for each read before authentication: the pre-auth limit is small,
/// so is what an unauthenticated peer can make the node buffer.
const PREAUTH_READ_CHUNK: usize = 1024;

/// The read side of a connection: frames decoded straight out of one
/// buffer. Pings are answered and a peer's close is echoed through the
/// outbox, so the writer task stays the only one writing the socket.
pub struct Reader {
    read: ReadHalf,
    decoder: Decoder,
    outbox: Arc<Outbox>,
    /// Room reserved before a read.
    read_chunk: usize,
    /// `read_chunk` once authenticated.
    authenticated_chunk: usize,
    /// The message limit once authenticated.
    max_frame_bytes: usize,
    /// Most bytes queued before authentication for pongs to be sent.
    preauth_output_bytes: usize,
    authenticated: bool,
    /// When bytes last arrived from the peer (its sign of life).
    last_read: Instant,
    /// The connection's places under the node's caps (accepted ones only).
    admission: Option<Admission>,
}

impl Reader {
    /// The next message. Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        loop {
            if let Some(incoming) = self.decoded() {
                return incoming;
            }
            // Room for a read's worth, or for more of a large frame: at
            // most 64 KiB more at a time, so a frame announced large but
            // sent slowly holds only what actually arrived.
            let room = self
                .decoder
                .wanted()
                .min(LINK_READ_CHUNK)
                .max(self.read_chunk);
            let buffer = self.decoder.buffer();
            buffer.reserve(room);
            match self.read.read_buf(buffer).await {
                Ok(0) | Err(_) => return Incoming::Closed,
                Ok(_) => self.last_read = Instant::now(),
            }
        }
    }

    /// A message already received, without reading the socket.
    pub fn next_buffered(&mut self) -> Option<Incoming> {
        self.decoded()
    }

    /// Decodes what is buffered: the next message, if one is complete.
    /// Pings are answered here.
    fn decoded(&mut self) -> Option<Incoming> {
        loop {
            let message = match self.decoder.decode() {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(WsError::TooLarge { .. }) if !self.authenticated => {
                    return Some(Incoming::Violation(
                        CloseCode::FrameTooLarge,
                        "frame too large before authentication".into(),
                    ));
                }
                Err(error @ WsError::TooLarge { .. }) => {
                    return Some(Incoming::Violation(
                        CloseCode::FrameTooLarge,
                        error.to_string(),
                    ));
                }
                Err(error @ WsError::Protocol(_)) => {
                    return Some(Incoming::Violation(
                        CloseCode::ProtocolError,
                        error.to_string(),
                    ));
                }
            };
            return Some(match message {
                WsMessage::Text(text) => Incoming::Text(text),
                WsMessage::Binary(_) => Incoming::Binary,
                WsMessage::Ping(payload) => {
                    // A peer that pings without reading gets no more pongs
                    // once its outbox is backed up (RFC 6455 lets a node
                    // answer only the latest ping), so pings cannot make it
                    // queue without bound; before authentication it gets
                    // none beyond a few KiB queued.
                    let room = self.authenticated
                        || self.outbox.pending_bytes() < self.preauth_output_bytes;
                    if room && !self.outbox.is_backed_up() {
                        let pong = encode::pong_frame(&payload, self.outbox.role());
                        let _ = self.outbox.push_unbounded(pong);
                    }
                    continue;
                }
                WsMessage::Pong => Incoming::Pong,
                WsMessage::Close(code) => {
                    // Refused when the node closed first: then the peer's
                    // close is the answer to ours.
                    let reply = encode::close_reply(code, self.outbox.role());
                    let _ = self.outbox.push_unbounded(reply);
                    Incoming::PeerClosed(code)
                }
            });
        }
    }

    /// The read side of a connection a node accepted, right after the
    /// upgrade: pre-auth limits until [`authenticated`](Self::authenticated),
    /// then `read_chunk` bytes of room per read.
    pub(crate) fn server(
        read: ReadHalf,
        decoder: Decoder,
        outbox: Arc<Outbox>,
        read_chunk: usize,
        limits: &ConnLimits,
        admission: Option<Admission>,
    ) -> Reader {
        Reader {
            read,
            decoder,
            outbox,
            read_chunk: PREAUTH_READ_CHUNK,
            authenticated_chunk: read_chunk,
            max_frame_bytes: limits.max_frame_bytes,
            preauth_output_bytes: limits.preauth_output_bytes,
            authenticated: false,
            last_read: Instant::now(),
            admission,
        }
    }

    /// The read side of a connection this node opened as a client (right
    /// after the upgrade; `buffered` holds what came behind the response
    /// head): frames from the server are unmasked, and pongs go to
    /// `outbox`, which must have the client role.
    pub fn client(
        read: ReadHalf,
        buffered: BytesMut,
        outbox: Arc<Outbox>,
        max_frame_bytes: usize,
    ) -> Reader {
        Reader {
            read,
            decoder: Decoder::new(false, max_frame_bytes, buffered),
            outbox,
            read_chunk: LINK_READ_CHUNK,
            authenticated_chunk: LINK_READ_CHUNK,
            max_frame_bytes,
            preauth_output_bytes: usize::MAX,
            authenticated: true,
            last_read: Instant::now(),
            admission: None,
        }
    }

    /// When bytes last arrived from the peer.
    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The peer authenticated: lift the pre-auth limits.
    pub fn authenticated(&mut self) {
        self.authenticated = true;
        if let Some(admission) = &mut self.admission {
            admission.authenticated();
        }
        self.read_chunk = self.authenticated_chunk;
        self.decoder.set_limit(self.max_frame_bytes);
    }
}

/// Room for each read on a link: links carry bulk traffic.
const LINK_READ_CHUNK: usize = 64 << 10;
