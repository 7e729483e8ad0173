//! Table and attack tests of both handshake state machines.

use super::*;
use crate::auth::{ClientEntry, Credentials};
use crate::frame::{Auth, Hello, Welcome};

fn psk(text: &str) -> Psk {
    Psk::new(text.as_bytes()).unwrap()
}

fn creds(text: &str) -> Credentials {
    Credentials::new(psk(text), psk("node-key-0123456789"))
}

fn run(
    server_psk: &str,
    client_psk: &str,
) -> (Result<ServerAccepted, HandshakeError>, ClientHandshake) {
    let server = ServerHandshake::new(
        creds(server_psk),
        "consumer-0",
        Nonce::random(),
        Accepts::Clients,
    );
    let mut client = ClientHandshake::new(psk(client_psk), Nonce::random(), None);
    let ClientStep::Send(auth) = client.receive(server.hello()).unwrap() else {
        panic!("client did not answer hello")
    };
    (server.receive(auth), client)
}

#[test]
fn matching_psks_establish() {
    let (accepted, mut client) = run("0123456789abcdef", "0123456789abcdef");
    let accepted = accepted.unwrap();
    assert_eq!(
        client.receive(accepted.welcome).unwrap(),
        ClientStep::Established {
            server: "consumer-0".into()
        }
    );
}

#[test]
fn wrong_psk_fails_at_the_server() {
    let (accepted, _) = run("0123456789abcdef", "0123456789abcdeX");
    let err = accepted.unwrap_err();
    assert_eq!(err, HandshakeError::BadProof);
    assert_eq!(err.close_code(), CloseCode::AuthFailed);
    assert_eq!(
        err.to_frame().encode(),
        r#"{"type":"error","code":"auth_failed","message":"authentication failed"}"#
    );
}

#[test]
fn wrong_psk_fails_at_the_client() {
    // An impostor server that does not know the psk cannot forge a welcome.
    let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
    let impostor = ServerHandshake::new(
        creds("fedcba9876543210"),
        "evil",
        Nonce::random(),
        Accepts::Clients,
    );
    client.receive(impostor.hello()).unwrap();
    let forged = Frame::Welcome(Welcome {
        proof: "ab".repeat(32),
    });
    assert_eq!(client.receive(forged), Err(HandshakeError::BadProof));
}

#[test]
fn client_reports_the_servers_refusal() {
    let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
    let server = ServerHandshake::new(
        creds("0123456789abcdef"),
        "c",
        Nonce::random(),
        Accepts::Clients,
    );
    client.receive(server.hello()).unwrap();
    let err = client
        .receive(Frame::error(
            None,
            ErrorCode::AuthFailed,
            "authentication failed",
        ))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AuthFailed);
}

#[test]
fn reflection_gets_nothing() {
    // The attack on the origin protocol: open two connections to the same
    // node and use the challenge of one as the challenge answered on the
    // other. Here the server answers only after the client proved the psk,
    // so there is no server proof to harvest, and mirroring the server's
    // own nonce is refused even with a valid-looking proof.
    let key = psk("0123456789abcdef");
    let server_nonce = Nonce::random();
    let server = ServerHandshake::new(
        Credentials::new(key.clone(), psk("node-key-0123456789")),
        "consumer-0",
        server_nonce,
        Accepts::Clients,
    );
    // The attacker echoes the server nonce and guesses a proof.
    let attempt = Frame::Auth(Auth {
        nonce: server_nonce.to_hex(),
        proof: Some(hex::encode(server_proof(
            &psk("attacker-guess-00"),
            &server_nonce,
            &server_nonce,
        ))),
        node: None,
        client: None,
        token: None,
    });
    assert_eq!(server.receive(attempt), Err(HandshakeError::BadProof));
    // Even a proof computed with the real key is refused when the nonces match.
    let server = ServerHandshake::new(
        Credentials::new(key.clone(), psk("node-key-0123456789")),
        "consumer-0",
        server_nonce,
        Accepts::Clients,
    );
    let mirrored = Frame::Auth(Auth {
        nonce: server_nonce.to_hex(),
        proof: Some(hex::encode(client_proof(
            &key,
            &server_nonce,
            &server_nonce,
        ))),
        node: None,
        client: None,
        token: None,
    });
    assert_eq!(
        server.receive(mirrored),
        Err(HandshakeError::ReflectedNonce)
    );
    // A server proof replayed as a client proof fails: the labels differ.
    let client_nonce = Nonce::random();
    let server = ServerHandshake::new(
        Credentials::new(key.clone(), psk("node-key-0123456789")),
        "consumer-0",
        server_nonce,
        Accepts::Clients,
    );
    let replayed = Frame::Auth(Auth {
        nonce: client_nonce.to_hex(),
        proof: Some(hex::encode(server_proof(
            &key,
            &server_nonce,
            &client_nonce,
        ))),
        node: None,
        client: None,
        token: None,
    });
    assert_eq!(server.receive(replayed), Err(HandshakeError::BadProof));
}

