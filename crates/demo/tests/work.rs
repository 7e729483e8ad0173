//! `shardq-demo work` as people run it: a worker joins a queue group on a
//! cluster file, prints each job it is handed as a JSON line and acks it;
//! a wildcard topic or a malformed group gets one clear line.

#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};

use shardq_tests::raw::expect_ack;
use shardq_tests::{Cluster, PATIENCE};
use tokio::sync::mpsc;

/// A running `shardq-demo`, killed when dropped, with its stdout's and
/// stderr's lines.
struct Running {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

/// Forwards each line of `pipe` to a channel, from a thread.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (send, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Running {
    fn start(args: &[&str], psk: &str) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardq-demo"))
            .args(args)
            .env_remove("SHARDQ_CONFIG")
            .env("SHARDQ_PSK", psk)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The next line of `stream`, within PATIENCE; `None` once it ended.
    async fn next(stream: &mut mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(PATIENCE, stream.recv())
            .await
            .expect("a line in time")
    }

    /// Every stderr line up to the one containing `needle`.
    async fn stderr_until(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        while let Some(line) = Running::next(&mut self.stderr).await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
        panic!("shardq-demo ended without printing {needle:?}: {seen}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_prints_and_acks_each_job_then_mistakes_get_one_line() {
    let cluster = Cluster::builder().consumers(2).producers(1).start().await;
    let dir = std::env::temp_dir().join(format!("shardq-demo-work-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardq.toml");
    std::fs::write(&path, cluster.config.to_toml()).unwrap();
    let file = path.to_str().unwrap();
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();

    let mut worker = Running::start(
        &[
            "work", "--config", file, "--group", "billing", "--count", "3", "database", "create",
        ],
        &psk,
    );
    worker
        .stderr_until("joined group billing of database/create")
        .await;
    let mut publisher = cluster.publisher(0).await;
    for n in 1..=3u64 {
        expect_ack(
            publisher
                .publish(n, "database/create", &format!(r#"{{"n":{n}}}"#))
                .await,
        );
    }
    for n in 1..=3u64 {
        let line = Running::next(&mut worker.stdout).await.unwrap();
        let job: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(job["topic"], "database/create", "{line}");
        assert_eq!(job["group"], "billing", "{line}");
        assert_eq!(job["redelivered"], 0, "{line}");
        assert_eq!(job["acked"], true, "{line}");
        assert_eq!(job["payload"]["n"], n, "{line}");
        assert!(job["offset"].as_u64().unwrap() > 0, "{line}");
    }
    // --count 3: it leaves the group and exits 0.
    worker.stderr_until("acked 3 job(s)").await;
    let status = shardq_tests::until("the worker exits", || {
        let status = worker.child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".to_owned()),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await;
    assert!(status.success(), "{status}");

    for (args, expected) in [
        (
            ["--group", "billing", "database", "*"],
            "a queue group takes one exact topic, not database/*",
        ),
        (
            ["--group", "bill ing", "database", "create"],
            "invalid group name \"bill ing\"",
        ),
    ] {
        let mut all = vec!["work", "--config", file];
        all.extend_from_slice(&args);
        let mut refused = Running::start(&all, &psk);
        let stderr = refused.stderr_until("shardq-demo:").await;
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn work_explains_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_shardq-demo"))
        .args(["work", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in ["--group", "--ack-delay-ms", "--count", "--config"] {
        assert!(help.contains(option), "{option} missing:\n{help}");
    }
}
