//! Opening a connection to another node, as its client: TCP connect, the
//! HTTP upgrade ([`crate::upgrade::upgrade_client`]) and the client side of
//! the shardq/1 handshake, all over the node's own codec, reader and
//! writer task — the same ones its server side uses. Whatever the server
//! sends right behind `welcome` stays in the reader's buffer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{ClientHandshake, ClientStep, CloseCode, Frame, HandshakeError, Nonce, Psk};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::codec::{Role, encode};
use crate::conn::{Incoming, Reader};
use crate::outbox::Outbox;
use crate::tls::{split_plain, split_tls};
use crate::upgrade::{UpgradeError, upgrade_client};
use crate::writer::{WriteLimit, spawn_writer};

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// How this side proves itself.
    pub identity: DialIdentity,
    /// Time allowed for connect, upgrade and handshake together.
    pub timeout: Duration,
    /// Largest frame accepted from the server.
    pub max_frame_bytes: usize,
    /// Bound of the connection's outbox.
    pub outbox_bytes: usize,
    /// The writer's write timeout.
    pub write: WriteLimit,
    /// The roots `wss://` servers are checked against (`None`: `wss://`
    /// URLs are refused).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Who dials: a client with a client credential, or a node with the node key.
#[derive(Debug, Clone)]
pub enum DialIdentity {
    /// A client proving `key` (the psk, or the secret of `client`).
    Client {
        /// The psk or the client's secret.
        key: Psk,
        /// The `[[clients]]` name `key` belongs to (none: the psk).
        client: Option<String>,
        /// A name for the server's logs.
        name: Option<String>,
    },
    /// A node `own` dialling the node `expected` (refused if another answers).
    Node {
        /// The node key.
        node_key: Psk,
        /// This node's id.
        own: String,
        /// The id of the node dialled.
        expected: String,
    },
}

impl DialIdentity {
    fn handshake(&self) -> ClientHandshake {
        match self {
            DialIdentity::Client { key, client, name } => {
                ClientHandshake::new(key.clone(), Nonce::random(), name.clone())
                    .named(client.clone())
            }
            DialIdentity::Node {
                node_key,
                own,
                expected,
            } => ClientHandshake::node(node_key.clone(), Nonce::random(), own, expected),
        }
    }
}

/// An authenticated connection this node opened.
pub struct Dialed {
    /// The read side (frames the server sent behind `welcome` included).
    pub reader: Reader,
    /// The write side, with the client role (frames go out masked).
    pub outbox: Arc<Outbox>,
    /// The node id the server gave in its `hello`.
    pub server: String,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL is not `ws://host:port/path`.
    #[error("{url}: not a ws://host:port URL")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// A `wss://` URL, and no CA to check the server against.
    #[error("{url}: wss:// needs the cluster's CA ([tls] ca_file)")]
    TlsUnconfigured {
        /// The URL.
        url: String,
    },
    /// The TLS handshake failed (an untrusted or mismatched certificate…).
    #[error("TLS with {url} failed: {source}")]
    Tls {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// TCP connect failed.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP upgrade failed.
    #[error("{url}: {source}")]
    Upgrade {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: UpgradeError,
    },
    /// The handshake failed (wrong psk on either side, another version…).
    #[error("{url}: {source}")]
    Handshake {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: HandshakeError,
    },
    /// The server closed the connection during the handshake.
    #[error("{url} closed the connection during the handshake{}", close_reason(*.code))]
    Closed {
        /// The URL.
        url: String,
        /// The close code, if one was sent.
        code: Option<u16>,
    },
    /// The server sent something that is not a shardq/1 frame.
    #[error("{url} is not a shardq/1 node: {reason}")]
    NotShardq {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("{url}: no handshake within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// ` (4001 auth failed)` for a known close code, ` (code N)` otherwise.
fn close_reason(code: Option<u16>) -> String {
    match code.and_then(CloseCode::from_code) {
        Some(code) => format!(" ({} {})", code.code(), code.reason()),
        None => code.map(|c| format!(" (code {c})")).unwrap_or_default(),
    }
}

/// `host:port` and the path of a `ws://` URL.
/// `(tls, authority, path)` of a `ws://` or `wss://` URL.
fn split_url(url: &str) -> Result<(bool, &str, &str), DialError> {
    let bad = || DialError::BadUrl {
        url: url.to_owned(),
    };
    let (tls, rest) = match url.strip_prefix("wss://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("ws://").ok_or_else(bad)?),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() || shardq_protocol::config::url_port(url).is_none() {
        return Err(bad());
    }
    Ok((tls, authority, path))
}

/// Connects to `url` (`ws://host:port/path`), upgrades, and authenticates
/// with the shardq/1 handshake, all within `options.timeout`. The
/// connection's writer task runs on `tasks`.
pub async fn dial(
    url: &str,
    options: &DialOptions,
    tasks: &TaskTracker,
) -> Result<Dialed, DialError> {
    let (tls, authority, path) = split_url(url)?;
    let tls_config = match (tls, &options.tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config),
        (true, None) => {
            return Err(DialError::TlsUnconfigured {
                url: url.to_owned(),
            });
        }
    };
    let attempt = async {
        let address = if authority.contains(':') {
            authority.to_owned()
        } else if tls {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        let stream =
            TcpStream::connect(&address)
                .await
                .map_err(|source| DialError::Unreachable {
                    url: url.to_owned(),
                    source,
                })?;
        stream
            .set_nodelay(true)
            .map_err(|source| DialError::Unreachable {
                url: url.to_owned(),
                source,
            })?;
        let halves = match tls_config {
            None => split_plain(stream),
            Some(config) => {
                let host = host_of(authority);
                let stream = crate::tls::connect(config, host, stream)
                    .await
                    .map_err(|source| DialError::Tls {
                        url: url.to_owned(),
                        source,
                    })?;
                split_tls(stream)
            }
        };
        let upgraded = upgrade_client(halves, authority, path)
            .await
            .map_err(|source| DialError::Upgrade {
                url: url.to_owned(),
                source,
            })?;
        let outbox = Arc::new(Outbox::with_role(options.outbox_bytes, Role::Client));
        spawn_writer(upgraded.write, outbox.clone(), options.write.clone(), tasks);
        let mut abandoned = FinishOnDrop(Some(outbox.clone()));
        let mut reader = Reader::client(
            upgraded.read,
            upgraded.buffered,
            outbox.clone(),
            options.max_frame_bytes,
        );
        match handshake(&mut reader, &outbox, url, options).await {
            Ok(server) => {
                abandoned.0 = None;
                Ok(Dialed {
                    reader,
                    outbox,
                    server,
                })
            }
            Err(error) => {
                if matches!(&error, DialError::Handshake { source, .. } if source.close_code() == CloseCode::AuthFailed)
                {
                    // The server does not know our psk: say so and hang up.
                    outbox.close(CloseCode::AuthFailed);
                } else {
                    outbox.finish();
                }
                Err(error)
            }
        }
    };
    tokio::time::timeout(options.timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                url: url.to_owned(),
                timeout: options.timeout,
            })
        })
}

/// The host of `host:port` (IPv6 literals without their brackets).
fn host_of(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    }
}

