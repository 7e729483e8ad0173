//! Decoding: [`DecodeError`] (why bytes are not a frame, and the `error`
//! frame answering it), and the bounded decoders [`decode`] and
//! [`decode_str`], which read every valid form through the serde
//! `WireFrame` first pass and dispatch on `"type"` by hand.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::Deserializer;
use serde_json::value::RawValue;

use super::Frame;
use super::codes::ErrorCode;
use super::fast::parse_publish;
use super::types::{
    Ack, AckMessage, Auth, ErrorFrame, Gap, Hello, Message, Moved, Position, Publish, Resumed,
    Stalled, Subscribe, TopicPosition, Unsubscribe, Welcome, is_valid_key,
};
use crate::topic::{Topic, TopicError, TopicFilter};

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
    #[error("malformed frame: {source}")]
    Json {
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
        /// The frame's `id`, when it is an object with one readable id.
        id: Option<u64>,
    },
    /// The `"type"` is not one this version knows.
    #[error("unknown frame type {kind:?}")]
    UnknownType {
        /// The type (its first 40 characters).
        kind: String,
        /// The frame's id, when it had one.
        id: Option<u64>,
    },
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
            | DecodeError::BadValue { id, .. }
            | DecodeError::Json { id, .. }
            | DecodeError::UnknownType { id, .. } => *id,
            DecodeError::TooLarge { .. } => None,
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
    let wire: WireFrame<'_> = serde_json::from_str(text).map_err(|source| DecodeError::Json {
        source,
        id: salvage_id(text.as_bytes()),
    })?;
    wire.into_frame()
}

/// The `id` a frame's text carries: of the frame when it decodes (also a
/// frame type that has no `id` of its own, such as a `message` a client
/// should not send), else the one a failed decode could still read. For
/// answering frames a node will not process with their id.
pub fn request_id_of(text: &str) -> Option<u64> {
    if let Some(parts) = super::fast::parse_publish_parts(text) {
        return Some(parts.id);
    }
    match decode_str(text, usize::MAX) {
        Ok(frame) => frame.request_id().or_else(|| salvage_id(text.as_bytes())),
        Err(error) => error.id(),
    }
}

