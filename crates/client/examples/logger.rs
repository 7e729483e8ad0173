//! The seeds' logger application: subscribes to `files/save`,
//! `files/error` and every `database` event, and logs each one.
//!
//! ```sh
//! cargo run -p shardq --example logger -- shardq-local.toml
//! ```
//! The psk comes from `SHARDQ_PSK` or the cluster file's `psk_file`.

use std::path::PathBuf;

use shardq::{Event, Subscriber, SubscriberConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "shardq-local.toml".into())
        .into();
    let (cluster, psk) = shardq::cluster_file::load(&path)?;
    let subscriber = Subscriber::connect(SubscriberConfig::from_cluster(&cluster, psk)).await?;

    let (events, mut inbox) = tokio::sync::mpsc::channel(256);
    for (queue, event) in [("files", "save"), ("files", "error"), ("database", "*")] {
        let mut subscription = subscriber.subscribe(queue, event).await?;
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                let _ = events.send(event).await;
            }
        });
    }
    println!("logger: listening to files/save, files/error, database/* (Ctrl-C to stop)");
    println!("subscriptions: {:?}", subscriber.subscriptions());
    while let Some(event) = inbox.recv().await {
        match event {
            Event::Message(message) => {
                println!(
                    "[{}] {} #{}: {}",
                    message.topic.queue(),
                    message.topic.event(),
                    message.offset,
                    message.payload
                )
            }
            Event::Gap(gap) => println!(
                "[{}] messages may be missing after offset {}",
                gap.topic, gap.after.offset
            ),
            Event::Stalled { topic, owner } => {
                println!("[{topic}] waiting: its owner {owner} cannot be reached")
            }
            Event::Resumed { topic } => println!("[{topic}] flowing again"),
        }
    }
    Ok(())
}
