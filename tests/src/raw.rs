//! Raw protocol clients for tests: frames in, frames out, nothing hidden.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use shardq::ConnectError;
use shardq::connection::MAX_INCOMING_FRAME;
use shardq_protocol::legacy::{self, AnswerPolicy, LegacyFrame, LegacyHandshake};
use shardq_protocol::{ClientHandshake, ClientStep, CloseCode, Frame, Nonce, Psk, RawValue};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::either::Either;

use crate::PATIENCE;

/// A test connection's TCP or TLS stream.
pub type TestStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
/// The socket of a test connection.
pub type WsStream = WebSocketStream<TestStream>;

/// Opens `url` (`ws://` or `wss://`, checked against `tls`).
pub async fn open(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<TestStream> {
    let secure = url.starts_with("wss://");
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    if !secure {
        return Ok(Either::Left(stream));
    }
    let config = tls.ok_or_else(|| std::io::Error::other("wss:// without a CA"))?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await?;
    Ok(Either::Right(stream))
}

/// A WebSocket to `url` (`ws://`), not authenticated: the test speaks the
/// handshake itself.
pub async fn websocket(url: &str) -> WsStream {
    let stream = open(url, None).await.unwrap();
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

/// Connects to `url` and runs the client side of the shardq/1 handshake,
/// as the `shardq` client does (same WebSocket settings, same errors),
/// within [`PATIENCE`]: the socket and the node's id.
pub async fn connect(
    url: &str,
    psk: &Psk,
    name: Option<&str>,
) -> Result<(WsStream, String), ConnectError> {
    let handshake = ClientHandshake::new(psk.clone(), Nonce::random(), name.map(str::to_owned));
    connect_with(url, handshake).await
}

/// Connects to `url` and runs `handshake` (a named client's, a node's…),
/// within [`PATIENCE`].
pub async fn connect_with(
    url: &str,
    handshake: ClientHandshake,
) -> Result<(WsStream, String), ConnectError> {
    connect_tls(url, handshake, None).await
}

/// [`connect_with`], checking a `wss://` node against `tls`.
pub async fn connect_tls(
    url: &str,
    handshake: ClientHandshake,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(WsStream, String), ConnectError> {
    tokio::time::timeout(PATIENCE, run_handshake(url, handshake, tls))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                url: url.to_owned(),
                timeout: PATIENCE,
            })
        })
}

