//! A consumer in-process on port 0, driven over real WebSockets.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::SinkExt;
use shardq_protocol::{Frame, Position, Psk, QueueConfig};
use shardq_tests::raw::{LegacyFailure, expect_ack, expect_error, expect_message};
use shardq_tests::{Cluster, LegacyClient, RawClient, http_get, metric};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn publish_on_cluster_arrives_on_subscribe() {
    let cluster = Cluster::builder().start().await;
    let mut subscriber = cluster.subscriber(0).await;
    assert_eq!(subscriber.server, "consumer-0");
    let ack = expect_ack(subscriber.subscribe(1, "database/create").await);
    let topics = ack.topics.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].offset, 0);

    let mut producer = cluster.cluster_client(0).await;
    let ack = expect_ack(
        producer
            .publish(7, "database/create", r#"{"id":99,"name":"John"}"#)
            .await,
    );
    assert_eq!(ack.id, 7);
    assert_eq!(
        ack.position(),
        Some(Position {
            epoch: topics[0].epoch,
            offset: 1
        })
    );

    let message = expect_message(subscriber.recv().await);
    assert_eq!(message.topic.as_str(), "database/create");
    assert_eq!(message.payload.get(), r#"{"id":99,"name":"John"}"#);
    assert_eq!(message.position(), ack.position().unwrap());
    cluster.shutdown().await;
}

#[tokio::test]
async fn two_subscriptions_on_one_connection_and_wildcards() {
    let cluster = Cluster::builder().start().await;
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "database/create").await);
    let files = expect_ack(subscriber.subscribe(2, "files/*").await);
    let names: Vec<_> = files
        .topics
        .unwrap()
        .iter()
        .map(|t| t.topic.to_string())
        .collect();
    assert_eq!(names, ["files/error", "files/save"]);
    expect_error(
        subscriber.subscribe(3, "files/save").await,
        "already_subscribed",
    );

    let mut producer = cluster.cluster_client(0).await;
    for (id, topic) in [
        (1, "files/save"),
        (2, "database/update"),
        (3, "database/create"),
    ] {
        expect_ack(producer.publish(id, topic, &format!("\"{topic}\"")).await);
    }
    // database/update is not subscribed: exactly two messages, in order.
    assert_eq!(
        expect_message(subscriber.recv().await).topic.as_str(),
        "files/save"
    );
    assert_eq!(
        expect_message(subscriber.recv().await).topic.as_str(),
        "database/create"
    );

    subscriber
        .send_text(r#"{"type":"unsubscribe","id":9,"topic":"files/save"}"#)
        .await;
    assert_eq!(expect_ack(subscriber.recv().await).id, 9);
    expect_ack(producer.publish(4, "files/save", "1").await);
    expect_ack(producer.publish(5, "files/error", "2").await);
    assert_eq!(
        expect_message(subscriber.recv().await).topic.as_str(),
        "files/error"
    );
    subscriber
        .send_text(r#"{"type":"unsubscribe","id":10,"topic":"files/save"}"#)
        .await;
    expect_error(subscriber.recv().await, "not_subscribed");
    cluster.shutdown().await;
}

#[tokio::test]
async fn unknown_queue_event_and_bad_frames_are_answered() {
    let cluster = Cluster::builder().start().await;
    let mut subscriber = cluster.subscriber(0).await;
    let error = expect_error(
        subscriber.subscribe(1, "network/attack").await,
        "unknown_queue",
    );
    assert_eq!(error.id, Some(1));
    let error = expect_error(
        subscriber.subscribe(2, "files/delete").await,
        "unknown_event",
    );
    assert_eq!(error.id, Some(2));
    expect_error(subscriber.subscribe(3, "files").await, "bad_topic");
    subscriber.send_text("not json").await;
    expect_error(subscriber.recv().await, "bad_frame");
    // Publishing is for /v1/cluster (producers), not /v1/subscribe.
    expect_error(
        subscriber.publish(4, "files/save", "1").await,
        "not_authorized",
    );
    let mut producer = cluster.cluster_client(0).await;
    expect_error(
        producer.publish(5, "files/delete", "1").await,
        "unknown_event",
    );
    // The connection is still usable.
    expect_ack(subscriber.subscribe(6, "files/save").await);
    cluster.shutdown().await;
}

#[tokio::test]
async fn wrong_psk_is_refused_on_both_endpoints() {
    let cluster = Cluster::builder().start().await;
    let wrong = Psk::new("definitely-not-the-psk").unwrap();
    for path in ["/v1/subscribe", "/v1/cluster"] {
        let error = RawClient::connect(&cluster.consumers[0].url(path), &wrong)
            .await
            .err()
            .expect("a wrong psk must be refused");
        assert!(error.is_auth_failure(), "{path}: {error}");
    }
    let (_, body) = http_get(cluster.consumers[0].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_consumer_auth_failures_total"),
        Some(2.0)
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_handshake_timeout() {
    let cluster = Cluster::builder()
        .limits(|limits| limits.handshake_timeout_ms = 300)
        .start()
        .await;
    let mut socket = shardq_tests::raw::websocket(&cluster.consumers[0].url("/v1/subscribe")).await;
    let mut silent = RawClient {
        socket: {
            // Read the hello, then say nothing.
            use futures_util::StreamExt;
            let hello = socket.next().await.unwrap().unwrap();
            assert!(hello.to_text().unwrap().contains(r#""type":"hello""#));
            socket
        },
        server: String::new(),
    };
    assert_eq!(silent.closed().await, Some(4002));

    // A TCP connection that never even upgrades is dropped too.
    let mut tcp = tokio::net::TcpStream::connect(cluster.consumers[0].addr)
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(shardq_tests::PATIENCE, tcp.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let cluster = Cluster::builder()
        .limits(|limits| limits.max_frame_bytes = 64 << 10)
        .start()
        .await;
    // Before the handshake: more than 4 KiB.
    let mut socket = shardq_tests::raw::websocket(&cluster.consumers[0].url("/v1/subscribe")).await;
    socket.send(Message::text("x".repeat(5000))).await.unwrap();
    let mut early = RawClient {
        socket,
        server: String::new(),
    };
    assert_eq!(early.closed().await, Some(1009));

    // After it: more than max_frame_bytes.
    let mut producer = cluster.cluster_client(0).await;
    let big = format!("\"{}\"", "y".repeat(70 << 10));
    producer
        .send_text(&format!(
            r#"{{"type":"publish","id":1,"topic":"files/save","payload":{big}}}"#
        ))
        .await;
    assert_eq!(producer.closed().await, Some(1009));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_while_a_fast_one_gets_everything() {
    const MESSAGES: u64 = 20_000;
    let cluster = Cluster::builder()
        .limits(|limits| limits.subscriber_buffer_bytes = 256 << 10)
        .start()
        .await;
    // The stalled subscriber: authenticates, subscribes, then never reads.
    let mut stalled = cluster.subscriber(0).await;
    expect_ack(stalled.subscribe(1, "files/save").await);
    let mut fast = cluster.subscriber(0).await;
    expect_ack(fast.subscribe(1, "files/save").await);

    let mut producer = cluster.cluster_client(0).await;
    let payload = format!("\"{}\"", "p".repeat(1000));
    // The publisher stays at most 64 messages ahead of the fast subscriber,
    // so only a subscriber that does not read at all can fall behind.
    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let publisher = tokio::spawn(async move {
        for id in 1..=MESSAGES {
            while id > progress.load(Ordering::Acquire) + 64 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            producer
                .send_text(&format!(
                    r#"{{"type":"publish","id":{id},"topic":"files/save","payload":{payload}}}"#
                ))
                .await;
            expect_ack(producer.recv().await);
        }
        producer
    });
    for offset in 1..=MESSAGES {
        let message = expect_message(fast.recv().await);
        assert_eq!(
            message.offset, offset,
            "fast subscriber lost or reordered a message"
        );
        received.store(offset, Ordering::Release);
    }
    publisher.await.unwrap();
    let (_, body) = http_get(cluster.consumers[0].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_consumer_slow_consumer_disconnects_total"),
        Some(1.0),
        "{body}"
    );
    // The stalled one finds its connection gone once it reads again.
    let mut received = 0;
    loop {
        match stalled.recv_raw().await {
            shardq_tests::raw::Received::Frame(_) => received += 1,
            shardq_tests::raw::Received::Close(code) => {
                assert_eq!(code, Some(4008));
                break;
            }
            shardq_tests::raw::Received::Eof => break,
        }
    }
    assert!(received < MESSAGES, "the stalled subscriber was not cut");
    cluster.shutdown().await;
}

#[tokio::test]
async fn resume_gets_exactly_the_missed_messages() {
    let cluster = Cluster::builder()
        .limits(|limits| limits.history_messages_per_topic = 10)
        .start()
        .await;
    let mut producer = cluster.cluster_client(0).await;
    let mut positions = Vec::new();
    for i in 1..=5 {
        let ack = expect_ack(producer.publish(i, "database/update", &i.to_string()).await);
        positions.push(ack.position().unwrap());
    }
    // Received up to offset 2, then disconnected: resume gets 3, 4, 5.
    let mut subscriber = cluster.subscriber(0).await;
    subscriber
        .send(&Frame::Subscribe(shardq_protocol::Subscribe {
            id: 1,
            topic: shardq_protocol::TopicFilter::parse("database/update").unwrap(),
            since: Some(positions[1]),
            group: None,
        }))
        .await;
    let ack = expect_ack(subscriber.recv().await);
    assert_eq!(ack.recovered, Some(true));
    for expected in 3..=5 {
        let message = expect_message(subscriber.recv().await);
        assert_eq!(message.offset, expected);
        assert_eq!(message.payload.get(), expected.to_string());
    }
    // Then live, with no gap and no duplicate.
    expect_ack(producer.publish(6, "database/update", "6").await);
    assert_eq!(expect_message(subscriber.recv().await).offset, 6);

    // Past the ring (10 messages): what is left, and recovered: false.
    for i in 7..=30 {
        expect_ack(producer.publish(i, "database/update", &i.to_string()).await);
    }
    let mut late = cluster.subscriber(0).await;
    late.send_text(&format!(
        r#"{{"type":"subscribe","id":1,"topic":"database/update","since":{{"epoch":{},"offset":2}}}}"#,
        positions[0].epoch
    ))
    .await;
    let ack = expect_ack(late.recv().await);
    assert_eq!(ack.recovered, Some(false));
    let first = expect_message(late.recv().await);
    assert_eq!(first.offset, 21, "the ring holds the last 10 of 30");
    cluster.shutdown().await;
}

#[tokio::test]
async fn legacy_producer_and_subscriber_round_trip() {
    let mut queues = shardq_tests::seed_queues();
    queues.set_open_topics(true);
    let cluster = Cluster::builder().queues(queues).start().await;
    let consumer = &cluster.consumers[0];
    let mut subscriber = LegacyClient::connect(&consumer.url("/subscribe/topic3"), &cluster.psk)
        .await
        .unwrap();
    let mut slashed = LegacyClient::connect(&consumer.url("/subscribe/files%2Fsave"), &cluster.psk)
        .await
        .unwrap();
    // A shardq/1 subscriber sees legacy topics under the queue "legacy".
    let mut modern = cluster.subscriber(0).await;
    expect_ack(modern.subscribe(1, "legacy/topic3").await);

    let mut producer = LegacyClient::connect(&consumer.url("/producer"), &cluster.psk)
        .await
        .unwrap();
    producer.send_message("topic3", "4f2a").await;
    producer.send_message("files/save", "saved").await;
    assert_eq!(
        subscriber.recv_message().await,
        ("topic3".into(), "4f2a".into())
    );
    assert_eq!(
        slashed.recv_message().await,
        ("files/save".into(), "saved".into())
    );
    let message = expect_message(modern.recv().await);
    assert_eq!(message.payload.get(), "\"4f2a\"");

    // shardq/1 payloads reach legacy subscribers as JSON text.
    let mut publisher = cluster.cluster_client(0).await;
    expect_ack(publisher.publish(1, "legacy/topic3", r#"{"id":1}"#).await);
    assert_eq!(
        subscriber.recv_message().await,
        ("topic3".into(), r#"{"id":1}"#.into())
    );

    // A wrong psk gets a decoy answer (the origin client reports an error).
    let wrong = Psk::new("definitely-not-the-psk").unwrap();
    let failure = LegacyClient::connect(&consumer.url("/producer"), &wrong)
        .await
        .err();
    assert_eq!(failure, Some(LegacyFailure::BadAnswer));
    cluster.shutdown().await;
}

#[tokio::test]
async fn legacy_subscriber_with_a_refused_topic_is_closed_4004() {
    let cluster = Cluster::builder().queues(QueueConfig::new()).start().await;
    let mut client =
        LegacyClient::connect(&cluster.consumers[0].url("/subscribe/topic1"), &cluster.psk)
            .await
            .unwrap();
    assert_eq!(client.closed().await, Some(4004));
    cluster.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_health_answers() {
    let cluster = Cluster::builder().start().await;
    let error = tokio_tungstenite::connect_async(cluster.consumers[0].url("/nope"))
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("404"), "{error}");
    let (status, body) = http_get(cluster.consumers[0].admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    cluster.shutdown().await;
}

/// Sends `request` on a fresh socket; what the node answers until it stops
/// sending for a moment (or closes).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        socket.read(&mut chunk),
    )
    .await
    {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    received
}

fn upgrade_request(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

#[tokio::test]
async fn upgrades_are_checked_and_frames_sent_with_the_request_are_kept() {
    let cluster = Cluster::builder().start().await;
    let addr = cluster.consumers[0].addr;
    let status = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };

    let plain = raw_exchange(addr, b"GET /v1/subscribe HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(status(&plain), "HTTP/1.1 400 Bad Request");
    let post = raw_exchange(addr, b"POST /v1/subscribe HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(status(&post), "HTTP/1.1 400 Bad Request");
    let old = raw_exchange(addr, upgrade_request("/v1/subscribe", "8").as_bytes()).await;
    assert_eq!(status(&old), "HTTP/1.1 426 Upgrade Required");
    assert!(String::from_utf8_lossy(&old).contains("Sec-WebSocket-Version: 13\r\n"));
    let nowhere = raw_exchange(addr, upgrade_request("/nope?x=1", "13").as_bytes()).await;
    assert_eq!(status(&nowhere), "HTTP/1.1 404 Not Found");
    assert!(String::from_utf8_lossy(&nowhere).ends_with("no endpoint at /nope\n"));
    let huge = format!(
        "GET /v1/subscribe HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(
        status(&raw_exchange(addr, huge.as_bytes()).await),
        "HTTP/1.1 400 Bad Request"
    );

    // The upgrade and a masked ping in one write: the ping is not lost
    // with the request head, and the pong echoes its payload.
    let mut request = upgrade_request("/v1/subscribe", "13").into_bytes();
    request.extend_from_slice(&[0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    let answer = raw_exchange(addr, &request).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    // RFC 6455's own example key and accept value.
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let frames = &answer[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        frames.windows(4).any(|w| w == [0x8a, 2, b'h', b'i']),
        "no pong in {frames:02x?}"
    );

    // An unmasked client frame breaks RFC 6455: closed with 4003.
    let mut request = upgrade_request("/v1/subscribe", "13").into_bytes();
    request.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    let answer = raw_exchange(addr, &request).await;
    let at = String::from_utf8_lossy(&answer).find("\r\n\r\n").unwrap() + 4;
    let close_4003 = [0x88, 0x10, 0x0f, 0xa3];
    assert!(
        answer[at..].windows(4).any(|w| w == close_4003),
        "no 4003 close in {:02x?}",
        &answer[at..]
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn binary_messages_get_bad_frame_and_the_connection_stays_open() {
    let cluster = Cluster::builder().start().await;
    let mut subscriber = cluster.subscriber(0).await;
    subscriber
        .socket
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    let error = expect_error(subscriber.recv().await, "bad_frame");
    assert!(error.message.contains("binary"), "{}", error.message);
    expect_ack(subscriber.subscribe(1, "files/save").await);
    cluster.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let mut cluster = Cluster::builder().start().await;
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "files/save").await);
    cluster.stop_consumer(0).await;
    assert_eq!(subscriber.closed().await, Some(1001));
    // And it comes back on the same port.
    cluster.restart_consumer(0).await;
    let mut again = cluster.subscriber(0).await;
    expect_ack(again.subscribe(1, "files/save").await);
    cluster.shutdown().await;
}

#[tokio::test]
async fn metrics_count_the_traffic() {
    let cluster = Cluster::builder().start().await;
    let mut a = cluster.subscriber(0).await;
    let mut b = cluster.subscriber(0).await;
    expect_ack(a.subscribe(1, "files/save").await);
    expect_ack(b.subscribe(1, "files/save").await);
    let mut producer = cluster.cluster_client(0).await;
    for id in 1..=3 {
        expect_ack(producer.publish(id, "files/save", "1").await);
    }
    for client in [&mut a, &mut b] {
        for _ in 0..3 {
            expect_message(client.recv().await);
        }
    }
    let (_, body) = http_get(cluster.consumers[0].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_consumer_messages_in_total"),
        Some(3.0)
    );
    assert_eq!(
        metric(&body, "shardq_consumer_messages_out_total"),
        Some(6.0)
    );
    assert_eq!(metric(&body, "shardq_consumer_subscriptions"), Some(2.0));
    assert_eq!(metric(&body, "shardq_consumer_topics"), Some(1.0));
    assert!(metric(&body, "shardq_consumer_history_bytes").unwrap() > 0.0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_4009() {
    let cluster = Cluster::builder()
        .limits(|limits| limits.ping_interval_ms = 100)
        .start()
        .await;
    let mut quiet = cluster.subscriber(0).await;
    expect_ack(quiet.subscribe(1, "files/save").await);
    // Take the bare socket: nothing answers the node's pings any more.
    let tokio_util::either::Either::Left(mut tcp) = quiet.socket.into_inner() else {
        panic!("plain TCP expected")
    };
    let mut received = Vec::new();
    tokio::time::timeout(shardq_tests::PATIENCE, tcp.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    // Pings (0x89 0x00), then the close frame with code 4009.
    let close = [0x88, 14, 0x0f, 0xa9];
    assert!(
        received.windows(4).any(|window| window == close),
        "no 4009 close frame in {received:02x?}"
    );
    assert!(received.starts_with(&[0x89, 0x00]), "{received:02x?}");
    // A client that keeps reading stays connected across many intervals.
    let mut lively = cluster.subscriber(0).await;
    let reader = tokio::spawn(async move {
        let frame = lively.recv().await;
        (lively, frame)
    });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let mut producer = cluster.cluster_client(0).await;
    expect_ack(producer.publish(1, "files/save", "1").await);
    assert!(!reader.is_finished(), "the lively client was closed");
    reader.abort();
    cluster.shutdown().await;
}
