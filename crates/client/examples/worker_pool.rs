//! A pool of workers in one process sharing a queue group: each joins
//! group `pool` of `database/create` (by default), and the topic's owner
//! hands every message to one of them, which prints and acks it.
//! docs/PROTOCOL.md section 15 says how groups dispatch and redeliver.
//!
//! ```sh
//! cargo run -p shardq --example worker_pool -- shardq-local.toml 3 database/create pool
//! # elsewhere: feed it (one job per line)
//! seq 1 10 | cargo run -p shardq-demo -- pub --config shardq-local.toml database create
//! ```
//! The psk comes from `SHARDQ_PSK` or the cluster file's `psk_file`.

use std::path::PathBuf;

use shardq::{AckError, Subscriber, SubscriberConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path: PathBuf = args
        .next()
        .unwrap_or_else(|| "shardq-local.toml".into())
        .into();
    let workers: usize = args.next().map_or(Ok(3), |n| n.parse())?;
    let topic = args.next().unwrap_or_else(|| "database/create".into());
    let group = args.next().unwrap_or_else(|| "pool".into());
    let (queue, event) = topic
        .split_once('/')
        .ok_or_else(|| format!("{topic:?} is not queue/event"))?;

    let (cluster, psk) = shardq::cluster_file::load(&path)?;
    let subscriber = Subscriber::connect(SubscriberConfig::from_cluster(&cluster, psk)).await?;
    let mut pool = Vec::new();
    for worker in 0..workers {
        // Each membership has its own connection to the topic's owner.
        let mut work = subscriber.join(queue, event, &group).await?;
        pool.push(tokio::spawn(async move {
            while let Some(job) = work.next().await {
                let again = match job.redelivered {
                    0 => String::new(),
                    n => format!(" (delivered {n} time(s) before)"),
                };
                println!("worker {worker}: #{} {}{again}", job.offset, job.payload);
                match job.ack().await {
                    Ok(()) => {}
                    // Its connection was lost: the owner delivers it again.
                    Err(AckError::ConnectionLost) => {
                        println!("worker {worker}: #{} comes again", job.offset)
                    }
                    Err(error) => eprintln!("worker {worker}: #{}: {error}", job.offset),
                }
            }
        }));
    }
    println!("{workers} workers in group {group} of {topic} (Ctrl-C to stop)");
    for worker in pool {
        worker.await?;
    }
    Ok(())
}
