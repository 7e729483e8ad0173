//! Producers and consumers in-process on port 0, over real WebSockets.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use shardq_protocol::status::Readiness;
use shardq_protocol::{Frame, Psk};
use shardq_tests::raw::{Received, expect_ack, expect_error, expect_message};
use shardq_tests::{
    Cluster, LegacyClient, PATIENCE, RawClient, http_get, metric, node_status, wait_metric,
};
use tokio::net::TcpListener;

fn open_queues() -> shardq_protocol::QueueConfig {
    let mut queues = shardq_tests::seed_queues();
    queues.set_open_topics(true);
    queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_topic_lands_at_its_owner_and_nowhere_else() {
    let cluster = Cluster::builder()
        .consumers(3)
        .producers(1)
        .queues(open_queues())
        .start()
        .await;
    let topics: Vec<String> = (0..200).map(|i| format!("spread/t{i}")).collect();
    // One subscriber per consumer, subscribed at it to the topics it owns.
    let mut subscribers = Vec::new();
    for consumer in 0..3 {
        let mut subscriber = cluster.subscriber(consumer).await;
        for (id, topic) in topics.iter().enumerate() {
            if cluster.owner(topic) == consumer {
                expect_ack(subscriber.subscribe(id as u64, topic).await);
            }
        }
        subscribers.push(subscriber);
    }
    let mut publisher = cluster.publisher(0).await;
    let mut acks = BTreeMap::new();
    for (id, topic) in topics.iter().enumerate() {
        let ack = expect_ack(
            publisher
                .publish(id as u64, topic, &format!("\"{topic}\""))
                .await,
        );
        acks.insert(topic.clone(), ack.position().unwrap());
    }
    for (consumer, subscriber) in subscribers.iter_mut().enumerate() {
        let owned: BTreeSet<&String> = topics
            .iter()
            .filter(|t| cluster.owner(t) == consumer)
            .collect();
        assert!(
            !owned.is_empty(),
            "consumer {consumer} owns none of 200 topics"
        );
        let mut received = BTreeSet::new();
        for _ in 0..owned.len() {
            let message = expect_message(subscriber.recv().await);
            let topic = message.topic.to_string();
            // The ack carried the position the owner gave the message.
            assert_eq!(acks[&topic], message.position());
            assert_eq!(message.payload.get(), format!("\"{topic}\""));
            received.insert(topic);
        }
        let owned: BTreeSet<String> = owned.into_iter().cloned().collect();
        assert_eq!(
            received, owned,
            "consumer {consumer} got topics it does not own"
        );
        let (_, body) = http_get(cluster.consumers[consumer].admin, "/metrics").await;
        assert_eq!(
            metric(&body, "shardq_consumer_messages_in_total"),
            Some(owned.len() as f64),
            "consumer {consumer} sequenced messages it does not own"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_the_id_and_code() {
    let cluster = Cluster::builder().producers(1).start().await;
    let mut publisher = cluster.publisher(0).await;
    let error = expect_error(
        publisher.publish(9, "files/delete", "1").await,
        "unknown_event",
    );
    assert_eq!(error.id, Some(9));
    let error = expect_error(
        publisher.publish(10, "network/attack", "1").await,
        "unknown_queue",
    );
    assert_eq!(error.id, Some(10));
    expect_error(publisher.publish(11, "bad topic", "1").await, "bad_topic");
    publisher
        .send_text(r#"{"type":"publish","id":12,"topic":"files/save"}"#)
        .await;
    let error = expect_error(publisher.recv().await, "bad_frame");
    assert_eq!(error.id, Some(12));
    publisher
        .send_text(r#"{"type":"subscribe","id":13,"topic":"files/save"}"#)
        .await;
    expect_error(publisher.recv().await, "not_authorized");
    // Still usable.
    expect_ack(publisher.publish(14, "files/save", r#"{"ok":true}"#).await);
    let (_, body) = http_get(cluster.producers[0].admin, "/metrics").await;
    assert_eq!(metric(&body, "shardq_producer_acked_total"), Some(1.0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_pass_through_byte_for_byte_whatever_their_size_or_form() {
    let cluster = Cluster::builder().producers(1).start().await;
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "files/save").await);
    let mut publisher = cluster.publisher(0).await;
    let large = format!("\"{}\"", "L".repeat(900 << 10));
    let payloads = [
        large.as_str(),
        r#"{"name": "Jos\u00e9 \"J\" é", "n": [1, 2.5e3, null, true]}"#,
        "  [ ]  ",
    ];
    // The canonical form (read in place) and another field order with
    // spaces (decoded in full) for each payload.
    let mut id = 0;
    for payload in payloads {
        for canonical in [true, false] {
            id += 1;
            let frame = if canonical {
                format!(
                    r#"{{"type":"publish","id":{id},"topic":"files/save","payload":{payload}}}"#
                )
            } else {
                format!(
                    r#"{{ "payload" : {payload}, "topic" : "files/save", "id" : {id}, "type" : "publish" }}"#
                )
            };
            publisher.send_text(&frame).await;
            expect_ack(publisher.recv().await);
            let message = expect_message(subscriber.recv().await);
            // Nodes keep the payload's bytes; only the padding outside a
            // top-level value is JSON whitespace, which a raw value drops.
            assert_eq!(message.payload.get(), payload.trim(), "id {id}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn wrong_psk_is_refused() {
    let cluster = Cluster::builder().producers(1).start().await;
    let wrong = Psk::new("definitely-not-the-psk").unwrap();
    let error = RawClient::connect(&cluster.producers[0].url("/v1/publish"), &wrong)
        .await
        .err()
        .unwrap();
    assert!(error.is_auth_failure(), "{error}");
    let legacy = LegacyClient::connect(&cluster.producers[0].url("/produce"), &wrong).await;
    assert!(legacy.is_err());
    let (_, body) = http_get(cluster.producers[0].admin, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_producer_auth_failures_total"),
        Some(2.0)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_consumer_fails_fast_and_recovers_without_a_producer_restart() {
    let mut cluster = Cluster::builder()
        .consumers(3)
        .producers(1)
        .queues(open_queues())
        .start()
        .await;
    let topics: Vec<String> = (0..30).map(|i| format!("avail/t{i}")).collect();
    let down = 1;
    cluster.stop_consumer(down).await;
    cluster.wait_links(0, 2).await;
    let (status, body) = http_get(cluster.producers[0].admin, "/readyz").await;
    assert_eq!(status, 200, "two links up is ready: {body}");
    assert!(body.contains(r#""state":"down""#), "{body}");

    let mut publisher = cluster.publisher(0).await;
    for (id, topic) in topics.iter().enumerate() {
        let answer = publisher.publish(id as u64, topic, "1").await;
        if cluster.owner(topic) == down {
            let error = expect_error(answer, "unavailable");
            assert!(error.message.contains("consumer-1"), "{}", error.message);
        } else {
            expect_ack(answer);
        }
    }
    // Back on the same port: its topics flow again, same producer process.
    cluster.restart_consumer(down).await;
    cluster.wait_links(0, 3).await;
    let mut subscriber = cluster.subscriber(down).await;
    let topic = topics.iter().find(|t| cluster.owner(t) == down).unwrap();
    expect_ack(subscriber.subscribe(1, topic).await);
    expect_ack(publisher.publish(100, topic, "\"back\"").await);
    assert_eq!(
        expect_message(subscriber.recv().await).payload.get(),
        "\"back\""
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_new_consumer_wait_for_its_first_connection() {
    let mut cluster = Cluster::builder()
        .consumers(1)
        .producers(1)
        .queues(open_queues())
        .start()
        .await;
    // The node list names consumer-1 before it listens (it is starting).
    let (grown, planned) = cluster.plan_consumer().await;
    cluster.reload(grown.clone());
    let topic = (0..100)
        .map(|i| format!("late/t{i}"))
        .find(|topic| cluster.owner(topic) == 1)
        .unwrap();
    let mut publisher = cluster.publisher(0).await;
    publisher
        .send_text(&format!(
            r#"{{"type":"publish","id":1,"topic":"{topic}","payload":"early"}}"#
        ))
        .await;
    // Still unanswered while consumer-1 is not up: held, not refused.
    assert!(
        publisher
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "answered before the owner was up"
    );
    cluster.start_planned(planned, &grown).await;
    let ack = expect_ack(publisher.recv().await);
    assert_eq!((ack.id, ack.offset), (1, Some(1)));
    cluster.shutdown().await;
}

#[tokio::test]
async fn all_consumers_down_is_not_ready_but_the_producer_serves() {
    let mut cluster = Cluster::builder().producers(1).start().await;
    cluster.stop_consumer(0).await;
    cluster.wait_links(0, 0).await;
    let (status, body) = http_get(cluster.producers[0].admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = http_get(cluster.producers[0].admin, "/healthz").await;
    assert_eq!(status, 200);
    let mut publisher = cluster.publisher(0).await;
    expect_error(publisher.publish(1, "files/save", "1").await, "unavailable");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_never_stops_the_producer_reading() {
    // Defect 5: a hung consumer filled the window and the producer stopped
    // reading its publishers. Now: a full window refuses at once
    // (`unavailable`: not sent), and the link is declared down within
    // `link_down_after`, answering what it had in flight `outcome_unknown`.
    const WINDOW: usize = 50;
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let mut cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .limits(|limits| limits.link_window = WINDOW)
        .start()
        .await;
    cluster.stop_producer(0).await;
    // consumer-1 is the impostor: it shakes hands, then never reads.
    cluster.config.consumers[1].url = format!("ws://{impostor_addr}");
    tokio::spawn(shardq_tests::impostor::stalled_consumer(
        impostor,
        cluster.node_key.clone(),
        "consumer-1",
    ));
    let sick = cluster.topic_owned_by(1);
    let healthy = cluster.topic_owned_by(0);
    cluster.restart_producer(0).await;
    let admin_addr = cluster.producers[0].admin;
    let mut publisher = cluster.publisher(0).await;
    // Twice the window to the sick consumer: the first half fills its
    // window, the second is refused at once.
    const SENT: u64 = 2 * WINDOW as u64;
    for id in 0..SENT {
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":{id},"topic":"{sick}","payload":{id}}}"#
            ))
            .await;
    }
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for _ in WINDOW as u64..SENT {
        let error = match publisher.recv().await {
            Frame::Error(error) => error,
            other => panic!("{}", other.encode()),
        };
        *codes.entry(error.code.to_string()).or_default() += 1;
    }
    // Meanwhile the healthy consumer's topic flows: the producer still
    // reads this connection.
    for id in SENT..SENT + 10 {
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":{id},"topic":"{healthy}","payload":{id}}}"#
            ))
            .await;
        match publisher.recv().await {
            Frame::Ack(ack) => assert_eq!(ack.id, id),
            other => panic!("the healthy topic waited: {}", other.encode()),
        }
    }
    // The sick link is declared down: what it had in flight has an unknown fate.
    for _ in 0..WINDOW {
        let error = match publisher.recv().await {
            Frame::Error(error) => error,
            other => panic!("{}", other.encode()),
        };
        assert!(error.id.unwrap() < WINDOW as u64, "{error:?}");
        *codes.entry(error.code.to_string()).or_default() += 1;
    }
    assert_eq!(
        codes,
        BTreeMap::from([
            ("outcome_unknown".to_owned(), WINDOW as u64),
            ("unavailable".to_owned(), SENT - WINDOW as u64),
        ]),
        "the window's publishes were sent (fate unknown); the rest never were"
    );
    // Operators see which link is down and what share of topics it owns.
    let (code, body) = http_get(admin_addr, "/readyz").await;
    assert_eq!(code, 200, "one link is still up: {body}");
    let readiness: Readiness = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness.links_down, ["consumer-1"], "{body}");
    assert_eq!(readiness.unavailable_share, 0.5, "{body}");
    let status = node_status(admin_addr).await;
    assert_eq!(status.unavailable_share, Some(0.5), "{status:?}");
    let (_, body) = http_get(admin_addr, "/metrics").await;
    assert_eq!(
        metric(&body, "shardq_producer_publishes_in_total"),
        Some((SENT + 10) as f64)
    );
    assert_eq!(
        metric(&body, "shardq_producer_link_downs_total"),
        Some(1.0),
        "{body}"
    );
    cluster.stop_producer(0).await;
    assert_eq!(publisher.closed().await, Some(1001));
    cluster.shutdown().await;
}

#[tokio::test]
async fn legacy_produce_round_trips_to_a_legacy_subscriber() {
    let cluster = Cluster::builder()
        .consumers(3)
        .producers(1)
        .queues(open_queues())
        .start()
        .await;
    let owner = cluster.owner("legacy/topic7");
    let mut subscriber = LegacyClient::connect(
        &cluster.consumers[owner].url("/subscribe/topic7"),
        &cluster.psk,
    )
    .await
    .unwrap();
    let mut producer = LegacyClient::connect(&cluster.producers[0].url("/produce"), &cluster.psk)
        .await
        .unwrap();
    producer.send_message("topic7", "c0ffee").await;
    assert_eq!(
        subscriber.recv_message().await,
        ("topic7".into(), "c0ffee".into())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_publish_in_flight() {
    const N: u64 = 3000;
    let mut cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .queues(open_queues())
        .start()
        .await;
    let mut publisher = cluster.publisher(0).await;
    for id in 0..N {
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":{id},"topic":"bulk/t{}","payload":{id}}}"#,
                id % 7
            ))
            .await;
    }
    let stopping = tokio::spawn(async move {
        cluster.stop_producer(0).await;
        cluster
    });
    let mut answered = BTreeSet::new();
    let close = loop {
        match publisher.recv_raw().await {
            Received::Frame(text) => match Frame::decode(text.as_bytes(), usize::MAX).unwrap() {
                Frame::Ack(ack) => {
                    assert!(answered.insert(ack.id), "answered twice");
                }
                Frame::Error(error) => {
                    let id = error.id.unwrap();
                    assert!(
                        matches!(error.code.as_str(), "shutting_down" | "unavailable"),
                        "{error:?}"
                    );
                    assert!(answered.insert(id), "answered twice");
                }
                other => panic!("unexpected {other:?}"),
            },
            Received::Close(code) => break code,
            Received::Eof => break None,
        }
    };
    // Every publish the producer read was answered before it went away, in
    // order: the answered ids are exactly 0..k. (What it never read, the
    // client can send to another producer.)
    assert_eq!(close, Some(1001));
    assert!(!answered.is_empty());
    let expected: Vec<u64> = (0..answered.len() as u64).collect();
    assert_eq!(answered.into_iter().collect::<Vec<_>>(), expected);
    stopping.await.unwrap().shutdown().await;
}

#[tokio::test]
async fn the_status_route_answers_under_its_old_name_too() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    for admin in [cluster.consumers[0].admin, cluster.producers[0].admin] {
        let (status, body) = http_get(admin, "/v1/status").await;
        assert_eq!(status, 200, "{body}");
        let current: shardq_protocol::status::NodeStatus = serde_json::from_str(&body).unwrap();
        let (status, body) = http_get(admin, "/v1/cluster").await;
        assert_eq!(status, 200, "{body}");
        let alias: shardq_protocol::status::NodeStatus = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                &alias.node,
                alias.kind,
                &alias.node_list,
                &alias.node_list_hash
            ),
            (
                &current.node,
                current.kind,
                &current.node_list,
                &current.node_list_hash
            )
        );
        assert_eq!(current.node_list, cluster.config.consumer_ids());
    }
    cluster.shutdown().await;
}

/// A consumer impostor that completes the handshake and reads everything
/// (so its link stays alive: pings are answered) but never answers.
async fn silent_consumer(listener: TcpListener, node_key: Psk) {
    let mut socket = shardq_tests::impostor_link(listener, node_key, "consumer-0").await;
    while let Some(Ok(_)) = socket.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_producer_answers_what_its_publisher_sends_while_it_drains() {
    // Defect 7: frames a publisher sent after shutdown began were never
    // read nor answered; the connection then closed with 1001.
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let mut cluster = Cluster::builder()
        .producers(1)
        .limits(|limits| limits.publish_timeout_ms = 1_000)
        .start()
        .await;
    cluster.stop_producer(0).await;
    cluster.config.consumers[0].url = format!("ws://{impostor_addr}");
    tokio::spawn(silent_consumer(impostor, cluster.node_key.clone()));
    cluster.restart_producer(0).await;
    let producer_addr = cluster.producers[0].addr;
    let mut publisher = cluster.publisher(0).await;
    // In flight at the silent consumer: the drain waits for them (until
    // the publish timeout answers them).
    for id in 0..5 {
        publisher.publish_nowait(id, "files/save", "1").await;
    }
    wait_metric(
        cluster.producers[0].admin,
        "shardq_producer_link_in_flight",
        5.0,
    )
    .await;
    cluster.producers[0].begin_stop();
    // The producer stops accepting once shutdown began.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(producer_addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 5..10 {
        publisher.publish_nowait(id, "files/save", "1").await;
    }
    let mut answered = BTreeSet::new();
    let close = loop {
        match publisher.recv_raw().await {
            Received::Frame(text) => match Frame::decode(text.as_bytes(), usize::MAX).unwrap() {
                Frame::Error(error) => {
                    assert!(
                        matches!(error.code.as_str(), "outcome_unknown" | "shutting_down"),
                        "{error:?}"
                    );
                    assert!(answered.insert(error.id.unwrap()));
                }
                other => panic!("{}", other.encode()),
            },
            Received::Close(code) => break code,
            Received::Eof => break None,
        }
    };
    assert_eq!(
        answered,
        (0..10).collect::<BTreeSet<u64>>(),
        "every publish answered (closed with {close:?})"
    );
    assert_eq!(close, Some(1001));
    cluster.stop_producer(0).await;
    cluster.shutdown().await;
}
