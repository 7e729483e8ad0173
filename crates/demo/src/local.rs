//! `shardq-demo local`: a whole cluster in this process (3 consumers, 2
//! producers, the seeds' queues, a fresh psk, free ports), checked end to
//! end, reported, and optionally kept running for other terminals.

use std::path::PathBuf;

use crate::cluster::{Embedded, seed_queues};
use crate::e2e::{self, Plan};

/// Options of `local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Keep the cluster running (until Ctrl-C) and print how to use it.
    #[arg(long)]
    pub keep_running: bool,
    /// Where `--keep-running` writes the cluster file (and the psk beside it).
    #[arg(long, default_value = "shardq-local.toml")]
    pub config_out: PathBuf,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Starts the cluster, checks it, reports; keeps it up if asked.
pub async fn run(args: LocalArgs) -> Result<(), String> {
    let cluster = Embedded::start(3, 2, seed_queues()).await?;
    if !args.json {
        println!("shardq local cluster (in this process, psk generated for this run)");
        for (kind, entries) in [
            ("consumer", &cluster.config.consumers),
            ("producer", &cluster.config.producers),
        ] {
            for entry in entries.iter() {
                let admin = entry.admin.as_deref().unwrap_or("-");
                let http = entry.http.as_deref().unwrap_or("-");
                println!(
                    "  {kind:8}  {:10}  {}  admin {admin}  http {http}",
                    entry.id, entry.url
                );
            }
        }
        println!();
    }
    let checks = e2e::run_checks(&cluster.config, &cluster.psk, None, Plan::EveryPair).await;
    let verdict = e2e::report(&checks, args.json);
    if !args.json {
        let mut latencies: Vec<f64> = checks.iter().filter_map(|c| c.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
            let median = latencies[latencies.len() / 2];
            println!(
                "publish → delivery over {} round trips: min {first:.2} ms, median {median:.2} ms, max {last:.2} ms",
                latencies.len()
            );
        }
    }
    if verdict.is_ok() && args.keep_running {
        keep_running(&cluster, &args)?;
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        println!("stopping");
    }
    cluster.stop().await;
    verdict
}

fn keep_running(cluster: &Embedded, args: &LocalArgs) -> Result<(), String> {
    let psk_path = args.config_out.with_extension("psk");
    write_private(&psk_path, cluster.psk.as_bytes())?;
    let node_key_path = args.config_out.with_extension("node-key");
    write_private(&node_key_path, cluster.node_key.as_bytes())?;
    let token_key_path = args.config_out.with_extension("token-key");
    write_private(&token_key_path, cluster.token_key.as_bytes())?;
    let mut config = cluster.config.clone();
    // Relative to the cluster file, as nodes and tools resolve them.
    let name = |path: &std::path::Path| {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
    };
    config.psk_file = name(&psk_path);
    config.node_key_file = name(&node_key_path);
    // What `shardq-demo token` and `dashboard` sign with. Tokens over
    // plaintext (ws://) are allowed because every node of this cluster
    // listens on 127.0.0.1 only: nobody else is on the path to read one.
    config.tokens.hs256_secret_files = name(&token_key_path).into_iter().collect();
    config.tokens.allow_plaintext = true;
    let header = "# Written by `shardq-demo local --keep-running` for this run's ports and keys.\n\
                  # [tokens] allow_plaintext = true: every node listens on 127.0.0.1 only, so\n\
                  # nobody else is on the path to read a token sent over ws://.\n\n";
    std::fs::write(&args.config_out, format!("{header}{}", config.to_toml()))
        .map_err(|e| format!("cannot write {}: {e}", args.config_out.display()))?;
    let file = args.config_out.display();
    println!();
    println!("The cluster keeps running; Ctrl-C stops it.");
    println!(
        "Its cluster file is {file} (the psk is in {}).",
        psk_path.display()
    );
    println!("From other terminals:");
    println!("  cargo run --release -p shardq-demo -- sub --config {file} database create update");
    println!(
        "  cargo run --release -p shardq-demo -- pub --config {file} database create '{{\"id\":99,\"name\":\"John\"}}'"
    );
    println!("  cargo run --release -p shardq-demo -- e2e --config {file}");
    println!("  cargo run --release -p shardq-demo -- bench --config {file} --seconds 10");
    println!("  cargo run --release -p shardq --example logger -- {file}");
    println!(
        "  cargo run --release -p shardq-demo -- dashboard --config {file}   # then open http://127.0.0.1:8088/"
    );
    if let Some(http) = config.producers.first().and_then(|p| p.http.as_deref()) {
        println!(
            "  curl -H \"Authorization: Bearer $(cargo run -q --release -p shardq-demo -- token --config {file} --name curl --publish 'database/*')\" -d '{{\"id\":7}}' {http}/v1/topics/database/create"
        );
    }
    if let Some(http) = config.consumers.first().and_then(|c| c.http.as_deref()) {
        println!(
            "  curl -N \"{http}/v1/topics/database/create/events?access_token=$(cargo run -q --release -p shardq-demo -- token --config {file} --name curl-sse --subscribe 'database/*')\""
        );
    }
    println!("  cargo run --release -p shardq-demo -- clients --config {file}");
    if let Some(admin) = config.consumers.first().and_then(|c| c.admin.as_deref()) {
        println!("  open {admin}/dashboard   # the operator dashboard");
    }
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
