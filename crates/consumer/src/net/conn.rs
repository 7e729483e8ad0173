//! One WebSocket connection: the HTTP upgrade (server side), the writer
//! task that owns the socket's write half, and a reader that turns the read
//! half into text messages and keepalive events.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use shardq_protocol::{CloseCode, ErrorCode, Frame, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::TaskTracker;

use super::decode::{Decoder, WsError, WsMessage};
use super::outbox::{Chunk, Drained, Outbox};
use super::ws;

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
    /// Not a WebSocket upgrade this node accepts; the HTTP refusal was sent.
    #[error("upgrade refused: {0}")]
    Refused(#[from] Refusal),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// An HTTP refusal of an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is not an HTTP/1.1 WebSocket upgrade (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The node serves nothing at this path (404).
    #[error("no endpoint at {0}")]
    NotFound(String),
    /// A WebSocket version other than 13 (426).
    #[error("unsupported websocket version")]
    Version,
}

impl Refusal {
    /// The complete HTTP response.
    fn response(&self) -> Bytes {
        let (status, extra) = match self {
            Refusal::BadRequest(_) => ("400 Bad Request", ""),
            Refusal::NotFound(_) => ("404 Not Found", ""),
            Refusal::Version => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        };
        let body = format!("{self}\n");
        Bytes::from(format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra}\r\n{body}",
            body.len()
        ))
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
}

/// Upgrades an accepted socket to a WebSocket if `route(path)` names a
/// read buffer size for the path, otherwise answers 404 (400 or 426 for a
/// request that is no WebSocket upgrade). The writer task is spawned on
/// `tasks` first (it also sends the upgrade response).
///
/// The read buffer size lets each endpoint read as it needs: small for
/// subscribers (most of a node's connections, and mostly idle), large for
/// the publishing links.
pub async fn upgrade(
    stream: TcpStream,
    limits: &ConnLimits,
    deadline: Instant,
    route: impl Fn(&str) -> Option<usize>,
    tasks: &TaskTracker,
) -> Result<Connection, UpgradeError> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let (mut read, write) = stream.into_split();
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes));
    tasks.spawn(run_writer(write, outbox.clone()));
    let mut buffer = BytesMut::with_capacity(1024);
    let head = match timeout_at(deadline, read_head(&mut read, &mut buffer)).await {
        Ok(Ok(head)) => head,
        Ok(Err(UpgradeError::Refused(refusal))) => {
            return Err(refuse(read, &outbox, refusal).await);
        }
        Ok(Err(error)) => {
            outbox.finish();
            return Err(error);
        }
        Err(_) => {
            outbox.finish();
            return Err(UpgradeError::Timeout);
        }
    };
    let accepted = accept_request(&buffer[..head]).and_then(|(path, key)| match route(&path) {
        Some(read_chunk) => Ok((path, key, read_chunk)),
        None => Err(Refusal::NotFound(path)),
    });
    let (path, accept_key, read_chunk) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => return Err(refuse(read, &outbox, refusal).await),
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    let _ = outbox.push_unbounded(Bytes::from(response));
    // Bytes after the request head are the first frames.
    buffer.advance(head);
    let decoder = Decoder::new(true, limits.preauth_frame_bytes, buffer);
    Ok(Connection {
        path,
        peer,
        reader: Reader {
            read,
            decoder,
            outbox: outbox.clone(),
            read_chunk: PREAUTH_READ_CHUNK,
            authenticated_chunk: read_chunk,
            max_frame_bytes: limits.max_frame_bytes,
            authenticated: false,
        },
        outbox,
    })
}

/// How long a refused request's sender gets to take the refusal.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while it does.
const REFUSAL_DISCARD: usize = 64 << 10;

