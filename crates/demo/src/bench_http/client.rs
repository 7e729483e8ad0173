//! A minimal raw-socket HTTP/1.1 client for the HTTP API benchmarks: keep-alive
//! `POST`s answered with a `Content-Length` body, and a Server-Sent Events
//! stream read from its chunked body, events handed out as slices of one
//! buffer — so that the generator, not the node, is never the bottleneck.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room reserved for each read.
const READ_CHUNK: usize = 64 << 10;
/// Largest response head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Largest response body accepted.
const MAX_BODY: usize = 1 << 20;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `Basic base64(name:secret)`, an `Authorization` header's value.
pub fn basic_auth(name: &str, secret: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut plain = name.as_bytes().to_vec();
    plain.push(b':');
    plain.extend_from_slice(secret);
    let mut out = String::from("Basic ");
    for group in plain.chunks(3) {
        let bits = group.iter().enumerate().fold(0u32, |bits, (i, byte)| {
            bits | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A response's head.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// Whether the body is chunked.
    pub chunked: bool,
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: TcpStream,
    buffer: BytesMut,
    /// `host:port`, for the `Host` header.
    host: String,
    /// Length of the body [`exchange`](Self::exchange) returned last, still
    /// at the head of the buffer.
    consumed: usize,
}

impl HttpConn {
    /// Connects to `host:port`.
    pub async fn connect(addr: &str) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            host: addr.to_owned(),
            consumed: 0,
        })
    }

    /// Appends a JSON `POST` of `body` to `path` to `out`.
    pub fn encode_post(&self, out: &mut Vec<u8>, path: &str, authorization: &str, body: &[u8]) {
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nAuthorization: ");
        out.extend_from_slice(authorization.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }

    /// Sends `request` (one whole request) and reads its answer: the status
    /// and the body (valid until the next call).
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, &[u8])> {
        self.buffer.advance(self.consumed);
        self.consumed = 0;
        self.stream.write_all(request).await?;
        let head = self.read_head().await?;
        let length = match (head.content_length, head.chunked) {
            (Some(length), false) if length <= MAX_BODY => length,
            _ => return Err(invalid(format!("unexpected answer framing: {head:?}"))),
        };
        while self.buffer.len() < length {
            self.fill().await?;
        }
        self.consumed = length;
        Ok((head.status, &self.buffer[..length]))
    }

    /// Reads more bytes into the buffer; an error at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buffer.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buffer).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            read => Ok(read),
        }
    }

    /// Reads a response head (and leaves what follows it in the buffer).
    pub async fn read_head(&mut self) -> io::Result<Head> {
        let end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(invalid("the response head is too long"));
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buffer[..end])
            .map_err(|_| invalid("the response head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(format!("not an HTTP/1.1 status line: {status_line:?}")))?;
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(value.parse().map_err(|_| invalid("bad length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        self.buffer.advance(end + 4);
        Ok(head)
    }
}

/// A Server-Sent Events stream: its chunked body de-chunked into one
/// buffer, whole events handed out as slices of it.
pub struct EventStreamReader {
    conn: HttpConn,
    /// The de-chunked body not handed out yet.
    body: Vec<u8>,
    /// Bytes left of the chunk being read.
    chunk_left: usize,
    /// The CRLF that ends a chunk's data is still to come.
    crlf_due: bool,
    /// Bytes read on the wire since the head (or the last
    /// [`take_wire_bytes`](Self::take_wire_bytes)).
    wire: u64,
}

impl EventStreamReader {
    /// Opens `GET path` with `authorization`; an error unless it is
    /// answered 200 with a chunked body (a refusal's body is in the error).
    pub async fn open(addr: &str, path: &str, authorization: &str) -> io::Result<Self> {
        let mut conn = HttpConn::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        conn.stream.write_all(request.as_bytes()).await?;
        let head = conn.read_head().await?;
        if head.status != 200 || !head.chunked {
            let length = head.content_length.unwrap_or(0).min(MAX_BODY);
            while conn.buffer.len() < length {
                conn.fill().await?;
            }
            let body = String::from_utf8_lossy(&conn.buffer[..length]).into_owned();
            return Err(io::Error::other(format!(
                "GET {path} answered {} ({}chunked): {body}",
                head.status,
                if head.chunked { "" } else { "not " }
            )));
        }
        let wire = conn.buffer.len() as u64;
        Ok(EventStreamReader {
            conn,
            body: Vec::with_capacity(READ_CHUNK),
            chunk_left: 0,
            crlf_due: false,
            wire,
        })
    }

    /// Bytes read on the wire since the head or the last call.
    pub fn take_wire_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.wire)
    }

    /// Reads until at least one whole event arrived and hands `each` every
    /// whole event there is (its lines, each ending in `\n`, without the
    /// blank line); an error once the stream or the connection ends.
    pub async fn next_events(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            self.dechunk()?;
            let mut start = 0;
            while let Some(end) = find(&self.body[start..], b"\n\n") {
                each(&self.body[start..start + end + 1]);
                start += end + 2;
            }
            if start > 0 {
                self.body.drain(..start);
                return Ok(());
            }
            self.wire += self.conn.fill().await? as u64;
        }
    }

    /// Moves what the read buffer holds of the chunked body to `body`.
    fn dechunk(&mut self) -> io::Result<()> {
        let raw = &mut self.conn.buffer;
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(raw.len());
                self.body.extend_from_slice(&raw[..take]);
                raw.advance(take);
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return Ok(());
                }
                self.crlf_due = true;
            }
            if self.crlf_due {
                match raw.get(..2) {
                    None => return Ok(()),
                    Some(b"\r\n") => {
                        raw.advance(2);
                        self.crlf_due = false;
                    }
                    Some(_) => return Err(invalid("a chunk does not end with CRLF")),
                }
            }
            let Some(end) = find(raw, b"\r\n") else {
                return Ok(());
            };
            let line = std::str::from_utf8(&raw[..end]).unwrap_or_default();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            raw.advance(end + 2);
            if size == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the event stream ended",
                ));
            }
            self.chunk_left = size;
        }
    }
}

