//! The shardq/1 frames: JSON objects in WebSocket text messages, tagged by
//! `"type"`. Decoding is bounded, typed and never panics; payloads stay raw JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::topic::{Topic, TopicError, TopicFilter};

/// The protocol version a `hello` announces.
pub const PROTOCOL_VERSION: &str = "shardq/1";

/// A place in a topic's sequence: the epoch (made when a node created the
/// topic's state) and the offset of a message within it (the first is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Random non-zero id of the topic's current sequence, below 2^53.
    pub epoch: u64,
    /// Offset of a message in the epoch; 0 means "before the first message".
    pub offset: u64,
}

/// One topic's position as reported in a `subscribe` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPosition {
    /// The topic.
    pub topic: Topic,
    /// Its current epoch.
    pub epoch: u64,
    /// The offset of the last message sequenced before the subscription went
    /// live: every message with a greater offset will be delivered.
    pub offset: u64,
}

/// Server → client, first frame of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hello {
    /// Always [`PROTOCOL_VERSION`].
    pub version: String,
    /// The id of the node (e.g. `consumer-0`).
    pub node: String,
    /// The server's 32-byte nonce, lowercase hex.
    pub nonce: String,
}

/// Client → server: the client's nonce and its proof of the psk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Auth {
    /// The client's 32-byte nonce, lowercase hex.
    pub nonce: String,
    /// Lowercase hex HMAC-SHA256 client proof.
    pub proof: String,
    /// Optional name of the connecting node or application, for logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Server → client: the handshake succeeded; the server's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Welcome {
    /// Lowercase hex HMAC-SHA256 server proof.
    pub proof: String,
}

/// Client → server: start receiving a topic (or every event of a queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscribe {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// `queue/event` or `queue/*`.
    pub topic: TopicFilter,
    /// Resume after this position (exact topics only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
}

/// Client → server: stop receiving a topic (or every event of a queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsubscribe {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// `queue/event` or `queue/*`.
    pub topic: TopicFilter,
}

/// Client → server: publish one message.
#[derive(Debug, Clone, Serialize)]
pub struct Publish {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// The topic.
    pub topic: Topic,
    /// Consumer → consumer only: this publish was already forwarded once by
    /// a consumer that does not own the topic; it is never forwarded again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
    /// Any JSON value, kept as raw text.
    pub payload: Box<RawValue>,
}

/// Server → client: the request with this id succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// The id of the request.
    pub id: u64,
    /// `publish`: the epoch the message was sequenced in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// `publish`: the offset the message was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `subscribe`: the topics now live and where each starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<TopicPosition>>,
    /// `subscribe` with `since`: whether every message after `since` was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

impl Ack {
    /// The ack of a `publish`.
    pub fn published(id: u64, at: Position) -> Ack {
        Ack {
            id,
            epoch: Some(at.epoch),
            offset: Some(at.offset),
            ..Ack::default()
        }
    }

    /// The ack of a `subscribe`.
    pub fn subscribed(id: u64, topics: Vec<TopicPosition>, recovered: Option<bool>) -> Ack {
        Ack {
            id,
            topics: Some(topics),
            recovered,
            ..Ack::default()
        }
    }

    /// The ack of an `unsubscribe`.
    pub fn unsubscribed(id: u64) -> Ack {
        Ack {
            id,
            ..Ack::default()
        }
    }

    /// The position of an acked publish, when both fields are present.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            epoch: self.epoch?,
            offset: self.offset?,
        })
    }
}

/// Server → client: a request failed, or (without `id`) the connection did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorFrame {
    /// The id of the failed request; absent for connection-level errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Server → client: one delivered message.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Topic,
    /// The epoch it was sequenced in.
    pub epoch: u64,
    /// Its offset in the epoch.
    pub offset: u64,
    /// The published JSON value, byte for byte.
    pub payload: Box<RawValue>,
}

impl PartialEq for Publish {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.topic == other.topic
            && self.payload.get() == other.payload.get()
    }
}

impl Eq for Publish {}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.position() == other.position()
            && self.payload.get() == other.payload.get()
    }
}

impl Eq for Message {}

