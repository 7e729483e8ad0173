//! `shardq-demo`: the embedded local cluster, the end-to-end check against a
//! deployed cluster, publish/subscribe at a terminal, and load generators.

mod bench_consumer;
mod bench_producer;
mod lean;
mod processes;
mod procstat;

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
    /// Measure one consumer process: fan-out cost, or memory per idle subscriber.
    BenchConsumer {
        #[command(flatten)]
        args: bench_consumer::BenchConsumerArgs,
        /// Print the report as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Measure one producer process: acked publishes/s, CPU per publish, latency.
    BenchProducer {
        #[command(flatten)]
        args: bench_producer::BenchProducerArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (report, json) = match cli.command {
        Command::BenchConsumer { args, json } => (bench_consumer::run(args), json),
        Command::BenchProducer { args, json } => (bench_producer::run(args), json),
    };
    let result = report.map(|report| {
        if json {
            println!("{report}");
        } else {
            print_report(&report);
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardq-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(report: &serde_json::Value) {
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
