//! Server-Sent Events on consumers: `GET /v1/topics/{queue}/{event}/events`
//! streams a topic (or `queue/*`) with `id` = the stream's position, a
//! reconnect with `Last-Event-ID` resumes with no gap and no duplicate, a
//! lost history is an explicit `gap` event, and the stream is a subscriber
//! like any other: authenticated, permitted, listed, bounded.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use shardq_protocol::auth::TokenKeys;
use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
use shardq_protocol::status::{ClientsReport, TopicsReport};
use shardq_tests::raw::expect_ack;
use shardq_tests::sse::{self, EventStream};
use shardq_tests::{Cluster, eventually, http_get, init_logging, metric};

const SECRET: &[u8] = b"token-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(20);

fn token(name: &str, subscribe: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    mint_hs256(
        SECRET,
        &TokenClaims {
            sub: name.into(),
            tenant: "default".into(),
            publish: vec![],
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            exp,
        },
    )
    .unwrap()
}

/// A refused request: path, headers, status, code.
type Refusal = (&'static str, Vec<(&'static str, String)>, u16, &'static str);

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// Consumer `index`'s HTTP API address.
fn http_addr(cluster: &Cluster, index: usize) -> SocketAddr {
    let url = cluster.config.consumers[index].http.as_deref().unwrap();
    shardq_protocol::config::host_port(url)
        .unwrap()
        .parse()
        .unwrap()
}

async fn start(consumers: usize) -> Cluster {
    Cluster::builder()
        .consumers(consumers)
        .producers(1)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await
}