impl Message {
    /// Its `(epoch, offset)`.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// Consumer → consumer (peers subscribed on `/v1/cluster`): this node no
/// longer owns the topic. Its epoch ended at `offset`; `owner` sequences it
/// now (in this node's view). The node keeps relaying the topic to the
/// peer until the peer re-points at the new owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// The topic.
    pub topic: Topic,
    /// The epoch that ended.
    pub epoch: u64,
    /// Its last offset.
    pub offset: u64,
    /// The new owner's id.
    pub owner: String,
}

/// Every shardq/1 frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// Server → client, handshake step 1.
    Hello(Hello),
    /// Client → server, handshake step 2.
    Auth(Auth),
    /// Server → client, handshake step 3.
    Welcome(Welcome),
    /// Client → server.
    Subscribe(Subscribe),
    /// Client → server.
    Unsubscribe(Unsubscribe),
    /// Client → server.
    Publish(Publish),
    /// Server → client.
    Ack(Ack),
    /// Server → client.
    Error(ErrorFrame),
    /// Server → client.
    Message(Message),
    /// Consumer → peer consumer.
    Moved(Moved),
}

impl Frame {
    /// The `"type"` of the frame.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Auth(_) => "auth",
            Frame::Welcome(_) => "welcome",
            Frame::Subscribe(_) => "subscribe",
            Frame::Unsubscribe(_) => "unsubscribe",
            Frame::Publish(_) => "publish",
            Frame::Ack(_) => "ack",
            Frame::Error(_) => "error",
            Frame::Message(_) => "message",
            Frame::Moved(_) => "moved",
        }
    }

    /// An `error` frame.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorFrame {
            id,
            code,
            message: message.into(),
        })
    }

    /// Encodes the frame as compact JSON.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and
        // raw payloads are valid JSON by construction.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("frames always serialize"))
    }

    /// Decodes one frame of at most `limit` bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Frame, DecodeError> {
        decode(bytes, limit)
    }

    /// Decodes one frame from text known to be UTF-8 (see [`decode_str`]).
    pub fn decode_str(text: &str, limit: usize) -> Result<Frame, DecodeError> {
        decode_str(text, limit)
    }
}

fn push_number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends the JSON of a `message` frame to `out`, byte-identical to
/// `Frame::Message(..).encode()` but without building a `Frame`.
///
/// `topic` must be valid (see [`Topic`]): topics never need escaping, so it
/// is written verbatim.
pub fn encode_message_into(out: &mut Vec<u8>, topic: &str, at: Position, payload: &RawValue) {
    out.extend_from_slice(b"{\"type\":\"message\",\"topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"epoch\":");
    push_number(out, at.epoch);
    out.extend_from_slice(b",\"offset\":");
    push_number(out, at.offset);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.get().as_bytes());
    out.push(b'}');
}

