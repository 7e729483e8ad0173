//! One server-side WebSocket connection: the HTTP upgrade, the writer task
//! that owns the socket's write half, and a reader that turns the read half
//! into text messages and keepalive events.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shardq_protocol::{CloseCode, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::task::TaskTracker;

use super::outbox::{Chunk, Drained, Outbox};
use super::ws::{self, BUDGET_EXCEEDED, SocketIo};

/// Most bytes an HTTP upgrade request may take.
const UPGRADE_REQUEST_BUDGET: usize = 8 << 10;
/// How long a closing connection may take to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Largest frame before authentication.
    pub preauth_frame_bytes: usize,
    /// Largest frame after authentication.
    pub max_frame_bytes: usize,
    /// Outbox bound (the slow-consumer threshold).
    pub outbox_bytes: usize,
}

impl From<&Limits> for ConnLimits {
    fn from(limits: &Limits) -> ConnLimits {
        ConnLimits {
            preauth_frame_bytes: limits.max_preauth_frame_bytes,
            max_frame_bytes: limits.max_frame_bytes,
            outbox_bytes: limits.subscriber_buffer_bytes,
        }
    }
}

/// Accepts connections forever, each served by `serve` in a task of
/// `tasks`. A failed accept (out of file descriptors and the like) is
/// logged, and accepting resumes after a pause.
pub async fn accept_loop<F, Fut>(listener: &TcpListener, tasks: &TaskTracker, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tasks.spawn(serve(stream));
            }
            Err(error) => {
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why an incoming connection did not become a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The upgrade did not finish before the deadline.
    #[error("upgrade timed out")]
    Timeout,
    /// Not a valid WebSocket upgrade, or a path this node does not serve.
    #[error("upgrade refused: {0}")]
    Refused(#[source] tungstenite::Error),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
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
}

/// Upgrades an accepted socket to a WebSocket if `route(path)` names a
/// read buffer size for the path, otherwise answers 404. The writer task is
/// spawned on `tasks` first (it also sends the upgrade response).
///
/// The request line is read here first, so each endpoint gets the read
/// buffer it needs: small for subscribers (most of a node's connections, and
/// mostly idle), large for the publishing links.
pub async fn upgrade(
    mut stream: TcpStream,
    limits: &ConnLimits,
    deadline: Instant,
    route: impl Fn(&str) -> Option<usize>,
    tasks: &TaskTracker,
) -> Result<Connection, UpgradeError> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let head = match timeout_at(deadline, read_request_line(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Err(UpgradeError::Timeout),
    };
    let read_buffer = request_path(&head).and_then(&route);
    let (read, write) = stream.into_split();
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes));
    tasks.spawn(run_writer(write, outbox.clone()));
    let budget = UPGRADE_REQUEST_BUDGET.saturating_sub(head.len());
    let io = SocketIo::new(read, head, outbox.clone(), budget);

    let mut path = None;
    // tungstenite's refusal type is an HTTP response: large, but built once.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let requested = request.uri().path();
        if read_buffer.is_some() {
            path = Some(requested.to_owned());
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some(format!("no endpoint at {requested}\n")));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer.unwrap_or(1024))
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let upgraded = timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config)),
    )
    .await;
    let mut socket = match upgraded {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            outbox.finish();
            return Err(UpgradeError::Refused(error));
        }
        Err(_) => {
            outbox.finish();
            return Err(UpgradeError::Timeout);
        }
    };
    // Frame header (at most 14 bytes from a client) plus the pre-auth limit.
    socket.get_mut().set_budget(limits.preauth_frame_bytes + 14);
    Ok(Connection {
        path: path.unwrap_or_default(),
        peer,
        reader: Reader {
            socket,
            preauth_limit: Some(limits.preauth_frame_bytes),
        },
        outbox,
    })
}

/// Reads from the socket until the HTTP request line is complete (the bytes
/// read are handed on to the upgrade).
async fn read_request_line(stream: &mut TcpStream) -> Result<Vec<u8>, UpgradeError> {
    let mut head = Vec::with_capacity(256);
    loop {
        if head.windows(2).any(|pair| pair == b"\r\n") {
            return Ok(head);
        }
        if head.len() >= UPGRADE_REQUEST_BUDGET {
            return Err(UpgradeError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "request line too long",
            )));
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(UpgradeError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// The path of `GET <path>[?query] HTTP/1.1`, if the line is one.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        return None;
    }
    target.split('?').next()
}

/// What the reader yields.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(Utf8Bytes),
    /// A pong (the peer is alive).
    Pong,
    /// The peer sent a close frame (tungstenite already answered it): finish
    /// the outbox without another close frame.
    PeerClosed,
    /// The connection broke.
    Closed,
    /// The peer violated a limit or the WebSocket protocol: close with this code.
    Violation(CloseCode, String),
}

/// The read side of a connection.
pub struct Reader {
    socket: WebSocketStream<SocketIo>,
    preauth_limit: Option<usize>,
}

