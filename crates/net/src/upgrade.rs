//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 §4), both sides: a node
//! accepting a connection ([`upgrade`]) and a node opening one to another
//! node ([`upgrade_client`]). Bytes that arrive right behind the request or
//! response head are kept: they are the first frames.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;

use crate::codec::Decoder;
use crate::conn::{ConnLimits, Connection, Reader};
use crate::gate::Admission;
use crate::log_summary::HANDSHAKE_FAILURES;
use crate::outbox::Outbox;
use crate::tls::{ReadHalf, ServerTls, WriteHalf, split_plain, split_tls};
use crate::writer::run_writer;

/// Most bytes an HTTP request or response head may take.
const HEAD_BUDGET: usize = 8 << 10;

/// Why a connection did not become a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The upgrade did not finish before the deadline.
    #[error("upgrade timed out")]
    Timeout,
    /// Not a WebSocket upgrade this node accepts; the HTTP refusal was sent.
    #[error("upgrade refused: {0}")]
    Refused(#[from] Refusal),
    /// The other node did not switch protocols (client side).
    #[error("{0}")]
    Rejected(String),
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
    admission: Option<Admission>,
    tls: Option<&ServerTls>,
) -> Result<Connection, UpgradeError> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let (mut read, write) = match tls {
        None => split_plain(stream),
        Some(tls) => match timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => split_tls(stream),
            Ok(Err(error)) => {
                HANDSHAKE_FAILURES.note(&format!("TLS handshake failed: {error}"));
                if let Some(admission) = &admission {
                    admission.tls_failed();
                }
                return Err(UpgradeError::Io(error));
            }
            Err(_) => return Err(UpgradeError::Timeout),
        },
    };
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes));
    tasks.spawn(run_writer(write, outbox.clone(), limits.write.clone()));
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
        reader: Reader::server(read, decoder, outbox.clone(), read_chunk, limits, admission),
        outbox,
        tls: tls.is_some(),
    })
}

/// How long a refused request's sender gets to take the refusal.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while it does.
const REFUSAL_DISCARD: usize = 64 << 10;

/// Sends the refusal and closes. The peer's unread input is read and
/// dropped for a moment first: closing a socket with unread input resets
/// it, and the reset can destroy the refusal on its way.
async fn refuse(mut read: ReadHalf, outbox: &Outbox, refusal: Refusal) -> UpgradeError {
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

/// Reads until `buffer` holds a complete HTTP head; its length.
async fn read_head(read: &mut ReadHalf, buffer: &mut BytesMut) -> Result<usize, UpgradeError> {
    // Where the search resumes: a terminator may straddle two reads.
    let mut from = 0usize;
    loop {
        if let Some(at) = find(&buffer[from..], b"\r\n\r\n") {
            return Ok(from + at + 4);
        }
        from = buffer.len().saturating_sub(3);
        if buffer.len() >= HEAD_BUDGET {
            return Err(Refusal::BadRequest("request head over 8 KiB").into());
        }
        buffer.reserve(1024.min(HEAD_BUDGET - buffer.len()));
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

/// The `Sec-WebSocket-Accept` value answering a `Sec-WebSocket-Key`
/// (RFC 6455 §4.2.2: base64 of SHA-1 of the key and a fixed GUID).
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    BASE64.encode(sha1.finalize())
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
    let headers = Headers(request.headers);
    if !headers.has_token("upgrade", "websocket") || !headers.has_token("connection", "upgrade") {
        return Err(Refusal::BadRequest("not a websocket upgrade"));
    }
    if headers.get("sec-websocket-version") != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = match headers.get("sec-websocket-key") {
        Some(key) if !key.is_empty() => key,
        _ => return Err(Refusal::BadRequest("no Sec-WebSocket-Key")),
    };
    Ok((path, accept_key(key)))
}

/// Header lookups over a parsed head.
struct Headers<'h, 'b>(&'h [httparse::Header<'b>]);

impl Headers<'_, '_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }

    /// Whether the comma-separated header `name` lists `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .is_some_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
    }
}

