//! `shardq-demo dashboard` as people run it: the README's browser flow
//! without the browser (`local --keep-running` in one process, `dashboard`
//! on its cluster file in another, the page's token accepted by a consumer
//! and by a producer's HTTP API), and one clear line for each mistake.
//! tests/tests/browser.rs drives the page itself in Chromium.

#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use shardq_protocol::{ClientHandshake, ClusterConfig, Nonce};
use shardq_tests::raw::{expect_ack, expect_message};
use shardq_tests::{PATIENCE, RawClient, http_get, http_request};
use tokio::sync::mpsc;

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardq-demo"));
    command.env_remove("SHARDQ_PSK").env_remove("SHARDQ_CONFIG");
    command
}

fn run(args: &[&str]) -> Output {
    demo().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `shardq-demo`, killed when dropped, and its stdout's lines.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = demo()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first line of its output containing `needle` (within PATIENCE).
    async fn line(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("shardq-demo ended without printing {needle:?}");
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("shardq-demo printed no {needle:?} in time"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_keep_running_then_dashboard_serves_a_token_the_cluster_accepts() {
    let dir = std::env::temp_dir().join(format!("shardq-demo-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shardq-local.toml");
    let file_arg = file.to_str().unwrap();
    let mut local = Running::start(&["local", "--keep-running", "--config-out", file_arg]);
    local.line("The cluster keeps running").await;

    // The file local wrote: a token key beside it, tokens over plaintext
    // (its nodes listen on 127.0.0.1), and every producer's HTTP API.
    let cluster = ClusterConfig::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        cluster.tokens.hs256_secret_files,
        vec!["shardq-local.token-key".to_owned()]
    );
    assert!(cluster.tokens.allow_plaintext);
    assert!(dir.join("shardq-local.token-key").is_file());
    assert!(cluster.producers.iter().all(|p| p.http.is_some()));

    let mut dashboard = Running::start(&[
        "dashboard",
        "--config",
        file_arg,
        "--listen",
        "127.0.0.1:0",
        "--name",
        "my-page",
    ]);
    let line = dashboard.line("is at http://").await;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let site = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (status, page) = http_get(site, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"id="count""#));
    let (status, body) = http_get(site, "/config.json").await;
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = config["token"].as_str().unwrap().to_owned();
    assert_eq!(config["consumers"].as_array().unwrap().len(), 3, "{config}");

    // The page's token subscribes at a consumer and publishes over HTTP.
    let consumer = config["consumers"][0].as_str().unwrap();
    let handshake = ClientHandshake::token(token.clone(), Nonce::random(), None);
    let mut subscriber = RawClient::connect_with(consumer, handshake).await.unwrap();
    expect_ack(subscriber.subscribe(1, "database/create").await);
    let http = config["http"][0].as_str().unwrap();
    let http = shardq_protocol::config::host_port(http)
        .unwrap()
        .parse()
        .unwrap();
    let headers = [("Authorization", format!("Bearer {token}"))];
    let (status, body) = http_request(
        http,
        "POST",
        "/v1/topics/database/create",
        &headers,
        r#"{"id":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = expect_message(subscriber.recv().await);
    assert_eq!(message.payload.get(), r#"{"id":1}"#);
    // It may do nothing else.
    let (status, _) = http_request(http, "POST", "/v1/topics/files/save", &headers, "1").await;
    assert_eq!(status, 403);

    drop(dashboard);
    drop(local);
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes a cluster file (and a token key beside it) in a fresh directory.
fn cluster_file(name: &str, text: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("shardq-dashboard-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("token.key"),
        "token-secret-of-at-least-32-bytes!!\n",
    )
    .unwrap();
    let path = dir.join("shardq.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

/// Runs `dashboard` on a cluster file; it must fail with one line naming `expected`.
fn refused(file: &str, extra: &[&str], expected: &str) {
    let mut args = vec!["dashboard", "--config", file, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let output = run(&args);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output.stdout));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn dashboard_mistakes_get_one_clear_line() {
    const NODES: &str = "[queues]\ndatabase = [\"create\"]\n[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\n";
    let (no_key_dir, no_key) = cluster_file("no-key", NODES);
    refused(&no_key, &[], r#"hs256_secret_files = ["token.key"]"#);
    let with_key = format!("[tokens]\nhs256_secret_files = [\"token.key\"]\n{NODES}");
    let (plaintext_dir, plaintext) = cluster_file("plaintext", &with_key);
    refused(&plaintext, &[], "allow_plaintext = true");
    let allowed = with_key.replace("[tokens]\n", "[tokens]\nallow_plaintext = true\n");
    let (topic_dir, topic) = cluster_file("topic", &allowed);
    refused(&topic, &["--event", "nosuch"], "database/nosuch");
    for dir in [no_key_dir, plaintext_dir, topic_dir] {
        let _ = std::fs::remove_dir_all(Path::new(&dir));
    }
}
