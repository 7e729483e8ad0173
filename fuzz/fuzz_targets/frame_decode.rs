//! The shardq/1 frame decoder on arbitrary bytes (the whole input is one
//! frame, as a WebSocket text message carries it).
//!
//! Never panics, and checks what `shardq_protocol::frame` promises:
//! - `decode` refuses a frame over the limit with `TooLarge`, before parsing;
//! - `decode_str` (with the fast publish path) gives the same result as
//!   `decode` (serde only) on the same text;
//! - `parse_publish_parts` borrows what it says it does (`topic_at`,
//!   `key_at`, `payload_at`), with a valid topic and key, and agrees with the
//!   decoder;
//! - `request_id_of` is the decoded frame's id, or the failed decode's;
//! - a decoded frame re-encodes to a frame that decodes to itself, and the
//!   hot-path encoders and parsers are byte-identical to `Frame::encode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardq_protocol::frame::{
    PublishAck, encode_message_into, encode_publish_ack_into, encode_publish_into, is_valid_key,
    parse_publish, parse_publish_ack, parse_publish_parts, request_id_of,
};
use shardq_protocol::{Ack, DecodeError, Frame, Topic};

/// The largest frame a node accepts after the handshake, by default.
const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let decoded = Frame::decode(data, LIMIT);

    // The limit is enforced before parsing, whatever the bytes.
    if !data.is_empty() {
        match Frame::decode(data, data.len() - 1) {
            Err(DecodeError::TooLarge { len, limit }) => {
                assert_eq!((len, limit), (data.len(), data.len() - 1));
            }
            other => panic!("a frame over the limit was not refused: {other:?}"),
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text, &decoded);
    }

    if let Ok(frame) = &decoded {
        check_round_trip(frame);
    }
});

/// The text entry points: the same results as the byte decoder.
fn check_text(text: &str, decoded: &Result<Frame, DecodeError>) {
    let from_str = Frame::decode_str(text, LIMIT);
    match (decoded, &from_str) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode and decode_str disagree on {text:?}"),
        (Err(a), Err(b)) => {
            assert_eq!(a.id(), b.id(), "error ids differ on {text:?}");
            assert_eq!(a.code(), b.code(), "error codes differ on {text:?}");
        }
        (a, b) => panic!("decode gave {a:?} but decode_str gave {b:?} on {text:?}"),
    }

    if let Some(parts) = parse_publish_parts(text) {
        let at = |start: usize, len: usize| &text[start..start + len];
        assert_eq!(at(parts.topic_at, parts.topic.len()), parts.topic);
        assert!(Topic::parse(parts.topic).is_ok(), "{:?}", parts.topic);
        if let Some(key) = parts.key {
            assert!(is_valid_key(key), "{key:?}");
            assert_eq!(at(parts.key_at, key.len()), key);
        }
        let payload = parts.payload.get();
        assert_eq!(at(parts.payload_at, payload.len()), payload);
        // The fast form is a publish the full decoder reads the same way.
        let Ok(Frame::Publish(publish)) = decoded else {
            panic!("parse_publish_parts read {text:?} but decode gave {decoded:?}");
        };
        assert_eq!(publish.id, parts.id);
        assert_eq!(publish.topic.as_str(), parts.topic);
        assert_eq!(publish.key.as_deref(), parts.key);
        assert_eq!(publish.forwarded, parts.forwarded);
        assert_eq!(publish.payload.get(), payload);
        let owned = parse_publish(text).expect("parse_publish refuses what its parts accept");
        assert_eq!(Frame::Publish(owned), Frame::Publish(publish.clone()));
    }

    if let Some(ack) = parse_publish_ack(text) {
        let Ok(Frame::Ack(decoded)) = decoded else {
            panic!("parse_publish_ack read {text:?} but decode gave {decoded:?}");
        };
        assert_eq!(
            *decoded,
            Ack {
                duplicate: ack.duplicate,
                ..Ack::published(ack.id, ack.at)
            }
        );
    }

    // The id of the frame when it decodes, else the one the error salvaged.
    let id = request_id_of(text);
    match Frame::decode_str(text, usize::MAX) {
        Ok(frame) => {
            if let Some(own) = frame.request_id() {
                assert_eq!(id, Some(own), "{text:?}");
            }
        }
        Err(error) => assert_eq!(id, error.id(), "{text:?}"),
    }
}

/// A decoded frame encodes to a frame that decodes to itself (the crate's
/// `every_frame_round_trips`), and the hot path writes the same bytes.
fn check_round_trip(frame: &Frame) {
    let text = frame.encode();
    let again = Frame::decode(text.as_bytes(), usize::MAX)
        .unwrap_or_else(|error| panic!("re-encoded frame does not decode: {text}: {error}"));
    assert_eq!(&again, frame, "round trip changed the frame: {text}");
    assert_eq!(again.encode(), text);
    assert_eq!(
        Frame::decode_str(&text, usize::MAX).ok().as_ref(),
        Some(frame)
    );

    match frame {
        Frame::Publish(publish) => {
            let mut fast = Vec::new();
            encode_publish_into(
                &mut fast,
                publish.id,
                publish.topic.as_str(),
                publish.key.as_deref(),
                publish.forwarded,
                publish.payload.get(),
            );
            assert_eq!(
                fast,
                text.as_bytes(),
                "encode_publish_into differs from encode"
            );
            let parsed = parse_publish(&text)
                .unwrap_or_else(|| panic!("the canonical publish is not read fast: {text}"));
            assert_eq!(&Frame::Publish(parsed), frame);
        }
        Frame::Message(message) => {
            let mut fast = Vec::new();
            encode_message_into(
                &mut fast,
                message.topic.as_str(),
                message.position(),
                &message.payload,
            );
            assert_eq!(
                fast,
                text.as_bytes(),
                "encode_message_into differs from encode"
            );
        }
        Frame::Ack(ack) => {
            // The shape `encode_publish_ack_into` writes: a publish's ack.
            if let (Some(at), None, None, None) =
                (ack.position(), &ack.topics, ack.recovered, ack.replay)
            {
                let mut fast = Vec::new();
                encode_publish_ack_into(&mut fast, ack.id, at, ack.duplicate);
                assert_eq!(fast, text.as_bytes(), "encode_publish_ack_into differs");
                assert_eq!(
                    parse_publish_ack(&text),
                    Some(PublishAck {
                        id: ack.id,
                        at,
                        duplicate: ack.duplicate
                    })
                );
            }
        }
        _ => {}
    }
}
