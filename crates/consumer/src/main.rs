//! `shardq-consumer`: parses flags, loads the cluster file and psk, binds,
//! and runs the consumer until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use shardq_consumer::node::{self, NodeArgs, StartError};
use shardq_consumer::{ConsumerConfig, run};

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
    let cluster = node::load_cluster(&args.config)?;
    let entry = cluster
        .consumer(&args.id)
        .cloned()
        .ok_or_else(|| StartError::UnknownId {
            id: args.id.clone(),
            kind: "consumers",
            path: args.config.clone(),
            known: cluster.consumer_ids().join(", "),
        })?;
    let psk = node::load_psk(std::env::var("SHARDQ_PSK").ok(), &cluster, &args.config)?;
    let listen = args.listen.unwrap_or_else(|| entry.listen_addr());
    let admin_listen = args
        .admin_listen
        .or_else(|| entry.admin_listen_addr())
        .unwrap_or_else(|| "0.0.0.0:9100".to_owned());
    let listener = node::bind(&listen).await?;
    let admin = node::bind(&admin_listen).await?;
    tracing::info!(id = %args.id, %listen, admin = %admin_listen, "starting consumer");
    let updates = node::watch_cluster_file(args.config.clone(), cluster.clone());
    let config = ConsumerConfig {
        id: args.id,
        cluster,
        psk,
        updates: Some(updates),
    };
    run(listener, Some(admin), config, node::stop_signal()).await;
    Ok(())
}
