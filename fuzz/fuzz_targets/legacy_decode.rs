//! The legacy dialect's decoder (`shardq_protocol::legacy::LegacyFrame`) and
//! its topic helpers on arbitrary bytes (the whole input is one frame).
//!
//! Checks: no panic; the limit is enforced before parsing; a challenge is
//! in 1..=2^53-1; `legacy::topic` maps `queue/event` to itself and a string
//! without `/` to `legacy/<string>`; `topic_from_path` is `topic` of the
//! percent-decoded segment. A decoded frame's encoding decodes again to the
//! same encoding (a consistency check: nodes read what they write).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardq_protocol::DecodeError;
use shardq_protocol::legacy::{
    self, LegacyFrame, MAX_PEER_CHALLENGE, encode_message, payload_to_data,
};

/// Legacy frames are held to the pre-handshake limit of 4 KiB.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let decoded = LegacyFrame::decode(data, LIMIT);

    if !data.is_empty() {
        assert!(matches!(
            LegacyFrame::decode(data, data.len() - 1),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    // The input as a topic string and as a `/subscribe/{topic}` segment.
    if let Ok(text) = std::str::from_utf8(data) {
        check_topic(text);
        if let Ok((decoded, topic)) = legacy::topic_from_path(text) {
            assert_eq!(legacy::topic(&decoded).ok().as_ref(), Some(&topic));
        }
    }

    let Ok(frame) = decoded else {
        return;
    };
    match &frame {
        LegacyFrame::Challenge(o) => assert!((1..=MAX_PEER_CHALLENGE).contains(o)),
        LegacyFrame::Message { topic, data } => {
            check_topic(topic);
            // What a legacy subscriber would receive for this payload.
            let _ = payload_to_data(data);
            let encoded = encode_message(topic, data);
            assert!(LegacyFrame::decode(encoded.as_bytes(), usize::MAX).is_ok());
        }
        LegacyFrame::Subscribe(topic) | LegacyFrame::Unsubscribe(topic) => check_topic(topic),
        LegacyFrame::Answer(_) => {}
    }
    let text = frame.encode();
    let again = LegacyFrame::decode(text.as_bytes(), usize::MAX)
        .unwrap_or_else(|error| panic!("re-encoded legacy frame does not decode: {text}: {error}"));
    assert_eq!(again.kind(), frame.kind());
    assert_eq!(again.encode(), text);
});

/// `legacy::topic`: `queue/event` as is, a string without `/` in `legacy`.
fn check_topic(text: &str) {
    if let Ok(topic) = legacy::topic(text) {
        if text.contains('/') {
            assert_eq!(topic.as_str(), text);
        } else {
            assert_eq!(topic.queue(), legacy::LEGACY_QUEUE);
            assert_eq!(topic.event(), text);
        }
    }
}