/// Appends the JSON of a `publish` frame, byte-identical to
/// `Frame::Publish(..).encode()`; the payload is copied verbatim.
///
/// `topic` must be valid (see [`Topic`]) and `payload` valid JSON: both are
/// written verbatim.
pub fn encode_publish_into(
    out: &mut Vec<u8>,
    id: u64,
    topic: &str,
    forwarded: bool,
    payload: &str,
) {
    out.extend_from_slice(b"{\"type\":\"publish\",\"id\":");
    push_number(out, id);
    out.extend_from_slice(b",\"topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.push(b'"');
    if forwarded {
        out.extend_from_slice(b",\"forwarded\":true");
    }
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.push(b'}');
}

/// Appends the JSON of a publish's `ack`, byte-identical to
/// `Frame::Ack(Ack::published(id, at)).encode()`.
pub fn encode_publish_ack_into(out: &mut Vec<u8>, id: u64, at: Position) {
    out.extend_from_slice(b"{\"type\":\"ack\",\"id\":");
    push_number(out, id);
    out.extend_from_slice(b",\"epoch\":");
    push_number(out, at.epoch);
    out.extend_from_slice(b",\"offset\":");
    push_number(out, at.offset);
    out.push(b'}');
}

/// Reads a publish's `ack` in exactly the form
/// [`encode_publish_ack_into`] writes, without a JSON parser; `None` for
/// anything else (decode those with [`decode_str`]).
pub fn parse_publish_ack(text: &str) -> Option<(u64, Position)> {
    let rest = text.strip_prefix("{\"type\":\"ack\",\"id\":")?;
    let (id, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(",\"epoch\":")?;
    let (epoch, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(",\"offset\":")?;
    let (offset, rest) = leading_number(rest)?;
    (rest == "}").then_some((id, Position { epoch, offset }))
}

/// Reads a `publish` in exactly the form [`encode_publish_into`] writes
/// (`{"type":"publish","id":N,"topic":"q/e"[,"forwarded":true],"payload":…}`,
/// no spaces) with
/// one validating pass over the payload and none over the rest; `None` for
/// any other shape (decode those with [`decode_str`], which accepts every
/// valid form and reports errors).
pub fn parse_publish(text: &str) -> Option<Publish> {
    let parts = parse_publish_parts(text)?;
    Some(Publish {
        id: parts.id,
        topic: Topic::parse(parts.topic).ok()?,
        forwarded: parts.forwarded,
        payload: parts.payload.to_owned(),
    })
}

/// A `publish` read by [`parse_publish_parts`]: its fields borrowed from
/// the frame's text, nothing copied.
#[derive(Debug, Clone, Copy)]
pub struct PublishParts<'a> {
    /// The request id.
    pub id: u64,
    /// The topic, valid as [`Topic::parse`] requires.
    pub topic: &'a str,
    /// Where the topic starts in the text.
    pub topic_at: usize,
    /// Set when a consumer forwarded it.
    pub forwarded: bool,
    /// The payload, valid JSON.
    pub payload: &'a RawValue,
    /// Where the payload starts in the text (`payload.get()` is
    /// `text[payload_at..payload_at + payload.get().len()]`).
    pub payload_at: usize,
}

/// [`parse_publish`] without allocating: the same fast form, the same
/// checks (a valid topic, a valid JSON payload), the fields borrowed.
pub fn parse_publish_parts(text: &str) -> Option<PublishParts<'_>> {
    let rest = text.strip_prefix("{\"type\":\"publish\",\"id\":")?;
    let (id, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(",\"topic\":\"")?;
    let topic_at = text.len() - rest.len();
    let (topic, rest) = rest.split_once('"')?;
    let (forwarded, rest) = match rest.strip_prefix(",\"forwarded\":true") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let rest = rest.strip_prefix(",\"payload\":")?;
    let payload = rest.strip_suffix('}')?;
    // The raw value leaves out the whitespace around it.
    let value = payload.trim_start_matches([' ', '\t', '\n', '\r']);
    let payload_at = text.len() - rest.len() + (payload.len() - value.len());
    Topic::validate(topic).ok()?;
    let payload: &RawValue = serde_json::from_str(payload).ok()?;
    Some(PublishParts {
        id,
        topic,
        topic_at,
        forwarded,
        payload,
        payload_at,
    })
}

/// A JSON unsigned integer at the start of `text` (no leading zeros, no
/// overflow) and what follows it.
fn leading_number(text: &str) -> Option<(u64, &str)> {
    let bytes = text.as_bytes();
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&byte) = bytes.get(digits) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        // Nineteen digits always fit; the twentieth may overflow.
        value = if digits < 19 {
            value * 10 + u64::from(digit)
        } else {
            value.checked_mul(10)?.checked_add(u64::from(digit))?
        };
        digits += 1;
    }
    if digits == 0 || (digits > 1 && bytes[0] == b'0') {
        return None;
    }
    // The digits are ASCII, so `digits` is a char boundary.
    Some((value, text.get(digits..)?))
}

