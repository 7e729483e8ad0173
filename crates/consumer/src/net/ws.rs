//! Server → client WebSocket frames built by hand (they are unmasked, so one
//! encoding serves every recipient), and the stream adapter that lets
//! tungstenite read a socket whose writing belongs to the writer task.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use shardq_protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use super::outbox::Outbox;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const FIN: u8 = 0x80;

fn header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(FIN | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Length of the header of an unmasked frame carrying `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// One complete unmasked text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    header(&mut out, OP_TEXT, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Builds a text frame in place: call with a closure that appends the
/// payload to the vector; the header is written in front of it afterwards.
/// Saves a copy for payloads built on the fly.
pub fn text_frame_with(estimate: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    const RESERVE: usize = 10;
    let mut buffer = Vec::with_capacity(RESERVE + estimate);
    buffer.resize(RESERVE, 0);
    fill(&mut buffer);
    let len = buffer.len() - RESERVE;
    let start = RESERVE - header_len(len);
    let mut head = BytesMut::with_capacity(RESERVE);
    header(&mut head, OP_TEXT, len);
    buffer[start..RESERVE].copy_from_slice(&head);
    Bytes::from(buffer).slice(start..)
}

/// A close frame with a shardq close code and its reason.
pub fn close_frame(code: CloseCode) -> Bytes {
    let reason = code.reason().as_bytes();
    let mut out = BytesMut::with_capacity(4 + reason.len());
    header(&mut out, OP_CLOSE, 2 + reason.len());
    out.put_u16(code.code());
    out.put_slice(reason);
    out.freeze()
}

/// A ping frame with an empty payload.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[FIN | OP_PING, 0])
}

/// The stream tungstenite runs on: reads come from the socket, writes (the
/// upgrade response, pongs, close replies) are queued on the connection's
/// outbox so the writer task stays the only one writing the socket.
///
/// Before the handshake completes, reads are capped by a byte budget: an
/// unauthenticated peer cannot make the node buffer more than that.
pub struct ServerIo {
    read: OwnedReadHalf,
    /// Bytes already read from the socket (the request line), served first.
    prefix: Vec<u8>,
    outbox: Arc<Outbox>,
    read_budget: Option<usize>,
}

/// The error kind a read returns once the pre-auth budget is spent.
pub const BUDGET_EXCEEDED: io::ErrorKind = io::ErrorKind::FileTooLarge;

impl ServerIo {
    /// Wraps the read half; `read_budget` bounds the bytes read until
    /// [`lift_budget`](Self::lift_budget).
    /// `prefix` holds bytes already read from the socket; they are read first.
    pub fn new(
        read: OwnedReadHalf,
        prefix: Vec<u8>,
        outbox: Arc<Outbox>,
        read_budget: usize,
    ) -> ServerIo {
        ServerIo {
            read,
            prefix,
            outbox,
            read_budget: Some(read_budget),
        }
    }

    /// Sets a new read budget counted from now.
    pub fn set_budget(&mut self, budget: usize) {
        self.read_budget = Some(budget);
    }

    /// Removes the budget (after authentication; tungstenite's message size
    /// limit applies from then on).
    pub fn lift_budget(&mut self) {
        self.read_budget = None;
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            if this.prefix.is_empty() {
                this.prefix = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        match this.read_budget {
            None => Pin::new(&mut this.read).poll_read(cx, buf),
            Some(0) => Poll::Ready(Err(io::Error::new(
                BUDGET_EXCEEDED,
                "pre-auth read budget exceeded",
            ))),
            Some(budget) => {
                let allowed = budget.min(buf.remaining());
                // Pre-auth reads are few and small: zero-initialising the
                // window keeps this safe code.
                let window = buf.initialize_unfilled_to(allowed);
                let mut limited = ReadBuf::new(window);
                let result = Pin::new(&mut this.read).poll_read(cx, &mut limited);
                let filled = limited.filled().len();
                buf.advance(filled);
                this.read_budget = Some(budget - filled);
                result
            }
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.outbox.push_unbounded(Bytes::copy_from_slice(buf)) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
        assert_eq!(
            &close_frame(CloseCode::SlowConsumer)[..4],
            &[0x88, 15, 0x0f, 0xa8]
        );
    }

    #[test]
    fn in_place_frames_match() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'z'; len];
            let built = text_frame_with(8, |out| out.extend_from_slice(&payload));
            assert_eq!(built, text_frame(&payload), "len {len}");
        }
    }
}
