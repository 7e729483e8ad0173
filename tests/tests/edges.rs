//! Edges: a consumer serving a topic it does not own through one upstream
//! subscription at the owner, and publishes forwarded to the owner once.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use shardq_tests::raw::{expect_ack, expect_error, expect_message};
use shardq_tests::{Cluster, LegacyClient, PATIENCE, http_get, metric};

async fn consumer_metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    metric(&body, name).unwrap_or(0.0)
}

async fn edge_topics(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/v1/cluster").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["edge_topics"].as_u64().unwrap()
}

/// Waits until `probe` returns `want`; panics with the last value after
/// [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, want: T, mut probe: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: want {want:?}, still {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_holds_one_upstream_subscription_until_its_last_subscriber_leaves() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let topic = cluster.topic_owned_by(0);
    let (owner, edge) = (cluster.consumers[0].admin, cluster.consumers[1].admin);
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = cluster.subscriber(1).await;
        expect_ack(client.subscribe(7, topic).await);
        subscribers.push(client);
    }
    // Three local subscribers at the edge, one subscription at the owner.
    assert_eq!(edge_topics(edge).await, 1);
    let subscriptions = "shardq_consumer_subscriptions";
    assert_eq!(consumer_metric(owner, subscriptions).await, 1.0);
    let mut publisher = cluster.publisher(0).await;
    let ack = expect_ack(publisher.publish(1, topic, r#""via the edge""#).await);
    for client in &mut subscribers {
        let message = expect_message(client.recv().await);
        assert_eq!(message.payload.get(), r#""via the edge""#);
        assert_eq!(
            (Some(message.epoch), Some(message.offset)),
            (ack.epoch, ack.offset)
        );
    }
    // The upstream stays while anyone is subscribed at the edge...
    for client in &mut subscribers[..2] {
        expect_ack(client.unsubscribe(8, topic).await);
    }
    assert_eq!(consumer_metric(owner, subscriptions).await, 1.0);
    // ...and goes with the last one.
    expect_ack(subscribers[2].unsubscribe(8, topic).await);
    eventually("subscriptions at the owner", 0.0, || {
        consumer_metric(owner, subscriptions)
    })
    .await;
    eventually("edge topics at the edge", 0, || edge_topics(edge)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_subscriber_at_an_edge_gets_the_owners_messages() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let topic = cluster.topic_owned_by(0);
    let path = format!("/subscribe/{}", topic.replace('/', "%2F"));
    // The handshake completes only once the edge's upstream is live, so a
    // publish right after it arrives.
    let mut legacy = LegacyClient::connect(&cluster.consumers[1].url(&path), &cluster.psk)
        .await
        .unwrap();
    let mut publisher = cluster.publisher(0).await;
    expect_ack(publisher.publish(1, topic, r#""hello""#).await);
    assert_eq!(legacy.recv_message().await, (topic.into(), "hello".into()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_at_a_non_owner_is_forwarded_once() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let topic = cluster.topic_owned_by(0);
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, topic).await);
    // A producer with a stale view sends to consumer 1, which does not own it.
    let mut stale = cluster.cluster_client(1).await;
    let ack = expect_ack(stale.publish(5, topic, "1").await);
    let message = expect_message(subscriber.recv().await);
    assert_eq!(
        (Some(message.epoch), Some(message.offset)),
        (ack.epoch, ack.offset)
    );
    assert_eq!(
        consumer_metric(
            cluster.consumers[1].admin,
            "shardq_consumer_forwarded_total"
        )
        .await,
        1.0
    );
    // A publish already forwarded once is never forwarded again.
    stale
        .send_text(&format!(
            r#"{{"type":"publish","id":6,"topic":"{topic}","forwarded":true,"payload":2}}"#
        ))
        .await;
    let error = expect_error(stale.recv().await, "unavailable");
    assert_eq!(error.id, Some(6));
    assert!(
        error.message.contains("forwarded once"),
        "{}",
        error.message
    );
    cluster.shutdown().await;
}
