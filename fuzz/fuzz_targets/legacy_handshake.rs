//! The legacy handshake (`shardq_protocol::legacy::LegacyHandshake`) fed a
//! sequence of fuzzed legacy frames.
//!
//! Input layout: byte 0 bit 0 picks the policy: clear `AfterVerified`
//! (shardq's servers), set `Immediately` (the origin client's). The rest is
//! split at `\n`; each piece that `LegacyFrame::decode` reads is `receive`d
//! in turn.
//!
//! Checks: no panic; the peer is never verified and the handshake never
//! established (that needs base64(SHA-256(psk ‖ hex(challenge))) for a psk
//! the fuzzer does not hold, compared in constant time); under
//! `AfterVerified` nothing is ever sent to an unverified peer and a failure
//! comes with a decoy answer, under `Immediately` without one; at most one
//! answer is sent, and it is the answer to the first challenge received.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardq_protocol::Psk;
use shardq_protocol::legacy::{AnswerPolicy, LegacyFrame, LegacyHandshake, answer};

const CHALLENGE: u64 = 1_234_567_891;

fuzz_target!(|data: &[u8]| {
    let [flags, frames @ ..] = data else {
        return;
    };
    let policy = if flags & 1 != 0 {
        AnswerPolicy::Immediately
    } else {
        AnswerPolicy::AfterVerified
    };
    let psk = Psk::new(&b"fuzz-legacy-psk-000001"[..]).expect("a long enough key");
    let mut handshake = LegacyHandshake::new(psk.clone(), CHALLENGE, policy);
    assert!(matches!(
        handshake.challenge(),
        LegacyFrame::Challenge(CHALLENGE)
    ));

    let mut first_challenge = None;
    let mut answered = false;
    for piece in frames.split(|&b| b == b'\n') {
        let Ok(frame) = LegacyFrame::decode(piece, 4096) else {
            continue;
        };
        if let LegacyFrame::Challenge(o) = frame {
            first_challenge.get_or_insert(o);
        }
        match handshake.receive(&frame) {
            Ok(step) => {
                assert!(!step.established, "established on fuzzed input: {frame:?}");
                if let Some(reply) = step.send {
                    assert_eq!(
                        policy,
                        AnswerPolicy::Immediately,
                        "answered an unverified peer: {reply:?}"
                    );
                    assert!(!answered, "a second answer: {reply:?}");
                    answered = true;
                    let LegacyFrame::Answer(text) = &reply else {
                        panic!("sent {reply:?}, not an answer");
                    };
                    let o = first_challenge.expect("an answer with no challenge received");
                    assert_eq!(*text, answer(&psk, o));
                }
            }
            Err(failed) => match policy {
                AnswerPolicy::AfterVerified => {
                    assert!(matches!(failed.decoy, Some(LegacyFrame::Answer(_))));
                }
                AnswerPolicy::Immediately => assert!(failed.decoy.is_none()),
            },
        }
        assert!(
            !handshake.peer_verified(),
            "verified on fuzzed input: {frame:?}"
        );
        assert!(!handshake.is_established());
    }
});
