//! `shardq-producer`: parses flags, loads the cluster file and psk, binds,
//! and runs the producer until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use shardq_consumer::node::{self, NodeArgs, StartError};
use shardq_producer::{ProducerConfig, run};

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
    let cluster = node::load_cluster(&args.config)?;
    let entry = cluster
        .producer(&args.id)
        .cloned()
        .ok_or_else(|| StartError::UnknownId {
            id: args.id.clone(),
            kind: "producers",
            path: args.config.clone(),
            known: cluster
                .producers
                .iter()
                .map(|entry| entry.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let psk = node::load_psk(std::env::var("SHARDQ_PSK").ok(), &cluster, &args.config)?;
    let listen = args.listen.unwrap_or_else(|| entry.listen_addr());
    let admin_listen = args
        .admin_listen
        .or_else(|| entry.admin_listen_addr())
        .unwrap_or_else(|| "0.0.0.0:9000".to_owned());
    let listener = node::bind(&listen).await?;
    let admin = node::bind(&admin_listen).await?;
    tracing::info!(id = %args.id, %listen, admin = %admin_listen, "starting producer");
    let updates = node::watch_cluster_file(args.config.clone(), cluster.clone());
    let config = ProducerConfig {
        id: args.id,
        cluster,
        psk,
        updates: Some(updates),
    };
    run(listener, Some(admin), config, node::stop_signal()).await;
    Ok(())
}
