//! `work`: a queue-group worker at a terminal. It joins a group of one
//! topic at the topic's owner (PROTOCOL.md section 15), prints each job it
//! is handed as a JSON line and acks it, until Ctrl-C (or `--count`).

use std::time::Duration;

use shardq::Job;

use crate::cluster::ClusterArgs;

/// Options of `work`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The queue group to join: 1-64 characters of A-Z a-z 0-9 . _ : -
    /// (every worker with the same group shares the topic's messages).
    #[arg(long)]
    pub group: String,
    /// Wait this long before acking each job (to watch jobs spread over
    /// several workers, or come back when a worker is stopped mid-job).
    #[arg(long, default_value_t = 0)]
    pub ack_delay_ms: u64,
    /// Exit after acking this many jobs (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// The queue, e.g. `database`.
    pub queue: String,
    /// The event, e.g. `create` (one exact event: no `*`).
    pub event: String,
}

/// `shardq-demo work`: one JSON line per job, acked after `--ack-delay-ms`.
pub async fn run(args: WorkArgs) -> Result<(), String> {
    let subscriber = args.cluster.subscriber().await?;
    let topic = format!("{}/{}", args.queue, args.event);
    let mut work = subscriber
        .join(&args.queue, &args.event, &args.group)
        .await
        .map_err(|e| format!("{topic}: {e}"))?;
    eprintln!("joined group {} of {topic} (Ctrl-C to stop)", args.group);
    let delay = Duration::from_millis(args.ack_delay_ms);
    let mut acked = 0u64;
    let handle = async {
        while args.count.is_none_or(|count| acked < count) {
            let Some(job) = work.next().await else {
                return Err(format!(
                    "the membership of group {} of {topic} ended (see the log above)",
                    args.group
                ));
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let outcome = job.ack().await;
            if outcome.is_ok() {
                acked += 1;
            }
            println!("{}", line(&job, outcome.err().map(|e| e.to_string())));
        }
        Ok(())
    };
    let result = tokio::select! {
        result = handle => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    // Dropping the membership leaves the group: the owner hands what this
    // worker had not acked to the others.
    drop(work);
    eprintln!("acked {acked} job(s)");
    result
}

/// A job's line: where it is, how often it came before, its payload, and
/// whether the ack was taken (with why not).
fn line(job: &Job, error: Option<String>) -> serde_json::Value {
    let mut line = serde_json::json!({
        "topic": job.topic.as_str(),
        "group": job.group,
        "epoch": job.epoch,
        "offset": job.offset,
        "redelivered": job.redelivered,
        "payload": job.payload,
        "acked": error.is_none(),
    });
    if let (Some(error), Some(fields)) = (error, line.as_object_mut()) {
        fields.insert("error".into(), error.into());
    }
    line
}
