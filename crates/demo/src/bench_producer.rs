//! `shardq-demo bench-producer`: acked publishes per second through one
//! producer process and its CPU per publish, then publish→ack latency at
//! half that rate.
//!
//! The producer runs pinned to CPU 0 with one tokio worker; the consumers
//! and this load generator share CPU 1, so the producer's own accounting is
//! the figure that matters.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

use crate::lean::LeanConn;
use crate::processes::{self, NodeProcesses};
use crate::procstat;

/// Options of `bench-producer`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchProducerArgs {
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Consumers behind the producer.
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// Topics, published round-robin.
    #[arg(long, default_value_t = 1000)]
    pub topics: usize,
    /// Payload size in bytes (a JSON string).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Publishes in flight per publisher connection.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the node binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Do not pin the producer and the rest to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Publishes per second of the latency phase (default: half the rate
    /// the first phase reached).
    #[arg(long)]
    pub latency_rate: Option<f64>,
}

/// Counters shared by the publisher tasks.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

/// The id of an `ack` frame (`Ok`) or of an `error` frame (`Err`), read
/// without parsing the JSON.
fn answer_id(frame: &[u8]) -> Option<Result<u64, u64>> {
    const ACK: &[u8] = br#"{"type":"ack","id":"#;
    const ERROR: &[u8] = br#"{"type":"error","id":"#;
    let (ok, rest) = if let Some(rest) = frame.strip_prefix(ACK) {
        (true, rest)
    } else {
        (false, frame.strip_prefix(ERROR)?)
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit());
    let mut id = 0u64;
    for digit in digits {
        id = id.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    Some(if ok { Ok(id) } else { Err(id) })
}

struct Phase {
    rate_per_connection: Option<f64>,
    duration: Duration,
}

/// Runs one phase over `conns`; returns (tally, latency histogram).
async fn run_phase(
    conns: Vec<LeanConn>,
    args: &BenchProducerArgs,
    phase: Phase,
    first_id: u64,
) -> Result<(Arc<Tally>, Histogram<u64>, Vec<LeanConn>), String> {
    let tally = Arc::new(Tally::default());
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let empty = histogram.lock().map_err(|e| e.to_string())?.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let body = format!("\"{}\"", "x".repeat(args.payload.saturating_sub(2)));
    let mut tasks = Vec::new();
    for (index, conn) in conns.into_iter().enumerate() {
        let (tally, histogram, stop, body) =
            (tally.clone(), histogram.clone(), stop.clone(), body.clone());
        let (window, topics) = (args.window, args.topics);
        let rate = phase.rate_per_connection;
        tasks.push(tokio::spawn(async move {
            let LeanConn {
                mut reader,
                mut writer,
            } = conn;
            // Send times by id, a ring as deep as the window.
            let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; window]));
            let in_flight = Arc::new(AtomicU64::new(0));
            let progress = Arc::new(tokio::sync::Notify::new());
            let done = Arc::new(tokio::sync::Notify::new());
            let reading = {
                let (tally, histogram, sent_at, in_flight, progress, done) = (
                    tally.clone(),
                    histogram.clone(),
                    sent_at.clone(),
                    in_flight.clone(),
                    progress.clone(),
                    done.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let frame = tokio::select! {
                            frame = reader.next_text() => match frame {
                                Ok(frame) => frame,
                                Err(_) => break,
                            },
                            () = done.notified() => break,
                        };
                        let Some(answer) = answer_id(frame) else {
                            continue;
                        };
                        let id = match answer {
                            Ok(id) => {
                                tally.acked.fetch_add(1, Ordering::Relaxed);
                                id
                            }
                            Err(id) => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                id
                            }
                        };
                        let sent = sent_at.lock().ok().and_then(|mut ring| {
                            let len = ring.len();
                            ring[id as usize % len].take()
                        });
                        if let (Some(sent), Ok(mut histogram)) = (sent, histogram.lock()) {
                            let _ = histogram.record(sent.elapsed().as_micros().max(1) as u64);
                        }
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        progress.notify_one();
                    }
                    reader
                })
            };
            let mut id = first_id + (index as u64) * 1_000_000_000;
            let mut out = Vec::with_capacity(64 << 10);
            let started = Instant::now();
            let mut budget = 0f64;
            while !stop.load(Ordering::Relaxed) {
                let free = window as u64 - in_flight.load(Ordering::Acquire).min(window as u64);
                let mut allowed = free;
                if let Some(rate) = rate {
                    let due = started.elapsed().as_secs_f64() * rate;
                    allowed = allowed.min((due - budget).max(0.0) as u64);
                }
                if allowed == 0 {
                    tokio::select! {
                        () = progress.notified() => {}
                        () = tokio::time::sleep(Duration::from_micros(200)) => {}
                    }
                    continue;
                }
                out.clear();
                let now = Instant::now();
                for _ in 0..allowed.min(256) {
                    id += 1;
                    let frame = format!(
                        r#"{{"type":"publish","id":{id},"topic":"bench/t{}","payload":{body}}}"#,
                        id % topics as u64
                    );
                    LeanConn::encode_text(&mut out, frame.as_bytes());
                    if let Ok(mut ring) = sent_at.lock() {
                        let len = ring.len();
                        ring[id as usize % len] = Some(now);
                    }
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    budget += 1.0;
                }
                if writer.write_all(&out).await.is_err() {
                    break;
                }
                tally.sent.fetch_add(allowed.min(256), Ordering::Relaxed);
            }
            // Let the answers in flight arrive.
            let deadline = Instant::now() + Duration::from_secs(10);
            while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done.notify_one();
            (reading.await.ok(), writer)
        }));
    }
    tokio::time::sleep(phase.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut conns = Vec::new();
    for task in tasks {
        let (reader, writer) = task.await.map_err(|e| e.to_string())?;
        if let Some(reader) = reader {
            conns.push(LeanConn { reader, writer });
        }
    }
    let histogram = histogram.lock().map(|h| h.clone()).unwrap_or(empty);
    Ok((tally, histogram, conns))
}