/// Machine-readable error codes (the `code` of an `error` frame).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, or a field missing or of the wrong type.
    BadFrame,
    /// The frame is larger than the connection's limit.
    FrameTooLarge,
    /// The topic is not `queue/event` with valid names.
    BadTopic,
    /// The queue is not declared (and `open_topics` is off).
    UnknownQueue,
    /// The event is not declared for its queue (and `open_topics` is off).
    UnknownEvent,
    /// The frame is not allowed on this endpoint.
    NotAuthorized,
    /// The psk proof did not verify.
    AuthFailed,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The node that owns the topic could not be reached in time.
    Unavailable,
    /// The connection already holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The connection is already subscribed to the topic.
    AlreadySubscribed,
    /// The connection is not subscribed to the topic.
    NotSubscribed,
    /// Consumer → consumer: a peer subscribed at a node that does not own
    /// the topic in its view of the node list (views disagree for a while).
    NotOwner,
    /// The node is shutting down and did not process the request.
    ShuttingDown,
    /// A fault inside the node.
    Internal,
    /// A code this version does not know (kept verbatim).
    Other(String),
}

impl ErrorCode {
    /// Every code this version defines.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::BadTopic,
        ErrorCode::UnknownQueue,
        ErrorCode::UnknownEvent,
        ErrorCode::NotAuthorized,
        ErrorCode::AuthFailed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unavailable,
        ErrorCode::TooManySubscriptions,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::NotOwner,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::UnknownQueue => "unknown_queue",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::NotAuthorized => "not_authorized",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses a wire code; unknown codes become [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_owned()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// WebSocket close codes used by shardq nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the node is shutting down.
    GoingAway,
    /// 1009: a frame exceeded the size limit.
    FrameTooLarge,
    /// 4001: the psk proof did not verify.
    AuthFailed,
    /// 4002: the handshake did not finish in time.
    HandshakeTimeout,
    /// 4003: a frame that is not valid at this point (before or during the handshake).
    ProtocolError,
    /// 4004: a legacy subscriber's topic is malformed or not allowed.
    TopicRefused,
    /// 4008: the subscriber fell too far behind and was disconnected.
    SlowConsumer,
    /// 4010: the node lost part of a topic's stream it relays; reconnect
    /// and resume (the resume reports what is missing).
    Resync,
    /// 4009: the peer stopped answering pings.
    PingTimeout,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::FrameTooLarge => 1009,
            CloseCode::AuthFailed => 4001,
            CloseCode::HandshakeTimeout => 4002,
            CloseCode::ProtocolError => 4003,
            CloseCode::TopicRefused => 4004,
            CloseCode::SlowConsumer => 4008,
            CloseCode::Resync => 4010,
            CloseCode::PingTimeout => 4009,
        }
    }

    /// The short reason sent with the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going away",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::AuthFailed => "auth failed",
            CloseCode::HandshakeTimeout => "handshake timeout",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::TopicRefused => "topic refused",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::Resync => "resync",
            CloseCode::PingTimeout => "ping timeout",
        }
    }

    /// The close code with this number, if shardq defines it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::FrameTooLarge,
            CloseCode::AuthFailed,
            CloseCode::HandshakeTimeout,
            CloseCode::ProtocolError,
            CloseCode::TopicRefused,
            CloseCode::SlowConsumer,
            CloseCode::PingTimeout,
            CloseCode::Resync,
        ]
        .into_iter()
        .find(|known| known.code() == code)
    }
}

/// Why bytes could not be decoded into a [`Frame`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Not JSON, not an object, a duplicate field, or a field of the wrong type.
    #[error("malformed frame: {0}")]
    Json(#[source] serde_json::Error),
    /// The `"type"` is not one this version knows.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A field the frame type requires is absent.
    #[error("{kind} frame without {field:?}")]
    MissingField {
        /// The frame type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
        /// The frame's id, when it had one.
        id: Option<u64>,
    },
    /// The topic is malformed.
    #[error("{error}")]
    BadTopic {
        /// The frame's id, when it had one.
        id: Option<u64>,
        /// What is wrong with the topic.
        #[source]
        error: TopicError,
    },
    /// A field is present but its value is not allowed.
    #[error("{kind} frame: {reason}")]
    BadValue {
        /// The frame type.
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
        /// The frame's id, when it had one.
        id: Option<u64>,
    },
}

