//! `shardq-demo soak`: steady load on a cluster while a test injects
//! faults, then a verdict on every promise of docs/PROTOCOL.md §5. A
//! subscriber at every consumer takes every soak topic; raw publishers (one
//! per producer, no key, no retry) and a keyed publisher (the client
//! library) publish round-robin over the topics. The test writes what it
//! does to a fault log (`<unix ms> start|end <kind> <service>`) and creates
//! the stop file when done; the run then waits for every answer and
//! delivery, judges ([`verdict`]), prints the report and exits 1 on any
//! broken promise. The faults are outside: `tests/docker/e2e.sh` drives
//! them with Docker.

pub mod publish;
pub mod record;
pub mod subscribe;
pub mod verdict;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq::{Publisher, PublisherConfig};
use shardq_protocol::{ClusterConfig, Router, Topic};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterArgs;
use publish::{Ledger, RawPlan};
use record::{Outcome, SubscriberLog, now_micros, parse_faults};
use subscribe::SubscriberPlan;
use verdict::{Report, Rules, Run};

/// Options of `soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Topics (`soak/t000`...); the cluster file must set `open_topics = true`.
    #[arg(long, default_value_t = 200)]
    pub topics: usize,
    /// Publishes per second in all.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// The share of them sent by the keyed (library) publisher.
    #[arg(long, default_value_t = 0.25)]
    pub keyed_share: f64,
    /// Where the fault log, the stop file and report.json are.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Stop anyway after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
    /// Refusals must stop this soon after a fault ends.
    #[arg(long, default_value_t = 1000)]
    pub recovery_ms: u64,
}

fn addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned()
}

