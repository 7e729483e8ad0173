//! Failures stay local and every answer is true: resume at any consumer,
//! a lost owner is a per-topic notice (never a closed connection), positions
//! that do not mislead, and answers that match the spec. Each test names the
//! defect of issue 12 it covers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{Frame, Position};
use shardq_tests::raw::{Received, expect_ack, expect_error, expect_message};
use shardq_tests::{
    Cluster, PATIENCE, RawClient, http_get, metric, node_status, wait_metric, wait_ready,
};
use tokio_tungstenite::tungstenite::Message;

/// Publishes `count` messages with payloads `first..` on the owner's
/// `/v1/cluster`; their positions.
async fn publish_at_owner(
    cluster: &Cluster,
    topic: &str,
    payloads: std::ops::RangeInclusive<u64>,
) -> Vec<Position> {
    let mut publisher = cluster.cluster_client(cluster.owner(topic)).await;
    let mut positions = Vec::new();
    for payload in payloads {
        let ack = expect_ack(
            publisher
                .publish(payload, topic, &payload.to_string())
                .await,
        );
        positions.push(ack.position().unwrap());
    }
    positions
}

async fn subscribe_since(
    client: &mut RawClient,
    id: u64,
    topic: &str,
    since: Position,
) -> shardq_protocol::Ack {
    client
        .send_text(&format!(
            r#"{{"type":"subscribe","id":{id},"topic":"{topic}","since":{{"epoch":{},"offset":{}}}}}"#,
            since.epoch, since.offset
        ))
        .await;
    expect_ack(client.recv().await)
}

