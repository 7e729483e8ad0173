//! Queue groups through the client library (`Subscriber::join`): workers
//! of one group share a topic's messages, each handled and acked once; a
//! worker that leaves with unacked jobs has them redelivered to the
//! others; a worker whose connection is cut rejoins, and the jobs of the
//! lost connection are redelivered, never acked on the new one.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use shardq::protocol::work::WorkConfig;
use shardq::{AckError, Job, Publisher, PublisherConfig, Subscriber, SubscriberConfig, Work};
use shardq_tests::proxy::Proxy;
use shardq_tests::{Cluster, PATIENCE, init_logging};
use tokio::sync::mpsc;

/// The next job, within a deadline.
async fn next_job(work: &mut Work) -> Job {
    tokio::time::timeout(PATIENCE, work.next())
        .await
        .expect("a job in time")
        .expect("the membership is open")
}

async fn publisher(cluster: &Cluster) -> Publisher {
    Publisher::connect(PublisherConfig::from_cluster(
        &cluster.config,
        cluster.psk.clone(),
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_a_group_and_handle_each_message_once() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .work(
            "database",
            WorkConfig {
                max_unacked_per_member: 4,
                ..WorkConfig::default()
            },
        )
        .start()
        .await;
    let subscriber = Subscriber::connect(SubscriberConfig::from_cluster(
        &cluster.config,
        cluster.psk.clone(),
    ))
    .await
    .unwrap();
    // Each worker reports (worker, n, redelivered) once its ack was taken.
    let (handled, mut reports) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for worker in 0..3usize {
        let mut work = subscriber
            .join("database", "create", "billing")
            .await
            .unwrap();
        assert_eq!(work.topic().as_str(), "database/create");
        assert_eq!(work.group(), "billing");
        let handled = handled.clone();
        workers.push(tokio::spawn(async move {
            while let Some(job) = work.next().await {
                let n: u64 = job.json::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap();
                job.ack().await.unwrap();
                let _ = handled.send((worker, n, job.redelivered));
            }
        }));
    }
    // A plain subscription of the same topic, on the same subscriber,
    // still gets every message.
    let mut everything = subscriber.subscribe("database", "create").await.unwrap();
    let publisher = publisher(&cluster).await;
    for n in 0..30u64 {
        publisher
            .publish("database", "create", &serde_json::json!({ "n": n }))
            .await
            .unwrap();
    }
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    let mut by_worker = [0usize; 3];
    while times.len() < 30 {
        let (worker, n, redelivered) = tokio::time::timeout(PATIENCE, reports.recv())
            .await
            .expect("every message handled in time")
            .unwrap();
        assert_eq!(redelivered, 0, "message {n} was delivered twice");
        *times.entry(n).or_default() += 1;
        by_worker[worker] += 1;
    }
    assert!(times.values().all(|&count| count == 1), "{times:?}");
    assert_eq!(
        times.keys().copied().collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert_eq!(by_worker.iter().sum::<usize>(), 30);
    assert!(
        by_worker.iter().filter(|&&count| count > 0).count() >= 2,
        "the work was shared: {by_worker:?}"
    );
    for n in 0..30u64 {
        let message = tokio::time::timeout(PATIENCE, everything.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.json::<serde_json::Value>().unwrap()["n"], n);
    }
    assert_eq!(
        subscriber.subscriptions().len(),
        1,
        "memberships are not subscriptions"
    );
    for worker in workers {
        worker.abort();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dropped_with_unacked_jobs_has_them_redelivered_to_the_others() {
    init_logging();
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .work(
            "database",
            WorkConfig {
                max_unacked_per_member: 2,
                ..WorkConfig::default()
            },
        )
        .start()
        .await;
    let config = SubscriberConfig::from_cluster(&cluster.config, cluster.psk.clone());
    let quitter = Subscriber::connect(config.clone()).await.unwrap();
    let mut quitting = quitter.join("database", "update", "ledger").await.unwrap();
    let publisher = publisher(&cluster).await;
    for n in 1..=2u64 {
        publisher.publish("database", "update", &n).await.unwrap();
    }
    // The only member: both are in flight to it, unacked.
    let held = [next_job(&mut quitting).await, next_job(&mut quitting).await];
    assert!(held.iter().all(|job| job.redelivered == 0));
    let others = Subscriber::connect(config).await.unwrap();
    let mut stayers = [
        others.join("database", "update", "ledger").await.unwrap(),
        others.join("database", "update", "ledger").await.unwrap(),
    ];
    drop(quitting);
    // The owner hands the orphans to the others, counting the first delivery.
    let mut offsets = Vec::new();
    let [first, second] = &mut stayers;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while offsets.len() < 2 {
        let next = async {
            tokio::select! {
                job = first.next() => job,
                job = second.next() => job,
            }
        };
        let job = tokio::time::timeout_at(deadline, next)
            .await
            .expect("the orphans were not redelivered in time")
            .unwrap();
        assert!(job.redelivered >= 1, "{job:?}");
        job.ack().await.unwrap();
        offsets.push(job.offset);
    }
    offsets.sort_unstable();
    let mut expected: Vec<u64> = held.iter().map(|job| job.offset).collect();
    expected.sort_unstable();
    assert_eq!(offsets, expected);
    // The dropped worker's jobs cannot be acked any more.
    assert!(matches!(held[0].ack().await, Err(AckError::Closed)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_worker_rejoins_and_the_lost_connections_jobs_come_again() {
    init_logging();
    let cluster = Cluster::builder().producers(1).start().await;
    let proxy = Proxy::start(cluster.consumers[0].addr).await;
    let subscriber = Subscriber::connect(SubscriberConfig::new(proxy.url(), cluster.psk.clone()))
        .await
        .unwrap();
    let mut work = subscriber.join("files", "save", "archivers").await.unwrap();
    let publisher = publisher(&cluster).await;
    publisher.publish("files", "save", &1u64).await.unwrap();
    let lost = next_job(&mut work).await;
    assert_eq!(lost.redelivered, 0);
    proxy.cut();
    // The member rejoins; the owner delivers the job again.
    let again = next_job(&mut work).await;
    assert_eq!(again.position(), lost.position());
    assert!(again.redelivered >= 1, "{again:?}");
    assert!(work.rejoins() >= 1);
    // The old copy is not acked on the new connection; the new one is.
    assert!(matches!(lost.ack().await, Err(AckError::ConnectionLost)));
    again.ack().await.unwrap();
    match again.ack().await {
        Err(AckError::NotInFlight { .. }) => {}
        other => panic!("a second ack was taken: {other:?}"),
    }
    cluster.shutdown().await;
}
