//! `shardq-demo bench-producer`: acked publishes per second through one
//! producer process and its CPU per publish, then publish→ack latency at
//! half that rate.
//!
//! The producer runs pinned to CPU 0 with one tokio worker; the consumers
//! and this load generator share CPU 1, so the producer's own accounting is
//! the figure that matters.
//!
//! The first phase is closed-loop: each connection keeps `--window`
//! publishes in flight. The second is open-loop: each connection sends
//! what a constant-rate schedule says is due every `--tick-us`, and the
//! latency of each publish counts from the moment its batch was written.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

use crate::lean::{LeanConn, LeanReader};
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
    /// Microseconds between the paced phase's sends (each sends what the
    /// schedule says is due).
    #[arg(long, default_value_t = 200)]
    pub tick_us: u64,
}

/// What a phase measured, summed over its connections.
pub(crate) struct Tally {
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    /// Publish→answer, in microseconds.
    pub(crate) latency: Histogram<u64>,
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

/// How a phase sends.
#[derive(Clone, Copy)]
pub(crate) enum Pace {
    /// As fast as the window allows: a new batch as soon as answers free slots.
    Closed,
    /// An open-loop schedule of this many publishes per second per
    /// connection, sent on every tick of the high-resolution ticker.
    Rate(f64),
}

pub(crate) struct Phase {
    pub(crate) pace: Pace,
    pub(crate) duration: Duration,
}

/// What a connection's writer and reader share: send times by id (a ring
/// as deep as the window, nanoseconds since `epoch`, 0 for none) and the
/// count in flight. Atomics only, so neither side ever waits on a lock.
struct Flight {
    epoch: Instant,
    sent_at: Box<[AtomicU64]>,
    in_flight: AtomicU64,
    /// The reader freed window slots.
    progress: tokio::sync::Notify,
    /// The writer sent its last publish and every answer is in (or late).
    done: tokio::sync::Notify,
}

impl Flight {
    fn slot(&self, id: u64) -> &AtomicU64 {
        &self.sent_at[(id % self.sent_at.len() as u64) as usize]
    }
}

/// Wakes paced writers every `tick` until dropped; sub-millisecond, which
/// tokio's timer is not, so a paced phase sends a steady stream of small
/// batches instead of a burst per millisecond.
struct Ticker {
    notify: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(tick: Duration) -> Ticker {
        let notify = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, halt) = (notify.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                wake.notify_waiters();
            }
        });
        Ticker { notify, stop }
    }

    /// A ticker that never ticks.
    fn idle() -> Ticker {
        Ticker {
            notify: Arc::new(tokio::sync::Notify::new()),
            stop: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads answers until told to stop; what it counted, and the reader back.
async fn read_answers(
    mut reader: LeanReader,
    flight: Arc<Flight>,
) -> Result<(Tally, LeanReader), String> {
    let mut tally = Tally {
        acked: 0,
        errors: 0,
        latency: new_histogram()?,
    };
    loop {
        let frame = tokio::select! {
            frame = reader.next_text() => match frame {
                Ok(frame) => frame,
                Err(error) => return Err(format!("publisher connection: {error}")),
            },
            () = flight.done.notified() => break,
        };
        let id = match answer_id(frame) {
            Some(Ok(id)) => {
                tally.acked += 1;
                id
            }
            Some(Err(id)) => {
                tally.errors += 1;
                id
            }
            None => continue,
        };
        let sent = flight.slot(id).swap(0, Ordering::AcqRel);
        if sent != 0 {
            let now = flight.epoch.elapsed().as_nanos() as u64;
            let _ = tally
                .latency
                .record((now.saturating_sub(sent) / 1000).max(1));
        }
        flight.in_flight.fetch_sub(1, Ordering::AcqRel);
        flight.progress.notify_one();
    }
    Ok((tally, reader))
}

pub(crate) fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

/// Runs one phase over `conns`: what was acked, the latencies, and the
/// connections back for the next phase.
pub(crate) async fn run_phase(
    conns: Vec<LeanConn>,
    args: &BenchProducerArgs,
    phase: Phase,
    first_id: u64,
) -> Result<(Tally, Vec<LeanConn>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    // Only a paced phase needs the ticker (its wakeups cost CPU 1 time).
    let ticker = match phase.pace {
        Pace::Rate(_) => Ticker::start(Duration::from_micros(args.tick_us.max(10))),
        Pace::Closed => Ticker::idle(),
    };
    let body = format!("\"{}\"", "x".repeat(args.payload.saturating_sub(2)));
    let mut tasks = Vec::new();
    for (index, conn) in conns.into_iter().enumerate() {
        let (stop, body, tick) = (stop.clone(), body.clone(), ticker.notify.clone());
        let (window, topics, pace) = (args.window, args.topics as u64, phase.pace);
        tasks.push(tokio::spawn(async move {
            let LeanConn { reader, mut writer } = conn;
            let flight = Arc::new(Flight {
                epoch: Instant::now(),
                sent_at: (0..window).map(|_| AtomicU64::new(0)).collect(),
                in_flight: AtomicU64::new(0),
                progress: tokio::sync::Notify::new(),
                done: tokio::sync::Notify::new(),
            });
            let reading = tokio::spawn(read_answers(reader, flight.clone()));
            let mut id = first_id + (index as u64) * 1_000_000_000;
            let mut out = Vec::with_capacity(64 << 10);
            let mut json = Vec::with_capacity(body.len() + 64);
            let mut sent = 0u64;
            let mut failed = None;
            while !stop.load(Ordering::Relaxed) {
                let in_flight = flight.in_flight.load(Ordering::Acquire);
                let free = (window as u64).saturating_sub(in_flight);
                let allowed = match pace {
                    Pace::Closed => free.min(256),
                    Pace::Rate(rate) => {
                        let due = (flight.epoch.elapsed().as_secs_f64() * rate) as u64;
                        free.min(due.saturating_sub(sent))
                    }
                };
                if allowed == 0 {
                    match pace {
                        Pace::Closed => flight.progress.notified().await,
                        Pace::Rate(_) => tick.notified().await,
                    }
                    continue;
                }
                out.clear();
                let now = (flight.epoch.elapsed().as_nanos() as u64).max(1);
                for _ in 0..allowed {
                    id += 1;
                    json.clear();
                    json.extend_from_slice(br#"{"type":"publish","id":"#);
                    json.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
                    json.extend_from_slice(br#","topic":"bench/t"#);
                    json.extend_from_slice(itoa::Buffer::new().format(id % topics).as_bytes());
                    json.extend_from_slice(br#"","payload":"#);
                    json.extend_from_slice(body.as_bytes());
                    json.push(b'}');
                    LeanConn::encode_text(&mut out, &json);
                    flight.slot(id).store(now, Ordering::Release);
                }
                flight.in_flight.fetch_add(allowed, Ordering::AcqRel);
                sent += allowed;
                if let Err(error) = writer.write_all(&out).await {
                    failed = Some(format!("publisher connection: {error}"));
                    break;
                }
            }
            // Let the answers in flight arrive.
            let deadline = Instant::now() + Duration::from_secs(10);
            while flight.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            flight.done.notify_one();
            let (tally, reader) = reading.await.map_err(|e| e.to_string())??;
            match failed {
                Some(error) => Err(error),
                None => Ok((tally, LeanConn { reader, writer })),
            }
        }));
    }
    tokio::time::sleep(phase.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally {
        acked: 0,
        errors: 0,
        latency: new_histogram()?,
    };
    let mut conns = Vec::new();
    for task in tasks {
        let (tally, conn) = task.await.map_err(|e| e.to_string())??;
        total.acked += tally.acked;
        total.errors += tally.errors;
        total
            .latency
            .add(&tally.latency)
            .map_err(|e| e.to_string())?;
        conns.push(conn);
    }
    Ok((total, conns))
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
        let phase = Phase {
            pace: Pace::Closed,
            duration: Duration::from_secs(args.seconds),
        };
        let meter = Meter::start(&nodes, args.consumers);
        let (full, conns) = run_phase(conns, &args, phase, 0).await?;
        let full_cpu = meter.stop(full.acked);

        // Phase 2: half that rate, paced, for latency.
        let half = args.latency_rate.unwrap_or(full_cpu.rate / 2.0);
        let phase = Phase {
            pace: Pace::Rate(half / args.publishers as f64),
            duration: Duration::from_secs(args.seconds),
        };
        let meter = Meter::start(&nodes, args.consumers);
        let (paced, _) = run_phase(conns, &args, phase, 1 << 40).await?;
        let half_cpu = meter.stop(paced.acked);
        let quantile = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok(serde_json::json!({
            "scenario": "producer",
            "publishers": args.publishers,
            "consumers": args.consumers,
            "topics": args.topics,
            "payload_bytes": args.payload,
            "window_per_publisher": args.window,
            "tick_us": args.tick_us,
            "acked": full.acked,
            "errors": full.errors,
            "acked_per_second": full_cpu.rate,
            "producer_cpu_ns_per_publish": full_cpu.producer_ns_per_publish,
            "producer_user_cpu_ns_per_publish": full_cpu.producer_user_ns_per_publish,
            "producer_cpu_utilisation": full_cpu.producer,
            "consumers_cpu_utilisation": full_cpu.consumers,
            "generator_cpu_utilisation": full_cpu.generator,
            "full_rate_latency_ms_p50": quantile(&full.latency, 0.5),
            "full_rate_latency_ms_p99": quantile(&full.latency, 0.99),
            "half_rate_target_per_second": half,
            "half_rate_acked_per_second": half_cpu.rate,
            "half_rate_errors": paced.errors,
            "half_rate_producer_cpu_ns_per_publish": half_cpu.producer_ns_per_publish,
            "half_rate_consumers_cpu_utilisation": half_cpu.consumers,
            "half_rate_generator_cpu_utilisation": half_cpu.generator,
            "half_rate_latency_ms_p50": quantile(&paced.latency, 0.5),
            "half_rate_latency_ms_p90": quantile(&paced.latency, 0.9),
            "half_rate_latency_ms_p95": quantile(&paced.latency, 0.95),
            "half_rate_latency_ms_p99": quantile(&paced.latency, 0.99),
            "half_rate_latency_ms_p999": quantile(&paced.latency, 0.999),
            "half_rate_latency_ms_max": paced.latency.max() as f64 / 1000.0,
        }))
    })
}

/// CPU time of the producer, the consumers and this generator over a phase.
pub(crate) struct Meter {
    started: Instant,
    pids: Vec<u32>,
    before: Vec<(Duration, Duration)>,
    consumers: usize,
}

/// A phase's rate and CPU use (utilisation = CPU seconds per second).
pub(crate) struct PhaseCpu {
    pub(crate) rate: f64,
    pub(crate) producer_ns_per_publish: f64,
    pub(crate) producer_user_ns_per_publish: f64,
    pub(crate) producer: f64,
    pub(crate) consumers: f64,
    pub(crate) generator: f64,
}

impl Meter {
    /// Starts measuring: `pids` are the producer, then the consumers, then this process.
    pub(crate) fn start(nodes: &NodeProcesses, consumers: usize) -> Meter {
        let mut pids: Vec<u32> = std::iter::once("producer-0".to_owned())
            .chain((0..consumers).map(|i| format!("consumer-{i}")))
            .filter_map(|id| nodes.pid(&id))
            .collect();
        pids.push(std::process::id());
        let before = pids
            .iter()
            .map(|pid| procstat::cpu_times(*pid).unwrap_or_default())
            .collect();
        Meter {
            started: Instant::now(),
            pids,
            before,
            consumers,
        }
    }

    pub(crate) fn stop(self, acked: u64) -> PhaseCpu {
        let wall = self.started.elapsed().as_secs_f64();
        // (user, user + system) seconds of each process over the phase.
        let used: Vec<(f64, f64)> = self
            .pids
            .iter()
            .zip(&self.before)
            .map(|(pid, (user0, system0))| {
                let (user, system) = procstat::cpu_times(*pid).unwrap_or_default();
                let user = user.saturating_sub(*user0).as_secs_f64();
                (user, user + system.saturating_sub(*system0).as_secs_f64())
            })
            .collect();
        let (producer_user, producer) = used.first().copied().unwrap_or_default();
        let consumers: f64 = used.iter().skip(1).take(self.consumers).map(|u| u.1).sum();
        let generator = used.last().map(|u| u.1).unwrap_or_default();
        let per_publish = |seconds: f64| seconds * 1e9 / acked.max(1) as f64;
        PhaseCpu {
            rate: acked as f64 / wall,
            producer_ns_per_publish: per_publish(producer),
            producer_user_ns_per_publish: per_publish(producer_user),
            producer: producer / wall,
            consumers: consumers / wall,
            generator: generator / wall,
        }
    }
}

pub(crate) async fn wait_ready(nodes: &NodeProcesses, consumers: usize) -> Result<(), String> {
    let admin = nodes.config.producers[0]
        .admin
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(body) = http_get(&admin, "/readyz").await
            && body.matches(r#""state":"up""#).count() == consumers
        {
            return Ok(());
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
