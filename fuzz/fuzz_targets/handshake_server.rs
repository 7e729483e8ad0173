//! The shardq/1 server handshake (`ServerHandshake`) fed one fuzzed frame.
//!
//! Input layout: byte 0: bit 0 set: a node endpoint (`Accepts::Nodes`),
//! clear: a client endpoint (`Accepts::Clients`); bit 1: the node also
//! declares named `[[clients]]`; bit 2: the node key is the psk; bit 3: the
//! connection is over TLS (`over_tls(true)`); bit 4: the node accepts
//! tokens (an HS256 secret); bit 5: tokens are allowed over plaintext. The
//! rest is decoded with `Frame::decode`; a frame that decodes is
//! `receive`d.
//!
//! Checks: no panic, and no fuzzed frame is ever accepted: the fuzzer
//! cannot compute an HMAC-SHA256 proof, nor sign a token, under keys it
//! does not hold (proofs and signatures are compared in constant time, so
//! no comparison guides it either). A refusal's error frame and close code
//! are well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardq_protocol::auth::{ClientEntry, TokenKeys};
use shardq_protocol::{Accepts, CloseCode, Credentials, Frame, Nonce, Psk, ServerHandshake};

fn psk(text: &str) -> Psk {
    Psk::new(text.as_bytes()).expect("keys of at least 16 bytes")
}

fn clients() -> Vec<ClientEntry> {
    let entry = |name: &str, secrets: &[&str], publish: &[&str], subscribe: &[&str]| {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        ClientEntry {
            name: name.into(),
            tenant: "default".into(),
            secrets: strings(secrets),
            publish: strings(publish),
            subscribe: strings(subscribe),
        }
    };
    vec![
        entry(
            "api",
            &["fuzz-api-secret-0001", "fuzz-api-secret-0002"],
            &["database/*"],
            &["database/create", "files/*"],
        ),
        entry("reader", &["fuzz-reader-secret-01"], &[], &["*"]),
    ]
}

fuzz_target!(|data: &[u8]| {
    let [flags, frame @ ..] = data else {
        return;
    };
    let accepts = if flags & 1 != 0 {
        Accepts::Nodes
    } else {
        Accepts::Clients
    };
    let the_psk = psk("fuzz-psk-0123456789abcdef");
    let node_key = if flags & 4 != 0 {
        the_psk.clone()
    } else {
        psk("fuzz-node-key-0123456789")
    };
    let mut credentials = Credentials::new(the_psk, node_key);
    if flags & 2 != 0 {
        credentials = credentials.with_clients(&clients());
    }
    if flags & 16 != 0 {
        let secret = b"fuzz-hs256-secret-0123456789abcdef".to_vec();
        let keys = TokenKeys::new(&[secret], &[], flags & 32 != 0).expect("a 32-byte secret");
        credentials = credentials.with_tokens(keys);
    }
    let nonce = Nonce([0x5a; 32]);
    let server =
        ServerHandshake::new(credentials, "consumer-0", nonce, accepts).over_tls(flags & 8 != 0);

    // The hello is well formed and decodes.
    let hello = server.hello();
    assert_eq!(
        Frame::decode(hello.encode().as_bytes(), 4096).ok().as_ref(),
        Some(&hello)
    );

    let Ok(frame) = Frame::decode(frame, 4096) else {
        return;
    };
    match server.receive(frame.clone()) {
        Ok(accepted) => panic!("a fuzzed frame was accepted: {frame:?} -> {accepted:?}"),
        Err(error) => {
            let answer = error.to_frame();
            assert_eq!(answer.kind(), "error");
            assert!(Frame::decode(answer.encode().as_bytes(), 4096).is_ok());
            assert!(matches!(
                error.close_code(),
                CloseCode::AuthFailed | CloseCode::ProtocolError
            ));
        }
    }
});
