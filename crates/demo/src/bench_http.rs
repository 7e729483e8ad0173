//! `shardq-demo bench-http`: the HTTP API against WebSocket on the same
//! nodes, measured alternately (A B A B …) so that the machine's noise
//! falls on both alike.
//!
//! * `publish`: one producer (with its HTTP API) and the consumers
//!   `bench-producer` uses; keep-alive HTTP/1.1 connections each `POST`ing
//!   one publish at a time, then as many WebSocket publishers (through
//!   `bench-producer`'s own phase) with the same number in flight: acked
//!   publishes per second, publish→answer latency, and the producer's CPU
//!   per publish from its own accounting.
//! * `fanout`: one consumer; subscribers over Server-Sent Events, then as
//!   many over WebSocket (`bench-consumer`'s subscribers), each round on a
//!   fresh topic fed by `bench-consumer`'s node publisher: the consumer's
//!   CPU per delivery and the bytes per delivery on the wire.
//!
//! The nodes run as their own processes, pinned as in the other node
//! benchmarks (the node under test on CPU 0, the rest on CPU 1).

mod client;
mod fanout;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use shardq_protocol::ClusterConfig;

use crate::bench_consumer::ConsumerProcess;
use crate::bench_producer::{
    BenchProducerArgs, Meter, Pace, Phase, PhaseCpu, Tally, new_histogram, run_phase, wait_ready,
};
use crate::lean::LeanConn;
use crate::processes::{self, NodeProcesses};
use client::{HttpConn, basic_auth};

/// What to compare.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Mode {
    /// Publishing: HTTP `POST` against WebSocket (acked/s, latency, producer CPU).
    Publish(PublishArgs),
    /// Fan-out: Server-Sent Events against WebSocket (consumer CPU and bytes per delivery).
    Fanout(FanoutArgs),
}

/// Options of `bench-http`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchHttpArgs {
    /// The comparison.
    #[command(subcommand)]
    pub mode: Mode,
    /// Where the node binaries are (default: next to this one).
    #[arg(long, global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Do not pin the node under test and the rest to separate CPUs.
    #[arg(long, global = true)]
    pub no_pin: bool,
}

/// Options of `bench-http publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Seconds of each measurement (each path is measured --rounds times).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Client connections of each path.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Publishes in flight per WebSocket connection (1: like HTTP, which
    /// waits for each answer before the next request).
    #[arg(long, default_value_t = 1)]
    pub ws_window: usize,
    /// Consumers behind the producer.
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// Topics, published round-robin.
    #[arg(long, default_value_t = 1000)]
    pub topics: usize,
    /// Payload size in bytes (a JSON string).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Measurements of each path, alternating HTTP and WebSocket.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

/// Options of `bench-http fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscribers of each path, all on one topic.
    #[arg(long, default_value_t = 256)]
    pub subscribers: usize,
    /// Messages published in each measurement.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Payload size in bytes (a JSON string).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Measurements of each path, alternating Server-Sent Events and WebSocket.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

/// Gives every node an HTTP API on a free port, and lets it take
/// credentials over plaintext (the benchmark has no TLS).
fn with_http(mut config: ClusterConfig) -> Result<ClusterConfig, String> {
    for entry in config
        .consumers
        .iter_mut()
        .chain(config.producers.iter_mut())
    {
        entry.http = Some(format!("http://127.0.0.1:{}", processes::free_port()?));
    }
    config.tokens.allow_plaintext = true;
    Ok(config)
}

fn http_addr(url: &Option<String>) -> String {
    url.as_deref()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .to_owned()
}

/// Runs the comparison; the report as JSON.
pub fn run(args: BenchHttpArgs) -> Result<Value, String> {
    let fd_limit = processes::hard_fd_limit();
    let pin = !args.no_pin;
    processes::prepare_self(pin.then_some("1"), fd_limit)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match args.mode {
        Mode::Publish(publish_args) => {
            if publish_args.connections == 0
                || publish_args.consumers == 0
                || publish_args.topics == 0
                || publish_args.ws_window == 0
                || publish_args.rounds == 0
            {
                return Err(
                    "--connections, --consumers, --topics, --ws-window and --rounds must be at least 1"
                        .into(),
                );
            }
            let nodes = NodeProcesses::start(
                with_http(processes::plan(publish_args.consumers, 1)?)?,
                &args.bin_dir,
                |id| pin.then(|| if id.starts_with("producer") { "0" } else { "1" }.to_owned()),
                fd_limit,
            )?;
            runtime.block_on(publish(&nodes, &publish_args))
        }
        Mode::Fanout(fanout_args) => {
            if fanout_args.subscribers == 0 || fanout_args.rounds == 0 {
                return Err("--subscribers and --rounds must be at least 1".into());
            }
            let nodes = NodeProcesses::start(
                with_http(processes::plan(1, 0)?)?,
                &args.bin_dir,
                |_| pin.then(|| "0".to_owned()),
                fd_limit,
            )?;
            let pid = nodes
                .pid("consumer-0")
                .ok_or("the consumer process is gone")?;
            let consumer = ConsumerProcess {
                addr: nodes.config.consumers[0]
                    .url
                    .trim_start_matches("ws://")
                    .to_owned(),
                psk: nodes.psk.clone(),
                nodes,
            };
            runtime.block_on(fanout::fanout(&consumer, pid, &fanout_args))
        }
    }
}

