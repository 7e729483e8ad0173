//! `shardq-demo bench-consumer`: the consumer's fan-out cost and its memory
//! per idle subscriber, measured from the consumer process's own accounting.
//!
//! The consumer runs as its own process pinned to CPU 0 (one tokio worker);
//! this load generator pins itself to CPU 1 and uses the lean client, so
//! the consumer's core saturates first.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardq_protocol::Psk;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::lean::{LeanConn, message_offset};
use crate::processes::{self, NodeProcesses};
use crate::procstat;

/// What to measure.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// Deliveries per second and consumer CPU per delivery.
    Fanout {
        /// Subscriber connections.
        #[arg(long, default_value_t = 256)]
        subscribers: usize,
        /// Topics; subscriber i takes topic i mod topics.
        #[arg(long, default_value_t = 1)]
        topics: usize,
        /// Messages to publish in all.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Payload size in bytes (a JSON string).
        #[arg(long, default_value_t = 128)]
        payload: usize,
        /// Messages allowed in flight, published but not yet received by
        /// every subscriber (flow control, so nobody is cut as slow).
        /// Default: 1,000 per topic, at most 100,000.
        #[arg(long)]
        window: Option<u64>,
    },
    /// Resident memory per idle authenticated subscriber.
    Idle {
        /// Idle connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
}

/// Options of `bench-consumer`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchConsumerArgs {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Where the node binaries are (default: next to this one).
    #[arg(long, global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Do not pin the consumer and the generator to separate CPUs.
    #[arg(long, global = true)]
    pub no_pin: bool,
}

/// The consumer under test.
pub(crate) struct ConsumerProcess {
    pub(crate) nodes: NodeProcesses,
    /// Its WebSocket port, `host:port`.
    pub(crate) addr: String,
    pub(crate) psk: Psk,
}

/// Runs the benchmark and prints its report; the report as JSON.
pub fn run(args: BenchConsumerArgs) -> Result<serde_json::Value, String> {
    let fd_limit = processes::hard_fd_limit();
    let pin = !args.no_pin;
    processes::prepare_self(pin.then_some("1"), fd_limit)?;
    let nodes = NodeProcesses::start(
        processes::plan(1, 0)?,
        &args.bin_dir,
        |_| pin.then(|| "0".to_owned()),
        fd_limit,
    )?;
    let consumer = ConsumerProcess {
        addr: nodes.config.consumers[0]
            .url
            .trim_start_matches("ws://")
            .to_owned(),
        psk: nodes.psk.clone(),
        nodes,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pid = consumer
        .nodes
        .pid("consumer-0")
        .ok_or("the consumer process is gone")?;
    match args.scenario {
        Scenario::Fanout {
            subscribers,
            topics,
            messages,
            payload,
            window,
        } => runtime.block_on(fanout(
            &consumer,
            pid,
            subscribers,
            topics,
            messages,
            payload,
            window,
        )),
        Scenario::Idle { connections } => {
            if connections as u64 + 64 > fd_limit {
                return Err(format!(
                    "{connections} connections need more open files than the hard limit {fd_limit}"
                ));
            }
            runtime.block_on(idle(&consumer, pid, connections))
        }
    }
}

/// Opens `count` subscriber connections, subscriber i to `topic_of(i)`,
/// each acked.
pub(crate) async fn open_subscribers(
    consumer: &ConsumerProcess,
    count: usize,
    topic_of: impl Fn(usize) -> String,
) -> Result<Vec<LeanConn>, String> {
    let mut conns = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(200) {
        let chunk: Vec<_> = (chunk_start..(chunk_start + 200).min(count))
            .map(|i| {
                let (addr, psk, topic) = (consumer.addr.clone(), consumer.psk.clone(), topic_of(i));
                tokio::spawn(async move {
                    let mut conn = LeanConn::open(&addr, "/v1/subscribe", &psk).await?;
                    let subscribe = format!(r#"{{"type":"subscribe","id":1,"topic":"{topic}"}}"#);
                    conn.send_text(subscribe.as_bytes()).await?;
                    let ack = conn.reader.next_text().await?;
                    if !ack.starts_with(br#"{"type":"ack""#) {
                        return Err(std::io::Error::other(
                            String::from_utf8_lossy(ack).into_owned(),
                        ));
                    }
                    Ok::<_, std::io::Error>(conn)
                })
            })
            .collect();
        for task in chunk {
            let conn = task
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("subscriber {}: {e}", conns.len()))?;
            conns.push(conn);
        }
    }
    Ok(conns)
}

/// What a fan-out's subscribers received, shared by their reader tasks.
#[derive(Clone)]
pub(crate) struct Deliveries {
    /// Deliveries expected in all.
    total: u64,
    delivered: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
    /// Bytes read on the wire after the subscription was acked.
    bytes: Arc<AtomicU64>,
    progress: Arc<Notify>,
    done: Arc<Notify>,
}

impl Deliveries {
    /// Counters for `total` deliveries.
    pub(crate) fn new(total: u64) -> Deliveries {
        Deliveries {
            total,
            delivered: Arc::default(),
            gaps: Arc::default(),
            bytes: Arc::default(),
            progress: Arc::default(),
            done: Arc::default(),
        }
    }

    /// Counts the delivery of the message at `offset` to a subscriber whose
    /// previous message was at `last` (offsets start at 1).
    pub(crate) fn count(&self, last: &mut u64, offset: u64) {
        if offset != *last + 1 {
            self.gaps.fetch_add(1, Ordering::Relaxed);
        }
        *last = offset;
        let now = self.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        if now.is_multiple_of(256) {
            self.progress.notify_one();
        }
        if now == self.total {
            self.done.notify_one();
        }
    }

    /// Counts `bytes` read on the wire.
    pub(crate) fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Deliveries so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages that did not follow the previous one.
    pub(crate) fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Bytes read on the wire so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Reads every subscriber of `conns` in its own task, counting its
/// messages (and their bytes on the wire) in `deliveries`; abort the tasks
/// to close the connections.
pub(crate) fn read_subscribers(
    conns: Vec<LeanConn>,
    deliveries: &Deliveries,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(conns.len());
    for conn in conns {
        let deliveries = deliveries.clone();
        let mut reader = conn.reader;
        // Keep the write half open: dropping it would half-close the socket.
        let writer = conn.writer;
        tasks.push(tokio::spawn(async move {
            let _writer = writer;
            let mut last = 0u64;
            while let Ok(frame) = reader.next_text().await {
                // A server's frame header: 2 bytes, 4 from 126 bytes on, 10 from 64 KiB.
                let header = match frame.len() {
                    0..126 => 2,
                    126..65_536 => 4,
                    _ => 10,
                };
                deliveries.add_bytes(header + frame.len());
                if let Some(offset) = message_offset(frame) {
                    deliveries.count(&mut last, offset);
                }
            }
        }));
    }
    tasks
}

/// What a fan-out publishes: `messages` to topics `bench/{prefix}0` …
/// `bench/{prefix}{topics - 1}` round-robin, each received by `per_topic`
/// subscribers.
pub(crate) struct Load<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) topics: usize,
    pub(crate) per_topic: u64,
    pub(crate) messages: u64,
    pub(crate) payload: usize,
    /// Messages in flight at most (default: 1,000 per topic, at most 100,000).
    pub(crate) window: Option<u64>,
}

