//! Growing and shrinking the cluster under load: edges, node-list reloads,
//! forwarding and handoff by history.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{ClusterConfig, Frame, QueueConfig, Router, Topic};
use shardq_tests::raw::{Received, expect_ack};
use shardq_tests::{Cluster, PATIENCE, RawClient, http_get, metric};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const TOPICS: usize = 1000;

fn scale_queues() -> QueueConfig {
    let mut queues = QueueConfig::new();
    let events: Vec<String> = (0..TOPICS).map(|i| format!("t{i}")).collect();
    queues.declare("scale", &events).unwrap();
    queues
}

fn topic(i: usize) -> String {
    format!("scale/t{i}")
}

/// Fraction of the topics whose owner differs between two node lists.
fn moved(before: &ClusterConfig, after: &ClusterConfig) -> f64 {
    let (old, new) = (
        Router::new(&before.consumer_ids()),
        Router::new(&after.consumer_ids()),
    );
    let changed = (0..TOPICS)
        .filter(|&i| {
            let topic = Topic::parse(&topic(i)).unwrap();
            old.owner_id(&topic) != new.owner_id(&topic)
        })
        .count();
    changed as f64 / TOPICS as f64
}

/// What one subscriber saw, per topic: the sequence numbers in arrival order.
type Seen = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// Subscribes at consumer `index` to every topic and records every message
/// until told to stop; `Err` if the connection ended (a reconnect would be needed).
async fn subscriber(
    cluster: &Cluster,
    index: usize,
    seen: Seen,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let mut client = cluster.subscriber(index).await;
    let ack = expect_ack(client.subscribe(1, "scale/*").await);
    assert_eq!(ack.topics.unwrap().len(), TOPICS);
    tokio::spawn(async move {
        let mut stop = stop;
        loop {
            let received = tokio::select! {
                received = client.recv_raw() => received,
                _ = stop.changed() => return Ok(()),
            };
            let text = match received {
                Received::Frame(text) => text,
                other => return Err(format!("subscriber {index} lost its connection: {other:?}")),
            };
            let Ok(Frame::Message(message)) = Frame::decode(text.as_bytes(), usize::MAX) else {
                continue;
            };
            let seq: u64 = serde_json::from_str::<serde_json::Value>(message.payload.get())
                .unwrap()["s"]
                .as_u64()
                .unwrap();
            seen.lock()
                .unwrap()
                .entry(message.topic.to_string())
                .or_default()
                .push(seq);
        }
    })
}

/// Which step of the test is running, and the publishes acked during each.
#[derive(Default)]
struct Phases {
    current: AtomicUsize,
    acked: [AtomicUsize; 4],
}