/// A socket this node upgraded as the client: its halves, and the bytes
/// that came behind the server's response head (the first frames).
pub struct ClientUpgraded {
    /// The read half.
    pub read: ReadHalf,
    /// The write half.
    pub write: WriteHalf,
    /// Bytes already read past the response head.
    pub buffered: BytesMut,
}

/// Upgrades a socket this node connected to `host` (the `Host` header)
/// at `path`, as the client: sends the request with a fresh random key
/// and checks the server switched protocols with the matching accept.
pub async fn upgrade_client(
    (mut read, mut write): (ReadHalf, WriteHalf),
    host: &str,
    path: &str,
) -> Result<ClientUpgraded, UpgradeError> {
    let key = BASE64.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    write.write_all(request.as_bytes()).await?;
    write.flush().await?;
    let mut buffered = BytesMut::with_capacity(1024);
    let head = match read_head(&mut read, &mut buffered).await {
        Ok(head) => head,
        Err(UpgradeError::Refused(_)) => {
            return Err(UpgradeError::Rejected("response head over 8 KiB".into()));
        }
        Err(error) => return Err(error),
    };
    check_response(&buffered[..head], &accept_key(key.as_bytes()))?;
    buffered.advance(head);
    Ok(ClientUpgraded {
        read,
        write,
        buffered,
    })
}

/// Checks a response head: `101` with `Upgrade: websocket`, `Connection:
/// upgrade` and the expected `Sec-WebSocket-Accept`.
fn check_response(head: &[u8], expected_accept: &str) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(UpgradeError::Rejected("malformed HTTP response".into())),
    }
    let code = response.code.unwrap_or_default();
    if code != 101 {
        let reason = response.reason.unwrap_or_default();
        return Err(UpgradeError::Rejected(format!(
            "answered HTTP {code} {reason} instead of switching to WebSocket"
        )));
    }
    let headers = Headers(response.headers);
    if !headers.has_token("upgrade", "websocket") || !headers.has_token("connection", "upgrade") {
        return Err(UpgradeError::Rejected(
            "101 without Upgrade: websocket".into(),
        ));
    }
    if headers.get("sec-websocket-accept") != Some(expected_accept.as_bytes()) {
        return Err(UpgradeError::Rejected(
            "wrong Sec-WebSocket-Accept in the 101 answer".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn requests_that_are_not_upgrades_are_refused() {
        let good = "GET /v1/subscribe?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            accept_request(good.as_bytes()),
            Ok((
                "/v1/subscribe".to_owned(),
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()
            ))
        );
        let cases = [
            (
                good.replace("GET", "POST"),
                Refusal::BadRequest("the method must be GET"),
            ),
            (
                good.replace("HTTP/1.1", "HTTP/1.0"),
                Refusal::BadRequest("the version must be HTTP/1.1"),
            ),
            (
                good.replace("Upgrade: websocket", "Upgrade: h2c"),
                Refusal::BadRequest("not a websocket upgrade"),
            ),
            (good.replace("Version: 13", "Version: 8"), Refusal::Version),
            (
                good.replace("Sec-WebSocket-Key", "X-Key"),
                Refusal::BadRequest("no Sec-WebSocket-Key"),
            ),
        ];
        for (request, refusal) in cases {
            assert_eq!(
                accept_request(request.as_bytes()),
                Err(refusal),
                "{request}"
            );
        }
    }

    #[test]
    fn responses_must_switch_with_the_right_accept() {
        let accept = accept_key(b"k");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        assert!(check_response(good.as_bytes(), &accept).is_ok());
        let wrong = good.replace(&accept, "AAAA");
        assert!(
            check_response(wrong.as_bytes(), &accept)
                .unwrap_err()
                .to_string()
                .contains("Sec-WebSocket-Accept")
        );
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(refused.as_bytes(), &accept)
                .unwrap_err()
                .to_string(),
            "answered HTTP 404 Not Found instead of switching to WebSocket"
        );
    }
}
