//! Following the cluster file while a node runs: it is re-read on SIGHUP
//! and whenever its contents change (checked every second). A file that
//! does not parse is logged and ignored; the last good one stays. The
//! watcher stops with the node: once nobody holds its receiver.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::ClusterConfig;
use shardq_protocol::cluster_file::parse_cluster;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// How often the file is checked for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Follows the cluster file at `path`; the receiver starts at `initial`
/// and sees every later version that parses and differs.
pub fn watch_cluster_file(
    path: PathBuf,
    initial: ClusterConfig,
) -> watch::Receiver<Arc<ClusterConfig>> {
    let (updates, receiver) = watch::channel(Arc::new(initial));
    tokio::spawn(follow(path, updates));
    receiver
}

/// The watcher's loop; returns once every receiver is gone.
pub(crate) async fn follow(path: PathBuf, updates: watch::Sender<Arc<ClusterConfig>>) {
    // Nothing read yet: the first look compares the file with `initial`
    // itself, so a change made while the node started is not missed.
    let mut last: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut hangups = Hangups::new();
    loop {
        let forced = tokio::select! {
            () = updates.closed() => return,
            _ = tick.tick() => false,
            () = hangups.next() => true,
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                if forced {
                    tracing::warn!(path = %path.display(), %error, "cannot re-read the cluster file; keeping the node list");
                }
                continue;
            }
        };
        if !forced && last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes.clone());
        apply(&path, bytes, &updates);
    }
}

/// Sends the file's new contents on, if they parse and differ.
fn apply(path: &Path, bytes: Vec<u8>, updates: &watch::Sender<Arc<ClusterConfig>>) {
    match parse_cluster(path, bytes) {
        Ok(cluster) => {
            if **updates.borrow() != cluster {
                tracing::info!(path = %path.display(), hash = %cluster.node_list_hash(), "cluster file changed; reloading");
                updates.send_replace(Arc::new(cluster));
            }
        }
        Err(error) => {
            tracing::warn!(%error, "the cluster file does not parse; keeping the node list");
        }
    }
}

/// SIGHUPs, where the platform has them.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Hangups {
        Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Completes on the next SIGHUP (never, where there are none).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut() {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "[[consumers]]\nid = \"c0\"\nurl = \"ws://127.0.0.1:1\"\n";

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardq-watch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shardq.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn follows_changes_and_stops_with_the_node() {
        let path = temp_file("follow", ONE);
        let initial = ClusterConfig::parse(ONE).unwrap();
        let (updates, mut receiver) = watch::channel(Arc::new(initial));
        let watcher = tokio::spawn(follow(path.clone(), updates));
        let two = format!("{ONE}[[consumers]]\nid = \"c1\"\nurl = \"ws://127.0.0.1:2\"\n");
        std::fs::write(&path, &two).unwrap();
        tokio::time::timeout(POLL_EVERY * 10, receiver.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(receiver.borrow().consumer_ids(), ["c0", "c1"]);
        // The node stops: the watcher ends.
        drop(receiver);
        tokio::time::timeout(POLL_EVERY * 10, watcher)
            .await
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_file_that_does_not_parse_or_did_not_change_is_not_sent() {
        let initial = ClusterConfig::parse(ONE).unwrap();
        let (updates, receiver) = watch::channel(Arc::new(initial));
        let path = Path::new("shardq.toml");
        apply(path, b"[[consumers]]\n".to_vec(), &updates);
        apply(path, ONE.as_bytes().to_vec(), &updates);
        assert!(!receiver.has_changed().unwrap());
        apply(path, ONE.replace("c0", "c9").into_bytes(), &updates);
        assert!(receiver.has_changed().unwrap());
        assert_eq!(receiver.borrow().consumer_ids(), ["c9"]);
    }
}
