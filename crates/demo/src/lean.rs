//! A lean WebSocket client for load generation: plain TCP, hand-rolled
//! framing, frames read straight out of one buffer. Only for talking to
//! shardq nodes from the load generator, where tungstenite's per-message
//! work would make the generator, not the node, the bottleneck.

use std::io;

use shardq_protocol::{ClientHandshake, ClientStep, Frame, Nonce, Psk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const READ_CHUNK: usize = 64 << 10;

/// A client connection speaking raw WebSocket frames.
pub struct LeanConn {
    /// The read side.
    pub reader: LeanReader,
    /// The write side.
    pub writer: OwnedWriteHalf,
}

/// The read side of a [`LeanConn`]: frames parsed in place from one buffer.
pub struct LeanReader {
    read: OwnedReadHalf,
    buffer: Vec<u8>,
    start: usize,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl LeanConn {
    /// Connects to `host:port` and upgrades `path`.
    pub async fn connect(addr: &str, path: &str) -> io::Result<LeanConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, mut writer) = stream.into_split();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: c2hhcmRxLWxlYW4tYmVuYw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        writer.write_all(request.as_bytes()).await?;
        let mut reader = LeanReader {
            read,
            buffer: Vec::with_capacity(1024),
            start: 0,
        };
        loop {
            if let Some(end) = find(&reader.buffer, b"\r\n\r\n") {
                if !reader.buffer.starts_with(b"HTTP/1.1 101") {
                    let line = String::from_utf8_lossy(&reader.buffer[..end])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    return Err(invalid(format!("upgrade refused: {line}")));
                }
                reader.start = end + 4;
                return Ok(LeanConn { reader, writer });
            }
            if reader.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Connects, upgrades and runs the shardq/1 handshake.
    pub async fn open(addr: &str, path: &str, psk: &Psk) -> io::Result<LeanConn> {
        let mut conn = LeanConn::connect(addr, path).await?;
        let mut handshake =
            ClientHandshake::new(psk.clone(), Nonce::random(), Some("bench".into()));
        loop {
            let text = conn.reader.next_text().await?.to_vec();
            let frame = Frame::decode(&text, usize::MAX).map_err(|e| invalid(e.to_string()))?;
            match handshake
                .receive(frame)
                .map_err(|e| invalid(e.to_string()))?
            {
                ClientStep::Send(frame) => conn.send_text(frame.encode().as_bytes()).await?,
                ClientStep::Established { .. } => return Ok(conn),
            }
        }
    }

    /// Appends one masked text frame (mask key 0: payload unchanged) to `out`.
    pub fn encode_text(out: &mut Vec<u8>, payload: &[u8]) {
        out.push(0x81);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        LeanConn::encode_text(&mut out, payload);
        self.writer.write_all(&out).await
    }
}

impl LeanReader {
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        // Reads into spare capacity (no zeroing); busy readers grow it.
        self.buffer.reserve(4096);
        self.read.read_buf(&mut self.buffer).await
    }

    /// The payload of the next text frame (pings and pongs are skipped;
    /// a close is an error).
    pub async fn next_text(&mut self) -> io::Result<&[u8]> {
        loop {
            let available = &self.buffer[self.start..];
            if let Some((opcode, header, len)) = parse_header(available)? {
                if available.len() >= header + len {
                    let from = self.start + header;
                    self.start = from + len;
                    match opcode {
                        0x1 => return Ok(&self.buffer[from..from + len]),
                        0x8 => {
                            let code = self
                                .buffer
                                .get(from..from + 2)
                                .map(|b| u16::from_be_bytes([b[0], b[1]]));
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("closed by the node (code {code:?})"),
                            ));
                        }
                        // Pings go unanswered: benchmarks run well inside
                        // the nodes' ping timeout.
                        _ => continue,
                    }
                }
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// `(opcode, header length, payload length)` of an unmasked server frame,
/// or `None` when more bytes are needed.
fn parse_header(bytes: &[u8]) -> io::Result<Option<(u8, usize, usize)>> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    if bytes[0] & 0x80 == 0 {
        return Err(invalid("fragmented frames are not expected from a node"));
    }
    let opcode = bytes[0] & 0x0f;
    match bytes[1] & 0x7f {
        126 if bytes.len() < 4 => Ok(None),
        126 => Ok(Some((
            opcode,
            4,
            u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
        ))),
        127 if bytes.len() < 10 => Ok(None),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&bytes[2..10]);
            Ok(Some((opcode, 10, u64::from_be_bytes(len) as usize)))
        }
        len => Ok(Some((opcode, 2, len as usize))),
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
    fn headers() {
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((1, 2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 1, 0]).unwrap(), Some((1, 4, 256)));
        let mut masked = Vec::new();
        LeanConn::encode_text(&mut masked, b"hi");
        assert_eq!(masked, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    }
}
