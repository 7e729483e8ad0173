//! The allocation-free hot path: encoders that append `message`, `publish`
//! and publish-`ack` frames byte-identical to [`Frame::encode`], and parsers
//! that read those exact canonical forms without a JSON parser ([`decode_str`]
//! handles every other form).
//!
//! [`Frame::encode`]: super::Frame::encode
//! [`decode_str`]: super::decode_str

use serde_json::value::RawValue;

use super::types::{Position, Publish};
use crate::topic::Topic;
use crate::topic::write_topic_key;

fn push_number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends the JSON of a `message` frame to `out`, byte-identical to
/// `Frame::Message(..).encode()` but without building a `Frame`.
///
/// `topic` must be a valid key (see [`Topic::as_str`]): topics never need
/// escaping, so its name (and tenant) are written verbatim.
pub fn encode_message_into(out: &mut Vec<u8>, topic: &str, at: Position, payload: &RawValue) {
    out.extend_from_slice(b"{\"type\":\"message\",");
    write_topic_key(out, topic);
    out.extend_from_slice(b",\"epoch\":");
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
/// `topic` must be a valid key (see [`Topic::as_str`]) and `payload` valid
/// JSON: both are written verbatim.
///
/// `key`, when given, must be valid ([`is_valid_key`]): keys never need
/// escaping either.
///
/// [`is_valid_key`]: super::is_valid_key
#[allow(clippy::too_many_arguments)] // One argument per field of the frame.
pub fn encode_publish_into(
    out: &mut Vec<u8>,
    id: u64,
    topic: &str,
    key: Option<&str>,
    forwarded: bool,
    priority: Option<u8>,
    payload: &str,
) {
    out.extend_from_slice(b"{\"type\":\"publish\",\"id\":");
    push_number(out, id);
    out.push(b',');
    write_topic_key(out, topic);
    if let Some(key) = key {
        out.extend_from_slice(b",\"key\":\"");
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    }
    if forwarded {
        out.extend_from_slice(b",\"forwarded\":true");
    }
    if let Some(priority) = priority {
        out.extend_from_slice(b",\"priority\":");
        push_number(out, u64::from(priority));
    }
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.push(b'}');
}

/// Appends the JSON of a publish's `ack`, byte-identical to
/// `Frame::Ack(Ack::published(id, at)).encode()` (with `duplicate` set as
/// given).
pub fn encode_publish_ack_into(out: &mut Vec<u8>, id: u64, at: Position, duplicate: bool) {
    out.extend_from_slice(b"{\"type\":\"ack\",\"id\":");
    push_number(out, id);
    out.extend_from_slice(b",\"epoch\":");
    push_number(out, at.epoch);
    out.extend_from_slice(b",\"offset\":");
    push_number(out, at.offset);
    if duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
}

/// A publish's `ack` read by [`parse_publish_ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// The request id.
    pub id: u64,
    /// Where the message was sequenced.
    pub at: Position,
    /// The publish's key was seen before (nothing new was sequenced).
    pub duplicate: bool,
}