impl Reader {
    /// The next message. Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        loop {
            let Some(item) = self.socket.next().await else {
                return Incoming::Closed;
            };
            return match item {
                Ok(Message::Text(text)) => {
                    if self.preauth_limit.is_some_and(|limit| text.len() > limit) {
                        Incoming::Violation(CloseCode::FrameTooLarge, "frame too large".into())
                    } else {
                        Incoming::Text(text)
                    }
                }
                Ok(Message::Binary(_)) => Incoming::Violation(
                    CloseCode::ProtocolError,
                    "binary messages are not accepted".into(),
                ),
                Ok(Message::Pong(_)) => Incoming::Pong,
                // Pings are answered by tungstenite through the outbox.
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => Incoming::PeerClosed,
                Err(tungstenite::Error::Capacity(error)) => {
                    Incoming::Violation(CloseCode::FrameTooLarge, error.to_string())
                }
                Err(tungstenite::Error::Io(error)) if error.kind() == BUDGET_EXCEEDED => {
                    Incoming::Violation(
                        CloseCode::FrameTooLarge,
                        "frame too large before authentication".into(),
                    )
                }
                // The peer went away without a close frame: not a violation.
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => Incoming::Closed,
                Err(error @ (tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_))) => {
                    Incoming::Violation(CloseCode::ProtocolError, error.to_string())
                }
                Err(_) => Incoming::Closed,
            };
        }
    }

    /// The read side of a client connection this node opened (the upgrade
    /// and handshake already done): tungstenite reads, and its pongs go to
    /// `outbox`, which must have the client role.
    pub async fn client(
        read: OwnedReadHalf,
        outbox: Arc<Outbox>,
        max_frame_bytes: usize,
    ) -> Reader {
        let mut io = SocketIo::new(read, Vec::new(), outbox, 0);
        io.lift_budget();
        let config = WebSocketConfig::default()
            .read_buffer_size(64 << 10)
            .write_buffer_size(0)
            .max_message_size(Some(max_frame_bytes))
            .max_frame_size(Some(max_frame_bytes));
        let socket = WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await;
        Reader {
            socket,
            preauth_limit: None,
        }
    }

    /// The peer authenticated: lift the pre-auth limits.
    pub fn authenticated(&mut self) {
        self.preauth_limit = None;
        self.socket.get_mut().lift_budget();
    }
}

/// Starts the writer task of a connection on `tasks`.
pub fn spawn_writer(socket: OwnedWriteHalf, outbox: Arc<Outbox>, tasks: &TaskTracker) {
    tasks.spawn(run_writer(socket, outbox));
}

/// The writer task: drains the outbox into the socket, coalescing each
/// batch into as few writes as possible, until the outbox closes.
async fn run_writer(mut socket: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut spare = VecDeque::new();
    loop {
        match outbox.drain(spare).await {
            Drained::Frames { mut frames, bytes } => {
                let written = write_batch(&mut socket, &frames, bytes, &outbox).await;
                outbox.written(bytes);
                match written {
                    Ok(true) => {}
                    // Aborted as a slow consumer mid-write: drop the socket.
                    Ok(false) => return,
                    Err(_) => {
                        outbox.finish();
                        return;
                    }
                }
                frames.clear();
                if frames.capacity() > 1024 {
                    frames = VecDeque::new();
                }
                spare = frames;
            }
            Drained::Close(frame) => {
                let deadline = Instant::now() + CLOSE_GRACE;
                let _ = timeout_at(deadline, socket.write_all(&frame)).await;
                let _ = timeout_at(deadline, socket.shutdown()).await;
                return;
            }
            Drained::Finish => {
                let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
                return;
            }
            Drained::Abort => return,
        }
    }
}

/// Most bytes coalesced into one write.
const MAX_WRITE: usize = 64 << 10;

/// Writes frames in order, coalesced into as few writes as possible (one
/// contiguous buffer per write: cheaper for the kernel than many small
/// iovecs). The buffer is freed after each batch so idle connections hold
/// none. `Ok(false)` when the outbox was aborted while a write was blocked
/// (the peer stopped reading).
async fn write_batch(
    socket: &mut OwnedWriteHalf,
    chunks: &VecDeque<Chunk>,
    bytes: usize,
    outbox: &Outbox,
) -> io::Result<bool> {
    // (chunk, frame) position of the next frame to copy.
    let (mut chunk, mut frame) = (0, 0);
    while chunk < chunks.len() {
        let mut buffer = Vec::with_capacity(bytes.min(MAX_WRITE));
        while chunk < chunks.len() {
            let frames = chunks[chunk].frames();
            let Some(next) = frames.get(frame) else {
                (chunk, frame) = (chunk + 1, 0);
                continue;
            };
            if !buffer.is_empty() && buffer.len() + next.len() > MAX_WRITE {
                break;
            }
            buffer.extend_from_slice(next);
            frame += 1;
        }
        if buffer.is_empty() {
            break;
        }
        let write = socket.write_all(&buffer);
        tokio::pin!(write);
        let mut closed_seen = false;
        loop {
            tokio::select! {
                result = &mut write => { result?; break; }
                () = outbox.closed(), if !closed_seen => {
                    closed_seen = true;
                    if outbox.aborted() {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Sends `ws::text_frame(text)` through the outbox (bounded).
pub fn send_text(outbox: &Outbox, text: &str) -> Result<(), super::outbox::PushError> {
    outbox.push(ws::text_frame(text.as_bytes()))
}
