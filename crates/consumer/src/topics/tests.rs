//! Table tests of the topic table: sequencing, fan-out, resume, the
//! slow-consumer cut, history budgets and ownership.

use std::collections::VecDeque;

use shardq_net::outbox::{Chunk, Drained, Outbox};
use shardq_protocol::{RawValue, Router};

use super::cell::ConnId;
use super::*;

fn table(per_topic: usize, bytes: usize) -> TopicTable {
    let (metrics, _) = ConsumerMetrics::new();
    let view = View {
        own_id: "c".into(),
        ids: vec!["c".into()],
        router: Router::new(&["c"]),
        hash: String::new(),
        generation: 1,
    };
    TopicTable::new(
        TableLimits {
            history_per_topic: per_topic,
            history_bytes: bytes,
            key_window: std::time::Duration::from_secs(60),
            keys_per_node: 1000,
        },
        Arc::new(metrics),
        view,
        TaskTracker::new(),
    )
}

fn subscriber(conn: ConnId, limit: usize) -> Subscriber {
    Subscriber {
        conn,
        outbox: Arc::new(Outbox::new(limit)),
        legacy_name: None,
        peer: false,
    }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.into()).unwrap()
}

async fn drain_texts(outbox: &Outbox) -> Vec<String> {
    let Drained::Frames { frames, bytes } = outbox.drain(VecDeque::new()).await else {
        return Vec::new();
    };
    outbox.written(0, bytes);
    frames
        .iter()
        .flat_map(|chunk: &Chunk| chunk.frames().to_vec())
        .map(|frame| {
            let header = if frame[1] < 126 { 2 } else { 4 };
            String::from_utf8(frame[header..].to_vec()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn sequences_and_fans_out_in_order() {
    let table = table(10, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    let (one, two) = (subscriber(1, 1 << 20), subscriber(2, 1 << 20));
    table
        .subscribe(std::slice::from_ref(&topic), &one, None, Some(7))
        .unwrap();
    table
        .subscribe(std::slice::from_ref(&topic), &two, None, None)
        .unwrap();
    let first = table.publish(&topic, &raw("1")).unwrap();
    let second = table.publish(&topic, &raw("2")).unwrap();
    assert_eq!(first.epoch, second.epoch);
    assert_eq!((first.offset, second.offset), (1, 2));
    let texts = drain_texts(&one.outbox).await;
    assert_eq!(texts.len(), 3);
    assert!(texts[0].starts_with(r#"{"type":"ack","id":7,"topics":[{"topic":"a/b""#));
    assert!(texts[1].ends_with(r#""offset":1,"payload":1}"#));
    assert!(texts[2].ends_with(r#""offset":2,"payload":2}"#));
    assert_eq!(drain_texts(&two.outbox).await.len(), 2);
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages() {
    let table = table(3, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    let mut last = Position {
        epoch: 0,
        offset: 0,
    };
    for i in 1..=5 {
        last = table.publish(&topic, &raw(&i.to_string())).unwrap();
    }
    // The ring holds 3..=5.
    let sub = subscriber(1, 1 << 20);
    let since = Position {
        epoch: last.epoch,
        offset: 2,
    };
    let result = table
        .subscribe(std::slice::from_ref(&topic), &sub, Some(since), Some(1))
        .unwrap();
    assert_eq!(result.resume.map(|(recovered, _)| recovered), Some(true));
    let texts = drain_texts(&sub.outbox).await;
    assert_eq!(texts.len(), 4);
    assert!(texts[1].ends_with(r#""offset":3,"payload":3}"#));
    // Too far back: what is held, and not recovered.
    let late = subscriber(2, 1 << 20);
    let since = Position {
        epoch: last.epoch,
        offset: 1,
    };
    let result = table
        .subscribe(std::slice::from_ref(&topic), &late, Some(since), Some(1))
        .unwrap();
    assert_eq!(result.resume.map(|(recovered, _)| recovered), Some(false));
    assert_eq!(drain_texts(&late.outbox).await.len(), 4);
    // Up to date: nothing to replay, recovered.
    let current = subscriber(3, 1 << 20);
    let result = table
        .subscribe(std::slice::from_ref(&topic), &current, Some(last), Some(1))
        .unwrap();
    assert_eq!(result.resume.map(|(recovered, _)| recovered), Some(true));
    assert_eq!(drain_texts(&current.outbox).await.len(), 1);
    // Another epoch: the whole ring, not recovered.
    let stranger = subscriber(4, 1 << 20);
    let since = Position {
        epoch: last.epoch + 1,
        offset: 4,
    };
    let result = table
        .subscribe(
            std::slice::from_ref(&topic),
            &stranger,
            Some(since),
            Some(1),
        )
        .unwrap();
    assert_eq!(result.resume.map(|(recovered, _)| recovered), Some(false));
    assert_eq!(drain_texts(&stranger.outbox).await.len(), 4);
}

#[tokio::test]
async fn slow_subscriber_is_cut_and_others_are_not() {
    let table = table(10, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    let (slow, fast) = (subscriber(1, 500), subscriber(2, 1 << 20));
    table
        .subscribe(std::slice::from_ref(&topic), &slow, None, None)
        .unwrap();
    table
        .subscribe(std::slice::from_ref(&topic), &fast, None, None)
        .unwrap();
    for _ in 0..20 {
        table
            .publish(&topic, &raw(&format!("\"{}\"", "x".repeat(50))))
            .unwrap();
    }
    assert!(slow.outbox.is_closed());
    assert!(!fast.outbox.is_closed());
    assert_eq!(drain_texts(&fast.outbox).await.len(), 20);
    assert_eq!(table.metrics.slow_consumers.get(), 1);
}

#[test]
fn node_budget_drops_the_oldest_and_idle_topics() {
    let table = table(1000, 10_000);
    for i in 0..500 {
        let topic = Topic::new("t", &format!("e{i}")).unwrap();
        table.publish(&topic, &raw("\"0123456789\"")).unwrap();
    }
    assert!(table.history_bytes() <= 10_000);
    // Evicted topics without subscribers are gone; the newest remain.
    assert!(table.topic_count() < 500);
    assert!(table.position(&Topic::parse("t/e499").unwrap()).is_some());
    assert!(table.position(&Topic::parse("t/e0").unwrap()).is_none());
}

#[test]
fn unsubscribe_removes_idle_topics() {
    let table = table(10, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    let sub = subscriber(1, 1 << 20);
    table
        .subscribe(std::slice::from_ref(&topic), &sub, None, None)
        .unwrap();
    assert_eq!(table.topic_count(), 1);
    table.unsubscribe(&topic, 1);
    assert_eq!(table.topic_count(), 0);
    assert_eq!(table.metrics.subscriptions.get(), 0);
}

#[test]
fn a_topic_this_node_does_not_own_is_refused_with_its_owner() {
    let (metrics, _) = ConsumerMetrics::new();
    let ids = ["c0", "c1", "c2"];
    let view = View {
        own_id: "c0".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        router: Router::new(&ids),
        hash: String::new(),
        generation: 1,
    };
    let table = TopicTable::new(
        TableLimits {
            history_per_topic: 10,
            history_bytes: 1 << 20,
            key_window: std::time::Duration::from_secs(60),
            keys_per_node: 1000,
        },
        Arc::new(metrics),
        view,
        TaskTracker::new(),
    );
    let router = Router::new(&ids);
    let foreign = (0..100)
        .map(|i| Topic::new("t", &format!("e{i}")).unwrap())
        .find(|topic| router.owner_id(topic) != Some("c0"))
        .unwrap();
    let owner = router.owner_id(&foreign).unwrap().to_owned();
    assert_eq!(
        table.publish(&foreign, &raw("1")),
        Err(NotSequenced::OwnedBy(owner))
    );
    assert_eq!(table.topic_count(), 0);
}

#[test]
fn a_peer_link_going_down_forgets_the_upstream_requests_sent_on_it() {
    let table = table(10, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    for (id, peer) in [(1, "c1"), (2, "c2"), (3, "c1")] {
        table.lock_requests().insert(
            id | shardq_net::link::HANDLER_ID_BIT,
            Upstream {
                peer: peer.into(),
                topic: topic.clone(),
            },
        );
    }
    table.on_link_down("c1");
    let left: Vec<String> = table
        .lock_requests()
        .values()
        .map(|upstream| upstream.peer.clone())
        .collect();
    assert_eq!(left, ["c2"]);
}

#[tokio::test]
async fn a_remembered_key_is_answered_with_its_first_position_once() {
    let table = table(10, 1 << 20);
    let topic = Topic::parse("a/b").unwrap();
    let sub = subscriber(1, 1 << 20);
    table
        .subscribe(std::slice::from_ref(&topic), &sub, None, None)
        .unwrap();
    let one = raw("1");
    let two = raw("2");
    let keyed = |payload, key| Publishing {
        payload,
        key: Some(key),
        priority: 0,
    };
    let mut out = Vec::new();
    // A retry inside one run, and one in a later run.
    table
        .publish_many(
            topic.as_str(),
            &[keyed(&*one, "k1"), keyed(&*one, "k1"), keyed(&*two, "k2")],
            &mut out,
        )
        .unwrap();
    table
        .publish_many(topic.as_str(), &[keyed(&*one, "k1")], &mut out)
        .unwrap();
    let offsets: Vec<(u64, bool)> = out.iter().map(|s| (s.at.offset, s.duplicate)).collect();
    assert_eq!(offsets, [(1, false), (1, true), (2, false), (1, true)]);
    assert_eq!(
        drain_texts(&sub.outbox).await.len(),
        2,
        "each key delivered once"
    );
    assert_eq!(table.metrics.duplicates_absorbed.get(), 2);
    // After the window the key is forgotten: the same key is new again.
    table.forget_keys(tokio::time::Instant::now() + std::time::Duration::from_secs(61));
    out.clear();
    table
        .publish_many(topic.as_str(), &[keyed(&*one, "k1")], &mut out)
        .unwrap();
    assert_eq!((out[0].at.offset, out[0].duplicate), (3, false));
}

#[test]
fn an_owned_topic_with_keys_but_no_history_keeps_them() {
    let table = table(10, 0);
    let topic = Topic::parse("a/b").unwrap();
    let payload = raw("1");
    let mut out = Vec::new();
    let publish = [Publishing {
        payload: &payload,
        key: Some("k"),
        priority: 0,
    }];
    table
        .publish_many(topic.as_str(), &publish, &mut out)
        .unwrap();
    // The budget of 0 bytes evicted the message, not the key.
    table
        .publish_many(topic.as_str(), &publish, &mut out)
        .unwrap();
    assert_eq!(out[0].at, out[1].at);
    assert!(out[1].duplicate);
}
