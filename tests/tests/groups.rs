//! Queue groups (work queues) at a topic's owner: each message to one
//! member, acked; redelivered when its member leaves or its ack timeout
//! passes, with a count; dead-lettered after `max_deliveries`; LIFO order
//! on a backlog built with no member; a full backlog refuses publishes.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use shardq_protocol::Frame;
use shardq_protocol::work::{Discipline, WorkConfig};
use shardq_tests::raw::expect_ack;
use shardq_tests::{Cluster, RawClient, init_logging};

/// The next frame a member gets, as JSON, within a deadline.
async fn next_json(client: &mut RawClient) -> Value {
    let text = client
        .recv_within(Duration::from_secs(20))
        .await
        .expect("a frame in time");
    serde_json::from_str(&text).unwrap()
}

/// Joins `group` of `topic` on consumer `index`.
async fn member(cluster: &Cluster, index: usize, topic: &str, group: &str, id: u64) -> RawClient {
    let mut client = cluster.subscriber(index).await;
    client
        .send_text(&format!(
            r#"{{"type":"subscribe","id":{id},"topic":"{topic}","group":"{group}"}}"#
        ))
        .await;
    let ack = next_json(&mut client).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    client
}

async fn ack_message(client: &mut RawClient, id: u64, message: &Value, group: &str) -> Value {
    client
        .send_text(&format!(
            r#"{{"type":"ack_message","id":{id},"topic":{},"group":"{group}","epoch":{},"offset":{}}}"#,
            message["topic"], message["epoch"], message["offset"]
        ))
        .await;
    next_json(client).await
}

async fn publish(cluster: &Cluster, id: u64, topic: &str, payload: &str) -> Frame {
    let mut publisher = cluster.publisher(0).await;
    publisher.publish(id, topic, payload).await
}

