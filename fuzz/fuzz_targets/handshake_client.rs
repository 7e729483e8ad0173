//! The shardq/1 client handshake (`ClientHandshake`) fed a sequence of
//! fuzzed frames.
//!
//! Input layout: byte 0 % 4 picks the side: 0 an anonymous client
//! (`ClientHandshake::new`), 1 a named client (`.named(Some("api"))`),
//! 2 a node dialling `consumer-0` (`ClientHandshake::node`), 3 a client
//! presenting a token (`ClientHandshake::token`). The rest is split at
//! `\n` (compact JSON has no raw newline); each piece that `Frame::decode`
//! reads is `receive`d in turn.
//!
//! Checks: no panic; a client proving a key never reaches
//! `ClientStep::Established` (that needs the server's HMAC-SHA256 proof
//! under a key the fuzzer does not hold); a token client (whose server
//! proves nothing: TLS authenticates it) is established only by a
//! `welcome` after its `auth`, once; the handshake sends at most one frame,
//! an `auth` carrying its own nonce and its own credential; after an error
//! it stays failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardq_protocol::{ClientHandshake, ClientStep, Frame, Nonce, Psk};

const OWN_NONCE: Nonce = Nonce([0xc3; 32]);
const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmdXp6In0.c2ln";

fuzz_target!(|data: &[u8]| {
    let [mode, frames @ ..] = data else {
        return;
    };
    let key = Psk::new(&b"fuzz-psk-0123456789abcdef"[..]).expect("a long enough key");
    let mode = mode % 4;
    let mut client = match mode {
        0 => ClientHandshake::new(key, OWN_NONCE, None),
        1 => ClientHandshake::new(key, OWN_NONCE, Some("producer-0".into()))
            .named(Some("api".into())),
        2 => ClientHandshake::node(key, OWN_NONCE, "producer-0", "consumer-0"),
        _ => ClientHandshake::token(TOKEN, OWN_NONCE, None),
    };

    let mut sent = 0;
    let mut failed = false;
    let mut established = false;
    for piece in frames.split(|&b| b == b'\n') {
        let Ok(frame) = Frame::decode(piece, 4096) else {
            continue;
        };
        match client.receive(frame.clone()) {
            Ok(ClientStep::Established { server }) => {
                // Only a token client trusts the server without a proof.
                assert_eq!(
                    mode, 3,
                    "established with {server:?} on fuzzed input (last frame {frame:?})"
                );
                assert!(!failed && !established && sent == 1, "{frame:?}");
                assert!(matches!(frame, Frame::Welcome(_)), "{frame:?}");
                established = true;
            }
            Ok(ClientStep::Send(reply)) => {
                assert!(!failed, "sent {reply:?} after the handshake failed");
                assert!(!established, "sent {reply:?} after the handshake ended");
                sent += 1;
                assert_eq!(sent, 1, "a second frame sent: {reply:?}");
                let Frame::Auth(auth) = &reply else {
                    panic!("the client sent {reply:?}, not an auth");
                };
                assert_eq!(auth.nonce, OWN_NONCE.to_hex());
                match mode {
                    0 => assert_eq!(auth.client, None),
                    1 => assert_eq!(auth.client.as_deref(), Some("api")),
                    2 => {
                        assert_eq!(auth.node.as_deref(), Some("producer-0"));
                        assert_eq!(auth.client, None);
                    }
                    _ => {
                        assert_eq!(auth.token.as_deref(), Some(TOKEN));
                        assert_eq!(auth.client, None);
                    }
                }
                if mode == 3 {
                    assert!(auth.proof.is_none(), "{auth:?}");
                } else {
                    assert_eq!(auth.proof.as_deref().map(str::len), Some(64));
                    assert_eq!(auth.token, None);
                }
                assert!(Frame::decode(reply.encode().as_bytes(), 4096).is_ok());
            }
            Err(error) => {
                failed = true;
                let _ = (error.to_frame(), error.close_code());
            }
        }
    }
});