/// The `id` of a frame that did not decode, when it is a JSON object with
/// exactly one `id` that is an unsigned integer: so that even a malformed
/// request's error names it.
fn salvage_id(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    serde_json::from_slice::<IdOnly>(bytes).ok()?.id
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
    client: Option<String>,
    token: Option<String>,
    nonce: Option<String>,
    proof: Option<String>,
    id: Option<u64>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    tenant: Option<String>,
    since: Option<Position>,
    after: Option<Position>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    key: Option<String>,
    forwarded: Option<bool>,
    duplicate: Option<bool>,
    owner: Option<String>,
    epoch: Option<u64>,
    offset: Option<u64>,
    recovered: Option<bool>,
    replay: Option<Position>,
    topics: Option<Vec<TopicPosition>>,
    code: Option<String>,
    message: Option<String>,
    group: Option<String>,
    redelivered: Option<u32>,
    priority: Option<u8>,
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
    let wire: WireFrame<'_> =
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            source,
            id: salvage_id(bytes),
        })?;
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
        let tenant = self.tenant.as_deref();
        let topic_filter = |topic: &str| {
            TopicFilter::from_wire(topic, tenant)
                .map_err(|error| DecodeError::BadTopic { id, error })
        };
        let exact_topic = |topic: &str| {
            Topic::from_wire(topic, tenant).map_err(|error| DecodeError::BadTopic { id, error })
        };
        let frame = match &*self.kind {
            "hello" => Frame::Hello(Hello {
                version: need!("hello", version),
                node: need!("hello", node),
                nonce: need!("hello", nonce),
            }),
            "auth" => {
                if self.token.is_none() && self.proof.is_none() {
                    return Err(DecodeError::MissingField {
                        kind: "auth",
                        field: "proof",
                        id,
                    });
                }
                let proof = self.proof;
                Frame::Auth(Auth {
                    nonce: need!("auth", nonce),
                    proof,
                    token: self.token,
                    node: self.node,
                    client: self.client,
                })
            }
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
                if self
                    .since
                    .is_some_and(|since| since.epoch == 0 && since.offset != 0)
                {
                    return Err(DecodeError::BadValue {
                        kind: "subscribe",
                        reason: "since with epoch 0 (the start of the current epoch) takes offset 0",
                        id: Some(id),
                    });
                }
                if let Some(group) = &self.group {
                    let reason = if !is_valid_key(group) {
                        Some("group must be 1-64 characters of A-Z a-z 0-9 . _ : -")
                    } else if !matches!(topic, TopicFilter::Exact(_)) {
                        Some("a group needs an exact topic, not queue/*")
                    } else if self.since.is_some() {
                        Some("a group member does not resume: no since")
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        return Err(DecodeError::BadValue {
                            kind: "subscribe",
                            reason,
                            id: Some(id),
                        });
                    }
                }
                Frame::Subscribe(Subscribe {
                    id,
                    topic,
                    since: self.since,
                    group: self.group,
                })
            }
            "unsubscribe" => Frame::Unsubscribe(Unsubscribe {
                id: need!("unsubscribe", id),
                topic: topic_filter(&need!("unsubscribe", topic))?,
            }),
            "publish" => {
                let id = need!("publish", id);
                let topic = exact_topic(&need!("publish", topic))?;
                if self.key.as_deref().is_some_and(|key| !is_valid_key(key)) {
                    return Err(DecodeError::BadValue {
                        kind: "publish",
                        reason: "key must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                        id: Some(id),
                    });
                }
                if self.priority.is_some_and(|priority| priority > 9) {
                    return Err(DecodeError::BadValue {
                        kind: "publish",
                        reason: "priority must be 0-9",
                        id: Some(id),
                    });
                }
                Frame::Publish(Publish {
                    id,
                    topic,
                    key: self.key,
                    forwarded: self.forwarded.unwrap_or(false),
                    priority: self.priority,
                    payload: need!("publish", payload),
                })
            }
            "ack_message" => {
                let id = need!("ack_message", id);
                let group = need!("ack_message", group);
                if !is_valid_key(&group) {
                    return Err(DecodeError::BadValue {
                        kind: "ack_message",
                        reason: "group must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                        id: Some(id),
                    });
                }
                Frame::AckMessage(AckMessage {
                    id,
                    topic: exact_topic(&need!("ack_message", topic))?,
                    group,
                    epoch: need!("ack_message", epoch),
                    offset: need!("ack_message", offset),
                })
            }
            "ack" => Frame::Ack(Ack {
                id: need!("ack", id),
                epoch: self.epoch,
                offset: self.offset,
                duplicate: self.duplicate.unwrap_or(false),
                topics: self.topics,
                recovered: self.recovered,
                replay: self.replay,
            }),
            "error" => Frame::Error(ErrorFrame {
                id,
                code: ErrorCode::parse(&need!("error", code)),
                message: self.message.unwrap_or_default(),
            }),
            "message" => Frame::Message(Message {
                group: self.group,
                redelivered: self.redelivered,
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
            "gap" => Frame::Gap(Gap {
                topic: exact_topic(&need!("gap", topic))?,
                after: need!("gap", after),
                epoch: need!("gap", epoch),
                offset: need!("gap", offset),
            }),
            "stalled" => Frame::Stalled(Stalled {
                topic: exact_topic(&need!("stalled", topic))?,
                owner: need!("stalled", owner),
            }),
            "resumed" => Frame::Resumed(Resumed {
                topic: exact_topic(&need!("resumed", topic))?,
            }),
            other => {
                return Err(DecodeError::UnknownType {
                    kind: other.chars().take(40).collect(),
                    id,
                });
            }
        };
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

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
    fn group_subscriptions_and_message_acks() {
        let frame = decode(
            br#"{"type":"subscribe","id":3,"topic":"a/b","group":"billing"}"#,
            LIMIT,
        )
        .unwrap();
        let Frame::Subscribe(subscribe) = frame else {
            panic!("not a subscribe")
        };
        assert_eq!(subscribe.group.as_deref(), Some("billing"));
        let refused = [
            r#"{"type":"subscribe","id":3,"topic":"a/*","group":"billing"}"#,
            r#"{"type":"subscribe","id":3,"topic":"a/b","group":"billing","since":{"epoch":1,"offset":1}}"#,
            r#"{"type":"subscribe","id":3,"topic":"a/b","group":"bill ing"}"#,
            r#"{"type":"ack_message","id":3,"topic":"a/b","group":"","epoch":1,"offset":2}"#,
            r#"{"type":"ack_message","id":3,"topic":"a/b","group":"g","epoch":1}"#,
        ];
        for text in refused {
            let error = decode(text.as_bytes(), LIMIT).expect_err(text);
            assert_eq!(error.to_frame().request_id(), Some(3), "{text}");
        }
        let ack = decode(
            br#"{"type":"ack_message","id":4,"topic":"a/b","group":"g","epoch":1,"offset":2}"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(ack.kind(), "ack_message");
        assert_eq!(ack.request_id(), Some(4));
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
        let cases: [(&str, Option<u64>, ErrorCode); 14] = [
            ("not json", None, ErrorCode::BadFrame),
            ("[1,2]", None, ErrorCode::BadFrame),
            (r#"{"type":"nope"}"#, None, ErrorCode::BadFrame),
            // Every request with a readable id gets it back, however broken.
            (r#"{"id":1}"#, Some(1), ErrorCode::BadFrame),
            (r#"{"type":"nope","id":17}"#, Some(17), ErrorCode::BadFrame),
            (r#"{"type":7,"id":18}"#, Some(18), ErrorCode::BadFrame),
            (
                r#"{"type":"publish","id":19,"topic":"a/b","payload":1,"forwarded":"yes"}"#,
                Some(19),
                ErrorCode::BadFrame,
            ),
            (
                r#"{"type":"publish","id":20,"topic":"a/b","key":"no spaces","payload":1}"#,
                Some(20),
                ErrorCode::BadFrame,
            ),
            (
                r#"{"type":"subscribe","id":21,"topic":"a/b","since":{"epoch":0,"offset":5}}"#,
                Some(21),
                ErrorCode::BadFrame,
            ),
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
            // An ambiguous or unreadable id is no id.
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
}