/// Reads a publish's `ack` in exactly the form
/// [`encode_publish_ack_into`] writes, without a JSON parser; `None` for
/// anything else (decode those with [`decode_str`]).
///
/// [`decode_str`]: super::decode_str
pub fn parse_publish_ack(text: &str) -> Option<PublishAck> {
    let rest = text.strip_prefix("{\"type\":\"ack\",\"id\":")?;
    let (id, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(",\"epoch\":")?;
    let (epoch, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(",\"offset\":")?;
    let (offset, rest) = leading_number(rest)?;
    let duplicate = match rest {
        "}" => false,
        ",\"duplicate\":true}" => true,
        _ => return None,
    };
    Some(PublishAck {
        id,
        at: Position { epoch, offset },
        duplicate,
    })
}

/// Reads a `publish` in exactly the form [`encode_publish_into`] writes
/// (`{"type":"publish","id":N,"topic":"q/e"[,"key":"k"][,"forwarded":true],"payload":…}`,
/// no spaces) with
/// one validating pass over the payload and none over the rest; `None` for
/// any other shape (decode those with [`decode_str`], which accepts every
/// valid form and reports errors).
///
/// [`decode_str`]: super::decode_str
pub fn parse_publish(text: &str) -> Option<Publish> {
    let parts = parse_publish_parts(text)?;
    Some(Publish {
        id: parts.id,
        topic: Topic::parse(parts.topic).ok()?,
        key: parts.key.map(str::to_owned),
        forwarded: parts.forwarded,
        priority: parts.priority,
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
    /// The idempotency key, valid as [`is_valid_key`](super::is_valid_key) requires.
    pub key: Option<&'a str>,
    /// Where the key starts in the text (0 without a key).
    pub key_at: usize,
    /// Set when a consumer forwarded it.
    pub forwarded: bool,
    /// Its priority (0–9), if it carries one.
    pub priority: Option<u8>,
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
    let (key, key_at, rest) = match rest.strip_prefix(",\"key\":\"") {
        Some(rest) => {
            let key_at = text.len() - rest.len();
            let (key, rest) = rest.split_once('"')?;
            if !super::is_valid_key(key) {
                return None;
            }
            (Some(key), key_at, rest)
        }
        None => (None, 0, rest),
    };
    let (forwarded, rest) = match rest.strip_prefix(",\"forwarded\":true") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (priority, rest) = match rest.strip_prefix(",\"priority\":") {
        Some(rest) => {
            let (priority, rest) = leading_number(rest)?;
            (Some(u8::try_from(priority).ok().filter(|p| *p <= 9)?), rest)
        }
        None => (None, rest),
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
        key,
        key_at,
        forwarded,
        priority,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Ack, Frame, Message, decode_str};

    const LIMIT: usize = 1 << 20;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
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
            group: None,
            redelivered: None,
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
        for (key, forwarded, priority) in [
            (None, false, None),
            (None, true, Some(9)),
            (Some("a.B_9:-"), false, Some(0)),
            (Some("k"), true, None),
        ] {
            let mut fast = Vec::new();
            encode_publish_into(
                &mut fast,
                42,
                topic.as_str(),
                key,
                forwarded,
                priority,
                payload.get(),
            );
            let slow = Frame::Publish(Publish {
                id: 42,
                topic: topic.clone(),
                key: key.map(str::to_owned),
                forwarded,
                priority,
                payload: payload.clone(),
            })
            .encode();
            let fast = String::from_utf8(fast).unwrap();
            assert_eq!(fast, slow);
            let parsed = parse_publish(&fast).unwrap();
            assert_eq!(
                (parsed.forwarded, parsed.key.as_deref(), parsed.priority),
                (forwarded, key, priority)
            );
            let parts = parse_publish_parts(&fast).unwrap();
            if let Some(key) = key {
                assert_eq!(&fast[parts.key_at..parts.key_at + key.len()], key);
            }
        }
        for (id, epoch, offset) in [
            (0, 1, 0),
            (7, 9_007_199_254_740_991, 12),
            (u64::MAX, 5, u64::MAX),
        ] {
            for duplicate in [false, true] {
                let at = Position { epoch, offset };
                let mut fast = Vec::new();
                encode_publish_ack_into(&mut fast, id, at, duplicate);
                let text = String::from_utf8(fast).unwrap();
                let slow = Ack {
                    duplicate,
                    ..Ack::published(id, at)
                };
                assert_eq!(text, Frame::Ack(slow).encode());
                assert_eq!(
                    parse_publish_ack(&text),
                    Some(PublishAck { id, at, duplicate })
                );
            }
        }
    }

    #[test]
    fn fast_publish_parsing_agrees_with_the_decoder() {
        let fast = [
            r#"{"type":"publish","id":7,"topic":"files/save","payload":{"a":[1,2,{"b":"}"}]}}"#,
            r#"{"type":"publish","id":0,"topic":"a/b","payload":"x"}"#,
            r#"{"type":"publish","id":1,"topic":"a/b","payload":null}"#,
            r#"{"type":"publish","id":2,"topic":"a/b","forwarded":true,"payload":1}"#,
            r#"{"type":"publish","id":3,"topic":"a/b","key":"k-9","payload":1}"#,
            r#"{"type":"publish","id":4,"topic":"a/b","key":"k-9","forwarded":true,"payload":1}"#,
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
            r#"{"type":"publish","id":1,"topic":"a/b","key":"a b","payload":1}"#,
            r#"{"type":"publish","id":1,"topic":"a/b","key":"","payload":1}"#,
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
}