/// Finishes an outbox when dropped, unless disarmed: a dial abandoned
/// half-way (its timeout, or the caller giving up) must not leave the
/// connection's writer task waiting forever.
struct FinishOnDrop(Option<Arc<Outbox>>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(outbox) = self.0.take() {
            outbox.finish();
        }
    }
}

/// The client side of the shardq/1 handshake over `reader` and `outbox`;
/// the server's node id.
async fn handshake(
    reader: &mut Reader,
    outbox: &Outbox,
    url: &str,
    options: &DialOptions,
) -> Result<String, DialError> {
    let mut handshake = options.identity.handshake();
    loop {
        let text = match reader.next().await {
            Incoming::Text(text) => text,
            Incoming::Pong => continue,
            Incoming::Binary => {
                return Err(DialError::NotShardq {
                    url: url.to_owned(),
                    reason: "binary message".into(),
                });
            }
            Incoming::Violation(_, reason) => {
                return Err(DialError::NotShardq {
                    url: url.to_owned(),
                    reason,
                });
            }
            Incoming::PeerClosed(code) => {
                return Err(DialError::Closed {
                    url: url.to_owned(),
                    code,
                });
            }
            Incoming::Closed => {
                return Err(DialError::Closed {
                    url: url.to_owned(),
                    code: None,
                });
            }
        };
        let frame = Frame::decode_str(&text, options.max_frame_bytes).map_err(|error| {
            DialError::NotShardq {
                url: url.to_owned(),
                reason: error.to_string(),
            }
        })?;
        let step = handshake
            .receive(frame)
            .map_err(|source| DialError::Handshake {
                url: url.to_owned(),
                source,
            })?;
        match step {
            ClientStep::Send(frame) => {
                let _ = outbox.push_unbounded(encode::masked_text_frame(frame.encode().as_bytes()));
            }
            ClientStep::Established { server } => return Ok(server),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:7100/v1/cluster").unwrap(),
            (false, "127.0.0.1:7100", "/v1/cluster")
        );
        assert_eq!(split_url("ws://c:1").unwrap(), (false, "c:1", "/"));
        assert_eq!(
            split_url("wss://c:1/v1/cluster").unwrap(),
            (true, "c:1", "/v1/cluster")
        );
        assert_eq!(host_of("c:1"), "c");
        assert_eq!(host_of("[::1]:7"), "::1");
        assert!(matches!(
            split_url("http://c:1"),
            Err(DialError::BadUrl { .. })
        ));
        assert!(matches!(
            split_url("ws://:1/x"),
            Err(DialError::BadUrl { .. })
        ));
    }
}