impl DecodeError {
    /// The id of the request the frame carried, when it could be read, so the
    /// answer can name it.
    pub fn id(&self) -> Option<u64> {
        match self {
            DecodeError::MissingField { id, .. }
            | DecodeError::BadTopic { id, .. }
            | DecodeError::BadValue { id, .. } => *id,
            DecodeError::TooLarge { .. } | DecodeError::Json(_) | DecodeError::UnknownType(_) => {
                None
            }
        }
    }

    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::BadTopic { error, .. } => error.code(),
            _ => ErrorCode::BadFrame,
        }
    }

    /// The `error` frame answering this failure.
    pub fn to_frame(&self) -> Frame {
        Frame::error(self.id(), self.code(), self.to_string())
    }
}

/// Deserializes a present field as `Some`, even when its value is `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Decodes one frame of at most `limit` bytes from text already known to be
/// UTF-8 (a WebSocket text message), skipping a second UTF-8 validation.
/// Publishes in their canonical form take a faster path with the same
/// result ([`parse_publish`]).
pub fn decode_str(text: &str, limit: usize) -> Result<Frame, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            limit,
        });
    }
    if let Some(publish) = parse_publish(text) {
        return Ok(Frame::Publish(publish));
    }
    let wire: WireFrame<'_> = serde_json::from_str(text).map_err(DecodeError::Json)?;
    wire.into_frame()
}

/// Every field any frame has, all optional: the first pass of decoding.
/// (serde's internally tagged enums buffer their input, which raw payloads do
/// not survive, so the tag is dispatched by hand.)
#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    version: Option<String>,
    node: Option<String>,
    nonce: Option<String>,
    proof: Option<String>,
    id: Option<u64>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    since: Option<Position>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    forwarded: Option<bool>,
    owner: Option<String>,
    epoch: Option<u64>,
    offset: Option<u64>,
    recovered: Option<bool>,
    topics: Option<Vec<TopicPosition>>,
    code: Option<String>,
    message: Option<String>,
}

/// Decodes one frame of at most `limit` bytes. Unknown fields are ignored, so
/// newer peers may add fields; unknown types are errors.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Frame, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let wire: WireFrame<'_> = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    wire.into_frame()
}

