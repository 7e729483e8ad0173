//! An authenticated shardq/1 WebSocket connection: connect, run the client
//! side of the handshake, hand back the socket (to the publisher and the
//! subscriber, inside this crate), or check a node and hang up
//! ([`authenticate`], for tools). The socket and its WebSocket library stay
//! private: the public items are [`authenticate`] and [`ConnectError`].

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{
    ClientHandshake, ClientStep, CloseCode, ErrorCode, Frame, HandshakeError, Nonce, Psk,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::tls::{ClientStream, Tls};

/// The socket type of a client connection.
pub(crate) type WsStream = WebSocketStream<ClientStream>;

/// Largest frame a client accepts from a node.
pub const MAX_INCOMING_FRAME: usize = 16 << 20;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect or the WebSocket upgrade failed, or the socket broke
    /// while the handshake was being sent.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause (an I/O, HTTP or WebSocket error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The URL is `wss://` and no CA was given to check the node against
    /// (`tls` in the configuration; `[tls] ca_file` in a cluster file).
    #[error("{url}: wss:// needs the cluster's CA to check the node's certificate against")]
    TlsUnconfigured {
        /// The URL.
        url: String,
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
    /// The node closed the connection during the handshake.
    #[error("{url} closed the connection during the handshake{}", close_reason(*.code))]
    Closed {
        /// The URL.
        url: String,
        /// The close code, if one was sent.
        code: Option<u16>,
    },
    /// The node sent something that is not a shardq/1 frame.
    #[error("{url} is not a shardq/1 node: {reason}")]
    NotShardq {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("{url}: no handshake within {0:?}", timeout)]
    Timeout {
        /// The URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The configuration names no consumer to connect to.
    #[error("no consumers configured")]
    NoConsumers,
}

fn close_reason(code: Option<u16>) -> String {
    match code.and_then(CloseCode::from_code) {
        Some(code) => format!(" ({} {})", code.code(), code.reason()),
        None => code.map(|c| format!(" (code {c})")).unwrap_or_default(),
    }
}

impl ConnectError {
    /// Whether the failure was authentication (a wrong psk on either side).
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ConnectError::Handshake { source, .. } => source.code() == ErrorCode::AuthFailed,
            ConnectError::Closed { code, .. } => *code == Some(CloseCode::AuthFailed.code()),
            _ => false,
        }
    }
}

/// An authenticated connection.
pub(crate) struct Connection {
    /// The socket, after the handshake.
    pub(crate) socket: WsStream,
    /// The node's id from its `hello`.
    pub(crate) server: String,
}

/// The WebSocket settings of client connections.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INCOMING_FRAME))
        .max_frame_size(Some(MAX_INCOMING_FRAME))
}

/// Checks a node: connects to `url`, runs the mutual shardq/1 handshake
/// with `psk` (each side proves it knows the psk without sending it),
/// closes the connection with a normal close (1000) and returns the node's
/// id from its `hello`.
///
/// For tools that only need to know a node is up and shares the psk
/// (health and deployment checks); applications use
/// [`Publisher`](crate::Publisher) and [`Subscriber`](crate::Subscriber).
/// `url` is a full endpoint, e.g. `ws://host:7100/v1/subscribe` or
/// `ws://host:7000/v1/publish`. `name` appears in the node's logs.
/// `timeout` bounds the whole check, the close included; a node that does
/// not answer the close in time is dropped, and the check still succeeds.
///
/// # Errors
///
/// [`ConnectError`]: a wrong psk on either side is
/// [`is_auth_failure`](ConnectError::is_auth_failure); a `wss://` URL
/// without a CA is [`ConnectError::TlsUnconfigured`]; no handshake in time is
/// [`ConnectError::Timeout`].
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use shardq::protocol::Psk;
///
/// let psk = Psk::new(std::env::var("SHARDQ_PSK")?)?;
/// let url = "ws://127.0.0.1:7100/v1/subscribe";
/// match shardq::authenticate(url, &psk, Some("health-check"), Duration::from_secs(5)).await {
///     Ok(id) => println!("{id} is up and shares our psk"),
///     Err(error) if error.is_auth_failure() => eprintln!("{url} has another psk"),
///     Err(error) => eprintln!("{error}"),
/// }
/// # Ok(())
/// # }
/// ```
pub async fn authenticate(
    url: &str,
    psk: &Psk,
    name: Option<&str>,
    timeout: Duration,
) -> Result<String, ConnectError> {
    authenticate_tls(url, psk, name, timeout, None).await
}