/// What [`publish_measured`] measured after its warm-up (the first tenth of
/// the messages).
pub(crate) struct Measured {
    /// Deliveries in the measured part.
    pub(crate) deliveries: u64,
    pub(crate) wall: Duration,
    /// The consumer's CPU time (user and system).
    pub(crate) consumer_cpu: Duration,
    /// This process's CPU time.
    pub(crate) own_cpu: Duration,
    /// Publishes the consumer acked (all of them, warm-up included).
    pub(crate) acks: u64,
}

/// Publishes `load` as a producer would (on `/v1/cluster`, with the node
/// key), never more in flight than its window, until `deliveries` has
/// counted every delivery; what it cost the consumer (`pid`).
pub(crate) async fn publish_measured(
    consumer: &ConsumerProcess,
    pid: u32,
    load: &Load<'_>,
    deliveries: &Deliveries,
) -> Result<Measured, String> {
    let Load {
        prefix,
        topics,
        per_topic,
        messages,
        ..
    } = *load;
    let total = messages * per_topic;
    let mut publisher = LeanConn::open_node(
        &consumer.addr,
        "/v1/cluster",
        &consumer.nodes.node_key,
        "producer-0",
        "consumer-0",
    )
    .await
    .map_err(|e| format!("publisher: {e}"))?;
    let acks = Arc::new(AtomicU64::new(0));
    let mut ack_reader = publisher.reader;
    let acks_seen = acks.clone();
    let acking = tokio::spawn(async move {
        while let Ok(frame) = ack_reader.next_text().await {
            if frame.starts_with(br#"{"type":"ack""#) {
                acks_seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let body = format!("\"{}\"", "x".repeat(load.payload.saturating_sub(2)));
    let warmup = messages / 10;
    // In deliveries: messages in flight times subscribers per topic.
    let window = load
        .window
        .unwrap_or((1_000 * topics as u64).min(100_000))
        .max(1)
        * per_topic;
    let mut sent = 0u64;
    let mut start: Option<(Instant, Duration, Duration, u64)> = None;
    let mut out = Vec::with_capacity(64 << 10);
    while sent < messages {
        if start.is_none() && sent >= warmup {
            start = Some((
                Instant::now(),
                procstat::cpu_time(pid).unwrap_or_default(),
                procstat::cpu_time(std::process::id()).unwrap_or_default(),
                deliveries.delivered(),
            ));
        }
        let in_flight = sent * per_topic - deliveries.delivered();
        if in_flight + per_topic > window {
            deliveries.progress.notified().await;
            continue;
        }
        out.clear();
        let room = ((window - in_flight) / per_topic)
            .min(256)
            .min(messages - sent);
        for _ in 0..room {
            sent += 1;
            let frame = format!(
                r#"{{"type":"publish","id":{sent},"topic":"bench/{prefix}{}","payload":{body}}}"#,
                sent % topics as u64
            );
            LeanConn::encode_text(&mut out, frame.as_bytes());
        }
        publisher
            .writer
            .write_all(&out)
            .await
            .map_err(|e| format!("publishing: {e}"))?;
    }
    let waited = tokio::time::timeout(Duration::from_secs(300), async {
        while deliveries.delivered() < total {
            tokio::select! {
                () = deliveries.done.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await;
    let end = Instant::now();
    let consumer_cpu_end = procstat::cpu_time(pid).unwrap_or_default();
    let own_cpu_end = procstat::cpu_time(std::process::id()).unwrap_or_default();
    let got = deliveries.delivered();
    acking.abort();
    if waited.is_err() {
        return Err(format!("timed out: {got} of {total} deliveries arrived"));
    }
    let (t0, consumer_cpu0, own_cpu0, delivered0) =
        start.unwrap_or((end, consumer_cpu_end, own_cpu_end, got));
    Ok(Measured {
        deliveries: got - delivered0,
        wall: end - t0,
        consumer_cpu: consumer_cpu_end.saturating_sub(consumer_cpu0),
        own_cpu: own_cpu_end.saturating_sub(own_cpu0),
        acks: acks.load(Ordering::Relaxed),
    })
}

async fn fanout(
    consumer: &ConsumerProcess,
    pid: u32,
    subscribers: usize,
    topics: usize,
    messages: u64,
    payload: usize,
    window: Option<u64>,
) -> Result<serde_json::Value, String> {
    let topics = topics.clamp(1, subscribers.max(1));
    if !subscribers.is_multiple_of(topics) {
        return Err("--subscribers must be a multiple of --topics".into());
    }
    let per_topic = (subscribers / topics) as u64;
    let total = messages * per_topic;
    let conns =
        open_subscribers(consumer, subscribers, |i| format!("bench/t{}", i % topics)).await?;
    let deliveries = Deliveries::new(total);
    let _readers = read_subscribers(conns, &deliveries);
    let load = Load {
        prefix: "t",
        topics,
        per_topic,
        messages,
        payload,
        window,
    };
    let measured = publish_measured(consumer, pid, &load, &deliveries).await?;
    let got = deliveries.delivered();
    let wall = measured.wall.as_secs_f64();
    let report = serde_json::json!({
        "scenario": "fanout",
        "subscribers": subscribers,
        "topics": topics,
        "messages": messages,
        "payload_bytes": payload,
        "deliveries": got,
        "expected_deliveries": total,
        "lost": total.saturating_sub(got),
        "gaps": deliveries.gaps(),
        "measured_deliveries": measured.deliveries,
        "wall_seconds": wall,
        "deliveries_per_second": measured.deliveries as f64 / wall,
        "consumer_cpu_ns_per_delivery": measured.consumer_cpu.as_nanos() as f64 / measured.deliveries.max(1) as f64,
        "consumer_cpu_utilisation": measured.consumer_cpu.as_secs_f64() / wall,
        "generator_cpu_utilisation": measured.own_cpu.as_secs_f64() / wall,
        "acks": measured.acks,
    });
    Ok(report)
}

async fn idle(
    consumer: &ConsumerProcess,
    pid: u32,
    connections: usize,
) -> Result<serde_json::Value, String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = procstat::resident_bytes(pid).ok_or("cannot read the consumer's memory")?;
    let conns =
        open_subscribers(consumer, connections, |i| format!("bench/idle-{}", i % 100)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::resident_bytes(pid).ok_or("cannot read the consumer's memory")?;
    let per = after.saturating_sub(before) as f64 / connections as f64;
    drop(conns);
    Ok(serde_json::json!({
        "scenario": "idle",
        "connections": connections,
        "consumer_rss_before_bytes": before,
        "consumer_rss_after_bytes": after,
        "bytes_per_idle_subscriber": per,
    }))
}
