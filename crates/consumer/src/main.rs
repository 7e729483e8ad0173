//! `shardq-consumer`: parses flags, loads the cluster file and psk, binds,
//! and runs the consumer until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use shardq_consumer::{ConsumerConfig, run_with_http};
use shardq_net::node::{self, NodeArgs, StartError};
use shardq_protocol::status::NodeKind;

// Fan-out allocates and frees many small buffers across threads; mimalloc
// does that markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A shardq consumer node.
#[derive(Debug, Parser)]
#[command(name = "shardq-consumer", version, about)]
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
            eprintln!("shardq-consumer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: NodeArgs) -> Result<(), StartError> {
    let node = node::prepare(args, NodeKind::Consumer).await?;
    let config = ConsumerConfig {
        id: node.id,
        cluster: node.cluster,
        credentials: node.credentials,
        admin_token: node.admin_token,
        tls: node.tls,
        updates: Some(node.updates),
        data_dir: node.data_dir,
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
