//! The WebSocket decoder (`shardq_net::codec::Decoder`) on an arbitrary
//! byte stream, delivered in chunks the fuzzer chooses.
//!
//! Input layout:
//! - byte 0: bit 0 set: a server's decoder (frames must be masked), clear:
//!   a client's (frames must not be); bits 1-2: the limit (125, 256, 4 KiB
//!   or 1 MiB);
//! - byte 1: `n` = byte % 16, the number of chunk-size bytes that follow;
//! - `n` bytes: chunk sizes, used in turn (0: an empty read; all 0: one read);
//! - the rest: the byte stream. With `n` = 0 it arrives in one read.
//!
//! Checks: no panic; no message over the limit; `wanted` never asks for
//! more than one header and the limit; and the messages (and the error that
//! ends the stream, if any) do not depend on how the stream was cut. A text
//! message re-encoded with the codec's encoder decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardq_net::codec::encode::append_text_frame;
use shardq_net::codec::{Decoder, Role, WsError, WsMessage};

/// The largest header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
const LIMITS: [usize; 4] = [125, 256, 4096, 1 << 20];

/// What a stream decodes to: its messages, then the error that ended it.
type Outcome = (Vec<WsMessage>, Option<WsError>);

fuzz_target!(|data: &[u8]| {
    let [flags, count, rest @ ..] = data else {
        return;
    };
    let masked = flags & 1 != 0;
    let limit = LIMITS[usize::from((flags >> 1) & 3)];
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);

    let chunked = run(masked, limit, stream, sizes);
    let whole = run(masked, limit, stream, &[]);
    assert_eq!(
        chunked, whole,
        "the outcome depends on how the stream was cut"
    );

    for message in &whole.0 {
        if let WsMessage::Text(text) = message {
            check_text_round_trip(masked, limit, text.as_bytes());
        }
    }
});

/// Feeds `stream` in chunks of `sizes` (cycled; none: one read), decoding
/// after each read until more bytes are needed or the stream is refused.
fn run(masked: bool, limit: usize, stream: &[u8], sizes: &[u8]) -> Outcome {
    // Sizes that are all 0 would never deliver anything: one read then.
    let sizes = if sizes.iter().all(|&n| n == 0) {
        &[][..]
    } else {
        sizes
    };
    let mut decoder = Decoder::new(masked, limit, BytesMut::new());
    let mut messages = Vec::new();
    let mut rest = stream;
    let mut size = sizes.iter().cycle();
    loop {
        let take = match size.next() {
            Some(&n) => usize::from(n).min(rest.len()),
            None => rest.len(),
        };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        decoder.buffer().extend_from_slice(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(message)) => {
                    match &message {
                        WsMessage::Text(text) => assert!(text.len() <= limit),
                        WsMessage::Binary(len) => assert!(*len <= limit),
                        WsMessage::Ping(payload) => assert!(payload.len() <= 125),
                        WsMessage::Pong | WsMessage::Close(_) => {}
                    }
                    messages.push(message);
                }
                Ok(None) => {
                    let wanted = decoder.wanted();
                    assert!(wanted >= 1);
                    assert!(
                        wanted <= MAX_HEADER + limit,
                        "wanted {wanted} with limit {limit}"
                    );
                    break;
                }
                Err(error) => return (messages, Some(error)),
            }
        }
        if rest.is_empty() {
            // An empty chunk (size 0) before the end is a read of nothing;
            // once everything is fed the stream is over.
            return (messages, None);
        }
    }
}

/// A text message, as the codec's encoder frames it for either side,
/// decodes to itself.
fn check_text_round_trip(masked: bool, limit: usize, text: &[u8]) {
    let role = if masked { Role::Client } else { Role::Server };
    let mut wire = Vec::new();
    append_text_frame(&mut wire, text, role);
    let mut decoder = Decoder::new(masked, limit, BytesMut::from(&wire[..]));
    match decoder.decode() {
        Ok(Some(WsMessage::Text(again))) => assert_eq!(again.as_bytes(), text),
        other => panic!("a re-encoded text message decoded to {other:?}"),
    }
    assert_eq!(decoder.decode(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
}