#[test]
fn client_refuses_a_hello_with_its_own_nonce() {
    let nonce = Nonce::random();
    let mut client = ClientHandshake::new(psk("0123456789abcdef"), nonce, None);
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION.into(),
        node: "x".into(),
        nonce: nonce.to_hex(),
    });
    assert_eq!(client.receive(hello), Err(HandshakeError::ReflectedNonce));
}

#[test]
fn unexpected_frames_and_versions() {
    let server = ServerHandshake::new(
        creds("0123456789abcdef"),
        "c",
        Nonce::random(),
        Accepts::Clients,
    );
    let err = server
        .receive(Frame::Ack(crate::frame::Ack::unsubscribed(1)))
        .unwrap_err();
    assert_eq!(err.close_code(), CloseCode::ProtocolError);
    let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
    let hello = Frame::Hello(Hello {
        version: "shardq/9".into(),
        node: "x".into(),
        nonce: Nonce::random().to_hex(),
    });
    assert_eq!(
        client.receive(hello).unwrap_err().code(),
        ErrorCode::UnsupportedVersion
    );
    let server = ServerHandshake::new(
        creds("0123456789abcdef"),
        "c",
        Nonce::random(),
        Accepts::Clients,
    );
    let bad_nonce = Frame::Auth(Auth {
        nonce: "zz".into(),
        proof: Some("00".into()),
        node: None,
        client: None,
        token: None,
    });
    assert_eq!(server.receive(bad_nonce), Err(HandshakeError::BadNonce));
}

#[test]
fn psk_rules() {
    assert_eq!(Psk::new("short"), Err(PskError::TooShort(5)));
    assert!(Psk::new("0123456789abcdef").is_ok());
    assert_eq!(format!("{:?}", psk("0123456789abcdef")), "Psk(<redacted>)");
    assert_eq!(Psk::generate().as_bytes().len(), 64);
}

