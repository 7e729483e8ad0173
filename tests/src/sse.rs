//! A Server-Sent Events client over a plain socket, as a browser's
//! `EventSource` reads a stream: HTTP/1.1, chunked transfer decoding, and
//! events parsed per the HTML standard (`id`, `event`, `data` lines; data
//! lines joined with `\n`; comments skipped).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id` field, if the event carried one.
    pub id: Option<String>,
    /// The `event` field (`message` when absent).
    pub event: String,
    /// The data lines, joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{}: {e}", self.data))
    }
}

/// An open stream.
pub struct EventStream {
    socket: TcpStream,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// Whether the body is chunked.
    chunked: bool,
    /// Whether the body ended.
    pub ended: bool,
}

/// `GET path` with `headers`: the status, the response headers (lower-case
/// names) and, when 200, the stream; else the body.
pub async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, Vec<(String, String)>, Result<EventStream, String>) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let rest = raw[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let mut stream = EventStream {
        socket,
        body: Vec::new(),
        raw: rest,
        chunked,
        ended: false,
    };
    if status == 200 {
        return (status, headers, Ok(stream));
    }
    // An error answer: read the whole (small) body.
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    while stream.raw.len() < length && !chunked {
        let mut buf = [0u8; 4096];
        let n = stream.socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        stream.raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&stream.raw).to_string();
    (status, headers, Err(body))
}

impl EventStream {
    /// The next event, or `None` when the stream ended or nothing came
    /// within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.dechunk();
            if let Some(event) = self.parse_event() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.socket.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => {
                    self.ended = true;
                }
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next event that is not `subscribed` (or `None`, as [`next`](Self::next)).
    pub async fn next_delivery(&mut self, wait: Duration) -> Option<SseEvent> {
        loop {
            let event = self.next(wait).await?;
            if event.event != "subscribed" {
                return Some(event);
            }
        }
    }

    /// Moves complete chunks (or everything, unchunked) from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// One complete event from `body`, if there is one.
    fn parse_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.body.windows(2).position(|w| w == b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).to_string();
            self.body.drain(..end + 2);
            let mut event = SseEvent {
                id: None,
                event: "message".to_owned(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.split('\n') {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = value.to_owned(),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(event);
            }
        }
    }
}