fn quick() -> WorkConfig {
    WorkConfig {
        ack_timeout_ms: 300,
        max_deliveries: 2,
        max_unacked_per_member: 2,
        ..WorkConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_goes_to_one_member_and_a_departure_redelivers() {
    init_logging();
    let two_each = WorkConfig {
        max_unacked_per_member: 2,
        ..WorkConfig::default()
    };
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .work("database", two_each)
        .work("files", two_each)
        .start()
        .await;
    let topic = cluster.topic_owned_by(0);
    let mut workers = Vec::new();
    for n in 0..3 {
        workers.push(member(&cluster, 0, topic, "billing", n).await);
    }
    // A plain subscriber still gets everything.
    let mut everything = cluster.subscriber(0).await;
    expect_ack(everything.subscribe(9, topic).await);
    for n in 0..6u64 {
        expect_ack(publish(&cluster, n, topic, &format!(r#"{{"n":{n}}}"#)).await);
    }
    // Two in flight per member at most: six messages, two each.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut held = Vec::new();
    for (index, worker) in workers.iter_mut().enumerate() {
        for _ in 0..2 {
            let message = next_json(worker).await;
            assert_eq!(message["group"], "billing");
            assert!(message.get("redelivered").is_none(), "{message}");
            let n = message["payload"]["n"].as_u64().unwrap();
            *seen.entry(n).or_default() += 1;
            held.push((index, message));
        }
    }
    assert_eq!(seen.len(), 6, "every message once: {seen:?}");
    for _ in 0..6 {
        let message = next_json(&mut everything).await;
        assert!(message.get("group").is_none());
    }
    // Worker 0 acks one of its two, then leaves with the other unacked.
    let (_, first) = held.iter().find(|(index, _)| *index == 0).unwrap().clone();
    let answer = ack_message(&mut workers[0], 100, &first, "billing").await;
    assert_eq!(answer["type"], "ack", "{answer}");
    // A second ack of the same message is refused.
    let again = ack_message(&mut workers[0], 101, &first, "billing").await;
    assert_eq!(again["code"], "not_in_flight", "{again}");
    let orphan = held
        .iter()
        .filter(|(index, _)| *index == 0)
        .map(|(_, message)| message.clone())
        .nth(1)
        .unwrap();
    drop(workers.remove(0));
    // The others have two in flight each: one acks, and gets the orphan.
    let (_, theirs) = held.iter().find(|(index, _)| *index == 1).unwrap().clone();
    assert_eq!(
        ack_message(&mut workers[0], 102, &theirs, "billing").await["type"],
        "ack"
    );
    let redelivered = next_json(&mut workers[0]).await;
    assert_eq!(redelivered["offset"], orphan["offset"]);
    assert_eq!(redelivered["redelivered"], 1, "{redelivered}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_is_redelivered_then_dead_lettered() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .work("database", quick())
        .start()
        .await;
    let topic = "database/create";
    let owner = cluster.owner(topic);
    let mut dead = cluster
        .subscriber(cluster.owner("database/create.dead"))
        .await;
    expect_ack(dead.subscribe(1, "database/create.dead").await);
    let mut worker = member(&cluster, owner, topic, "slow", 1).await;
    expect_ack(publish(&cluster, 1, topic, r#"{"poison":true}"#).await);
    let first = next_json(&mut worker).await;
    assert!(first.get("redelivered").is_none());
    // Not acked within 300 ms: delivered again, then given up.
    let second = next_json(&mut worker).await;
    assert_eq!(second["redelivered"], 1);
    assert_eq!(second["offset"], first["offset"]);
    let letter = next_json(&mut dead).await;
    assert_eq!(letter["type"], "message");
    assert_eq!(letter["topic"], "database/create.dead");
    let body = &letter["payload"];
    assert_eq!(body["topic"], "database/create");
    assert_eq!(body["offset"], first["offset"]);
    assert_eq!(body["group"], "slow");
    assert_eq!(body["deliveries"], 2);
    assert_eq!(body["reason"], "ack_timeout");
    assert_eq!(body["payload"], serde_json::json!({"poison": true}));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifo_backlog_built_with_no_member_is_served_newest_first() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .work(
            "files",
            WorkConfig {
                discipline: Discipline::Lifo,
                max_unacked_per_member: 1,
                ..quick()
            },
        )
        .start()
        .await;
    let topic = "files/save";
    // The group exists once a member joined; it keeps messages while it
    // has none.
    drop(member(&cluster, 0, topic, "archivers", 1).await);
    for n in 1..=3u64 {
        expect_ack(publish(&cluster, n, topic, &format!("{n}")).await);
    }
    let mut worker = member(&cluster, 0, topic, "archivers", 2).await;
    let mut order = Vec::new();
    for id in 10..13 {
        let message = next_json(&mut worker).await;
        order.push(message["payload"].as_u64().unwrap());
        assert_eq!(
            ack_message(&mut worker, id, &message, "archivers").await["type"],
            "ack"
        );
    }
    assert_eq!(order, [3, 2, 1]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_refuses_publishes_and_groups_live_at_the_owner() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .work(
            "database",
            WorkConfig {
                backlog_messages: 2,
                ..quick()
            },
        )
        .start()
        .await;
    let topic = "database/update";
    let owner = cluster.owner(topic);
    // A member that takes messages but never acks them.
    let _stuck = member(&cluster, owner, topic, "idle", 1).await;
    expect_ack(publish(&cluster, 1, topic, "1").await);
    expect_ack(publish(&cluster, 2, topic, "2").await);
    match publish(&cluster, 3, topic, "3").await {
        Frame::Error(error) => assert_eq!(error.code.as_str(), "backlog_full", "{}", error.message),
        other => panic!("a third publish was taken: {}", other.encode()),
    }
    // Another consumer sends members to the owner.
    let mut elsewhere = cluster.subscriber(1 - owner).await;
    elsewhere
        .send_text(&format!(
            r#"{{"type":"subscribe","id":5,"topic":"{topic}","group":"idle"}}"#
        ))
        .await;
    let refused = next_json(&mut elsewhere).await;
    assert_eq!(refused["code"], "not_owner", "{refused}");
    assert_eq!(refused["id"], 5);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_backlog_is_served_highest_first_then_in_order() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .work(
            "database",
            WorkConfig {
                discipline: Discipline::Priority,
                max_unacked_per_member: 1,
                ..quick()
            },
        )
        .tokens(
            shardq_protocol::auth::TokenKeys::new(
                &[b"token-secret-of-at-least-32-bytes!!".to_vec()],
                &[],
                true,
            )
            .unwrap(),
        )
        .start()
        .await;
    let topic = "database/delete";
    drop(member(&cluster, 0, topic, "urgent", 1).await);
    let mut publisher = cluster.publisher(0).await;
    for (n, priority) in [(1, 1), (2, 9), (3, 1), (4, 5)] {
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":{n},"topic":"{topic}","priority":{priority},"payload":{n}}}"#
            ))
            .await;
        expect_ack(publisher.recv().await);
    }
    // Over HTTP too, with ?priority=.
    let url = cluster.config.producers[0].http.as_deref().unwrap();
    let addr: std::net::SocketAddr = shardq_protocol::config::host_port(url)
        .unwrap()
        .parse()
        .unwrap();
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("-:{psk}"),
    );
    let auth = [("Authorization", format!("Basic {basic}"))];
    let (status, body) = shardq_tests::http_request(
        addr,
        "POST",
        &format!("/v1/topics/{topic}?priority=7"),
        &auth,
        "5",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = shardq_tests::http_request(
        addr,
        "POST",
        &format!("/v1/topics/{topic}?priority=10"),
        &auth,
        "6",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Out of range on WebSocket: bad_frame, with the id.
    publisher
        .send_text(&format!(
            r#"{{"type":"publish","id":77,"topic":"{topic}","priority":12,"payload":0}}"#
        ))
        .await;
    match publisher.recv().await {
        Frame::Error(error) => {
            assert_eq!((error.id, error.code.as_str()), (Some(77), "bad_frame"));
        }
        other => panic!("priority 12 was taken: {}", other.encode()),
    }
    let mut worker = member(&cluster, 0, topic, "urgent", 2).await;
    let mut order = Vec::new();
    for id in 10..15 {
        let message = next_json(&mut worker).await;
        order.push(message["payload"].as_u64().unwrap());
        assert_eq!(
            ack_message(&mut worker, id, &message, "urgent").await["type"],
            "ack"
        );
    }
    assert_eq!(order, [2, 5, 4, 1, 3]);
    cluster.shutdown().await;
}