async fn stream(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> EventStream {
    let (status, response_headers, stream) = sse::open(addr, path, headers).await;
    assert_eq!(status, 200, "{path}: {:?}", stream.err());
    assert!(
        response_headers
            .iter()
            .any(|(name, value)| name == "content-type" && value == "text/event-stream")
    );
    stream.unwrap()
}

/// Publishes `payload` to `topic` through producer 0; its (epoch, offset).
async fn publish(cluster: &Cluster, id: u64, topic: &str, payload: &str) -> (u64, u64) {
    let mut publisher = cluster.publisher(0).await;
    let ack = expect_ack(publisher.publish(id, topic, payload).await);
    (ack.epoch.unwrap(), ack.offset.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_after_its_last_event_id_with_no_gap_and_no_duplicate() {
    init_logging();
    let cluster = start(2).await;
    // The page's consumer relays the topic from its owner (an edge).
    let topic = cluster.topic_owned_by(0);
    let path = format!("/v1/topics/{topic}/events");
    let addr = http_addr(&cluster, 1);
    let auth = bearer(&token("browser", &["*"]));

    let mut events = stream(addr, &path, std::slice::from_ref(&auth)).await;
    let subscribed = events.next(WAIT).await.unwrap();
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(subscribed.json()["type"], "ack");
    let mut last_id = subscribed.id.clone().unwrap();
    for n in 1..=3u64 {
        let (epoch, offset) = publish(&cluster, n, topic, &format!(r#"{{"n":{n}}}"#)).await;
        let message = events.next(WAIT).await.unwrap();
        assert_eq!(message.event, "message");
        assert_eq!(
            message.id.as_deref(),
            Some(format!("{epoch}:{offset}").as_str())
        );
        assert_eq!(message.json()["payload"]["n"], n);
        last_id = message.id.unwrap();
    }
    drop(events);
    // Missed while away.
    for n in 4..=5u64 {
        publish(&cluster, n, topic, &format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut events = stream(
        addr,
        &path,
        &[auth.clone(), ("Last-Event-ID", last_id.clone())],
    )
    .await;
    let subscribed = events.next(WAIT).await.unwrap();
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(subscribed.json()["recovered"], true);
    for n in 4..=5u64 {
        let message = events.next(WAIT).await.unwrap();
        assert_eq!(message.event, "message", "{message:?}");
        assert_eq!(message.json()["payload"]["n"], n, "no gap, no duplicate");
    }
    // The query string works as well as the headers (for EventSource).
    let token = token("browser", &["*"]);
    let mut by_query = stream(
        addr,
        &format!("{path}?access_token={token}&last_event_id={last_id}"),
        &[],
    )
    .await;
    by_query.next(WAIT).await.unwrap();
    assert_eq!(by_query.next(WAIT).await.unwrap().json()["payload"]["n"], 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_consumer_cannot_replay_is_an_explicit_gap() {
    init_logging();
    let cluster = start(1).await;
    let (epoch, _) = publish(&cluster, 1, "database/create", r#"{"n":1}"#).await;
    let auth = bearer(&token("browser", &["database/create"]));
    // An epoch the topic never had: everything it holds is replayed, and
    // the gap says what may be missing.
    let mut events = stream(
        http_addr(&cluster, 0),
        "/v1/topics/database/create/events",
        &[auth, ("Last-Event-ID", "12345:7".to_owned())],
    )
    .await;
    let subscribed = events.next(WAIT).await.unwrap();
    assert_eq!(subscribed.json()["recovered"], false);
    let gap = events.next(WAIT).await.unwrap();
    assert_eq!(gap.event, "gap");
    let data = gap.json();
    assert_eq!(
        data["after"],
        serde_json::json!({"epoch": 12345, "offset": 7})
    );
    assert_eq!(data["epoch"], epoch);
    assert_eq!(gap.id.as_deref(), Some(format!("{epoch}:0").as_str()));
    let replayed = events.next(WAIT).await.unwrap();
    assert_eq!(replayed.event, "message");
    assert_eq!(replayed.id.as_deref(), Some(format!("{epoch}:1").as_str()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_wide_stream_keeps_every_topic_position() {
    init_logging();
    let cluster = start(2).await;
    let auth = bearer(&token("browser", &["database/*"]));
    let addr = http_addr(&cluster, 0);
    let path = "/v1/topics/database/*/events";
    let mut events = stream(addr, path, std::slice::from_ref(&auth)).await;
    for _ in 0..5 {
        assert_eq!(events.next(WAIT).await.unwrap().event, "subscribed");
    }
    let (create_epoch, _) = publish(&cluster, 1, "database/create", r#"{"n":1}"#).await;
    let (delete_epoch, _) = publish(&cluster, 2, "database/delete", r#"{"n":2}"#).await;
    events.next(WAIT).await.unwrap();
    let second = events.next(WAIT).await.unwrap();
    let id = second.id.unwrap();
    assert!(id.contains(&format!("create={create_epoch}:1")), "{id}");
    assert!(id.contains(&format!("delete={delete_epoch}:1")), "{id}");
    drop(events);
    publish(&cluster, 3, "database/delete", r#"{"n":3}"#).await;
    publish(&cluster, 4, "database/create", r#"{"n":4}"#).await;
    let mut events = stream(addr, path, &[auth, ("Last-Event-ID", id)]).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = events.next_delivery(WAIT).await.unwrap();
        assert_eq!(event.event, "message", "{event:?}");
        seen.push(event.json()["payload"]["n"].as_u64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, [3, 4], "each topic resumed where it was");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_before_the_stream_starts() {
    init_logging();
    let cluster = start(1).await;
    let addr = http_addr(&cluster, 0);
    let reader = bearer(&token("reader", &["files/*"]));
    let cases: [Refusal; 6] = [
        (
            "/v1/topics/database/create/events",
            vec![],
            401,
            "auth_failed",
        ),
        (
            "/v1/topics/database/create/events",
            vec![bearer("not-a-token")],
            401,
            "auth_failed",
        ),
        (
            "/v1/topics/database/create/events",
            vec![reader.clone()],
            403,
            "not_authorized",
        ),
        (
            "/v1/topics/files/nope/events",
            vec![reader.clone()],
            404,
            "unknown_event",
        ),
        (
            "/v1/topics/files/save/events",
            vec![reader.clone(), ("Last-Event-ID", "yesterday".to_owned())],
            400,
            "bad_frame",
        ),
        (
            "/v1/topics/files/save/events",
            vec![reader.clone(), ("Last-Event-ID", "0:5".to_owned())],
            400,
            "bad_frame",
        ),
    ];
    for (path, headers, status, code) in cases {
        let (got, _, body) = sse::open(addr, path, &headers).await;
        let body = body.err().unwrap_or_default();
        assert_eq!(got, status, "{path} {headers:?}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], code, "{path}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_listed_counted_and_released() {
    init_logging();
    let cluster = start(1).await;
    let admin = cluster.consumers[0].admin;
    let auth = bearer(&token("dashboard-page", &["*"]));
    let mut events = stream(
        http_addr(&cluster, 0),
        "/v1/topics/files/save/events",
        &[auth],
    )
    .await;
    events.next(WAIT).await.unwrap();
    let (_, body) = http_get(admin, "/v1/clients").await;
    let report: ClientsReport = serde_json::from_str(&body).unwrap();
    let me = report
        .clients
        .iter()
        .find(|client| client.name == "dashboard-page")
        .expect("the stream is listed");
    assert_eq!(me.subscriptions, ["files/save"]);
    let (_, body) = http_get(admin, "/v1/topics").await;
    let topics: TopicsReport = serde_json::from_str(&body).unwrap();
    let save = topics
        .topics
        .iter()
        .find(|topic| topic.topic == "files/save")
        .expect("the topic is listed");
    assert_eq!(save.subscribers, 1);
    let (_, body) = http_get(admin, "/metrics").await;
    assert_eq!(metric(&body, "shardq_consumer_event_streams"), Some(1.0));
    drop(events);
    eventually("the stream is released when its client goes", || async {
        let (_, body) = http_get(admin, "/metrics").await;
        metric(&body, "shardq_consumer_event_streams") == Some(0.0)
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_cut_as_a_slow_consumer() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .limits(|limits| limits.subscriber_buffer_bytes = 64 << 10)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let admin = cluster.consumers[0].admin;
    let auth = bearer(&token("sleepy", &["*"]));
    let mut events = stream(
        http_addr(&cluster, 0),
        "/v1/topics/files/save/events",
        &[auth],
    )
    .await;
    events.next(WAIT).await.unwrap();
    // The client reads nothing more; the publisher goes on until the
    // stream's bound is exceeded (the socket buffers fill first).
    let payload = format!(r#""{}""#, "x".repeat(16 << 10));
    let mut publisher = cluster.publisher(0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for round in 0u64.. {
        for n in round * 64..(round + 1) * 64 {
            expect_ack(publisher.publish(n, "files/save", &payload).await);
        }
        let (_, body) = http_get(admin, "/metrics").await;
        if metric(&body, "shardq_consumer_slow_consumer_disconnects_total") >= Some(1.0)
            && metric(&body, "shardq_consumer_event_streams") == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sleeping stream was not cut: {body}"
        );
    }
    drop(events);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_larger_than_a_subscribers_buffer_replays_its_newest_part() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .limits(|limits| limits.subscriber_buffer_bytes = 64 << 10)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let topic = cluster.topic_owned_by(0);
    // 160 KiB of history: more than the 32 KiB a replay may take.
    let payload = format!(r#""{}""#, "x".repeat(8 << 10));
    let mut last = (0, 0);
    for n in 1..=20 {
        last = publish(&cluster, n, topic, &payload).await;
    }
    let auth = bearer(&token("late", &["*"]));
    // At the owner, and at the other consumer (which mirrors the owner's
    // history over its link): the newest messages that fit, a gap for the
    // rest, then live messages.
    for index in [0, 1] {
        let mut events = stream(
            http_addr(&cluster, index),
            &format!("/v1/topics/{topic}/events"),
            &[auth.clone(), ("Last-Event-ID", "0:0".to_owned())],
        )
        .await;
        let subscribed = events.next(WAIT).await.unwrap();
        assert_eq!(subscribed.event, "subscribed", "consumer {index}");
        assert_eq!(subscribed.json()["recovered"], false);
        let gap = events.next(WAIT).await.unwrap();
        assert_eq!(gap.event, "gap", "{gap:?}");
        let resumed_after = gap.json()["offset"].as_u64().unwrap();
        assert!(resumed_after > 0 && resumed_after < last.1, "{gap:?}");
        let mut offset = resumed_after;
        while offset < last.1 {
            let message = events.next(WAIT).await.unwrap();
            assert_eq!(message.event, "message");
            offset += 1;
            assert_eq!(message.json()["offset"], offset);
        }
        let (_, live) = publish(&cluster, 100 + index as u64, topic, "1").await;
        let message = events.next(WAIT).await.unwrap();
        assert_eq!(message.json()["offset"], live);
        last.1 = live;
    }
    cluster.shutdown().await;
}
