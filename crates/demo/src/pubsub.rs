//! `pub`, `sub` and `owner`: the cluster at a terminal.

use std::io::BufRead as _;
use std::time::Duration;

use shardq::{Event, PublishError, Publisher, PublisherConfig};
use shardq_protocol::{RawValue, Router, Topic};

use crate::cluster::ClusterArgs;

/// Options of `pub`.
#[derive(Debug, Clone, clap::Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Publish through this producer only (default: the first reachable).
    #[arg(long)]
    pub producer: Option<String>,
    /// The queue, e.g. `database`.
    pub queue: String,
    /// The event, e.g. `create`.
    pub event: String,
    /// The payload as JSON; without it, one payload per line of stdin.
    pub json: Option<String>,
}

/// Options of `sub`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// The queue, e.g. `database`.
    pub queue: String,
    /// One or more events (`*` for all of the queue's).
    #[arg(required = true)]
    pub events: Vec<String>,
}

/// Options of `owner`.
#[derive(Debug, Clone, clap::Args)]
pub struct OwnerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A `queue/event` topic.
    pub topic: String,
}

/// `shardq-demo pub`: one JSON line per message; `Err` if any was not acked.
pub async fn publish(args: PubArgs) -> Result<(), String> {
    let (cluster, psk) = args.cluster.load()?;
    let urls: Vec<String> = match &args.producer {
        Some(id) => vec![
            cluster
                .producer(id)
                .ok_or_else(|| format!("no producer {id:?} in {}", args.cluster.config.display()))?
                .url
                .clone(),
        ],
        None => cluster
            .producers
            .iter()
            .map(|entry| entry.url.clone())
            .collect(),
    };
    if urls.is_empty() {
        return Err(format!(
            "{} declares no [[producers]]",
            args.cluster.config.display()
        ));
    }
    let topic = Topic::new(&args.queue, &args.event).map_err(|e| e.to_string())?;
    let tls = args.cluster.tls(&cluster)?;
    let publisher = Publisher::connect(PublisherConfig {
        tls,
        ..PublisherConfig::new(urls, psk)
    })
    .await
    .map_err(|e| e.to_string())?;
    let payloads: Vec<String> = match args.json {
        Some(json) => vec![json],
        None => std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .filter(|line| !line.trim().is_empty())
            .collect(),
    };
    let mut failures = 0;
    for payload in payloads {
        if RawValue::from_string(payload.clone()).is_err() {
            failures += 1;
            println!(
                "{}",
                serde_json::json!({"ok": false, "topic": topic.as_str(), "code": "bad_json", "message": format!("not valid JSON: {payload}")})
            );
            continue;
        }
        match publisher
            .publish_raw(topic.queue(), topic.event(), &payload)
            .await
        {
            Ok(ack) => println!(
                "{}",
                serde_json::json!({"ok": true, "topic": topic.as_str(), "epoch": ack.epoch, "offset": ack.offset})
            ),
            Err(error) => {
                failures += 1;
                let code = match &error {
                    PublishError::Refused { code, .. } => code.as_str().to_owned(),
                    PublishError::Disconnected => "disconnected".into(),
                    PublishError::Timeout(_) => "timeout".into(),
                    _ => "error".into(),
                };
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "topic": topic.as_str(), "code": code, "message": error.to_string()})
                );
            }
        }
    }
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} publish(es) not acked"))
    }
}

/// `shardq-demo sub`: prints each message as a JSON line.
pub async fn subscribe(args: SubArgs) -> Result<(), String> {
    let subscriber = args.cluster.subscriber().await?;
    let (events, mut inbox) = tokio::sync::mpsc::channel(1024);
    for event in &args.events {
        let mut subscription = subscriber
            .subscribe(&args.queue, event)
            .await
            .map_err(|e| format!("{}/{event}: {e}", args.queue))?;
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                if events.send(event).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(events);
    eprintln!("subscribed to {}/{{{}}}", args.queue, args.events.join(","));
    let deadline = args
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => inbox.recv().await,
        };
        let Some(event) = next else { break };
        match event {
            Event::Message(message) => {
                received += 1;
                let line = serde_json::json!({
                    "topic": message.topic.as_str(),
                    "epoch": message.epoch,
                    "offset": message.offset,
                    "payload": message.payload,
                });
                println!("{line}");
            }
            Event::Gap(gap) => {
                let line = serde_json::json!({
                    "gap": true,
                    "topic": gap.topic.as_str(),
                    "after": {"epoch": gap.after.epoch, "offset": gap.after.offset},
                    "epoch": gap.epoch,
                    "offset": gap.offset,
                });
                println!("{line}");
            }
            Event::Stalled { topic, owner } => {
                let line =
                    serde_json::json!({"stalled": true, "topic": topic.as_str(), "owner": owner});
                println!("{line}");
            }
            Event::Resumed { topic } => {
                let line = serde_json::json!({"resumed": true, "topic": topic.as_str()});
                println!("{line}");
            }
        }
    }
    match args.count {
        Some(count) if received < count => Err(format!("received {received} of {count} messages")),
        _ => Ok(()),
    }
}

/// `shardq-demo owner`: the consumer that owns a topic.
pub fn owner(args: OwnerArgs) -> Result<(), String> {
    let cluster =
        shardq::cluster_file::load_cluster(&args.cluster.config).map_err(|e| e.to_string())?;
    let topic = Topic::parse(&args.topic).map_err(|e| e.to_string())?;
    let router = Router::new(&cluster.consumer_ids());
    let owner = router
        .owner_id(&topic)
        .ok_or("the cluster file declares no consumers")?;
    println!("{owner}");
    Ok(())
}
