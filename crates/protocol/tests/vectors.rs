//! The test vectors of docs/PROTOCOL.md, computed independently (Python's
//! hmac, hashlib and xxhash) and asserted here byte for byte.

#![allow(clippy::unwrap_used)]

use shardq_protocol::handshake::{
    NodeIds, client_proof, node_client_proof, node_server_proof, server_proof,
};
use shardq_protocol::routing::{node_seed, weight};
use shardq_protocol::{
    Accepts, ClientHandshake, ClientStep, Credentials, Frame, Nonce, Peer, Psk, Router,
    ServerHandshake, Topic, legacy,
};

const PSK: &str = "shardq-test-vector-psk";
const NODE_KEY: &str = "shardq-test-vector-node-key";

fn nonces() -> (Nonce, Nonce) {
    let mut server = [0u8; 32];
    let mut client = [0u8; 32];
    for i in 0..32 {
        server[i] = i as u8;
        client[i] = 32 + i as u8;
    }
    (Nonce(server), Nonce(client))
}

#[test]
fn handshake_vector() {
    let psk = Psk::new(PSK).unwrap();
    let (server_nonce, client_nonce) = nonces();
    assert_eq!(
        server_nonce.to_hex(),
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    );
    assert_eq!(
        client_nonce.to_hex(),
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    );
    let client = hex::encode(client_proof(&psk, &server_nonce, &client_nonce));
    let server = hex::encode(server_proof(&psk, &server_nonce, &client_nonce));
    assert_eq!(
        client,
        "d444cd4306b2562cf6727384124b4ee21bc147669460ade8ba9c9f45bcc45055"
    );
    assert_eq!(
        server,
        "491d696630ba9344529f23a6d0658a1afe9b667aff3de6c1ed6e1e34ca5e5878"
    );

    // The same exchange as frames, exactly as PROTOCOL.md shows them.
    let credentials = Credentials::new(psk.clone(), Psk::new(NODE_KEY).unwrap());
    let server_side =
        ServerHandshake::new(credentials, "consumer-0", server_nonce, Accepts::Clients);
    let hello = server_side.hello();
    assert_eq!(
        hello.encode(),
        r#"{"type":"hello","version":"shardq/1","node":"consumer-0","nonce":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}"#
    );
    let mut client_side = ClientHandshake::new(psk, client_nonce, Some("producer-0".into()));
    let ClientStep::Send(auth) = client_side.receive(hello).unwrap() else {
        panic!("no auth")
    };
    assert_eq!(
        auth.encode(),
        r#"{"type":"auth","nonce":"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f","proof":"d444cd4306b2562cf6727384124b4ee21bc147669460ade8ba9c9f45bcc45055","node":"producer-0"}"#
    );
    let accepted = server_side.receive(auth).unwrap();
    assert_eq!(
        accepted.welcome.encode(),
        r#"{"type":"welcome","proof":"491d696630ba9344529f23a6d0658a1afe9b667aff3de6c1ed6e1e34ca5e5878"}"#
    );
    assert_eq!(
        client_side.receive(accepted.welcome).unwrap(),
        ClientStep::Established {
            server: "consumer-0".into()
        }
    );
}

#[test]
fn node_handshake_vector() {
    let key = Psk::new(NODE_KEY).unwrap();
    let (server_nonce, client_nonce) = nonces();
    let ids = NodeIds {
        client: "producer-0",
        server: "consumer-0",
    };
    assert_eq!(
        hex::encode(node_client_proof(&key, ids, &server_nonce, &client_nonce)),
        "97812c6f3e716701016a7eabe50827e25346357d983cc58563bf0b5841c1548e"
    );
    assert_eq!(
        hex::encode(node_server_proof(&key, ids, &server_nonce, &client_nonce)),
        "7552511c2676528b800594f0f8ca39452836a30ed9f70c0bf8f68df1558db6b4"
    );
    let credentials = Credentials::new(Psk::new(PSK).unwrap(), key.clone());
    let server_side = ServerHandshake::new(credentials, "consumer-0", server_nonce, Accepts::Nodes);
    let mut client_side = ClientHandshake::node(key, client_nonce, "producer-0", "consumer-0");
    let ClientStep::Send(auth) = client_side.receive(server_side.hello()).unwrap() else {
        panic!("no auth")
    };
    assert_eq!(
        auth.encode(),
        r#"{"type":"auth","nonce":"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f","proof":"97812c6f3e716701016a7eabe50827e25346357d983cc58563bf0b5841c1548e","node":"producer-0"}"#
    );
    let accepted = server_side.receive(auth).unwrap();
    assert_eq!(accepted.peer, Peer::Node("producer-0".into()));
    assert_eq!(
        accepted.welcome.encode(),
        r#"{"type":"welcome","proof":"7552511c2676528b800594f0f8ca39452836a30ed9f70c0bf8f68df1558db6b4"}"#
    );
    assert!(matches!(
        client_side.receive(accepted.welcome),
        Ok(ClientStep::Established { .. })
    ));
}

