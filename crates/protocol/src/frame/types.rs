//! The frame structs: the fields each shardq/1 frame carries ([`Position`],
//! [`TopicPosition`], the handshake frames, requests, answers, deliveries,
//! the per-topic notices [`Gap`], [`Stalled`] and [`Resumed`], and
//! [`Moved`]), their small constructors and comparisons, and the rules of
//! idempotency keys.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::ErrorCode;
use crate::topic::{Topic, TopicFilter, filter_fields, topic_fields};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicPosition {
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// Its current epoch.
    pub epoch: u64,
    /// The offset of the last message sequenced before the subscription went
    /// live: every message with a greater offset will be delivered.
    pub offset: u64,
}

/// A [`TopicPosition`] as it arrives: name, tenant, position.
#[derive(Deserialize)]
struct WireTopicPosition {
    topic: String,
    tenant: Option<String>,
    epoch: u64,
    offset: u64,
}

impl<'de> Deserialize<'de> for TopicPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireTopicPosition::deserialize(deserializer)?;
        Ok(TopicPosition {
            topic: Topic::from_wire(&wire.topic, wire.tenant.as_deref())
                .map_err(serde::de::Error::custom)?,
            epoch: wire.epoch,
            offset: wire.offset,
        })
    }
}

/// Server → client, first frame of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hello {
    /// Always [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
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
    /// Lowercase hex HMAC-SHA256 client proof (absent with a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// A signed token instead of a proof (client endpoints, over TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// On `/v1/cluster`: the dialling node's id, bound into its proof. On
    /// client endpoints: an optional name for the node's logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The `[[clients]]` credential the proof was made with; absent: the psk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
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
    /// `queue/event` or `queue/*` (and its tenant on the wire).
    #[serde(flatten, serialize_with = "filter_fields")]
    pub topic: TopicFilter,
    /// Resume after this position (exact topics only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// Join this queue group (exact topics only, no `since`): each message
    /// of the topic goes to one member of the group, which acks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Client → server: a queue group's member handled a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckMessage {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// The message's topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The group it was delivered in.
    pub group: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its offset.
    pub offset: u64,
}

/// Client → server: stop receiving a topic (or every event of a queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsubscribe {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// `queue/event` or `queue/*` (and its tenant on the wire).
    #[serde(flatten, serialize_with = "filter_fields")]
    pub topic: TopicFilter,
}

/// Longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// Whether `key` is a valid idempotency key: 1–64 characters of
/// `A-Z a-z 0-9 . _ : -` (so a key never needs escaping).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Client → server: publish one message.
#[derive(Debug, Clone, Serialize)]
pub struct Publish {
    /// Client-chosen id, echoed by the answer.
    pub id: u64,
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The publisher's idempotency key: a retry with the same key is
    /// answered with the first one's position instead of being sequenced
    /// again (see [`is_valid_key`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Consumer → consumer only: this publish was already forwarded once by
    /// a consumer that does not own the topic; it is never forwarded again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
    /// 0–9, for queue groups of a `priority` queue: higher is handed out
    /// first (PROTOCOL.md section 15). Absent: 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
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
    /// `publish`: the key was seen before; `epoch` and `offset` are the
    /// first publish's, and nothing new was sequenced.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// `subscribe`: the topics now live and where each starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<TopicPosition>>,
    /// `subscribe` with `since`: whether every message after `since` was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// `subscribe` with `since`: the replay that follows the ack starts
    /// right after this position (it equals the topic's position when
    /// nothing is replayed). With `recovered: false`, the messages after
    /// `since` up to it are the ones missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<Position>,
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

    /// The ack of a `subscribe` (`resume`: with `since`, whether it was
    /// recovered and where the replay starts).
    pub fn subscribed(
        id: u64,
        topics: Vec<TopicPosition>,
        resume: Option<(bool, Position)>,
    ) -> Ack {
        Ack {
            id,
            topics: Some(topics),
            recovered: resume.map(|(recovered, _)| recovered),
            replay: resume.map(|(_, replay)| replay),
            ..Ack::default()
        }
    }

    /// An ack carrying only the request's id: the answer to an
    /// `unsubscribe` or an `ack_message`.
    pub fn bare(id: u64) -> Ack {
        Ack {
            id,
            ..Ack::default()
        }
    }

    /// The ack of an `unsubscribe`.
    pub fn unsubscribed(id: u64) -> Ack {
        Ack::bare(id)
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
    /// The topic it was published to (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The epoch it was sequenced in.
    pub epoch: u64,
    /// Its offset in the epoch.
    pub offset: u64,
    /// To a queue group's member: the group it was delivered in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// To a queue group's member: how many times it was delivered before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u32>,
    /// The published JSON value, byte for byte.
    pub payload: Box<RawValue>,
}

impl PartialEq for Publish {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.topic == other.topic
            && self.key == other.key
            && self.forwarded == other.forwarded
            && self.priority == other.priority
            && self.payload.get() == other.payload.get()
    }
}

impl Eq for Publish {}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.position() == other.position()
            && self.group == other.group
            && self.redelivered == other.redelivered
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
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The epoch that ended.
    pub epoch: u64,
    /// Its last offset.
    pub offset: u64,
    /// The new owner's id.
    pub owner: String,
}

/// Server → subscriber: messages of `topic` after `after` may be missing
/// (the node relaying the topic lost part of its stream and its owner could
/// not replay it). The subscription goes on in `epoch` after `offset`: the
/// next message delivered has a greater offset in that epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The last position delivered before the gap (epoch 0: none).
    pub after: Position,
    /// The epoch the subscription goes on in.
    pub epoch: u64,
    /// Messages of `epoch` up to this offset will not be delivered.
    pub offset: u64,
}

/// Server → subscriber: the node that relays `topic` cannot reach the
/// topic's owner `owner`; no message arrives until it can ([`Resumed`]).
/// The subscription stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stalled {
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
    /// The owner that cannot be reached.
    pub owner: String,
}

/// Server → subscriber: `topic`'s stream flows again after [`Stalled`]
/// (a [`Gap`] comes first if something could not be replayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resumed {
    /// The topic (and its tenant on the wire).
    #[serde(flatten, serialize_with = "topic_fields")]
    pub topic: Topic,
}