async fn run_handshake(
    url: &str,
    mut handshake: ClientHandshake,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(WsStream, String), ConnectError> {
    let unreachable = |source: tungstenite::Error| ConnectError::Unreachable {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INCOMING_FRAME))
        .max_frame_size(Some(MAX_INCOMING_FRAME));
    let stream = open(url, tls)
        .await
        .map_err(|source| ConnectError::Unreachable {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(unreachable)?;
    loop {
        let closed = |code| ConnectError::Closed {
            url: url.to_owned(),
            code,
        };
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(closed(frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(ConnectError::NotShardq {
                    url: url.to_owned(),
                    reason: "binary message".into(),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(closed(None)),
        };
        let frame = Frame::decode(text.as_bytes(), MAX_INCOMING_FRAME).map_err(|error| {
            ConnectError::NotShardq {
                url: url.to_owned(),
                reason: error.to_string(),
            }
        })?;
        match handshake.receive(frame) {
            Ok(ClientStep::Send(frame)) => socket
                .send(Message::text(frame.encode()))
                .await
                .map_err(unreachable)?,
            Ok(ClientStep::Established { server }) => return Ok((socket, server)),
            Err(source) => {
                if source.close_code() == CloseCode::AuthFailed {
                    // The node does not know our psk: say so and hang up.
                    let _ = socket
                        .close(Some(CloseFrame {
                            code: CloseCode::AuthFailed.code().into(),
                            reason: CloseCode::AuthFailed.reason().into(),
                        }))
                        .await;
                }
                return Err(ConnectError::Handshake {
                    url: url.to_owned(),
                    source,
                });
            }
        }
    }
}

/// What came instead of the expected frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame.
    Frame(String),
    /// A close frame with this code (or none).
    Close(Option<u16>),
    /// The socket ended without a close frame.
    Eof,
}

async fn next_text(socket: &mut WsStream) -> Received {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await {
            Err(_) => panic!("nothing received within {PATIENCE:?}"),
            Ok(Some(Ok(Message::Text(text)))) => return Received::Frame(text.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Received::Close(frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Received::Eof,
        }
    }
}

/// A shardq/1 client that exposes every frame.
pub struct RawClient {
    /// The socket.
    pub socket: WsStream,
    /// The node's id.
    pub server: String,
}

impl RawClient {
    /// Connects and authenticates.
    pub async fn connect(url: &str, psk: &Psk) -> Result<RawClient, ConnectError> {
        let (socket, server) = connect(url, psk, Some("test")).await?;
        Ok(RawClient { socket, server })
    }

    /// Connects with `handshake` (a named client's, a node's…).
    pub async fn connect_with(
        url: &str,
        handshake: ClientHandshake,
    ) -> Result<RawClient, ConnectError> {
        RawClient::connect_tls(url, handshake, None).await
    }

    /// Connects with `handshake`, checking a `wss://` node against `tls`.
    pub async fn connect_tls(
        url: &str,
        handshake: ClientHandshake,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<RawClient, ConnectError> {
        let (socket, server) = connect_tls(url, handshake, tls).await?;
        Ok(RawClient { socket, server })
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &Frame) {
        self.send_text(&frame.encode()).await;
    }

    /// Sends a text message as is.
    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next frame, decoded; panics on a close.
    pub async fn recv(&mut self) -> Frame {
        match next_text(&mut self.socket).await {
            Received::Frame(text) => Frame::decode(text.as_bytes(), usize::MAX)
                .unwrap_or_else(|e| panic!("undecodable frame {text}: {e}")),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame as text, or the close.
    pub async fn recv_raw(&mut self) -> Received {
        next_text(&mut self.socket).await
    }

    /// The next text frame if one arrives within `wait`, else `None`.
    pub async fn recv_within(&mut self, wait: std::time::Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => return Some(text.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => panic!("closed: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => panic!("connection lost"),
            }
        }
    }

    /// Reads until the connection closes; the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match next_text(&mut self.socket).await {
                Received::Frame(_) => continue,
                Received::Close(code) => return code,
                Received::Eof => return None,
            }
        }
    }

    /// Sends `publish` and returns the answer.
    pub async fn publish(&mut self, id: u64, topic: &str, payload: &str) -> Frame {
        self.publish_nowait(id, topic, payload).await;
        self.recv().await
    }

    /// Sends `publish` without waiting for its answer.
    pub async fn publish_nowait(&mut self, id: u64, topic: &str, payload: &str) {
        self.send_text(&format!(
            r#"{{"type":"publish","id":{id},"topic":"{topic}","payload":{payload}}}"#
        ))
        .await;
    }

    /// Sends `unsubscribe` and returns the answer.
    pub async fn unsubscribe(&mut self, id: u64, topic: &str) -> Frame {
        self.send_text(&format!(
            r#"{{"type":"unsubscribe","id":{id},"topic":"{topic}"}}"#
        ))
        .await;
        self.recv().await
    }

    /// Sends `subscribe` and returns the answer.
    pub async fn subscribe(&mut self, id: u64, topic: &str) -> Frame {
        self.send_text(&format!(
            r#"{{"type":"subscribe","id":{id},"topic":"{topic}"}}"#
        ))
        .await;
        self.recv().await
    }
}

/// The answer is an ack; panics with the frame otherwise.
pub fn expect_ack(frame: Frame) -> shardq_protocol::Ack {
    match frame {
        Frame::Ack(ack) => ack,
        other => panic!("expected an ack, got {}", other.encode()),
    }
}

/// The frame is a message; panics otherwise.
pub fn expect_message(frame: Frame) -> shardq_protocol::Message {
    match frame {
        Frame::Message(message) => message,
        other => panic!("expected a message, got {}", other.encode()),
    }
}

/// The frame is an error with this code; panics otherwise.
pub fn expect_error(frame: Frame, code: &str) -> shardq_protocol::ErrorFrame {
    match frame {
        Frame::Error(error) if error.code.as_str() == code => error,
        other => panic!("expected error {code}, got {}", other.encode()),
    }
}

/// A client of the origin system's dialect that behaves as the origin
/// `queue-protocol` library does: challenge on open, answer at once.
pub struct LegacyClient {
    /// The socket.
    pub socket: WsStream,
}

/// Why a legacy connection failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LegacyFailure {
    /// The node's answer did not verify (the origin library's "error" event).
    BadAnswer,
    /// The connection closed first.
    Closed(Option<u16>),
}

impl LegacyClient {
    /// Connects to `url` and completes the legacy handshake.
    pub async fn connect(url: &str, psk: &Psk) -> Result<LegacyClient, LegacyFailure> {
        let stream = open(url, None).await.unwrap();
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let mut handshake = LegacyHandshake::new(
            psk.clone(),
            legacy::random_challenge(),
            AnswerPolicy::Immediately,
        );
        socket
            .send(Message::text(handshake.challenge().encode()))
            .await
            .unwrap();
        while !handshake.is_established() {
            let text = match next_text(&mut socket).await {
                Received::Frame(text) => text,
                Received::Close(code) => return Err(LegacyFailure::Closed(code)),
                Received::Eof => return Err(LegacyFailure::Closed(None)),
            };
            let frame = LegacyFrame::decode(text.as_bytes(), usize::MAX).unwrap();
            let step = handshake
                .receive(&frame)
                .map_err(|_| LegacyFailure::BadAnswer)?;
            if let Some(answer) = step.send {
                socket.send(Message::text(answer.encode())).await.unwrap();
            }
        }
        Ok(LegacyClient { socket })
    }

    /// Sends `{"t":"m","d":data,"s":topic}` with a string `data`.
    pub async fn send_message(&mut self, topic: &str, data: &str) {
        let data = RawValue::from_string(serde_json::to_string(data).unwrap()).unwrap();
        let frame = LegacyFrame::Message {
            topic: topic.to_owned(),
            data,
        };
        self.socket
            .send(Message::text(frame.encode()))
            .await
            .unwrap();
    }

    /// The next message: `(topic, data)`.
    pub async fn recv_message(&mut self) -> (String, String) {
        match next_text(&mut self.socket).await {
            Received::Frame(text) => match LegacyFrame::decode(text.as_bytes(), usize::MAX) {
                Ok(LegacyFrame::Message { topic, data }) => {
                    (topic, serde_json::from_str(data.get()).unwrap())
                }
                other => panic!("expected a legacy message, got {other:?}"),
            },
            other => panic!("expected a legacy message, got {other:?}"),
        }
    }

    /// Reads until the connection closes; the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match next_text(&mut self.socket).await {
                Received::Frame(_) => continue,
                Received::Close(code) => return code,
                Received::Eof => return None,
            }
        }
    }
}
