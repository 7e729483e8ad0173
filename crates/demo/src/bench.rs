//! `shardq-demo bench`: load a cluster (deployed, or embedded with
//! `--local`) with publishers and subscribers, show progress, and report
//! throughput, loss, duplicates and publish→delivery latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use shardq_protocol::{ClusterConfig, Psk, Router, Topic, TopicFilter};
use tokio::io::AsyncWriteExt;

use crate::cluster::{ClusterArgs, Embedded};
use crate::lean::{LeanConn, message_offset};

/// Options of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The cluster file (or `--local`).
    #[arg(long, env = "SHARDQ_CONFIG", required_unless_present = "local")]
    pub config: Option<std::path::PathBuf>,
    /// Start an embedded cluster (3 consumers, 2 producers) instead.
    #[arg(long)]
    pub local: bool,
    /// Publisher connections (spread over the producers).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Subscribers; each holds one connection per consumer and takes every topic.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Topics (from the declared ones unless `open_topics`).
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Target publishes per second in all (0: as fast as acks come back).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Publishes in flight per publisher connection.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    gaps: AtomicU64,
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// The `"t":` send time inside a bench payload, read without parsing.
fn sent_micros(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""payload":{"t":"#;
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some(value)
}

fn message_topic(frame: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""topic":""#;
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = frame[at..].iter().position(|b| *b == b'"')?;
    Some(&frame[at..at + end])
}

fn pick_topics(config: &ClusterConfig, count: usize) -> Result<Vec<Topic>, String> {
    if config.queues.open_topics() {
        return (0..count)
            .map(|i| Topic::new("bench", &format!("t{i}")).map_err(|e| e.to_string()))
            .collect();
    }
    let declared: Vec<Topic> = config
        .queues
        .queues()
        .filter_map(|(queue, _)| TopicFilter::parse(&format!("{queue}/*")).ok())
        .filter_map(|filter| config.queues.expand(&filter).ok())
        .flatten()
        .take(count)
        .collect();
    if declared.is_empty() {
        return Err("the cluster declares no topics and open_topics is off".into());
    }
    Ok(declared)
}

fn addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned()
}

/// Runs the benchmark; the report as JSON.
pub async fn run(args: BenchArgs) -> Result<serde_json::Value, String> {
    let embedded;
    let (config, psk) = if args.local {
        let mut queues = crate::cluster::seed_queues();
        queues.set_open_topics(true);
        embedded = Some(Embedded::start(3, 2, queues).await?);
        let cluster = embedded.as_ref().map(|e| (e.config.clone(), e.psk.clone()));
        cluster.ok_or("no cluster")?
    } else {
        embedded = None;
        let path = args.config.clone().ok_or("--config or --local is needed")?;
        ClusterArgs { config: path }.load()?
    };
    if config.producers.is_empty() {
        return Err("the cluster declares no [[producers]]".into());
    }
    let report = load(&args, &config, &psk).await;
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    report
}