fn named_credentials() -> Credentials {
    let entry = |name: &str, secrets: &[&str], publish: &[&str]| ClientEntry {
        name: name.into(),
        tenant: "default".into(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: vec![],
    };
    creds("the-cluster-psk-0").with_clients(&[
        entry(
            "api",
            &["api-secret-new-0000", "api-secret-old-0000"],
            &["database/*"],
        ),
        entry("logger", &["logger-secret-00000"], &[]),
    ])
}

/// One full client handshake against `accepts`; the server's verdict.
fn client_against(
    credentials: Credentials,
    accepts: Accepts,
    client: ClientHandshake,
) -> Result<ServerAccepted, HandshakeError> {
    let mut client = client;
    let server = ServerHandshake::new(credentials, "consumer-0", Nonce::random(), accepts);
    let ClientStep::Send(auth) = client.receive(server.hello()).unwrap() else {
        panic!("client did not answer hello")
    };
    let accepted = server.receive(auth)?;
    assert!(matches!(
        client.receive(accepted.welcome.clone()),
        Ok(ClientStep::Established { .. })
    ));
    Ok(accepted)
}

#[test]
fn named_clients_and_rotation() {
    let named = |name: &str, secret: &str| {
        ClientHandshake::new(psk(secret), Nonce::random(), None).named(Some(name.into()))
    };
    // (client, secret, accepted as)
    let cases = [
        ("api", "api-secret-new-0000", Some("api")),
        ("api", "api-secret-old-0000", Some("api")),
        ("api", "logger-secret-00000", None),
        ("logger", "logger-secret-00000", Some("logger")),
        ("nobody", "api-secret-new-0000", None),
        ("api", "the-cluster-psk-0", None),
        // An empty name is a name nobody has, not the psk.
        ("", "the-cluster-psk-0", None),
    ];
    for (name, secret, accepted) in cases {
        let verdict = client_against(named_credentials(), Accepts::Clients, named(name, secret));
        match (verdict, accepted) {
            (
                Ok(ServerAccepted {
                    peer: Peer::Client(identity),
                    ..
                }),
                Some(expected),
            ) => {
                assert_eq!(&*identity.name, expected);
            }
            (Err(HandshakeError::BadProof), None) => {}
            (other, _) => panic!("{name} with {secret}: {other:?}"),
        }
    }
    // The psk, without a name, is the default tenant with every permission.
    let anonymous = ClientHandshake::new(psk("the-cluster-psk-0"), Nonce::random(), None);
    let accepted = client_against(named_credentials(), Accepts::Clients, anonymous).unwrap();
    assert_eq!(
        accepted.peer,
        Peer::Client(crate::auth::ClientIdentity::psk_holder())
    );
}

#[test]
fn node_endpoints_accept_only_nodes() {
    let node_key = psk("node-key-0123456789");
    let credentials = named_credentials();
    // A node proving the node key under its id.
    let node = ClientHandshake::node(
        node_key.clone(),
        Nonce::random(),
        "producer-0",
        "consumer-0",
    );
    let accepted = client_against(credentials.clone(), Accepts::Nodes, node).unwrap();
    assert_eq!(accepted.peer, Peer::Node("producer-0".into()));
    // The psk and a named client's secret are client credentials: not_authorized.
    let psk_holder = ClientHandshake::new(
        psk("the-cluster-psk-0"),
        Nonce::random(),
        Some("producer-0".into()),
    );
    let api = ClientHandshake::new(psk("api-secret-new-0000"), Nonce::random(), None)
        .named(Some("api".into()));
    for client in [psk_holder, api] {
        let err = client_against(credentials.clone(), Accepts::Nodes, client).unwrap_err();
        assert_eq!(err, HandshakeError::NotANode);
        assert_eq!(err.code(), ErrorCode::NotAuthorized);
        assert_eq!(err.close_code(), CloseCode::AuthFailed);
    }
    // Anything else is a plain authentication failure.
    let stranger = ClientHandshake::node(
        psk("not-the-node-key-00"),
        Nonce::random(),
        "producer-0",
        "consumer-0",
    );
    assert_eq!(
        client_against(credentials.clone(), Accepts::Nodes, stranger).unwrap_err(),
        HandshakeError::BadProof
    );
    // The node key is not a client credential.
    let node_key_as_client = ClientHandshake::new(node_key, Nonce::random(), None);
    assert_eq!(
        client_against(credentials, Accepts::Clients, node_key_as_client).unwrap_err(),
        HandshakeError::BadProof
    );
}

#[test]
fn node_ids_are_bound_into_the_proofs() {
    let key = psk("node-key-0123456789");
    let credentials = creds("the-cluster-psk-0");
    // A dialling node's proof replayed under another id is refused.
    let mut client =
        ClientHandshake::node(key.clone(), Nonce::random(), "producer-0", "consumer-0");
    let server = ServerHandshake::new(
        credentials.clone(),
        "consumer-0",
        Nonce::random(),
        Accepts::Nodes,
    );
    let ClientStep::Send(Frame::Auth(mut auth)) = client.receive(server.hello()).unwrap() else {
        panic!("no auth")
    };
    auth.node = Some("consumer-1".into());
    assert_eq!(
        server.receive(Frame::Auth(auth)),
        Err(HandshakeError::BadProof)
    );
    // A node answering at the dialled address under another id is refused
    // before anything is proved to it.
    let mut client =
        ClientHandshake::node(key.clone(), Nonce::random(), "producer-0", "consumer-1");
    let impostor = ServerHandshake::new(
        credentials.clone(),
        "consumer-0",
        Nonce::random(),
        Accepts::Nodes,
    );
    assert_eq!(
        client.receive(impostor.hello()),
        Err(HandshakeError::WrongNode {
            expected: "consumer-1".into(),
            got: "consumer-0".into()
        })
    );
    // A server that claims the dialled id but holds only the psk cannot
    // forge the welcome.
    let mut client = ClientHandshake::node(key, Nonce::random(), "producer-0", "consumer-1");
    let server_nonce = Nonce::random();
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION.into(),
        node: "consumer-1".into(),
        nonce: server_nonce.to_hex(),
    });
    let ClientStep::Send(Frame::Auth(auth)) = client.receive(hello).unwrap() else {
        panic!("no auth")
    };
    let client_nonce = Nonce::from_hex(&auth.nonce).unwrap();
    let forged = Frame::Welcome(Welcome {
        proof: hex::encode(server_proof(
            &psk("the-cluster-psk-0"),
            &server_nonce,
            &client_nonce,
        )),
    });
    assert_eq!(client.receive(forged), Err(HandshakeError::BadProof));
}

