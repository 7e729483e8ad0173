//! The seeds' file writer: reads a file, upper-cases it, writes it back,
//! and publishes `files/save` on success or `files/error` on failure.
//!
//! ```sh
//! cargo run -p shardq --example file-writer -- shardq-local.toml notes.txt
//! ```
//! The psk comes from `SHARDQ_PSK` or the cluster file's `psk_file`.

use std::path::PathBuf;

use shardq::{Publisher, PublisherConfig};

fn rewrite(path: &PathBuf) -> std::io::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    let upper = text.to_uppercase();
    std::fs::write(path, &upper)?;
    Ok(upper.len())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cluster_path: PathBuf = args
        .next()
        .unwrap_or_else(|| "shardq-local.toml".into())
        .into();
    let Some(file) = args.next().map(PathBuf::from) else {
        eprintln!("usage: file-writer CLUSTER_FILE FILE");
        std::process::exit(2);
    };
    let (cluster, psk) = shardq::cluster_file::load(&cluster_path)?;
    let publisher = Publisher::connect(PublisherConfig::from_cluster(&cluster, psk)).await?;
    let path = file.display().to_string();
    match rewrite(&file) {
        Ok(bytes) => {
            let ack = publisher
                .publish(
                    "files",
                    "save",
                    &serde_json::json!({"path": path, "bytes": bytes}),
                )
                .await?;
            println!(
                "saved {path} ({bytes} bytes); files/save acked at offset {}",
                ack.offset
            );
        }
        Err(error) => {
            let ack = publisher
                .publish(
                    "files",
                    "error",
                    &serde_json::json!({"path": path, "error": error.to_string()}),
                )
                .await?;
            println!(
                "could not rewrite {path}: {error}; files/error acked at offset {}",
                ack.offset
            );
        }
    }
    Ok(())
}