impl WireFrame<'_> {
    fn into_frame(self) -> Result<Frame, DecodeError> {
        let id = self.id;
        macro_rules! need {
            ($kind:literal, $field:ident) => {
                match self.$field {
                    Some(value) => value,
                    None => {
                        return Err(DecodeError::MissingField {
                            kind: $kind,
                            field: stringify!($field),
                            id,
                        })
                    }
                }
            };
        }
        let topic_filter = |topic: &str| {
            TopicFilter::parse(topic).map_err(|error| DecodeError::BadTopic { id, error })
        };
        let exact_topic =
            |topic: &str| Topic::parse(topic).map_err(|error| DecodeError::BadTopic { id, error });
        let frame = match &*self.kind {
            "hello" => Frame::Hello(Hello {
                version: need!("hello", version),
                node: need!("hello", node),
                nonce: need!("hello", nonce),
            }),
            "auth" => Frame::Auth(Auth {
                nonce: need!("auth", nonce),
                proof: need!("auth", proof),
                node: self.node,
            }),
            "welcome" => Frame::Welcome(Welcome {
                proof: need!("welcome", proof),
            }),
            "subscribe" => {
                let id = need!("subscribe", id);
                let topic = topic_filter(&need!("subscribe", topic))?;
                if self.since.is_some() && !matches!(topic, TopicFilter::Exact(_)) {
                    return Err(DecodeError::BadValue {
                        kind: "subscribe",
                        reason: "since needs an exact topic, not queue/*",
                        id: Some(id),
                    });
                }
                Frame::Subscribe(Subscribe {
                    id,
                    topic,
                    since: self.since,
                })
            }
            "unsubscribe" => Frame::Unsubscribe(Unsubscribe {
                id: need!("unsubscribe", id),
                topic: topic_filter(&need!("unsubscribe", topic))?,
            }),
            "publish" => Frame::Publish(Publish {
                id: need!("publish", id),
                topic: exact_topic(&need!("publish", topic))?,
                forwarded: self.forwarded.unwrap_or(false),
                payload: need!("publish", payload),
            }),
            "ack" => Frame::Ack(Ack {
                id: need!("ack", id),
                epoch: self.epoch,
                offset: self.offset,
                topics: self.topics,
                recovered: self.recovered,
            }),
            "error" => Frame::Error(ErrorFrame {
                id,
                code: ErrorCode::parse(&need!("error", code)),
                message: self.message.unwrap_or_default(),
            }),
            "message" => Frame::Message(Message {
                topic: exact_topic(&need!("message", topic))?,
                epoch: need!("message", epoch),
                offset: need!("message", offset),
                payload: need!("message", payload),
            }),
            "moved" => Frame::Moved(Moved {
                topic: exact_topic(&need!("moved", topic))?,
                epoch: need!("moved", epoch),
                offset: need!("moved", offset),
                owner: need!("moved", owner),
            }),
            other => return Err(DecodeError::UnknownType(other.chars().take(40).collect())),
        };
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn round_trip(frame: &Frame) -> Frame {
        let text = frame.encode();
        decode(text.as_bytes(), LIMIT).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn every_frame_round_trips() {
        let topic = Topic::parse("database/create").unwrap();
        let frames = [
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION.into(),
                node: "consumer-0".into(),
                nonce: "00".repeat(32),
            }),
            Frame::Auth(Auth {
                nonce: "11".repeat(32),
                proof: "22".repeat(32),
                node: Some("producer-1".into()),
            }),
            Frame::Welcome(Welcome {
                proof: "33".repeat(32),
            }),
            Frame::Subscribe(Subscribe {
                id: 1,
                topic: TopicFilter::Exact(topic.clone()),
                since: Some(Position {
                    epoch: 77,
                    offset: 9,
                }),
            }),
            Frame::Subscribe(Subscribe {
                id: 2,
                topic: TopicFilter::AllEvents("files".into()),
                since: None,
            }),
            Frame::Unsubscribe(Unsubscribe {
                id: 3,
                topic: TopicFilter::Exact(topic.clone()),
            }),
            Frame::Publish(Publish {
                id: 4,
                topic: topic.clone(),
                forwarded: false,
                payload: raw(r#"{"id":99,"name":"John"}"#),
            }),
            Frame::Publish(Publish {
                id: 5,
                topic: topic.clone(),
                forwarded: true,
                payload: raw("[]"),
            }),
            Frame::Moved(Moved {
                topic: topic.clone(),
                epoch: 3,
                offset: 99,
                owner: "consumer-3".into(),
            }),
            Frame::Ack(Ack::published(
                4,
                Position {
                    epoch: 77,
                    offset: 10,
                },
            )),
            Frame::Ack(Ack::subscribed(
                1,
                vec![TopicPosition {
                    topic: topic.clone(),
                    epoch: 77,
                    offset: 9,
                }],
                Some(true),
            )),
            Frame::Ack(Ack::unsubscribed(3)),
            Frame::error(Some(5), ErrorCode::UnknownEvent, "no such event"),
            Frame::error(None, ErrorCode::AuthFailed, "authentication failed"),
            Frame::Message(Message {
                topic,
                epoch: 77,
                offset: 10,
                payload: raw("null"),
            }),
        ];
        for frame in &frames {
            let again = round_trip(frame);
            assert_eq!(again.encode(), frame.encode());
        }
    }

    #[test]
    fn type_comes_first_and_payload_is_verbatim() {
        let frame = Frame::Publish(Publish {
            id: 7,
            topic: Topic::parse("files/save").unwrap(),
            forwarded: false,
            payload: raw(r#"{"path" : "/tmp/x", "n":[1, 2.50]}"#),
        });
        assert_eq!(
            frame.encode(),
            r#"{"type":"publish","id":7,"topic":"files/save","payload":{"path" : "/tmp/x", "n":[1, 2.50]}}"#
        );
    }

    #[test]
    fn fast_message_encoding_matches_serde() {
        let topic = Topic::parse("database/update").unwrap();
        let payload = raw(r#"{"id":77}"#);
        let at = Position {
            epoch: 9_007_199_254_740_991,
            offset: 12,
        };
        let mut fast = Vec::new();
        encode_message_into(&mut fast, topic.as_str(), at, &payload);
        let slow = Frame::Message(Message {
            topic,
            epoch: at.epoch,
            offset: at.offset,
            payload,
        })
        .encode();
        assert_eq!(String::from_utf8(fast).unwrap(), slow);
    }

    #[test]
    fn fast_publish_and_ack_encodings_match_serde() {
        let topic = Topic::parse("files/save").unwrap();
        let payload = raw(r#"{"a": [1, 2]}"#);
        for forwarded in [false, true] {
            let mut fast = Vec::new();
            encode_publish_into(&mut fast, 42, topic.as_str(), forwarded, payload.get());
            let slow = Frame::Publish(Publish {
                id: 42,
                topic: topic.clone(),
                forwarded,
                payload: payload.clone(),
            })
            .encode();
            let fast = String::from_utf8(fast).unwrap();
            assert_eq!(fast, slow);
            assert_eq!(parse_publish(&fast).unwrap().forwarded, forwarded);
        }
        for (id, epoch, offset) in [
            (0, 1, 0),
            (7, 9_007_199_254_740_991, 12),
            (u64::MAX, 5, u64::MAX),
        ] {
            let at = Position { epoch, offset };
            let mut fast = Vec::new();
            encode_publish_ack_into(&mut fast, id, at);
            let text = String::from_utf8(fast).unwrap();
            assert_eq!(text, Frame::Ack(Ack::published(id, at)).encode());
            assert_eq!(parse_publish_ack(&text), Some((id, at)));
        }
    }

    #[test]
    fn fast_publish_parsing_agrees_with_the_decoder() {
        let fast = [
            r#"{"type":"publish","id":7,"topic":"files/save","payload":{"a":[1,2,{"b":"}"}]}}"#,
            r#"{"type":"publish","id":0,"topic":"a/b","payload":"x"}"#,
            r#"{"type":"publish","id":1,"topic":"a/b","payload":null}"#,
            r#"{"type":"publish","id":2,"topic":"a/b","forwarded":true,"payload":1}"#,
        ];
        for text in fast {
            let parsed = parse_publish(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(Frame::Publish(parsed), decode_str(text, LIMIT).unwrap());
        }
        // Anything else falls back to the decoder.
        for text in [
            r#"{"type":"publish","id":1,"topic":"a/b","payload":1,"extra":2}"#,
            r#"{"type":"publish","id":1,"topic":"a\u002fb","payload":1}"#,
            r#"{"type":"publish", "id":1,"topic":"a/b","payload":1}"#,
            r#"{"type":"publish","id":1,"topic":"a/b","payload":{"x":}"#,
            r#"{"type":"publish","id":1,"topic":"a b/c","payload":1}"#,
        ] {
            assert!(parse_publish(text).is_none(), "{text}");
        }
    }

    #[test]
    fn fast_ack_parsing_refuses_other_shapes() {
        for text in [
            r#"{"type":"ack","id":1}"#,
            r#"{"type":"ack","id":01,"epoch":1,"offset":1}"#,
            r#"{"type":"ack","id":1,"epoch":1,"offset":1,"x":2}"#,
            r#"{"type":"ack","id":1,"epoch":1,"offset":99999999999999999999}"#,
            r#"{"id":1,"type":"ack","epoch":1,"offset":1}"#,
            r#"{"type":"ack","id":-1,"epoch":1,"offset":1}"#,
        ] {
            assert_eq!(parse_publish_ack(text), None, "{text}");
        }
    }

    #[test]
    fn publish_parts_borrow_the_text() {
        let text = r#"{"type":"publish","id":12,"topic":"db/create","forwarded":true,"payload":{"a":[1,"}"]}}"#;
        let parts = parse_publish_parts(text).unwrap();
        assert_eq!(
            (parts.id, parts.topic, parts.forwarded),
            (12, "db/create", true)
        );
        assert_eq!(parts.payload.get(), r#"{"a":[1,"}"]}"#);
        assert_eq!(&text[parts.payload_at..text.len() - 1], parts.payload.get());
        assert_eq!(&text[parts.topic_at..parts.topic_at + 9], "db/create");
        // Whitespace around the payload is not part of it.
        let spaced = "{\"type\":\"publish\",\"id\":1,\"topic\":\"a/b\",\"payload\": \t[ 1 ]\n }";
        let parts = parse_publish_parts(spaced).unwrap();
        assert_eq!(parts.payload.get(), "[ 1 ]");
        let at = parts.payload_at;
        assert_eq!(&spaced[at..at + parts.payload.get().len()], "[ 1 ]");
        // The same checks as the owning parse: a bad topic or payload is refused.
        for bad in [
            r#"{"type":"publish","id":1,"topic":"db","payload":1}"#,
            r#"{"type":"publish","id":1,"topic":"d b/x","payload":1}"#,
            r#"{"type":"publish","id":1,"topic":"db/x","payload":{"a":}}"#,
        ] {
            assert!(parse_publish_parts(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn leading_numbers_match_the_standard_parser() {
        for text in [
            "0",
            "7",
            "10",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "1234567890123456789",
            "12345678901234567890",
            "00",
            "01",
            "",
            "x",
            "42,",
            "0}",
        ] {
            let digits = text.bytes().take_while(u8::is_ascii_digit).count();
            let expected = match &text[..digits] {
                "" => None,
                number if digits > 1 && number.starts_with('0') => None,
                number => number.parse::<u64>().ok().map(|n| (n, &text[digits..])),
            };
            assert_eq!(leading_number(text), expected, "{text}");
        }
    }

    #[test]
    fn decoding_text_and_bytes_agree() {
        let text = r#"{"type":"publish","id":5,"topic":"a/b","payload":"\u00e9"}"#;
        assert_eq!(
            decode_str(text, LIMIT).unwrap(),
            decode(text.as_bytes(), LIMIT).unwrap()
        );
        assert!(matches!(
            decode_str("x".repeat(10).as_str(), 4),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn null_payload_is_present() {
        let frame = decode(
            br#"{"type":"publish","id":1,"topic":"a/b","payload":null}"#,
            LIMIT,
        )
        .unwrap();
        let Frame::Publish(publish) = frame else {
            panic!("not a publish")
        };
        assert_eq!(publish.payload.get(), "null");
    }

    #[test]
    fn errors_carry_the_request_id_and_code() {
        let cases: [(&str, Option<u64>, ErrorCode); 9] = [
            ("not json", None, ErrorCode::BadFrame),
            ("[1,2]", None, ErrorCode::BadFrame),
            (r#"{"type":"nope"}"#, None, ErrorCode::BadFrame),
            (r#"{"id":1}"#, None, ErrorCode::BadFrame),
            (
                r#"{"type":"publish","id":3,"topic":"a/b"}"#,
                Some(3),
                ErrorCode::BadFrame,
            ),
            (
                r#"{"type":"publish","id":4,"topic":"a b/c","payload":1}"#,
                Some(4),
                ErrorCode::BadTopic,
            ),
            (
                r#"{"type":"subscribe","id":5,"topic":"a/*","since":{"epoch":1,"offset":2}}"#,
                Some(5),
                ErrorCode::BadFrame,
            ),
            (
                r#"{"type":"publish","id":6,"id":7,"topic":"a/b","payload":1}"#,
                None,
                ErrorCode::BadFrame,
            ),
            (
                r#"{"type":"publish","id":-1,"topic":"a/b","payload":1}"#,
                None,
                ErrorCode::BadFrame,
            ),
        ];
        for (input, id, code) in cases {
            let err = decode(input.as_bytes(), LIMIT).unwrap_err();
            assert_eq!(err.id(), id, "{input}");
            assert_eq!(err.code(), code, "{input}: {err}");
        }
    }

    #[test]
    fn enforces_the_size_limit_before_parsing() {
        let err = decode(&[b' '; 65], 64).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { len: 65, limit: 64 }));
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let frame = decode(
            br#"{"type":"unsubscribe","id":1,"topic":"a/b","future":{"x":1}}"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(frame.kind(), "unsubscribe");
    }

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
        }
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1001, 1009, 4001, 4002, 4003, 4004, 4008, 4009, 4010] {
            assert_eq!(CloseCode::from_code(code).unwrap().code(), code);
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