/// Publishes round after round through one producer: each round one message
/// to each of its topics (per topic, the next is sent after the ack),
/// every `interval`. Records what was acked.
fn publisher(
    mut client: RawClient,
    topics: Vec<usize>,
    interval: Duration,
    acked: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    refused: Arc<Mutex<Vec<String>>>,
    phases: Arc<Phases>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(interval);
        while !*stop.borrow() {
            tick.tick().await;
            seq += 1;
            let mut pending = HashMap::new();
            for (id, &i) in topics.iter().enumerate() {
                let frame = format!(
                    r#"{{"type":"publish","id":{id},"topic":"{}","payload":{{"s":{seq}}}}}"#,
                    topic(i)
                );
                client.socket.feed(Message::text(frame)).await.unwrap();
                pending.insert(id as u64, i);
            }
            client.socket.flush().await.unwrap();
            while !pending.is_empty() {
                let frame = tokio::time::timeout(PATIENCE, client.socket.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let Ok(frame) = Frame::decode(frame.to_text().unwrap().as_bytes(), usize::MAX)
                else {
                    continue;
                };
                match frame {
                    Frame::Ack(ack) => {
                        let i = pending.remove(&ack.id).unwrap();
                        acked.lock().unwrap().entry(topic(i)).or_default().push(seq);
                        let phase = phases.current.load(Ordering::Relaxed);
                        phases.acked[phase].fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::Error(error) => {
                        let i = pending.remove(&error.id.unwrap()).unwrap();
                        refused.lock().unwrap().push(format!(
                            "{} #{seq}: {} {}",
                            topic(i),
                            error.code,
                            error.message
                        ));
                    }
                    _ => {}
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_and_shrinking_under_load_loses_nothing() {
    shardq_tests::init_logging();
    let mut cluster = Cluster::builder()
        .consumers(3)
        .producers(2)
        .queues(scale_queues())
        .start()
        .await;
    let (stop, stopped) = watch::channel(false);
    let (done, finished) = watch::channel(false);
    let views: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    let mut subscribers = Vec::new();
    for (index, seen) in views.iter().enumerate() {
        subscribers.push(subscriber(&cluster, index, seen.clone(), finished.clone()).await);
    }
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let phases = Arc::new(Phases::default());
    let started = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for producer in 0..2 {
        let client = cluster.publisher(producer).await;
        let topics: Vec<usize> = (0..TOPICS).filter(|i| i % 2 == producer).collect();
        // 500 topics every 80 ms through each of 2 producers: 12,500 publishes/s.
        publishers.push(publisher(
            client,
            topics,
            Duration::from_millis(80),
            acked.clone(),
            refused.clone(),
            phases.clone(),
            stopped.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 3 → 4 → 5: start the new consumer with the grown list, then reload everyone.
    for _ in 0..2 {
        let before = cluster.config.clone();
        let grown = cluster.add_consumer().await;
        let fraction = moved(&before, &grown);
        println!(
            "{} → {} consumers: {:.1}% of topics moved (ideal {:.1}%)",
            before.consumers.len(),
            grown.consumers.len(),
            fraction * 100.0,
            100.0 / grown.consumers.len() as f64
        );
        cluster.reload(grown);
        phases.current.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    // 5 → 4: consumer-4 leaves the list (it keeps running as an edge).
    let before = cluster.config.clone();
    let mut shrunk = before.clone();
    shrunk.consumers.pop();
    println!(
        "5 → 4 consumers: {:.1}% of topics moved (ideal 20.0%)",
        moved(&before, &shrunk) * 100.0
    );
    cluster.reload(shrunk);
    phases.current.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2000)).await;

    stop.send(true).unwrap();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    let refused = refused.lock().unwrap().clone();
    let per_phase: Vec<usize> = phases
        .acked
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    println!(
        "acked {total} publishes ({:.0}/s on this machine; per step {per_phase:?}), {} refused",
        total as f64 / started.elapsed().as_secs_f64(),
        refused.len()
    );
    // Publishing went on through every step (the rate depends on the machine).
    assert!(
        per_phase.iter().all(|&count| count >= TOPICS),
        "some step ran without load: {per_phase:?}"
    );
    // Let the last deliveries arrive.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let complete = views.iter().all(|seen| {
            let seen = seen.lock().unwrap();
            acked
                .iter()
                .all(|(topic, seqs)| seen.get(topic).map_or(0, Vec::len) >= seqs.len())
        });
        if complete || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.send(true).unwrap();
    for subscriber in subscribers {
        subscriber.await.unwrap().unwrap();
    }
    let mut problems = Vec::new();
    for (index, seen) in views.iter().enumerate() {
        let seen = seen.lock().unwrap();
        for (topic, seqs) in &acked {
            let got = seen.get(topic).cloned().unwrap_or_default();
            let missing: Vec<_> = seqs.iter().filter(|s| !got.contains(s)).collect();
            if !missing.is_empty() || !got.windows(2).all(|w| w[0] < w[1]) {
                problems.push(format!(
                    "subscriber {index} {topic}: missing {missing:?}, got {} (last {:?})",
                    got.len(),
                    got.last()
                ));
            }
        }
    }
    for problem in problems.iter().take(20) {
        println!("{problem}");
    }
    println!("{} problems", problems.len());
    for (index, seen) in views.iter().enumerate() {
        let seen = seen.lock().unwrap();
        for (topic, seqs) in &acked {
            let got = seen.get(topic).cloned().unwrap_or_default();
            // In order and exactly once: strictly increasing.
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "subscriber {index}, {topic}: out of order or duplicated: {got:?}"
            );
            // Every acked publish arrived.
            let missing: Vec<_> = seqs.iter().filter(|s| !got.contains(s)).collect();
            assert!(
                missing.is_empty(),
                "subscriber {index}, {topic}: lost {missing:?} (got {} of {})",
                got.len(),
                seqs.len()
            );
        }
    }
    for error in refused.iter().take(5) {
        println!("refused: {error}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_topic_is_written_once_per_edge_by_its_owner() {
    let cluster = Cluster::builder().consumers(3).producers(1).start().await;
    let hot = "database/update";
    let owner = cluster.owner(hot);
    let mut subscribers = Vec::new();
    for i in 0..300 {
        let mut client = cluster.subscriber(i % 3).await;
        expect_ack(client.subscribe(1, hot).await);
        subscribers.push(client);
    }
    let out_before = {
        let (_, body) = http_get(cluster.consumers[owner].admin, "/metrics").await;
        metric(&body, "shardq_consumer_messages_out_total").unwrap()
    };
    let mut publisher = cluster.publisher(0).await;
    const MESSAGES: u64 = 20;
    for i in 0..MESSAGES {
        expect_ack(publisher.publish(i, hot, &i.to_string()).await);
    }
    for client in &mut subscribers {
        for _ in 0..MESSAGES {
            assert!(matches!(client.recv().await, Frame::Message(_)));
        }
    }
    let (_, body) = http_get(cluster.consumers[owner].admin, "/metrics").await;
    let written = metric(&body, "shardq_consumer_messages_out_total").unwrap() - out_before;
    // 100 local subscribers plus one stream per edge (the 2 other consumers).
    let per_message = written / MESSAGES as f64;
    println!("the owner wrote {per_message} frames per message (100 local subscribers + 2 edges)");
    assert_eq!(per_message, 102.0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_node_lists_neither_loop_nor_lose_once_they_agree() {
    let mut cluster = Cluster::builder()
        .consumers(3)
        .producers(1)
        .queues(scale_queues())
        .start()
        .await;
    // A fourth consumer, known only to some nodes for a while.
    let grown = cluster.add_consumer().await;
    let old = cluster.config.clone();
    let moved_topics: Vec<usize> = (0..TOPICS)
        .filter(|&i| {
            let t = Topic::parse(&topic(i)).unwrap();
            Router::new(&old.consumer_ids()).owner_id(&t)
                != Router::new(&grown.consumer_ids()).owner_id(&t)
        })
        .take(50)
        .collect();
    // Subscribed at consumer 2 (an edge for most of these) while all agree.
    let mut subscriber = cluster.subscriber(2).await;
    for (id, &i) in moved_topics.iter().enumerate() {
        expect_ack(subscriber.subscribe(id as u64, &topic(i)).await);
    }
    // Consumers 0 and 3 have the new list; consumers 1, 2 and the producer do not.
    cluster.consumers[0].reload(&grown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut publisher = cluster.publisher(0).await;
    // While the views disagree every publish is answered (ack or refusal):
    // nothing loops between nodes.
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut refused = 0;
    for (id, &i) in moved_topics.iter().enumerate() {
        match publisher.publish(id as u64, &topic(i), r#"{"s":0}"#).await {
            Frame::Ack(_) => expected.entry(topic(i)).or_default().push(0),
            Frame::Error(_) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    println!(
        "while views disagree: {} of {} publishes acked, {refused} refused",
        expected.len(),
        moved_topics.len()
    );
    // Once everyone agrees, every topic flows again.
    cluster.reload(grown);
    for (id, &i) in moved_topics.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match publisher
                .publish(1000 + id as u64, &topic(i), r#"{"s":1}"#)
                .await
            {
                Frame::Ack(_) => break,
                Frame::Error(error) if tokio::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{} never flowed again: {other:?}", topic(i)),
            }
        }
        expected.entry(topic(i)).or_default().push(1);
    }
    // Every acked publish, from before and after agreement, arrives once and in order.
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered {seen:?}\nexpected {expected:?}"
        );
        if let Frame::Message(message) = subscriber.recv().await {
            let payload: serde_json::Value = serde_json::from_str(message.payload.get()).unwrap();
            seen.entry(message.topic.to_string())
                .or_default()
                .push(payload["s"].as_u64().unwrap());
        }
    }
    // And nothing more: no duplicate trails behind.
    if let Some(extra) = subscriber.recv_within(Duration::from_millis(500)).await {
        panic!("a duplicate arrived: {extra}");
    }
    cluster.shutdown().await;
}