#[tokio::test]
async fn defect_1_a_resume_at_a_non_owner_replays_what_the_owner_holds() {
    let cluster = Cluster::builder().consumers(2).start().await;
    let topic = cluster.topic_owned_by(0);
    let positions = publish_at_owner(&cluster, topic, 1..=5).await;
    // At the edge, which has no state for the topic yet.
    let mut subscriber = cluster.subscriber(1).await;
    let ack = subscribe_since(&mut subscriber, 1, topic, positions[1]).await;
    assert_eq!(ack.recovered, Some(true), "{ack:?}");
    assert_eq!(ack.replay, Some(positions[1]));
    assert_eq!(ack.topics.unwrap()[0].offset, 5);
    for expected in 3..=5 {
        let message = expect_message(subscriber.recv().await);
        assert_eq!(message.payload.get(), expected.to_string());
        assert_eq!(message.position(), positions[expected as usize - 1]);
    }
    // Then live messages, with no duplicate in between.
    let later = publish_at_owner(&cluster, topic, 6..=6).await;
    let message = expect_message(subscriber.recv().await);
    assert_eq!(message.position(), later[0]);
    // The same answer as at the owner.
    let mut at_owner = cluster.subscriber(0).await;
    let ack = subscribe_since(&mut at_owner, 1, topic, positions[1]).await;
    assert_eq!(
        (ack.recovered, ack.replay),
        (Some(true), Some(positions[1]))
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn defect_1_an_edge_reports_what_the_owners_history_no_longer_holds() {
    let cluster = Cluster::builder()
        .consumers(2)
        .limits(|limits| limits.history_messages_per_topic = 3)
        .start()
        .await;
    let topic = cluster.topic_owned_by(0);
    let positions = publish_at_owner(&cluster, topic, 1..=6).await;
    let mut subscriber = cluster.subscriber(1).await;
    let ack = subscribe_since(&mut subscriber, 1, topic, positions[0]).await;
    // The owner holds 4..=6: 2 and 3 are missing, and the ack says so.
    assert_eq!(ack.recovered, Some(false));
    assert_eq!(ack.replay, Some(positions[2]));
    for expected in 4..=6 {
        let message = expect_message(subscriber.recv().await);
        assert_eq!(message.payload.get(), expected.to_string());
    }
    cluster.shutdown().await;
}

/// The next frame of `client` that is not a message.
async fn next_notice(client: &mut RawClient) -> Frame {
    loop {
        match client.recv().await {
            Frame::Message(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_2_an_owner_that_loses_its_history_is_a_gap_on_its_topics_only() {
    let mut cluster = Cluster::builder().consumers(2).start().await;
    let lost = cluster.topic_owned_by(0);
    let kept = cluster.topic_owned_by(1);
    let mut subscriber = cluster.subscriber(1).await;
    expect_ack(subscriber.subscribe(1, lost).await);
    expect_ack(subscriber.subscribe(2, kept).await);
    let before = publish_at_owner(&cluster, lost, 1..=2).await;
    for position in &before {
        assert_eq!(
            expect_message(subscriber.recv().await).position(),
            *position
        );
    }
    // The owner of `lost` stops (its history goes with it) and comes back.
    cluster.stop_consumer(0).await;
    match next_notice(&mut subscriber).await {
        Frame::Stalled(stalled) => {
            assert_eq!(
                (stalled.topic.as_str(), stalled.owner.as_str()),
                (lost, "consumer-0")
            );
        }
        other => panic!("expected stalled, got {}", other.encode()),
    }
    // Operators see it too: the edge topic counts as stalled.
    let status = node_status(cluster.consumers[1].admin).await;
    assert_eq!(status.stalled_topics, Some(1), "{status:?}");
    wait_metric(
        cluster.consumers[1].admin,
        "shardq_consumer_stalled_topics",
        1.0,
    )
    .await;
    cluster.restart_consumer(0).await;
    match next_notice(&mut subscriber).await {
        Frame::Resumed(resumed) => assert_eq!(resumed.topic.as_str(), lost),
        other => panic!("expected resumed, got {}", other.encode()),
    }
    let status = node_status(cluster.consumers[1].admin).await;
    assert_eq!(status.stalled_topics, Some(0), "{status:?}");
    let gap = match next_notice(&mut subscriber).await {
        Frame::Gap(gap) => gap,
        other => panic!("expected a gap, got {}", other.encode()),
    };
    assert_eq!((gap.topic.as_str(), gap.after), (lost, before[1]));
    assert_ne!(
        gap.epoch, before[1].epoch,
        "the owner restarted in a new epoch"
    );
    // A resume at this edge from inside the lost epoch answers as the
    // owner does: not recovered, from the new epoch (the edge still holds
    // the old epoch's messages, but not that it ended there).
    let mut resumer = cluster.subscriber(1).await;
    let resumed = subscribe_since(&mut resumer, 9, lost, before[0]).await;
    assert_eq!(resumed.recovered, Some(false), "{resumed:?}");
    assert_eq!(
        resumed.replay,
        Some(Position {
            epoch: gap.epoch,
            offset: gap.offset
        })
    );
    // The connection stayed, and both topics flow.
    let after = publish_at_owner(&cluster, lost, 3..=3).await;
    let message = expect_message(subscriber.recv().await);
    assert_eq!(message.position(), after[0]);
    assert_eq!(
        (after[0].epoch, after[0].offset),
        (gap.epoch, gap.offset + 1)
    );
    let other = publish_at_owner(&cluster, kept, 4..=4).await;
    assert_eq!(expect_message(subscriber.recv().await).position(), other[0]);
    let (_, body) = http_get(cluster.consumers[1].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_consumer_gaps_reported_total"),
        Some(1.0),
        "{body}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn defect_9_positions_that_do_not_mislead() {
    let cluster = Cluster::builder().start().await;
    let topic = "files/save";
    // An empty topic keeps its epoch across subscribes.
    let mut subscriber = cluster.subscriber(0).await;
    let first = expect_ack(subscriber.subscribe(1, topic).await)
        .topics
        .unwrap()[0]
        .epoch;
    expect_ack(subscriber.unsubscribe(2, topic).await);
    let mut again = cluster.subscriber(0).await;
    let second = expect_ack(again.subscribe(1, topic).await).topics.unwrap()[0].epoch;
    assert_eq!(
        first, second,
        "an empty topic changed epoch between subscribes"
    );
    let positions = publish_at_owner(&cluster, topic, 1..=2).await;
    assert_eq!(positions[0].epoch, first);
    // `since` beyond the latest position: never reached, so not recovered.
    let mut resumer = cluster.subscriber(0).await;
    let beyond = Position {
        epoch: first,
        offset: 10,
    };
    let ack = subscribe_since(&mut resumer, 1, topic, beyond).await;
    assert_eq!(ack.recovered, Some(false));
    assert_eq!(ack.replay, Some(positions[1]));
    // `since` with epoch 0 takes offset 0 only.
    resumer
        .send_text(
            r#"{"type":"subscribe","id":9,"topic":"files/error","since":{"epoch":0,"offset":5}}"#,
        )
        .await;
    let error = expect_error(resumer.recv().await, "bad_frame");
    assert_eq!(error.id, Some(9));
    cluster.shutdown().await;
}

#[tokio::test]
async fn defect_10_every_error_to_a_request_with_an_id_carries_it() {
    let cluster = Cluster::builder().producers(1).start().await;
    let mut publisher = cluster.publisher(0).await;
    publisher
        .send_text(r#"{"type":"subscribe","id":41,"topic":"files/save"}"#)
        .await;
    let error = expect_error(publisher.recv().await, "not_authorized");
    assert_eq!(error.id, Some(41));
    for client in [&mut publisher, &mut cluster.subscriber(0).await] {
        client.send_text(r#"{"type":"nope","id":17}"#).await;
        assert_eq!(expect_error(client.recv().await, "bad_frame").id, Some(17));
        client.send_text(r#"{"id":18}"#).await;
        assert_eq!(expect_error(client.recv().await, "bad_frame").id, Some(18));
        // A frame only a node sends is not accepted from a client (§2),
        // and its id, though not a field of that frame, is named.
        for frame in [
            r#"{"type":"message","id":45,"topic":"a/b","epoch":1,"offset":1,"payload":1}"#,
            r#"{"type":"moved","id":47,"topic":"a/b","epoch":1,"offset":1,"owner":"c"}"#,
            r#"{"type":"resumed","id":48,"topic":"a/b"}"#,
        ] {
            client.send_text(frame).await;
            let error = expect_error(client.recv().await, "not_authorized");
            assert!(
                error
                    .id
                    .is_some_and(|id| frame.contains(&format!(r#""id":{id},"#))),
                "{frame}: {error:?}"
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn defect_10_handshake_errors_concern_the_connection_and_carry_no_id() {
    let cluster = Cluster::builder().start().await;
    for frame in [
        r#"{"type":"zzz","id":3}"#,
        r#"{"type":"publish","id":3,"topic":"a/b","payload":1}"#,
    ] {
        let mut socket =
            shardq_tests::raw::websocket(&cluster.consumers[0].url("/v1/subscribe")).await;
        let _hello = socket.next().await.unwrap().unwrap();
        socket.send(Message::text(frame)).await.unwrap();
        let mut client = RawClient {
            socket,
            server: String::new(),
        };
        let error = expect_error(client.recv().await, "bad_frame");
        assert_eq!(error.id, None, "{frame}");
        assert_eq!(client.closed().await, Some(4003), "{frame}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn defect_10_a_bad_nonce_is_auth_failed_and_4001() {
    let cluster = Cluster::builder().start().await;
    let mut socket = shardq_tests::raw::websocket(&cluster.consumers[0].url("/v1/subscribe")).await;
    let _hello = socket.next().await.unwrap().unwrap();
    socket
        .send(Message::text(
            r#"{"type":"auth","nonce":"zz","proof":"00"}"#,
        ))
        .await
        .unwrap();
    let mut client = RawClient {
        socket,
        server: String::new(),
    };
    expect_error(client.recv().await, "auth_failed");
    assert_eq!(client.closed().await, Some(4001));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_10_a_slow_consumer_reads_whole_frames_then_4008() {
    let cluster = Cluster::builder()
        .limits(|limits| limits.subscriber_buffer_bytes = 256 << 10)
        .start()
        .await;
    let mut stalled = cluster.subscriber(0).await;
    expect_ack(stalled.subscribe(1, "files/save").await);
    let mut producer = cluster.cluster_client(0).await;
    let payload = format!("\"{}\"", "s".repeat(30_000));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut id = 0;
    // Publish until the consumer cuts the subscriber that does not read.
    loop {
        id += 1;
        expect_ack(producer.publish(id, "files/save", &payload).await);
        if id % 16 == 0 {
            let (_, body) = http_get(cluster.consumers[0].admin, "/metrics").await;
            if metric(&body, "shardq_consumer_slow_consumer_disconnects_total") == Some(1.0) {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never cut");
    }
    // What it reads now: whole messages, then the 4008 close; never a
    // frame cut short or a bare EOF.
    let mut messages = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.recv_raw())
            .await
            .unwrap()
        {
            Received::Frame(text) => {
                assert!(text.starts_with(r#"{"type":"message""#), "{text:.80}");
                messages += 1;
            }
            Received::Close(code) => {
                assert_eq!(code, Some(4008));
                break;
            }
            Received::Eof => panic!("EOF instead of the 4008 close after {messages} messages"),
        }
    }
    assert!(messages < id, "the stalled subscriber was not cut");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_8_a_payload_at_the_limit_goes_through_an_edge_and_one_byte_over_is_refused_alone() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let limit = cluster.config.limits.max_payload_bytes();
    let topic = cluster.topic_owned_by(0);
    let mut at_edge = cluster.subscriber(1).await;
    expect_ack(at_edge.subscribe(1, topic).await);
    let mut publisher = cluster.publisher(0).await;
    // A JSON string of exactly `limit` bytes, quotes included.
    let at_limit = format!("\"{}\"", "l".repeat(limit - 2));
    let ack = expect_ack(publisher.publish(1, topic, &at_limit).await);
    let message = expect_message(at_edge.recv().await);
    assert_eq!(message.position(), ack.position().unwrap());
    assert_eq!(message.payload.get().len(), limit);
    // One byte over: refused to that publish alone, with its id.
    let over = format!("\"{}\"", "o".repeat(limit - 1));
    let error = expect_error(
        publisher.publish(2, topic, &over).await,
        "payload_too_large",
    );
    assert_eq!(error.id, Some(2));
    // Nothing broke: the same connection and the links carry on.
    let ack = expect_ack(publisher.publish(3, topic, "3").await);
    assert_eq!(
        expect_message(at_edge.recv().await).position(),
        ack.position().unwrap()
    );
    // A node-to-node publisher is held to the same limit.
    let mut link = cluster.cluster_client(0).await;
    expect_error(link.publish(4, topic, &over).await, "payload_too_large");
    for node in [cluster.producers[0].admin, cluster.consumers[1].admin] {
        let (_, body) = http_get(node, "/metrics").await;
        assert_eq!(
            metric(&body, "shardq_producer_link_reconnects_total")
                .or(metric(&body, "shardq_consumer_peer_link_reconnects_total"))
                .unwrap_or(0.0),
            0.0,
            "a link broke: {body}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_6_a_consumer_that_comes_back_is_reached_within_a_second() {
    let mut cluster = Cluster::builder().consumers(2).producers(1).start().await;
    cluster.stop_consumer(1).await;
    // Long enough that a growing backoff would be seconds by now.
    wait_ready(cluster.producers[0].admin, |readiness| {
        readiness
            .links
            .iter()
            .find(|link| link.id == "consumer-1")
            .and_then(|link| link.down_for_ms)
            .is_some_and(|down_for| down_for >= 4_000)
    })
    .await;
    cluster.restart_consumer(1).await;
    let back = tokio::time::Instant::now();
    cluster.wait_links(0, 2).await;
    let took = back.elapsed();
    println!("reached {took:?} after the restart");
    assert!(
        took < Duration::from_millis(1500),
        "the producer reached the consumer {took:?} after it came back"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_epochs_history_and_keys_so_nothing_is_a_gap() {
    let mut cluster = Cluster::builder().consumers(2).data_dirs().start().await;
    let topic = cluster.topic_owned_by(0);
    let mut at_edge = cluster.subscriber(1).await;
    expect_ack(at_edge.subscribe(1, topic).await);
    let mut owner_link = cluster.cluster_client(0).await;
    owner_link
        .send_text(&format!(
            r#"{{"type":"publish","id":1,"topic":"{topic}","key":"once","payload":1}}"#
        ))
        .await;
    let first = expect_ack(owner_link.recv().await).position().unwrap();
    let before = publish_at_owner(&cluster, topic, 2..=3).await;
    for expected in [first, before[0], before[1]] {
        assert_eq!(expect_message(at_edge.recv().await).position(), expected);
    }
    // A rolling restart of the owner: SIGTERM, then start again.
    cluster.stop_consumer(0).await;
    assert!(matches!(next_notice(&mut at_edge).await, Frame::Stalled(_)));
    cluster.restart_consumer(0).await;
    // The edge resumes where it was: no gap.
    assert!(matches!(next_notice(&mut at_edge).await, Frame::Resumed(_)));
    let after = publish_at_owner(&cluster, topic, 4..=4).await;
    assert_eq!(
        after[0].epoch, first.epoch,
        "the epoch survived the restart"
    );
    assert_eq!(after[0].offset, 4);
    let message = expect_message(at_edge.recv().await);
    assert_eq!(message.position(), after[0], "a gap or a notice came first");
    // Resumes are recovered at the owner and at the edge alike.
    for consumer in [0, 1] {
        let mut resumer = cluster.subscriber(consumer).await;
        let ack = subscribe_since(&mut resumer, 1, topic, first).await;
        assert_eq!(ack.recovered, Some(true), "at consumer {consumer}: {ack:?}");
        for expected in [before[0], before[1], after[0]] {
            assert_eq!(expect_message(resumer.recv().await).position(), expected);
        }
    }
    // The key is still remembered: a retry is not sequenced twice.
    let mut owner_link = cluster.cluster_client(0).await;
    owner_link
        .send_text(&format!(
            r#"{{"type":"publish","id":9,"topic":"{topic}","key":"once","payload":1}}"#
        ))
        .await;
    let retry = expect_ack(owner_link.recv().await);
    assert_eq!((retry.position(), retry.duplicate), (Some(first), true));
    let (_, body) = http_get(cluster.consumers[1].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_consumer_gaps_reported_total"),
        Some(0.0),
        "{body}"
    );
    cluster.shutdown().await;
}

/// Forwards every connection made to `front` to `target`, except the
/// first, which it accepts and then holds without a word.
async fn swallow_first_connection(front: tokio::net::TcpListener, target: std::net::SocketAddr) {
    let (_held, _) = front.accept().await.unwrap();
    loop {
        let Ok((mut client, _)) = front.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_6_a_dial_that_hangs_does_not_hold_the_next_one_back() {
    // A dial into a partition or a stuck name lookup hangs until its
    // timeout; here that is longer than the test's patience, so the link
    // comes up only if the next dial starts beside the hung one.
    let mut cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .limits(|limits| limits.handshake_timeout_ms = 10 * PATIENCE.as_millis() as u64)
        .start()
        .await;
    cluster.stop_producer(0).await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("ws://{}", front.local_addr().unwrap());
    tokio::spawn(swallow_first_connection(front, cluster.consumers[1].addr));
    cluster.config.consumers[1].url = front_url;
    cluster.restart_producer(0).await;
    // Both links up, the one to consumer-1 despite its hung first dial.
    cluster.wait_links(0, 2).await;
    cluster.shutdown().await;
}