/// Runs both phases; the report as JSON.
pub fn run(args: BenchProducerArgs) -> Result<serde_json::Value, String> {
    if args.publishers == 0 || args.consumers == 0 || args.topics == 0 || args.window == 0 {
        return Err("--publishers, --consumers, --topics and --window must be at least 1".into());
    }
    let fd_limit = processes::hard_fd_limit();
    let pin = !args.no_pin;
    processes::prepare_self(pin.then_some("1"), fd_limit)?;
    let nodes = NodeProcesses::start(
        processes::plan(args.consumers, 1)?,
        &args.bin_dir,
        |id| pin.then(|| if id.starts_with("producer") { "0" } else { "1" }.to_owned()),
        fd_limit,
    )?;
    let producer_pid = nodes
        .pid("producer-0")
        .ok_or("the producer process is gone")?;
    let addr = nodes.config.producers[0]
        .url
        .trim_start_matches("ws://")
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // The producer's links connect on their own; wait for all of them.
        let mut conns = Vec::new();
        for _ in 0..args.publishers {
            conns.push(
                LeanConn::open(&addr, "/v1/publish", &nodes.psk)
                    .await
                    .map_err(|e| format!("publisher: {e}"))?,
            );
        }
        wait_ready(&nodes, args.consumers).await?;

        // Phase 1: as fast as acks come back.
        let cpu0 = procstat::cpu_time(producer_pid).unwrap_or_default();
        let own0 = procstat::cpu_time(std::process::id()).unwrap_or_default();
        let t0 = Instant::now();
        let phase = Phase {
            rate_per_connection: None,
            duration: Duration::from_secs(args.seconds),
        };
        let (tally, full_latency, conns) = run_phase(conns, &args, phase, 0).await?;
        let wall = t0.elapsed();
        let cpu = procstat::cpu_time(producer_pid)
            .unwrap_or_default()
            .saturating_sub(cpu0);
        let own = procstat::cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(own0);
        let acked = tally.acked.load(Ordering::Relaxed);
        let rate = acked as f64 / wall.as_secs_f64();

        // Phase 2: half that rate, for latency.
        let half = args.latency_rate.unwrap_or(rate / 2.0);
        let phase = Phase {
            rate_per_connection: Some(half / args.publishers as f64),
            duration: Duration::from_secs(args.seconds),
        };
        let (paced, latency, _) = run_phase(conns, &args, phase, 1 << 40).await?;
        let quantile = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok(serde_json::json!({
            "scenario": "producer",
            "publishers": args.publishers,
            "consumers": args.consumers,
            "topics": args.topics,
            "payload_bytes": args.payload,
            "window_per_publisher": args.window,
            "acked": acked,
            "errors": tally.errors.load(Ordering::Relaxed),
            "acked_per_second": rate,
            "producer_cpu_ns_per_publish": cpu.as_nanos() as f64 / acked.max(1) as f64,
            "producer_cpu_utilisation": cpu.as_secs_f64() / wall.as_secs_f64(),
            "generator_cpu_utilisation": own.as_secs_f64() / wall.as_secs_f64(),
            "full_rate_latency_ms_p50": quantile(&full_latency, 0.5),
            "full_rate_latency_ms_p99": quantile(&full_latency, 0.99),
            "half_rate_target_per_second": half,
            "half_rate_acked": paced.acked.load(Ordering::Relaxed),
            "half_rate_errors": paced.errors.load(Ordering::Relaxed),
            "half_rate_latency_ms_p50": quantile(&latency, 0.5),
            "half_rate_latency_ms_p99": quantile(&latency, 0.99),
            "half_rate_latency_ms_p999": quantile(&latency, 0.999),
            "half_rate_latency_ms_max": latency.max() as f64 / 1000.0,
        }))
    })
}

async fn wait_ready(nodes: &NodeProcesses, consumers: usize) -> Result<(), String> {
    let admin = nodes.config.producers[0]
        .admin
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(body) = http_get(&admin, "/readyz").await {
            if body.matches(r#""state":"up""#).count() == consumers {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the producer's links did not come up within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain `GET` over a socket; the body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answer_ids() {
        assert_eq!(
            answer_id(br#"{"type":"ack","id":42,"epoch":1,"offset":2}"#),
            Some(Ok(42))
        );
        assert_eq!(
            answer_id(br#"{"type":"error","id":7,"code":"unavailable"}"#),
            Some(Err(7))
        );
        assert_eq!(answer_id(br#"{"type":"message"}"#), None);
    }
}