/// Polls `done` every 100 ms until it holds or `limit` passes.
async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Runs a soak; `Err` names the broken promises.
pub async fn run(args: SoakArgs) -> Result<(), String> {
    let (config, psk) = args.cluster.load()?;
    if !config.queues.open_topics() {
        return Err(
            "soak publishes to topics soak/t000...: set open_topics = true in the cluster file"
                .into(),
        );
    }
    if config.producers.is_empty() || config.consumers.is_empty() {
        return Err("the cluster file needs producers and consumers".into());
    }
    let topics: Arc<Vec<Topic>> = Arc::new(
        (0..args.topics.max(1))
            .map(|i| Topic::new("soak", &format!("t{i:03}")).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    );
    let index: Arc<HashMap<Topic, usize>> = Arc::new(
        topics
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, t)| (t, i))
            .collect(),
    );
    let run_started = now_micros();
    let stop = CancellationToken::new();
    let publishing = CancellationToken::new();

    // Subscribers first, so every publish has its audience.
    let ready = Arc::new(AtomicUsize::new(0));
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for consumer in &config.consumers {
        let log = Arc::new(Mutex::new(SubscriberLog {
            consumer: consumer.id.clone(),
            ..SubscriberLog::default()
        }));
        logs.push(log.clone());
        let plan = SubscriberPlan {
            addr: addr(&consumer.url),
            topics: topics.clone(),
            index: index.clone(),
            psk: psk.clone(),
            log,
            ready: ready.clone(),
        };
        tasks.push(tokio::spawn(subscribe::run(plan, stop.clone())));
    }
    let subscribers = logs.len();
    if !wait_for(Duration::from_secs(60), || {
        ready.load(Ordering::SeqCst) == subscribers
    })
    .await
    {
        stop.cancel();
        return Err(format!(
            "only {} of {subscribers} subscribers had every topic after 60 s",
            ready.load(Ordering::SeqCst)
        ));
    }
    eprintln!("soak: {subscribers} subscribers on {} topics", topics.len());

    // Every topic through every producer once, unrecorded: the nodes
    // have the cluster file that opens the soak topics.
    for producer in &config.producers {
        warm_up(&addr(&producer.url), &psk, &topics)
            .await
            .map_err(|e| format!("{}: {e}", producer.id))?;
    }

    let ledger = Ledger::default();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let keyed_rate = args.rate as f64 * args.keyed_share.clamp(0.0, 1.0);
    let raw_rate = (args.rate as f64 - keyed_rate) / config.producers.len() as f64;
    let mut publishers = Vec::new();
    for (producer, entry) in config.producers.iter().enumerate() {
        let plan = RawPlan {
            producer,
            addr: addr(&entry.url),
            topics: topics.clone(),
            psk: psk.clone(),
            rate: raw_rate,
            ledger: ledger.clone(),
            closes: closes.clone(),
        };
        publishers.push(tokio::spawn(publish::raw(
            plan,
            publishing.clone(),
            stop.clone(),
        )));
    }
    if keyed_rate > 0.0 {
        let publisher = Publisher::connect(PublisherConfig::from_cluster(&config, psk.clone()))
            .await
            .map_err(|e| format!("keyed publisher: {e}"))?;
        publishers.push(tokio::spawn(publish::keyed(
            publisher,
            topics.clone(),
            keyed_rate,
            ledger.clone(),
            publishing.clone(),
        )));
    }
    let every_topic_acked = || {
        let mut seen = vec![false; topics.len()];
        for publish in ledger.snapshot() {
            if matches!(publish.outcome, Outcome::Acked(_)) {
                seen[publish.topic] = true;
            }
        }
        seen.iter().all(|&s| s)
    };
    if !wait_for(Duration::from_secs(60), every_topic_acked).await {
        stop.cancel();
        return Err("not every topic acked a publish within 60 s".into());
    }
    // The test waits for this line before it injects anything.
    println!(
        "soak: ready ({} publishes/s, {} topics)",
        args.rate,
        topics.len()
    );

    let stop_file = args.run_dir.join("stop");
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while !stop_file.exists() && started.elapsed() < Duration::from_secs(args.max_seconds) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            progress(&ledger, &logs, run_started);
        }
    }
    publishing.cancel();
    eprintln!("soak: stopping; waiting for every answer");
    if !wait_for(Duration::from_secs(20), || ledger.pending() == 0).await {
        eprintln!(
            "soak: {} publishes still unanswered after 20 s",
            ledger.pending()
        );
    }
    let publishes = ledger.snapshot();
    let settled = wait_for(Duration::from_secs(30), || all_delivered(&publishes, &logs)).await;
    if !settled {
        eprintln!("soak: some acked publishes still undelivered after 30 s");
    }
    stop.cancel();
    for task in tasks.into_iter().chain(publishers) {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    let faults_text = std::fs::read_to_string(args.run_dir.join("faults.log")).unwrap_or_default();
    let router = Router::new(&config.consumer_ids());
    let run = Run {
        owners: owners(&config, &router, &topics),
        producers: config.producers.iter().map(|p| p.id.clone()).collect(),
        publishes: ledger.snapshot(),
        subscribers: logs
            .iter()
            .map(|log| log.lock().map(|l| l.clone()).unwrap_or_default())
            .collect(),
        publisher_closes: closes.lock().map(|c| c.clone()).unwrap_or_default(),
        faults: parse_faults(&faults_text)?,
    };
    let rules = Rules {
        recovery: args.recovery_ms * 1000,
        ..Rules::default()
    };
    let report = run.verdict(&rules);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let _ = std::fs::write(args.run_dir.join("report.json"), &json);
    print_report(&report);
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} kinds of broken promise: {}",
            report.violations.len(),
            report
                .violations
                .iter()
                .map(|v| format!("{} ×{}", v.kind, v.count))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Publishes `{"warm":true}` to every topic through the producer at