#[test]
fn tokens_only_over_tls_and_never_on_node_endpoints() {
    use crate::auth::token::{TokenClaims, mint_hs256};
    let secret = b"an-hs256-secret-of-32-bytes-or-more!";
    let keys = crate::auth::TokenKeys::new(&[secret.to_vec()], &[], false).unwrap();
    let credentials = creds("the-cluster-psk-0").with_tokens(keys);
    let claims = TokenClaims {
        sub: "browser".into(),
        tenant: "default".into(),
        publish: vec![],
        subscribe: vec!["database/*".into()],
        exp: jsonwebtoken::get_current_timestamp() + 600,
    };
    let token = mint_hs256(secret, &claims).unwrap();
    let run = |accepts: Accepts, tls: bool, token: &str| {
        let mut client = ClientHandshake::token(token, Nonce::random(), None);
        let server =
            ServerHandshake::new(credentials.clone(), "consumer-0", Nonce::random(), accepts)
                .over_tls(tls);
        let ClientStep::Send(auth) = client.receive(server.hello()).unwrap() else {
            panic!("no auth")
        };
        let accepted = server.receive(auth)?;
        assert!(matches!(
            client.receive(accepted.welcome.clone()),
            Ok(ClientStep::Established { .. })
        ));
        Ok::<_, HandshakeError>(accepted.peer)
    };
    let Ok(Peer::Client(identity)) = run(Accepts::Clients, true, &token) else {
        panic!("a valid token over TLS was refused")
    };
    assert_eq!(&*identity.name, "browser");
    assert_eq!(
        run(Accepts::Clients, false, &token),
        Err(HandshakeError::TokenNeedsTls)
    );
    assert_eq!(
        run(Accepts::Nodes, true, &token),
        Err(HandshakeError::NotANode)
    );
    let forged = mint_hs256(b"not-the-secret-but-32-bytes-long!!!", &claims).unwrap();
    assert_eq!(
        run(Accepts::Clients, true, &forged),
        Err(HandshakeError::BadProof)
    );
}
