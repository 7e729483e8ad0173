//! `GET /v1/clients`: who is connected to a node, as it proved itself, with
//! what it subscribed to and what it was sent; gone once it leaves.

#![allow(clippy::unwrap_used)]

use shardq_protocol::auth::ClientEntry;
use shardq_protocol::status::{ClientRole, ClientsReport};
use shardq_protocol::{ClientHandshake, Nonce, Psk};
use shardq_tests::raw::{RawClient, expect_ack, expect_message};
use shardq_tests::{Cluster, LegacyClient, http_get, init_logging};

async fn clients(admin: std::net::SocketAddr) -> ClientsReport {
    let (status, body) = http_get(admin, "/v1/clients").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_their_clients() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .clients(vec![ClientEntry {
            name: "dashboard".into(),
            tenant: "acme".into(),
            secrets: vec!["dashboard-secret-01".into()],
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
        }])
        .start()
        .await;
    let handshake = ClientHandshake::new(
        Psk::new("dashboard-secret-01").unwrap(),
        Nonce::random(),
        None,
    )
    .named(Some("dashboard".into()));
    let mut dashboard =
        RawClient::connect_with(&cluster.consumers[0].url("/v1/subscribe"), handshake)
            .await
            .unwrap();
    expect_ack(dashboard.subscribe(1, "database/create").await);
    let url = cluster.consumers[0].url("/subscribe/files%2Fsave");
    let _legacy = LegacyClient::connect(&url, &cluster.psk).await.unwrap();
    let publish_handshake = ClientHandshake::new(
        Psk::new("dashboard-secret-01").unwrap(),
        Nonce::random(),
        None,
    )
    .named(Some("dashboard".into()));
    let mut publisher =
        RawClient::connect_with(&cluster.producers[0].url("/v1/publish"), publish_handshake)
            .await
            .unwrap();
    for id in 0..3 {
        expect_ack(publisher.publish(id, "database/create", "1").await);
        expect_message(dashboard.recv().await);
    }
    let report = clients(cluster.consumers[0].admin).await;
    assert_eq!(report.node, "consumer-0");
    let subscriber = report
        .clients
        .iter()
        .find(|client| client.name == "dashboard")
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(subscriber.role, ClientRole::Subscriber);
    assert_eq!(subscriber.tenant, "acme");
    assert_eq!(subscriber.subscriptions, ["database/create"]);
    assert!(subscriber.remote.starts_with("127.0.0.1:"));
    // hello, welcome, the ack and three messages at least.
    assert!(subscriber.frames_sent >= 6, "{subscriber:?}");
    assert!(subscriber.bytes_sent > 0 && !subscriber.legacy);
    let node = report
        .clients
        .iter()
        .find(|c| c.role == ClientRole::Node)
        .unwrap();
    assert_eq!(node.name, "producer-0");
    let legacy = report.clients.iter().find(|c| c.legacy).unwrap();
    assert_eq!(legacy.subscriptions, ["files/save"]);
    // Subscribers per topic, by bounded labels.
    let (_, metrics) = http_get(cluster.consumers[0].admin, "/metrics").await;
    for line in [
        r#"shardq_consumer_topic_subscribers{tenant="acme",topic="database/create"} 1"#,
        r#"shardq_consumer_topic_subscribers{tenant="default",topic="files/save"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing: {metrics}");
    }
    // The producer lists its publisher.
    let report = clients(cluster.producers[0].admin).await;
    let publisher_info = report
        .clients
        .iter()
        .find(|c| c.name == "dashboard")
        .unwrap();
    assert_eq!(publisher_info.role, ClientRole::Publisher);
    // Gone once it leaves.
    drop(dashboard);
    shardq_tests::eventually("the dashboard leaves the list", || async {
        let report = clients(cluster.consumers[0].admin).await;
        report.clients.iter().all(|c| c.name != "dashboard")
    })
    .await;
    let (_, metrics) = http_get(cluster.consumers[0].admin, "/metrics").await;
    let gone = r#"shardq_consumer_topic_subscribers{tenant="acme",topic="database/create"} 0"#;
    assert!(metrics.contains(gone), "{metrics}");
    cluster.shutdown().await;
}