/// `addr` until each is acked (refusals are retried every 200 ms, for 60 s).
async fn warm_up(addr: &str, psk: &shardq_protocol::Psk, topics: &[Topic]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left: Vec<usize> = (0..topics.len()).collect();
    while !left.is_empty() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{} topics still refused after 60 s (is open_topics = true on every node?)",
                left.len()
            ));
        }
        let Ok(mut conn) = crate::lean::LeanConn::open(addr, "/v1/publish", psk).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut out = Vec::new();
        for &i in &left {
            let frame = format!(
                r#"{{"type":"publish","id":{i},"topic":"{}","payload":{{"warm":true}}}}"#,
                topics[i]
            );
            crate::lean::LeanConn::encode_text(&mut out, frame.as_bytes());
        }
        if tokio::io::AsyncWriteExt::write_all(&mut conn.writer, &out)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut acked = Vec::new();
        for _ in 0..left.len() {
            let Ok(text) =
                tokio::time::timeout(Duration::from_secs(10), conn.reader.next_text()).await
            else {
                break;
            };
            match text.map(|text| shardq_protocol::Frame::decode(text, 1 << 20)) {
                Ok(Ok(shardq_protocol::Frame::Ack(ack))) => acked.push(ack.id as usize),
                Ok(Ok(shardq_protocol::Frame::Error(_))) => {}
                _ => break,
            }
        }
        let before = left.len();
        left.retain(|i| !acked.contains(i));
        if left.len() == before {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn owners(config: &ClusterConfig, router: &Router, topics: &[Topic]) -> Vec<String> {
    topics
        .iter()
        .map(|topic| {
            router
                .owner(topic)
                .and_then(|index| config.consumers.get(index))
                .map_or_else(|| "?".to_owned(), |c| c.id.clone())
        })
        .collect()
}

fn all_delivered(publishes: &[record::Publish], logs: &[Arc<Mutex<SubscriberLog>>]) -> bool {
    logs.iter().all(|log| {
        let Ok(log) = log.lock() else { return false };
        publishes
            .iter()
            .enumerate()
            .all(|(n, publish)| match publish.outcome {
                Outcome::Acked(_) => log.delivered.get(n).is_some_and(Option::is_some),
                _ => true,
            })
    })
}

fn progress(ledger: &Ledger, logs: &[Arc<Mutex<SubscriberLog>>], started: u64) {
    let publishes = ledger.snapshot();
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for publish in &publishes {
        let name = match &publish.outcome {
            Outcome::Pending => "pending",
            Outcome::Acked(_) => "acked",
            Outcome::Refused(code) | Outcome::Unknown(code) => code.as_str(),
            Outcome::Lost(_) => "lost",
        };
        *counts.entry(name).or_default() += 1;
    }
    let delivered: Vec<usize> = logs
        .iter()
        .map(|log| {
            log.lock()
                .map(|l| l.delivered.iter().flatten().count())
                .unwrap_or(0)
        })
        .collect();
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    eprintln!(
        "soak: {:>5.0} s  {} published {counts:?}  delivered per subscriber {delivered:?}",
        publish::since(started),
        publishes.len()
    );
}

fn print_report(report: &Report) {
    let totals = &report.totals;
    println!(
        "soak: {} published, {} acked, {} refused, {} outcome unknown; {} deliveries; {} subscriber reconnects",
        totals.published,
        totals.acked,
        totals.refused,
        totals.unknown,
        totals.delivered,
        totals.subscriber_closes
    );
    if let Some(baseline) = report.baseline_p99_ms {
        println!("soak: p99 ack latency outside faults {baseline:.1} ms");
    }
    for fault in &report.faults {
        println!(
            "soak: {:<9} {:<11} {:>5.1} s out; {} refused ({} outcome_unknown), refusals {:.1} s beyond its end; {} gaps; healthy topics' p99 ack {}",
            fault.kind,
            fault.service,
            fault.seconds,
            fault.refused,
            fault.outcome_unknown,
            fault.refusals_beyond_s,
            fault.gaps,
            fault
                .healthy_p99_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
        );
    }
    for violation in &report.violations {
        println!("soak: BROKEN {} ×{}", violation.kind, violation.count);
        for example in &violation.examples {
            println!("        e.g. {example}");
        }
    }
    if report.violations.is_empty() {
        println!("soak: PASS: every promise held");
    }
}
