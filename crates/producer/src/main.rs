//! `shardq-producer`: parses flags, loads the cluster file and psk, binds,
//! and runs the producer until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use shardq_net::node::{self, NodeArgs, StartError};
use shardq_producer::{ProducerConfig, run_with_http};
use shardq_protocol::status::NodeKind;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A shardq producer node.
#[derive(Debug, Parser)]
#[command(name = "shardq-producer", version, about)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    node::init_logging();
    let args = Args::parse();
    match start(args.node).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardq-producer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: NodeArgs) -> Result<(), StartError> {
    let node = node::prepare(args, NodeKind::Producer).await?;
    let config = ProducerConfig {
        id: node.id,
        cluster: node.cluster,
        credentials: node.credentials,
        admin_token: node.admin_token,
        tls: node.tls,
        updates: Some(node.updates),
    };
    run_with_http(
        node.listener,
        Some(node.admin),
        node.http,
        config,
        node::stop_signal(),
    )
    .await;
    Ok(())
}