/// One path's measurements of `publish`, summed over its rounds.
struct PublishTotals {
    acked: u64,
    errors: u64,
    /// The first refusal, as `status body`.
    first_error: Option<String>,
    latency: Histogram<u64>,
    /// Producer CPU (all, user) in nanoseconds.
    producer_ns: f64,
    producer_user_ns: f64,
    rates: Vec<f64>,
    ns_per_publish: Vec<f64>,
    /// CPU utilisation of the producer, the consumers and this generator, summed.
    utilisation: [f64; 3],
}

impl PublishTotals {
    fn new() -> Result<PublishTotals, String> {
        Ok(PublishTotals {
            acked: 0,
            errors: 0,
            first_error: None,
            latency: new_histogram()?,
            producer_ns: 0.0,
            producer_user_ns: 0.0,
            rates: Vec::new(),
            ns_per_publish: Vec::new(),
            utilisation: [0.0; 3],
        })
    }

    fn add(&mut self, tally: &Tally, cpu: &PhaseCpu) -> Result<(), String> {
        self.acked += tally.acked;
        self.errors += tally.errors;
        self.latency
            .add(&tally.latency)
            .map_err(|e| e.to_string())?;
        self.producer_ns += cpu.producer_ns_per_publish * tally.acked as f64;
        self.producer_user_ns += cpu.producer_user_ns_per_publish * tally.acked as f64;
        self.rates.push(cpu.rate.round());
        self.ns_per_publish
            .push(cpu.producer_ns_per_publish.round());
        for (sum, value) in
            self.utilisation
                .iter_mut()
                .zip([cpu.producer, cpu.consumers, cpu.generator])
        {
            *sum += value;
        }
        Ok(())
    }

    /// The report's fields for this path, named `{path}_…`.
    fn report(&self, path: &str, report: &mut Map<String, Value>) {
        let rounds = self.rates.len().max(1) as f64;
        let acked = self.acked.max(1) as f64;
        let quantile = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let fields = [
            ("acked", json!(self.acked)),
            ("errors", json!(self.errors)),
            ("first_error", json!(self.first_error)),
            (
                "acked_per_second",
                json!(self.rates.iter().sum::<f64>() / rounds),
            ),
            ("acked_per_second_rounds", json!(self.rates)),
            ("latency_ms_p50", json!(quantile(0.5))),
            ("latency_ms_p99", json!(quantile(0.99))),
            ("latency_ms_p999", json!(quantile(0.999))),
            ("latency_ms_max", json!(self.latency.max() as f64 / 1000.0)),
            (
                "producer_cpu_ns_per_publish",
                json!(self.producer_ns / acked),
            ),
            (
                "producer_user_cpu_ns_per_publish",
                json!(self.producer_user_ns / acked),
            ),
            (
                "producer_cpu_ns_per_publish_rounds",
                json!(self.ns_per_publish),
            ),
            (
                "producer_cpu_utilisation",
                json!(self.utilisation[0] / rounds),
            ),
            (
                "consumers_cpu_utilisation",
                json!(self.utilisation[1] / rounds),
            ),
            (
                "generator_cpu_utilisation",
                json!(self.utilisation[2] / rounds),
            ),
        ];
        for (name, value) in fields {
            report.insert(format!("{path}_{name}"), value);
        }
    }
}