async fn load(
    args: &BenchArgs,
    config: &ClusterConfig,
    psk: &Psk,
) -> Result<serde_json::Value, String> {
    let topics = pick_topics(config, args.topics.max(1))?;
    let router = Router::new(&config.consumer_ids());
    let counters = Arc::new(Counters::default());
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let start = Instant::now();

    // Subscribers first, so every publish has its audience.
    let mut readers = Vec::new();
    for _ in 0..args.subscribers {
        for (index, consumer) in config.consumers.iter().enumerate() {
            let owned: Vec<&Topic> = topics
                .iter()
                .filter(|t| router.owner(t) == Some(index))
                .collect();
            if owned.is_empty() {
                continue;
            }
            let mut conn = LeanConn::open(&addr(&consumer.url), "/v1/subscribe", psk)
                .await
                .map_err(|e| format!("{}: {e}", consumer.id))?;
            for (id, topic) in owned.iter().enumerate() {
                let frame = format!(r#"{{"type":"subscribe","id":{id},"topic":"{topic}"}}"#);
                conn.send_text(frame.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let answer = conn.reader.next_text().await.map_err(|e| e.to_string())?;
                if !answer.starts_with(br#"{"type":"ack""#) {
                    return Err(format!(
                        "subscribe {topic}: {}",
                        String::from_utf8_lossy(answer)
                    ));
                }
            }
            let (counters, latency) = (counters.clone(), latency.clone());
            readers.push(tokio::spawn(async move {
                let _writer = conn.writer;
                let mut reader = conn.reader;
                let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
                while let Ok(frame) = reader.next_text().await {
                    let Some(offset) = message_offset(frame) else {
                        continue;
                    };
                    let topic = message_topic(frame).unwrap_or_default().to_vec();
                    let previous = last.insert(topic, offset).unwrap_or(0);
                    if offset <= previous {
                        counters.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if offset > previous + 1 && previous > 0 {
                        counters
                            .gaps
                            .fetch_add(offset - previous - 1, Ordering::Relaxed);
                    }
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let (Some(sent), Ok(mut histogram)) = (sent_micros(frame), latency.lock()) {
                        let _ = histogram.record(micros_since(start).saturating_sub(sent).max(1));
                    }
                }
            }));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    let per_connection_rate =
        (args.rate > 0).then(|| args.rate as f64 / args.publishers.max(1) as f64);
    for index in 0..args.publishers.max(1) {
        let producer = &config.producers[index % config.producers.len()];
        let conn = LeanConn::open(&addr(&producer.url), "/v1/publish", psk)
            .await
            .map_err(|e| format!("{}: {e}", producer.id))?;
        let (counters, stop, topics) = (counters.clone(), stop.clone(), topics.clone());
        let (window, payload) = (args.window.max(1) as u64, args.payload);
        publishers.push(tokio::spawn(async move {
            let LeanConn { mut reader, mut writer } = conn;
            let in_flight = Arc::new(AtomicU64::new(0));
            let answered = tokio::spawn({
                let (counters, in_flight) = (counters.clone(), in_flight.clone());
                async move {
                    while let Ok(frame) = reader.next_text().await {
                        if frame.starts_with(br#"{"type":"ack""#) {
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                        } else if frame.starts_with(br#"{"type":"error""#) {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        } else {
                            continue;
                        }
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            });
            let filler = "x".repeat(payload.saturating_sub(40));
            let mut sent = 0u64;
            let mut out = Vec::with_capacity(64 << 10);
            let began = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let mut allowed = window.saturating_sub(in_flight.load(Ordering::Acquire));
                if let Some(rate) = per_connection_rate {
                    let due = (began.elapsed().as_secs_f64() * rate) as u64;
                    allowed = allowed.min(due.saturating_sub(sent));
                }
                if allowed == 0 {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                }
                out.clear();
                for _ in 0..allowed.min(128) {
                    sent += 1;
                    let topic = &topics[(sent as usize + index) % topics.len()];
                    let frame = format!(
                        r#"{{"type":"publish","id":{sent},"topic":"{topic}","payload":{{"t":{},"s":{sent},"p":"{filler}"}}}}"#,
                        micros_since(start)
                    );
                    LeanConn::encode_text(&mut out, frame.as_bytes());
                    in_flight.fetch_add(1, Ordering::AcqRel);
                }
                if writer.write_all(&out).await.is_err() {
                    break;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered.abort();
            sent
        }));
    }

    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.seconds)
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} s  {msg}").map_err(|e| e.to_string())?,
    );
    let mut previous = (0, 0);
    for _ in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (
            counters.acked.load(Ordering::Relaxed),
            counters.delivered.load(Ordering::Relaxed),
        );
        progress.set_message(format!(
            "{} acked/s, {} delivered/s",
            now.0 - previous.0,
            now.1 - previous.1
        ));
        progress.inc(1);
        previous = now;
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for publisher in publishers {
        published += publisher.await.map_err(|e| e.to_string())?;
    }
    progress.finish_and_clear();
    // Let the last deliveries arrive.
    let acked = counters.acked.load(Ordering::Relaxed);
    let expected = acked * args.subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in readers {
        reader.abort();
    }
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let histogram = latency
        .lock()
        .map(|h| h.clone())
        .map_err(|e| e.to_string())?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "topics": topics.len(),
        "payload_bytes": args.payload,
        "seconds": wall.as_secs_f64(),
        "published": published,
        "acked": acked,
        "refused": counters.refused.load(Ordering::Relaxed),
        "acked_per_second": acked as f64 / wall.as_secs_f64(),
        "delivered": delivered,
        "deliveries_per_second": delivered as f64 / wall.as_secs_f64(),
        "lost": expected.saturating_sub(delivered),
        "duplicated": counters.duplicated.load(Ordering::Relaxed),
        "gaps_in_offsets": counters.gaps.load(Ordering::Relaxed),
        "latency_ms_p50": ms(0.5),
        "latency_ms_p99": ms(0.99),
        "latency_ms_p999": ms(0.999),
        "latency_ms_max": histogram.max() as f64 / 1000.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bench_frames() {
        let frame = br#"{"type":"message","topic":"bench/t3","epoch":1,"offset":2,"payload":{"t":12345,"s":1,"p":"x"}}"#;
        assert_eq!(sent_micros(frame), Some(12345));
        assert_eq!(message_topic(frame), Some(&b"bench/t3"[..]));
    }
}
