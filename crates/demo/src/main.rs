//! `shardq-demo`: the embedded local cluster, the end-to-end check against a
//! deployed cluster, publish/subscribe at a terminal, and load generators.

mod bench_consumer;
mod lean;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BenchConsumer { args, json } => bench_consumer::run(args).map(|report| {
            if json {
                println!("{report}");
            } else {
                print_report(&report);
            }
        }),
    };
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