/// `publish`: rounds of HTTP then WebSocket after an unmeasured second of
/// each (the topics' state on the consumers, the producer's buffers).
async fn publish(nodes: &NodeProcesses, args: &PublishArgs) -> Result<Value, String> {
    let producer = &nodes.config.producers[0];
    let ws_addr = producer.url.trim_start_matches("ws://").to_owned();
    let http = http_addr(&producer.http);
    let auth = basic_auth("-", nodes.psk.as_bytes());
    wait_ready(nodes, args.consumers).await?;
    let ws_args = BenchProducerArgs {
        publishers: args.connections,
        consumers: args.consumers,
        topics: args.topics,
        payload: args.payload,
        window: args.ws_window,
        seconds: args.seconds,
        bin_dir: None,
        no_pin: false,
        latency_rate: None,
        tick_us: 200,
    };
    let mut totals = [PublishTotals::new()?, PublishTotals::new()?];
    let measured = Duration::from_secs(args.seconds.max(1));
    let warmup = Duration::from_secs(1);
    for round in 0..=args.rounds {
        let duration = if round == 0 { warmup } else { measured };
        // A: HTTP.
        let mut conns = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            conns.push(
                HttpConn::connect(&http)
                    .await
                    .map_err(|e| format!("HTTP publisher: cannot reach {http}: {e}"))?,
            );
        }
        let meter = Meter::start(nodes, args.consumers);
        let (tally, first_error) = http_phase(conns, &auth, args, duration).await?;
        let cpu = meter.stop(tally.acked);
        if round > 0 {
            totals[0].add(&tally, &cpu)?;
            totals[0].first_error = totals[0].first_error.take().or(first_error);
        }
        // B: WebSocket.
        let mut conns = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            conns.push(
                LeanConn::open(&ws_addr, "/v1/publish", &nodes.psk)
                    .await
                    .map_err(|e| format!("WebSocket publisher: {e}"))?,
            );
        }
        let meter = Meter::start(nodes, args.consumers);
        let phase = Phase {
            pace: Pace::Closed,
            duration,
        };
        let (tally, _) = run_phase(conns, &ws_args, phase, 0).await?;
        let cpu = meter.stop(tally.acked);
        if round > 0 {
            totals[1].add(&tally, &cpu)?;
        }
    }
    let mut report = Map::new();
    report.insert("scenario".into(), json!("http_publish"));
    report.insert("connections".into(), json!(args.connections));
    report.insert("ws_window".into(), json!(args.ws_window));
    report.insert("consumers".into(), json!(args.consumers));
    report.insert("topics".into(), json!(args.topics));
    report.insert("payload_bytes".into(), json!(args.payload));
    report.insert("rounds".into(), json!(args.rounds));
    report.insert("seconds_per_round".into(), json!(measured.as_secs()));
    totals[0].report("http", &mut report);
    totals[1].report("ws", &mut report);
    let ratio = (totals[0].producer_ns / totals[0].acked.max(1) as f64)
        / (totals[1].producer_ns / totals[1].acked.max(1) as f64).max(1.0);
    report.insert("http_over_ws_producer_cpu".into(), json!(ratio));
    Ok(Value::Object(report))
}

/// Keeps each connection `POST`ing one publish at a time for `duration`;
/// what was answered, and the first refusal.
async fn http_phase(
    conns: Vec<HttpConn>,
    auth: &str,
    args: &PublishArgs,
    duration: Duration,
) -> Result<(Tally, Option<String>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let body = Arc::new(format!(
        "\"{}\"",
        "x".repeat(args.payload.saturating_sub(2))
    ));
    let auth: Arc<str> = Arc::from(auth);
    let mut tasks = Vec::with_capacity(conns.len());
    let stride = conns.len();
    for (index, mut conn) in conns.into_iter().enumerate() {
        let (stop, body, auth, topics) = (stop.clone(), body.clone(), auth.clone(), args.topics);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                acked: 0,
                errors: 0,
                latency: new_histogram()?,
            };
            let mut first_error = None;
            let (mut request, mut path) = (Vec::with_capacity(512), String::new());
            let mut next = index;
            while !stop.load(Ordering::Relaxed) {
                path.clear();
                let _ = write!(path, "/v1/topics/bench/t{}", next % topics);
                next += stride;
                request.clear();
                conn.encode_post(&mut request, &path, &auth, body.as_bytes());
                let sent = Instant::now();
                let (status, answer) = conn
                    .exchange(&request)
                    .await
                    .map_err(|e| format!("HTTP publisher {index}: {e}"))?;
                let _ = tally
                    .latency
                    .record((sent.elapsed().as_micros() as u64).max(1));
                if status == 200 {
                    tally.acked += 1;
                } else {
                    tally.errors += 1;
                    first_error.get_or_insert_with(|| {
                        format!("{status} {}", String::from_utf8_lossy(answer))
                    });
                }
            }
            Ok::<_, String>((tally, first_error))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally {
        acked: 0,
        errors: 0,
        latency: new_histogram()?,
    };
    let mut first_error = None;
    for task in tasks {
        let (tally, error) = task.await.map_err(|e| e.to_string())??;
        total.acked += tally.acked;
        total.errors += tally.errors;
        total
            .latency
            .add(&tally.latency)
            .map_err(|e| e.to_string())?;
        first_error = first_error.or(error);
    }
    Ok((total, first_error))
}