#[test]
fn routing_vectors() {
    let ids = ["consumer-0", "consumer-1", "consumer-2"];
    assert_eq!(node_seed("consumer-0"), 0xaf08c8d119ba75b2);
    assert_eq!(node_seed("consumer-1"), 0x32c7609cb8a3ef88);
    assert_eq!(node_seed("consumer-2"), 0x78031752923ace24);
    assert_eq!(
        weight("database/create", node_seed("consumer-0")),
        0xa8951a5524da3613
    );
    assert_eq!(
        weight("database/create", node_seed("consumer-1")),
        0x0a2d394017a7b646
    );
    assert_eq!(
        weight("database/create", node_seed("consumer-2")),
        0x047343c8fdd6dc32
    );
    // topic, owner among 3, owner once consumer-3 joins
    let table = [
        ("database/create", "consumer-0", "consumer-3"),
        ("database/read", "consumer-2", "consumer-2"),
        ("database/update", "consumer-0", "consumer-0"),
        ("database/delete", "consumer-1", "consumer-1"),
        ("database/error", "consumer-2", "consumer-2"),
        ("files/save", "consumer-1", "consumer-3"),
        ("files/error", "consumer-1", "consumer-1"),
        ("legacy/topic1", "consumer-1", "consumer-3"),
    ];
    let three = Router::new(&ids);
    let four = Router::new(&["consumer-0", "consumer-1", "consumer-2", "consumer-3"]);
    for (topic, owner, owner_of_four) in table {
        let topic = Topic::parse(topic).unwrap();
        assert_eq!(three.owner_id(&topic), Some(owner), "{topic}");
        assert_eq!(four.owner_id(&topic), Some(owner_of_four), "{topic}");
        let index = shardq_protocol::routing::owner(&topic, &ids).unwrap();
        assert_eq!(ids[index], owner);
    }
}

#[test]
fn legacy_vector() {
    let psk = Psk::new(PSK).unwrap();
    assert_eq!(
        legacy::answer(&psk, 123_456_789),
        "CgnMbJ1kCfODVlCDUPaVLjZk1I6HWj6/t+hEXynodog="
    );
    assert_eq!(
        legacy::LegacyFrame::Challenge(123_456_789).encode(),
        r#"{"t":"h","o":123456789}"#
    );
}

#[test]
fn frame_examples_of_the_spec_decode() {
    // Every frame example in PROTOCOL.md's JSON blocks, verbatim, decodes
    // and encodes back to the same text: the spec shows canonical frames.
    let spec = include_str!("../../../docs/PROTOCOL.md");
    let mut in_json = false;
    let mut examples = Vec::new();
    for line in spec.lines() {
        match line.trim() {
            "```json" => in_json = true,
            "```" => in_json = false,
            text if in_json && text.starts_with(r#"{"type":"#) => examples.push(text),
            _ => {}
        }
    }
    assert!(examples.len() >= 15, "found only {examples:?}");
    for example in examples {
        let frame =
            Frame::decode(example.as_bytes(), 1 << 20).unwrap_or_else(|e| panic!("{example}: {e}"));
        assert_eq!(frame.encode(), example, "encoding is canonical");
    }
}

#[test]
fn the_status_example_of_the_spec_is_what_nodes_answer() {
    // The JSON block right after "`GET /v1/status` answers" reads as a
    // NodeStatus and serializes back to the same JSON, key order included.
    let spec = include_str!("../../../docs/PROTOCOL.md");
    let after = spec
        .split_once("`GET /v1/status` answers")
        .expect("the spec documents GET /v1/status")
        .1;
    let block = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a JSON example follows")
        .0;
    let status: shardq_protocol::status::NodeStatus =
        serde_json::from_str(block).unwrap_or_else(|e| panic!("{block}: {e}"));
    let compact: String = block.lines().map(str::trim).collect();
    assert_eq!(serde_json::to_string(&status).unwrap(), compact);
}
