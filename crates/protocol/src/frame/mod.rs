//! The shardq/1 frames: JSON objects in WebSocket text messages, tagged by
//! `"type"`. Decoding is bounded, typed and never panics; payloads stay raw JSON.
//!
//! This module owns [`PROTOCOL_VERSION`] and the [`Frame`] enum (its kind,
//! encoding and decoding entry points), and re-exports the rest from:
//!
//! - `types`: the frame structs ([`Position`], [`Hello`], [`Publish`], [`Ack`], ...).
//! - `codes`: [`ErrorCode`] and [`CloseCode`].
//! - `fast`: the allocation-free encoders and parsers of the hot path
//!   ([`encode_message_into`], [`parse_publish_parts`], ...).
//! - `decode`: [`DecodeError`] and the bounded decoders [`decode`](fn@decode)
//!   and [`decode_str`].

use serde::Serialize;

use crate::topic::Topic;

mod codes;
mod decode;
mod fast;
mod types;

pub use codes::{CloseCode, ErrorCode};
pub use decode::{DecodeError, decode, decode_str, request_id_of};
pub use fast::{
    PublishAck, PublishParts, encode_message_into, encode_publish_ack_into, encode_publish_into,
    parse_publish, parse_publish_ack, parse_publish_parts,
};
pub use types::{
    Ack, AckMessage, Auth, ErrorFrame, Gap, Hello, MAX_KEY_LEN, Message, Moved, Position, Publish,
    Resumed, Stalled, Subscribe, TopicPosition, Unsubscribe, Welcome, is_valid_key,
};

/// The protocol version a `hello` announces.
pub const PROTOCOL_VERSION: &str = "shardq/1";

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
    /// Client → server: a group member handled a message.
    AckMessage(AckMessage),
    /// Server → client.
    Ack(Ack),
    /// Server → client.
    Error(ErrorFrame),
    /// Server → client.
    Message(Message),
    /// Consumer → peer consumer.
    Moved(Moved),
    /// Server → subscriber: messages of a topic may be missing.
    Gap(Gap),
    /// Server → subscriber: a topic's owner cannot be reached.
    Stalled(Stalled),
    /// Server → subscriber: a stalled topic flows again.
    Resumed(Resumed),
}

impl Frame {
    /// The frame with every topic by its name alone: what a client sees
    /// (a client is in one tenant; the `tenant` field nodes add outside
    /// the default tenant tells it nothing new).
    pub fn without_tenant(self) -> Frame {
        let name = |topic: Topic| topic.in_tenant(None);
        match self {
            Frame::Message(mut m) => {
                m.topic = name(m.topic);
                Frame::Message(m)
            }
            Frame::Gap(mut g) => {
                g.topic = name(g.topic);
                Frame::Gap(g)
            }
            Frame::Stalled(mut s) => {
                s.topic = name(s.topic);
                Frame::Stalled(s)
            }
            Frame::Resumed(mut r) => {
                r.topic = name(r.topic);
                Frame::Resumed(r)
            }
            Frame::Moved(mut m) => {
                m.topic = name(m.topic);
                Frame::Moved(m)
            }
            Frame::Ack(mut ack) => {
                if let Some(topics) = &mut ack.topics {
                    for position in topics {
                        position.topic = position.topic.in_tenant(None);
                    }
                }
                Frame::Ack(ack)
            }
            other => other,
        }
    }

    /// The `"type"` of the frame.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Auth(_) => "auth",
            Frame::Welcome(_) => "welcome",
            Frame::Subscribe(_) => "subscribe",
            Frame::Unsubscribe(_) => "unsubscribe",
            Frame::Publish(_) => "publish",
            Frame::AckMessage(_) => "ack_message",
            Frame::Ack(_) => "ack",
            Frame::Error(_) => "error",
            Frame::Message(_) => "message",
            Frame::Moved(_) => "moved",
            Frame::Gap(_) => "gap",
            Frame::Stalled(_) => "stalled",
            Frame::Resumed(_) => "resumed",
        }
    }

    /// The `id` of a frame that carries one (a request, or an answer to one).
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Frame::Subscribe(Subscribe { id, .. })
            | Frame::Unsubscribe(Unsubscribe { id, .. })
            | Frame::Publish(Publish { id, .. })
            | Frame::AckMessage(AckMessage { id, .. })
            | Frame::Ack(Ack { id, .. }) => Some(*id),
            Frame::Error(error) => error.id,
            _ => None,
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

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::topic::{Topic, TopicFilter};

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
                proof: Some("22".repeat(32)),
                node: Some("producer-1".into()),
                client: Some("api".into()),
                token: None,
            }),
            Frame::Auth(Auth {
                nonce: "11".repeat(32),
                proof: None,
                node: None,
                client: None,
                token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
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
                group: None,
            }),
            Frame::Subscribe(Subscribe {
                id: 2,
                topic: TopicFilter::AllEvents("files".into()),
                since: None,
                group: None,
            }),
            Frame::Unsubscribe(Unsubscribe {
                id: 3,
                topic: TopicFilter::Exact(topic.clone()),
            }),
            Frame::Publish(Publish {
                id: 4,
                topic: topic.clone(),
                key: None,
                forwarded: false,
                priority: None,
                payload: raw(r#"{"id":99,"name":"John"}"#),
            }),
            Frame::Publish(Publish {
                id: 5,
                topic: topic.clone(),
                key: Some("k-1:retry_2.x".into()),
                forwarded: true,
                priority: None,
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
                Some((
                    true,
                    Position {
                        epoch: 77,
                        offset: 5,
                    },
                )),
            )),
            Frame::Ack(Ack {
                duplicate: true,
                ..Ack::published(
                    5,
                    Position {
                        epoch: 77,
                        offset: 8,
                    },
                )
            }),
            Frame::Ack(Ack::unsubscribed(3)),
            Frame::Gap(Gap {
                topic: topic.clone(),
                after: Position {
                    epoch: 77,
                    offset: 10,
                },
                epoch: 78,
                offset: 0,
            }),
            Frame::Stalled(Stalled {
                topic: topic.clone(),
                owner: "consumer-1".into(),
            }),
            Frame::Resumed(Resumed {
                topic: topic.clone(),
            }),
            Frame::error(Some(5), ErrorCode::UnknownEvent, "no such event"),
            Frame::error(None, ErrorCode::AuthFailed, "authentication failed"),
            Frame::Message(Message {
                group: None,
                redelivered: None,
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
            key: None,
            forwarded: false,
            priority: None,
            payload: raw(r#"{"path" : "/tmp/x", "n":[1, 2.50]}"#),
        });
        assert_eq!(
            frame.encode(),
            r#"{"type":"publish","id":7,"topic":"files/save","payload":{"path" : "/tmp/x", "n":[1, 2.50]}}"#
        );
    }
}
