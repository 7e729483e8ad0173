//! Tenants are namespaces end to end: the same topic name in two tenants is
//! two topics (routing, sequences, history), delivered only within its
//! tenant, through producers, owners, edges and the client library; a
//! client cannot write itself into another tenant.

#![allow(clippy::unwrap_used)]

use shardq::{Publisher, PublisherConfig, Subscriber, SubscriberConfig};
use shardq_protocol::auth::ClientEntry;
use shardq_protocol::{ClientHandshake, Frame, Nonce, Position, Psk, Subscribe, TopicFilter};
use shardq_tests::raw::{RawClient, expect_ack, expect_message};
use shardq_tests::{Cluster, init_logging};

fn in_tenant(name: &str, tenant: &str, secret: &str) -> ClientEntry {
    ClientEntry {
        name: name.into(),
        tenant: tenant.into(),
        secrets: vec![secret.into()],
        publish: vec!["*".into()],
        subscribe: vec!["*".into()],
    }
}

/// A client of `[[clients]]` entry `name` at `url`, authenticated with `secret`.
async fn connect(url: &str, name: &str, secret: &str) -> RawClient {
    let handshake = ClientHandshake::new(Psk::new(secret).unwrap(), Nonce::random(), None)
        .named(Some(name.to_owned()));
    RawClient::connect_with(url, handshake).await.unwrap()
}

/// Two consumers, a producer, and one client in each of tenants acme and globex.
async fn two_tenants() -> Cluster {
    Cluster::builder()
        .consumers(2)
        .producers(1)
        .clients(vec![
            in_tenant("acme-app", "acme", "acme-secret-0123456"),
            in_tenant("globex-app", "globex", "globex-secret-01234"),
        ])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_namespaces_end_to_end() {
    init_logging();
    let cluster = two_tenants().await;
    let publish = cluster.producers[0].url("/v1/publish");
    // Every subscriber at consumer-0: for topics consumer-1 owns, the edge
    // relays from the owner, so links carry the tenant too.
    let subscribe = cluster.consumers[0].url("/v1/subscribe");
    let mut acme_sub = connect(&subscribe, "acme-app", "acme-secret-0123456").await;
    let mut globex_sub = connect(&subscribe, "globex-app", "globex-secret-01234").await;
    let mut default_sub = cluster.subscriber(0).await;
    for topic in ["database/create", "files/save"] {
        expect_ack(acme_sub.subscribe(1, topic).await);
        expect_ack(globex_sub.subscribe(1, topic).await);
        expect_ack(default_sub.subscribe(1, topic).await);
    }
    let mut acme_pub = connect(&publish, "acme-app", "acme-secret-0123456").await;
    let mut globex_pub = connect(&publish, "globex-app", "globex-secret-01234").await;
    let mut default_pub = cluster.publisher(0).await;
    for topic in ["database/create", "files/save"] {
        let acme = expect_ack(acme_pub.publish(1, topic, r#""acme""#).await);
        // The same name in another tenant is another topic: its own sequence.
        let globex = expect_ack(globex_pub.publish(1, topic, r#""globex""#).await);
        expect_ack(default_pub.publish(1, topic, r#""default""#).await);
        assert_ne!(
            acme.epoch, globex.epoch,
            "{topic}: one sequence for two tenants"
        );
    }
    // Each subscriber's messages are its tenant's only, by their names.
    for (subscriber, tenant) in [
        (&mut acme_sub, "acme"),
        (&mut globex_sub, "globex"),
        (&mut default_sub, "default"),
    ] {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let message = expect_message(subscriber.recv().await);
            assert_eq!(message.payload.get(), format!("\"{tenant}\""), "{tenant}");
            assert_eq!(
                message.topic.tenant(),
                (tenant != "default").then_some(tenant)
            );
            seen.push(message.topic.name().to_owned());
        }
        seen.sort();
        assert_eq!(seen, ["database/create", "files/save"], "{tenant}");
    }
    // A client cannot step into another tenant by writing `tenant` itself.
    acme_sub
        .send_text(r#"{"type":"subscribe","id":9,"topic":"files/error","tenant":"globex"}"#)
        .await;
    let ack = expect_ack(acme_sub.recv().await);
    let topics = ack.topics.unwrap();
    assert_eq!(topics[0].topic.tenant(), Some("acme"));
    globex_pub
        .send_text(
            r#"{"type":"publish","id":5,"topic":"files/error","tenant":"acme","payload":"sneaky"}"#,
        )
        .await;
    expect_ack(globex_pub.recv().await);
    expect_ack(acme_pub.publish(6, "files/error", r#""mine""#).await);
    let message = expect_message(acme_sub.recv().await);
    assert_eq!(message.payload.get(), r#""mine""#);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_history_and_the_client_library_stay_in_the_tenant() {
    init_logging();
    let cluster = two_tenants().await;
    let acme = || Psk::new("acme-secret-0123456").unwrap();
    // The client library, named in tenant acme.
    let subscriber = Subscriber::connect(SubscriberConfig {
        client: Some("acme-app".into()),
        tenant: Some("acme".into()),
        ..SubscriberConfig::from_cluster(&cluster.config, acme())
    })
    .await
    .unwrap();
    let mut creates = subscriber.subscribe("database", "create").await.unwrap();
    let publisher = Publisher::connect(PublisherConfig {
        client: Some("acme-app".into()),
        ..PublisherConfig::from_cluster(&cluster.config, acme())
    })
    .await
    .unwrap();
    let mut globex = connect(
        &cluster.producers[0].url("/v1/publish"),
        "globex-app",
        "globex-secret-01234",
    )
    .await;
    expect_ack(globex.publish(1, "database/create", r#""globex""#).await);
    let ack = publisher
        .publish("database", "create", &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    let message = creates.next_message().await.unwrap();
    assert_eq!(message.payload.get(), r#"{"n":1}"#);
    assert_eq!(message.topic.as_str(), "database/create");
    // A resume in the tenant replays the tenant's history only, at the
    // owner and at an edge.
    for consumer in 0..2 {
        let mut late = connect(
            &cluster.consumers[consumer].url("/v1/subscribe"),
            "acme-app",
            "acme-secret-0123456",
        )
        .await;
        late.send(&Frame::Subscribe(Subscribe {
            id: 1,
            topic: TopicFilter::parse("database/create").unwrap(),
            since: Some(Position {
                epoch: ack.epoch,
                offset: 0,
            }),
            group: None,
        }))
        .await;
        let answer = expect_ack(late.recv().await);
        assert_eq!(answer.recovered, Some(true), "consumer-{consumer}");
        let replayed = expect_message(late.recv().await);
        assert_eq!(replayed.payload.get(), r#"{"n":1}"#, "consumer-{consumer}");
        assert_eq!(replayed.topic.tenant(), Some("acme"));
    }
    cluster.shutdown().await;
}
