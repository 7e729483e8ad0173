//! Who may connect and what they may do, over real sockets: node endpoints
//! accept nodes only, links refuse a node that cannot prove the node key,
//! named clients get exactly their permissions (refusals carry the id), and
//! a client's secret can be rotated without a restart.

#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use shardq::ConnectError;
use shardq_protocol::auth::ClientEntry;
use shardq_protocol::frame::Welcome;
use shardq_protocol::handshake::server_proof;
use shardq_protocol::{ClientHandshake, ErrorCode, Frame, HandshakeError, Nonce, Psk};
use shardq_tests::raw::{RawClient, expect_ack, expect_error, expect_message};
use shardq_tests::{Cluster, init_logging, node_status};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn client(name: &str, secrets: &[&str], publish: &[&str], subscribe: &[&str]) -> ClientEntry {
    let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect();
    ClientEntry {
        name: name.into(),
        tenant: "default".into(),
        secrets: strings(secrets),
        publish: strings(publish),
        subscribe: strings(subscribe),
    }
}

/// A named client's handshake with `secret`.
fn as_client(name: &str, secret: &str) -> ClientHandshake {
    ClientHandshake::new(Psk::new(secret).unwrap(), Nonce::random(), None)
        .named(Some(name.to_owned()))
}

fn refused_with(result: Result<RawClient, ConnectError>) -> ErrorCode {
    match result {
        Err(ConnectError::Handshake {
            source: HandshakeError::Refused { code, .. },
            ..
        }) => code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the handshake succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_not_authorized_on_the_node_endpoint() {
    init_logging();
    let cluster = Cluster::builder()
        .clients(vec![client("api", &["api-secret-0123456"], &["*"], &["*"])])
        .start()
        .await;
    let url = cluster.consumers[0].url("/v1/cluster");
    // The psk, and a named client's secret: both client credentials.
    let psk_holder = ClientHandshake::new(cluster.psk.clone(), Nonce::random(), Some("x".into()));
    let code = refused_with(RawClient::connect_with(&url, psk_holder).await);
    assert_eq!(code, ErrorCode::NotAuthorized);
    let code =
        refused_with(RawClient::connect_with(&url, as_client("api", "api-secret-0123456")).await);
    assert_eq!(code, ErrorCode::NotAuthorized);
    // A key nobody holds is a plain authentication failure.
    let stranger =
        ClientHandshake::node(Psk::generate(), Nonce::random(), "producer-9", "consumer-0");
    assert_eq!(
        refused_with(RawClient::connect_with(&url, stranger).await),
        ErrorCode::AuthFailed
    );
    // The node key proves a node, and the node can work there.
    let mut node = cluster.cluster_client(0).await;
    expect_ack(node.subscribe(1, "database/create").await);
    // The node key is no client credential.
    let node_key_as_client = ClientHandshake::new(cluster.node_key.clone(), Nonce::random(), None);
    let url = cluster.consumers[0].url("/v1/subscribe");
    assert_eq!(
        refused_with(RawClient::connect_with(&url, node_key_as_client).await),
        ErrorCode::AuthFailed
    );
    cluster.shutdown().await;
}

/// A process at a consumer's address that holds a client credential (the
/// psk) and answers a link's handshake as that consumer: it cannot prove
/// the node key, so the link never comes up and nothing is sent to it.
async fn rogue_consumer(listener: TcpListener, psk: Psk, attempts: tokio::sync::mpsc::Sender<()>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
            continue;
        };
        let _ = attempts.try_send(());
        let server_nonce = Nonce::random();
        let hello = Frame::Hello(shardq_protocol::frame::Hello {
            version: shardq_protocol::PROTOCOL_VERSION.into(),
            node: "consumer-1".into(),
            nonce: server_nonce.to_hex(),
        });
        let _ = socket.send(Message::text(hello.encode())).await;
        let Some(Ok(Message::Text(auth))) = socket.next().await else {
            continue;
        };
        let Ok(Frame::Auth(auth)) = Frame::decode(auth.as_bytes(), 1 << 20) else {
            continue;
        };
        // The best it can do: a welcome proved with the psk.
        let client_nonce = Nonce::from_hex(&auth.nonce).unwrap();
        let forged = Frame::Welcome(Welcome {
            proof: hex::encode(server_proof(&psk, &server_nonce, &client_nonce)),
        });
        let _ = socket.send(Message::text(forged.encode())).await;
        while let Some(Ok(_)) = socket.next().await {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_refuse_a_consumer_that_cannot_prove_the_node_key() {
    init_logging();
    let mut cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let rogue = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    let (attempts, mut attempted) = tokio::sync::mpsc::channel(16);
    tokio::spawn(rogue_consumer(rogue, cluster.psk.clone(), attempts));
    // consumer-1's address now leads to the rogue.
    let mut moved = cluster.config.clone();
    moved.consumers[1].url = format!("ws://{rogue_addr}");
    cluster.reload(moved);
    attempted.recv().await.unwrap();
    let admin = cluster.producers[0].admin;
    let link = shardq_tests::until("the link to the rogue fails on its proof", || async {
        let status = node_status(admin).await;
        let link = status
            .links
            .iter()
            .find(|l| l.id == "consumer-1")
            .cloned()
            .unwrap();
        match &link.last_error {
            Some(error) if error.contains("proof") => Ok(link),
            _ => Err(format!("{link:?}")),
        }
    })
    .await;
    assert_eq!(
        link.state,
        shardq_protocol::status::LinkState::Down,
        "{link:?}"
    );
    // Its topics are refused, not acked by the rogue.
    let topic = cluster.topic_owned_by(1);
    let mut publisher = cluster.publisher(0).await;
    expect_error(publisher.publish(7, topic, "1").await, "unavailable");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_clients_get_exactly_their_permissions() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .clients(vec![
            client("api", &["api-secret-0123456"], &["database/*"], &[]),
            client(
                "logger",
                &["logger-secret-01234"],
                &[],
                &["database/create", "files/*"],
            ),
        ])
        .start()
        .await;
    let publish_url = cluster.producers[0].url("/v1/publish");
    let mut api = RawClient::connect_with(&publish_url, as_client("api", "api-secret-0123456"))
        .await
        .unwrap();
    // Subscribe first, so the allowed publish below must arrive.
    let owner = cluster.owner("database/create");
    let subscribe_url = cluster.consumers[owner].url("/v1/subscribe");
    let mut logger =
        RawClient::connect_with(&subscribe_url, as_client("logger", "logger-secret-01234"))
            .await
            .unwrap();
    expect_ack(logger.subscribe(1, "database/create").await);
    expect_ack(logger.subscribe(2, "files/*").await);
    let denied = expect_error(
        logger.subscribe(3, "database/delete").await,
        "not_authorized",
    );
    assert_eq!(denied.id, Some(3));
    let denied = expect_error(logger.subscribe(4, "database/*").await, "not_authorized");
    assert_eq!(denied.id, Some(4));

    expect_ack(api.publish(10, "database/create", r#"{"n":1}"#).await);
    let denied = expect_error(api.publish(11, "files/save", "1").await, "not_authorized");
    assert_eq!(denied.id, Some(11));
    assert!(denied.message.contains("files/save"), "{}", denied.message);
    let message = expect_message(logger.recv().await);
    assert_eq!(message.payload.get(), r#"{"n":1}"#);
    // The logger may not publish at all; api may not subscribe at all.
    let mut logger_pub =
        RawClient::connect_with(&publish_url, as_client("logger", "logger-secret-01234"))
            .await
            .unwrap();
    expect_error(
        logger_pub.publish(1, "database/create", "1").await,
        "not_authorized",
    );
    let mut api_sub =
        RawClient::connect_with(&subscribe_url, as_client("api", "api-secret-0123456"))
            .await
            .unwrap();
    expect_error(
        api_sub.subscribe(1, "database/create").await,
        "not_authorized",
    );
    // A wrong secret, or an unknown name, is an authentication failure.
    for handshake in [
        as_client("api", "logger-secret-01234"),
        as_client("nobody", "api-secret-0123456"),
    ] {
        assert_eq!(
            refused_with(RawClient::connect_with(&publish_url, handshake).await),
            ErrorCode::AuthFailed
        );
    }
    // The psk keeps every permission (the default tenant's credential).
    let mut anyone = cluster.publisher(0).await;
    expect_ack(anyone.publish(1, "files/save", "1").await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotates_without_a_restart() {
    init_logging();
    let mut cluster = Cluster::builder()
        .producers(1)
        .clients(vec![client("api", &["old-secret-0123456"], &["*"], &[])])
        .start()
        .await;
    let url = cluster.producers[0].url("/v1/publish");
    let mut before = RawClient::connect_with(&url, as_client("api", "old-secret-0123456"))
        .await
        .unwrap();
    // Step 1: both secrets are valid.
    let mut both = cluster.config.clone();
    both.clients = vec![client(
        "api",
        &["new-secret-0123456", "old-secret-0123456"],
        &["*"],
        &[],
    )];
    cluster.reload(both);
    let mut new = shardq_tests::until("the new secret is valid", || async {
        RawClient::connect_with(&url, as_client("api", "new-secret-0123456"))
            .await
            .map_err(|error| error.to_string())
    })
    .await;
    RawClient::connect_with(&url, as_client("api", "old-secret-0123456"))
        .await
        .unwrap();
    // Step 2: the old secret is retired; new handshakes with it fail, and
    // connections already open keep working.
    let mut retired = cluster.config.clone();
    retired.clients = vec![client("api", &["new-secret-0123456"], &["*"], &[])];
    cluster.reload(retired);
    shardq_tests::eventually("the old secret is refused", || async {
        RawClient::connect_with(&url, as_client("api", "old-secret-0123456"))
            .await
            .is_err()
    })
    .await;
    expect_ack(new.publish(1, "database/create", "1").await);
    expect_ack(before.publish(2, "database/create", "2").await);
    cluster.shutdown().await;
}

const TOKEN_SECRET: &[u8] = b"token-secret-of-at-least-32-bytes!!";

fn token(exp_in: i64, secret: &[u8]) -> String {
    use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = TokenClaims {
        sub: "browser".into(),
        tenant: "default".into(),
        publish: vec![],
        subscribe: vec!["database/*".into()],
        exp: (now + exp_in) as u64,
    };
    mint_hs256(secret, &claims).unwrap()
}

fn with_token(token: &str) -> ClientHandshake {
    ClientHandshake::token(token, Nonce::random(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_permissions_and_expire() {
    use shardq_protocol::auth::TokenKeys;
    init_logging();
    // This build has no TLS listener yet: plaintext tokens are allowed
    // explicitly here, as an operator would for development.
    let keys = TokenKeys::new(&[TOKEN_SECRET.to_vec()], &[], true).unwrap();
    let cluster = Cluster::builder().tokens(keys).start().await;
    let url = cluster.consumers[0].url("/v1/subscribe");
    let mut browser = RawClient::connect_with(&url, with_token(&token(600, TOKEN_SECRET)))
        .await
        .unwrap();
    expect_ack(browser.subscribe(1, "database/*").await);
    let denied = expect_error(browser.subscribe(2, "files/save").await, "not_authorized");
    assert_eq!(denied.id, Some(2));
    // Expired (beyond the leeway), or signed with another secret.
    let expired = token(-600, TOKEN_SECRET);
    let forged = token(600, b"another-secret-of-at-least-32-bytes");
    for token in [expired, forged, "garbage".to_owned()] {
        assert_eq!(
            refused_with(RawClient::connect_with(&url, with_token(&token)).await),
            ErrorCode::AuthFailed
        );
    }
    // A token is no node credential.
    let node_url = cluster.consumers[0].url("/v1/cluster");
    assert_eq!(
        refused_with(
            RawClient::connect_with(&node_url, with_token(&token(600, TOKEN_SECRET))).await
        ),
        ErrorCode::NotAuthorized
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_over_plaintext_by_default() {
    use shardq_protocol::auth::TokenKeys;
    init_logging();
    let keys = TokenKeys::new(&[TOKEN_SECRET.to_vec()], &[], false).unwrap();
    let cluster = Cluster::builder().tokens(keys).start().await;
    let url = cluster.consumers[0].url("/v1/subscribe");
    let result = RawClient::connect_with(&url, with_token(&token(600, TOKEN_SECRET))).await;
    assert_eq!(refused_with(result), ErrorCode::NotAuthorized);
    cluster.shutdown().await;
}
