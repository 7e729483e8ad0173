//! A lean client for load generation: the nodes' own upgrade and WebSocket
//! codec (`shardq-net`: frame headers are parsed and checked by
//! [`FrameHeader::parse`], frames encoded and masked by its encoder), but no
//! writer task, no outbox, and messages read as slices of one buffer with no
//! per-message allocation or UTF-8 pass — so that the generator, not the
//! node, is never the bottleneck.

use std::io;

use bytes::{Buf, BytesMut};
use shardq_net::codec::{FrameHeader, OP_CLOSE, OP_PING, OP_TEXT, Role, encode};
use shardq_net::tls::{ReadHalf, WriteHalf, split_plain};
use shardq_net::upgrade::upgrade_client;
use shardq_protocol::{ClientHandshake, ClientStep, Frame, Nonce, Psk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room reserved for each read.
const READ_CHUNK: usize = 64 << 10;
/// Largest message accepted from a node.
const MAX_MESSAGE: usize = 16 << 20;

/// A client connection: the read side decoded, the write side raw.
pub struct LeanConn {
    /// The read side.
    pub reader: LeanReader,
    /// The write side: append frames with [`LeanConn::encode_text`].
    pub writer: WriteHalf,
}

/// The read side of a [`LeanConn`]: frames parsed in place from one buffer.
pub struct LeanReader {
    read: ReadHalf,
    buffer: BytesMut,
    /// Length of the frame [`next_text`](Self::next_text) returned last, still
    /// at the head of the buffer.
    consumed: usize,
    /// The pong owed for the last ping read, until taken.
    pong: Option<bytes::Bytes>,
    /// The close code the node sent, once it closed.
    close_code: Option<u16>,
    /// When bytes last arrived.
    last_read: tokio::time::Instant,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl LeanConn {
    /// Connects to `host:port` and upgrades `path`.
    pub async fn connect(addr: &str, path: &str) -> io::Result<LeanConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let upgraded = upgrade_client(split_plain(stream), addr, path)
            .await
            .map_err(|e| invalid(format!("upgrade: {e}")))?;
        Ok(LeanConn {
            reader: LeanReader {
                read: upgraded.read,
                buffer: upgraded.buffered,
                consumed: 0,
                pong: None,
                close_code: None,
                last_read: tokio::time::Instant::now(),
            },
            writer: upgraded.write,
        })
    }

    /// Connects, upgrades and runs the shardq/1 handshake with the psk.
    pub async fn open(addr: &str, path: &str, psk: &Psk) -> io::Result<LeanConn> {
        let handshake = ClientHandshake::new(psk.clone(), Nonce::random(), Some("bench".into()));
        LeanConn::open_with(addr, path, handshake).await
    }

    /// Connects, upgrades and runs the node handshake as `own` dialling
    /// `expected` (for `/v1/cluster`, which accepts nodes only).
    pub async fn open_node(
        addr: &str,
        path: &str,
        node_key: &Psk,
        own: &str,
        expected: &str,
    ) -> io::Result<LeanConn> {
        let handshake = ClientHandshake::node(node_key.clone(), Nonce::random(), own, expected);
        LeanConn::open_with(addr, path, handshake).await
    }

    async fn open_with(
        addr: &str,
        path: &str,
        mut handshake: ClientHandshake,
    ) -> io::Result<LeanConn> {
        let mut conn = LeanConn::connect(addr, path).await?;
        loop {
            let text = conn.reader.next_text().await?;
            let frame = Frame::decode(text, MAX_MESSAGE).map_err(|e| invalid(e.to_string()))?;
            match handshake
                .receive(frame)
                .map_err(|e| invalid(e.to_string()))?
            {
                ClientStep::Send(frame) => conn.send_text(frame.encode().as_bytes()).await?,
                ClientStep::Established { .. } => return Ok(conn),
            }
        }
    }

    /// Appends one masked text frame carrying `payload` to `out`.
    pub fn encode_text(out: &mut Vec<u8>, payload: &[u8]) {
        encode::append_text_frame(out, payload, Role::Client);
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        LeanConn::encode_text(&mut out, payload);
        self.writer.write_all(&out).await
    }
}

impl LeanReader {
    /// The payload of the next text message, a slice of the read buffer
    /// valid until the next call (pings and pongs are skipped, a ping's
    /// pong kept for [`take_pong`](Self::take_pong); a close is an error;
    /// nodes never fragment). Cancel-safe.
    pub async fn next_text(&mut self) -> io::Result<&[u8]> {
        self.buffer.advance(self.consumed);
        self.consumed = 0;
        loop {
            let parsed = FrameHeader::parse(&self.buffer, false, 0, MAX_MESSAGE)
                .map_err(|error| invalid(error.to_string()))?;
            if let Some(header) = parsed {
                let total = header.header_len + header.payload_len as usize;
                if self.buffer.len() >= total {
                    if !header.fin {
                        return Err(invalid("fragmented frames are not expected from a node"));
                    }
                    match header.opcode {
                        OP_TEXT => {
                            self.consumed = total;
                            return Ok(&self.buffer[header.header_len..total]);
                        }
                        OP_CLOSE => {
                            let code = self
                                .buffer
                                .get(header.header_len..header.header_len + 2)
                                .map(|b| u16::from_be_bytes([b[0], b[1]]));
                            self.close_code = code;
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("closed by the node (code {code:?})"),
                            ));
                        }
                        OP_PING => {
                            let payload = &self.buffer[header.header_len..total];
                            self.pong = Some(encode::pong_frame(payload, Role::Client));
                            self.buffer.advance(total);
                            continue;
                        }
                        _ => {
                            self.buffer.advance(total);
                            continue;
                        }
                    }
                }
            }
            // Room for a read's worth (busy readers keep the capacity).
            self.buffer.reserve(READ_CHUNK);
            if self.read.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.last_read = tokio::time::Instant::now();
        }
    }
}

impl LeanReader {
    /// The pong owed for the last ping the node sent (long-lived
    /// connections send it, or the node closes them with 4009).
    pub fn take_pong(&mut self) -> Option<bytes::Bytes> {
        self.pong.take()
    }

    /// The close code the node sent, once [`next_text`](Self::next_text)
    /// failed because it closed.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// When bytes last arrived (pings and pongs included).
    pub fn last_read(&self) -> tokio::time::Instant {
        self.last_read
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The `"offset"` of a `message` frame from the node's own encoder, read
/// without parsing the JSON; `None` for other frames.
pub fn message_offset(frame: &[u8]) -> Option<u64> {
    const PREFIX: &[u8] = br#"{"type":"message","#;
    const KEY: &[u8] = br#","offset":"#;
    if !frame.starts_with(PREFIX) {
        return None;
    }
    let at = find(&frame[PREFIX.len()..], KEY)? + PREFIX.len() + KEY.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_offsets_without_parsing() {
        let frame =
            br#"{"type":"message","topic":"a/b","epoch":123,"offset":4567,"payload":{"offset":1}}"#;
        assert_eq!(message_offset(frame), Some(4567));
        assert_eq!(message_offset(br#"{"type":"ack","id":1}"#), None);
    }

    #[test]
    fn frames_are_masked_as_a_client_must() {
        let mut out = Vec::new();
        LeanConn::encode_text(&mut out, b"hi");
        assert_eq!(out.len(), 2 + 4 + 2);
        assert_eq!(out[..2], [0x81, 0x82]);
    }
}