/// An event's name (`event:`), if it has one.
pub fn event_name(event: &[u8]) -> Option<&[u8]> {
    event
        .split(|byte| *byte == b'\n')
        .find_map(|line| line.strip_prefix(b"event: "))
}

/// The offset of a `message` event, read from its `id: epoch:offset`
/// without looking at its data; `None` for other events.
pub fn message_offset(event: &[u8]) -> Option<u64> {
    let mut offset = None;
    let mut message = false;
    for line in event.split(|byte| *byte == b'\n') {
        if let Some(id) = line.strip_prefix(b"id: ") {
            let at = id.iter().position(|byte| *byte == b':')? + 1;
            let digits = &id[at..];
            let mut value = 0u64;
            for digit in digits {
                if !digit.is_ascii_digit() {
                    return None;
                }
                value = value
                    .checked_mul(10)?
                    .checked_add(u64::from(digit - b'0'))?;
            }
            offset = (!digits.is_empty()).then_some(value);
        } else if line == b"event: message" {
            message = true;
        } else if line.starts_with(b"data:") {
            // The id and the name come first.
            break;
        }
    }
    if message { offset } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_basic_credentials() {
        // RFC 7617's example.
        assert_eq!(
            basic_auth("Aladdin", b"open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth("-", b"ab"), "Basic LTphYg==");
        assert_eq!(basic_auth("-", b"abc"), "Basic LTphYmM=");
        assert_eq!(basic_auth("-", b"a"), "Basic LTph");
    }

    #[test]
    fn reads_message_events_without_their_data() {
        let event = b"id: 4503599627370497:42\nevent: message\ndata: {\"offset\":1}\n";
        assert_eq!(message_offset(event), Some(42));
        assert_eq!(event_name(event), Some(&b"message"[..]));
        let subscribed = b"id: 0:0\nevent: subscribed\ndata: {}\n";
        assert_eq!(message_offset(subscribed), None);
        assert_eq!(event_name(subscribed), Some(&b"subscribed"[..]));
        assert_eq!(message_offset(b"event: message\ndata: x\n"), None);
    }
}
