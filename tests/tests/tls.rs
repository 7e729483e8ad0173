//! TLS end to end: nodes serving `wss://` with certificates made at test
//! time, links between them over TLS, the client library over `wss://`, an
//! untrusted certificate refused, and tokens accepted over TLS without the
//! plaintext override.

#![allow(clippy::unwrap_used)]

use shardq::{ConnectError, Publisher, PublisherConfig, Subscriber, SubscriberConfig, Tls};
use shardq_protocol::{ClientHandshake, Nonce};
use shardq_tests::pki::TestPki;
use shardq_tests::raw::{RawClient, expect_ack};
use shardq_tests::{Cluster, init_logging};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_end_to_end_through_links_and_the_client_library() {
    init_logging();
    // The producer reaches both consumers over TLS (wait_links in start).
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .tls()
        .start()
        .await;
    let pki = cluster.pki.as_ref().unwrap();
    assert!(cluster.config.consumers[0].url.starts_with("wss://"));
    let tls = Tls::from_ca_file(&pki.ca).unwrap();
    // A topic owned by consumer-1, subscribed at consumer-0: the edge's
    // upstream link to the owner is TLS too.
    let topic = cluster.topic_owned_by(1);
    let (queue, event) = topic.split_once('/').unwrap();
    let subscriber = Subscriber::connect(SubscriberConfig {
        tls: Some(tls.clone()),
        ..SubscriberConfig::new(cluster.consumers[0].url(""), cluster.psk.clone())
    })
    .await
    .unwrap();
    let mut messages = subscriber.subscribe(queue, event).await.unwrap();
    let publisher = Publisher::connect(PublisherConfig {
        tls: Some(tls),
        ..PublisherConfig::from_cluster(&cluster.config, cluster.psk.clone())
    })
    .await
    .unwrap();
    publisher
        .publish(queue, event, &serde_json::json!({"over": "tls"}))
        .await
        .unwrap();
    let message = messages.next_message().await.unwrap();
    assert_eq!(message.payload.get(), r#"{"over":"tls"}"#);
    // The raw clients of the harness speak wss:// too.
    let mut raw = cluster.publisher(0).await;
    expect_ack(raw.publish(1, topic, "2").await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    init_logging();
    let cluster = Cluster::builder().producers(1).tls().start().await;
    // Another CA: the node's certificate does not chain to it.
    let stranger = TestPki::new();
    let error = Publisher::connect(PublisherConfig {
        tls: Some(Tls::from_ca_file(&stranger.ca).unwrap()),
        ..PublisherConfig::from_cluster(&cluster.config, cluster.psk.clone())
    })
    .await
    .err()
    .unwrap();
    let text = error.to_string();
    assert!(text.contains("certificate"), "{text}");
    // No CA at all: wss:// is refused before anything is sent.
    let error = Publisher::connect(PublisherConfig::from_cluster(
        &cluster.config,
        cluster.psk.clone(),
    ))
    .await
    .err()
    .unwrap();
    assert!(
        matches!(error, ConnectError::TlsUnconfigured { .. }),
        "{error}"
    );
    // Plaintext to the TLS port gets no shardq/1 hello.
    let plain = cluster.consumers[0]
        .url("/v1/subscribe")
        .replacen("wss://", "ws://", 1);
    let handshake = ClientHandshake::new(cluster.psk.clone(), Nonce::random(), None);
    assert!(RawClient::connect_with(&plain, handshake).await.is_err());
    // Both failed TLS handshakes are counted where they failed.
    for (admin, name) in [
        (
            cluster.producers[0].admin,
            "shardq_producer_tls_handshake_failures_total",
        ),
        (
            cluster.consumers[0].admin,
            "shardq_consumer_tls_handshake_failures_total",
        ),
    ] {
        shardq_tests::until(name, || async {
            let (_, body) = shardq_tests::http_get(admin, "/metrics").await;
            match shardq_tests::metric(&body, name) {
                Some(count) if count >= 1.0 => Ok(()),
                _ => Err(body),
            }
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_accepted_over_tls() {
    use shardq_protocol::auth::TokenKeys;
    use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
    init_logging();
    let secret = b"token-secret-of-at-least-32-bytes!!";
    let keys = TokenKeys::new(&[secret.to_vec()], &[], false).unwrap();
    let cluster = Cluster::builder().tls().tokens(keys).start().await;
    let claims = TokenClaims {
        sub: "browser".into(),
        tenant: "default".into(),
        publish: vec![],
        subscribe: vec!["database/*".into()],
        exp: jsonwebtoken_now() + 600,
    };
    let token = mint_hs256(secret, &claims).unwrap();
    let handshake = ClientHandshake::token(token.as_str(), Nonce::random(), None);
    let mut browser = RawClient::connect_tls(
        &cluster.consumers[0].url("/v1/subscribe"),
        handshake,
        cluster.client_tls().as_ref(),
    )
    .await
    .unwrap();
    expect_ack(browser.subscribe(1, "database/*").await);
    // The client library too.
    let subscriber = Subscriber::connect(SubscriberConfig {
        token: Some(token),
        tls: Some(Tls::from_ca_file(&cluster.pki.as_ref().unwrap().ca).unwrap()),
        ..SubscriberConfig::new(cluster.consumers[0].url(""), cluster.psk.clone())
    })
    .await
    .unwrap();
    subscriber.subscribe("database", "create").await.unwrap();
    cluster.shutdown().await;
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