/// Sends the refusal and closes. The peer's unread input is read and
/// dropped for a moment first: closing a socket with unread input resets
/// it, and the reset can destroy the refusal on its way.
async fn refuse(mut read: OwnedReadHalf, outbox: &Outbox, refusal: Refusal) -> UpgradeError {
    let _ = outbox.push_unbounded(refusal.response());
    outbox.finish();
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        let mut sink = [0u8; 4096];
        let mut discarded = 0;
        while discarded < REFUSAL_DISCARD {
            match read.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
    refusal.into()
}

/// Reads until `buffer` holds a complete HTTP request head; its length.
async fn read_head(read: &mut OwnedReadHalf, buffer: &mut BytesMut) -> Result<usize, UpgradeError> {
    // Where the search resumes: a terminator may straddle two reads.
    let mut from = 0usize;
    loop {
        if let Some(at) = find(&buffer[from..], b"\r\n\r\n") {
            return Ok(from + at + 4);
        }
        from = buffer.len().saturating_sub(3);
        if buffer.len() >= UPGRADE_REQUEST_BUDGET {
            return Err(Refusal::BadRequest("request head over 8 KiB").into());
        }
        buffer.reserve(1024.min(UPGRADE_REQUEST_BUDGET - buffer.len()));
        if read.read_buf(buffer).await? == 0 {
            return Err(UpgradeError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Checks an HTTP request head as a WebSocket upgrade (RFC 6455 §4.2.1):
/// the path (without the query string) and the `Sec-WebSocket-Accept`
/// value to answer with.
fn accept_request(head: &[u8]) -> Result<(String, String), Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::BadRequest("incomplete request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::BadRequest("more than 32 headers"));
        }
        Err(_) => return Err(Refusal::BadRequest("malformed HTTP request")),
    }
    if request.method != Some("GET") {
        return Err(Refusal::BadRequest("the method must be GET"));
    }
    if request.version != Some(1) {
        return Err(Refusal::BadRequest("the version must be HTTP/1.1"));
    }
    let target = request.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .is_some_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::BadRequest("not a websocket upgrade"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = match header("sec-websocket-key") {
        Some(key) if !key.is_empty() => key,
        _ => return Err(Refusal::BadRequest("no Sec-WebSocket-Key")),
    };
    Ok((path, derive_accept_key(key)))
}

/// What the reader yields.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message (refused with `bad_frame`; the connection stays open).
    Binary,
    /// A pong (the peer is alive).
    Pong,
    /// The peer sent a close frame (the reader already answered it): finish
    /// the outbox without another close frame.
    PeerClosed,
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
    read: OwnedReadHalf,
    decoder: Decoder,
    outbox: Arc<Outbox>,
    /// Room reserved before a read.
    read_chunk: usize,
    /// `read_chunk` once authenticated.
    authenticated_chunk: usize,
    /// The message limit once authenticated.
    max_frame_bytes: usize,
    authenticated: bool,
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
                Ok(_) => {}
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
                    // queue without bound.
                    if !self.outbox.is_backed_up() {
                        let pong = ws::pong_frame(&payload, self.outbox.role());
                        let _ = self.outbox.push_unbounded(pong);
                    }
                    continue;
                }
                WsMessage::Pong => Incoming::Pong,
                WsMessage::Close(code) => {
                    // Refused when the node closed first: then the peer's
                    // close is the answer to ours.
                    let reply = ws::close_reply(code, self.outbox.role());
                    let _ = self.outbox.push_unbounded(reply);
                    Incoming::PeerClosed
                }
            });
        }
    }

    /// The read side of a client connection this node opened (the upgrade
    /// and handshake already done): frames from the server are unmasked,
    /// and pongs go to `outbox`, which must have the client role.
    pub fn client(read: OwnedReadHalf, outbox: Arc<Outbox>, max_frame_bytes: usize) -> Reader {
        Reader {
            read,
            decoder: Decoder::new(false, max_frame_bytes, BytesMut::new()),
            outbox,
            read_chunk: LINK_READ_CHUNK,
            authenticated_chunk: LINK_READ_CHUNK,
            max_frame_bytes,
            authenticated: true,
        }
    }

    /// The peer authenticated: lift the pre-auth limits.
    pub fn authenticated(&mut self) {
        self.authenticated = true;
        self.read_chunk = self.authenticated_chunk;
        self.decoder.set_limit(self.max_frame_bytes);
    }
}

/// Room for each read on a link: links carry bulk traffic.
const LINK_READ_CHUNK: usize = 64 << 10;

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
