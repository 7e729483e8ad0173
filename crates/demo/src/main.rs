//! `shardq-demo`: the embedded local cluster, the end-to-end check against a
//! deployed cluster, publish/subscribe and queue-group workers at a
//! terminal, health checks, tokens and the app dashboard for browsers, and
//! load generators.

mod bench;
mod bench_consumer;
mod bench_http;
mod bench_producer;
mod clients;
mod cluster;
mod cluster_view;
mod dashboard;
mod e2e;
mod health;
mod lean;
mod local;
mod processes;
mod procstat;
mod pubsub;
mod soak;
mod token;
mod work;

use std::future::Future;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shardq's demo and operations tool.
#[derive(Debug, Parser)]
#[command(name = "shardq-demo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a whole cluster in this process, check it end to end, report.
    Local(local::LocalArgs),
    /// Check a deployed cluster end to end (PASS/FAIL per check).
    E2e(e2e::E2eArgs),
    /// Publish a message (or one per stdin line).
    Pub(pubsub::PubArgs),
    /// Print each message of one or more topics as a JSON line.
    Sub(pubsub::SubArgs),
    /// Print the id of the consumer that owns a topic.
    Owner(pubsub::OwnerArgs),
    /// Show every node's view of the cluster side by side; warn where they disagree.
    ///
    /// Asks every node of the cluster file that has an `admin` URL for its
    /// `GET /v1/status`, all at once, each within --timeout, and compares
    /// the node lists they run with the file's and with each other's.
    ///
    /// Exit status: 0 when every node with an admin URL answered, as the node
    /// the file names, with the file's node list; 1 when one is unreachable,
    /// answers as another node, or runs another node list (or the file
    /// cannot be read, or no node has an admin URL). Links that are down and
    /// nodes without an admin URL are warned about but do not change it.
    Cluster(cluster_view::ClusterViewArgs),
    /// Exit 0 when an HTTP URL answers 200 (container healthchecks).
    Health {
        /// e.g. http://127.0.0.1:9100/healthz
        url: String,
    },
    /// Load a cluster and report throughput, loss and latency.
    Bench(bench::BenchArgs),
    /// Measure one consumer process: fan-out cost, or memory per idle subscriber.
    BenchConsumer {
        #[command(flatten)]
        args: bench_consumer::BenchConsumerArgs,
        /// Print the report as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Steady load while a test injects faults, then a verdict on every promise.
    Soak(soak::SoakArgs),
    /// Every node's connected clients in one table (`GET /v1/clients`).
    Clients(clients::ClientsArgs),
    /// Mint a signed client token (JWT) for browsers and short-lived jobs.
    Token(token::TokenArgs),
    /// Serve the app dashboard: a page counting a topic's messages live.
    Dashboard(dashboard::DashboardArgs),
    /// Measure one producer process: acked publishes/s, CPU per publish, latency.
    BenchProducer {
        #[command(flatten)]
        args: bench_producer::BenchProducerArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the HTTP API with WebSocket: publishes, and fan-out over Server-Sent Events.
    BenchHttp {
        #[command(flatten)]
        args: bench_http::BenchHttpArgs,
        /// Print the report as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Join a queue group as a worker: print each job and ack it (Ctrl-C stops).
    Work(work::WorkArgs),
}

fn block_on<T>(future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(future)
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local(args) => block_on(local::run(args)),
        Command::E2e(args) => block_on(e2e::run(args)),
        Command::Pub(args) => block_on(pubsub::publish(args)),
        Command::Sub(args) => block_on(pubsub::subscribe(args)),
        Command::Owner(args) => pubsub::owner(args),
        Command::Cluster(args) => block_on(cluster_view::run(args)),
        Command::Health { url } => block_on(async move { health::run(&url).await }),
        Command::Soak(args) => block_on(soak::run(args)),
        Command::Token(args) => token::run(args),
        Command::Dashboard(args) => block_on(dashboard::run(args)),
        Command::Clients(args) => block_on(clients::run(args)),
        Command::Bench(args) => {
            let json = args.json;
            block_on(bench::run(args)).map(|report| print_report(&report, json))
        }
        Command::BenchConsumer { args, json } => {
            bench_consumer::run(args).map(|report| print_report(&report, json))
        }
        Command::BenchProducer { args, json } => {
            bench_producer::run(args).map(|report| print_report(&report, json))
        }
        Command::BenchHttp { args, json } => {
            bench_http::run(args).map(|report| print_report(&report, json))
        }
        Command::Work(args) => block_on(work::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardq-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(report: &serde_json::Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    if let Some(fields) = report.as_object() {
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        for (key, value) in fields {
            match value.as_f64() {
                Some(number) if number.fract() != 0.0 => println!("{key:width$}  {number:.3}"),
                _ => println!("{key:width$}  {value}"),
            }
        }
    }
}