/// [`authenticate`], checking a `wss://` node's certificate against `tls`.
pub async fn authenticate_tls(
    url: &str,
    psk: &Psk,
    name: Option<&str>,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<String, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let options = ConnectOptions {
        psk,
        client: None,
        token: None,
        name,
        tls,
    };
    let Connection { mut socket, server } = connect(url, &options, timeout).await?;
    // Close politely: send 1000, then read until the node's close answers it.
    let close = async {
        let normal = tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal.code().into(),
            reason: "".into(),
        };
        if socket.close(Some(normal)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    };
    let _ = tokio::time::timeout_at(deadline, close).await;
    Ok(server)
}

/// How a connection authenticates.
pub(crate) struct ConnectOptions<'a> {
    /// The psk, or the secret of the `[[clients]]` entry `client`.
    pub psk: &'a Psk,
    /// The `[[clients]]` name, if any.
    pub client: Option<&'a str>,
    /// A signed token instead of a proof.
    pub token: Option<&'a str>,
    /// A name for the node's logs.
    pub name: Option<&'a str>,
    /// The CA `wss://` nodes are checked against.
    pub tls: Option<&'a Tls>,
}

/// Connects to `url` (e.g. `ws://host:7100/v1/subscribe`) and authenticates
/// as `options` say, within `timeout`.
pub(crate) async fn connect(
    url: &str,
    options: &ConnectOptions<'_>,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    tokio::time::timeout(timeout, connect_inner(url, options))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                url: url.to_owned(),
                timeout,
            })
        })
}

async fn connect_inner(
    url: &str,
    options: &ConnectOptions<'_>,
) -> Result<Connection, ConnectError> {
    let stream = crate::tls::open(url, options.tls).await?;
    let (mut socket, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .map_err(|source| ConnectError::Unreachable {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
    let name = options.name.map(str::to_owned);
    let mut handshake = match options.token {
        Some(token) => ClientHandshake::token(token, Nonce::random(), name),
        None => ClientHandshake::new(options.psk.clone(), Nonce::random(), name)
            .named(options.client.map(str::to_owned)),
    };
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(ConnectError::Closed {
                    url: url.to_owned(),
                    code: frame.map(|f| u16::from(f.code)),
                });
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                return Err(ConnectError::NotShardq {
                    url: url.to_owned(),
                    reason: "binary message".into(),
                });
            }
            Some(Err(_)) | None => {
                return Err(ConnectError::Closed {
                    url: url.to_owned(),
                    code: None,
                });
            }
        };
        let frame = Frame::decode(text.as_bytes(), MAX_INCOMING_FRAME).map_err(|error| {
            ConnectError::NotShardq {
                url: url.to_owned(),
                reason: error.to_string(),
            }
        })?;
        let step = handshake
            .receive(frame)
            .map_err(|source| ConnectError::Handshake {
                url: url.to_owned(),
                source,
            });
        match step {
            Ok(ClientStep::Send(frame)) => {
                socket
                    .send(Message::text(frame.encode()))
                    .await
                    .map_err(|source| ConnectError::Unreachable {
                        url: url.to_owned(),
                        source: Box::new(source),
                    })?;
            }
            Ok(ClientStep::Established { server }) => return Ok(Connection { socket, server }),
            Err(error) => {
                if matches!(&error, ConnectError::Handshake { source, .. } if source.code() == ErrorCode::AuthFailed)
                {
                    // The server does not know our psk: say so and hang up.
                    let _ = socket
                        .close(Some(tungstenite::protocol::CloseFrame {
                            code: CloseCode::AuthFailed.code().into(),
                            reason: CloseCode::AuthFailed.reason().into(),
                        }))
                        .await;
                }
                return Err(error);
            }
        }
    }
}
