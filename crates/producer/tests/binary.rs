//! The `shardq-producer` binary: refuses bad starts with one clear line,
//! and on SIGTERM answers every publish it took before it exits.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use shardq_net::channel::{Channel, Liveness};
use shardq_net::codec::encode;
use shardq_net::conn::{ConnLimits, Connection, Incoming, Reader};
use shardq_net::dial::{DialIdentity, DialOptions, dial};
use shardq_net::outbox::Outbox;
use shardq_net::{handshake, upgrade};
use shardq_protocol::frame::{encode_publish_ack_into, parse_publish_parts};
use shardq_protocol::{
    Accepts, ClusterConfig, Credentials, Frame, Limits, NodeEntry, Position, Psk,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardq-producer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn refuses_a_missing_psk() {
    let dir = temp_dir("nopsk");
    let path = dir.join("shardq.toml");
    std::fs::write(
        &path,
        "[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\n[[producers]]\nid = \"p\"\nurl = \"ws://127.0.0.1:2\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shardq-producer"))
        .args(["--config", path.to_str().unwrap(), "--id", "p"])
        .env_remove("SHARDQ_PSK")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no psk: set SHARDQ_PSK"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_shardq-producer"))
        .args(["--config", path.to_str().unwrap(), "--id", "c"])
        .env("SHARDQ_PSK", "0123456789abcdef")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a [[producers]] entry"), "{stderr}");
}

/// A stand-in consumer that acks every publish with consecutive offsets:
/// all a producer needs of its link, with nothing of the consumer crate.
async fn acking_consumer(listener: TcpListener, credentials: Credentials) {
    let tasks = TaskTracker::new();
    let limits = Limits::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (credentials, tasks, limits) = (credentials.clone(), tasks.clone(), limits.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let conn_limits = ConnLimits::from(&limits);
            let Ok(connection) = upgrade::upgrade(
                stream,
                &conn_limits,
                deadline,
                |_| Some(64 << 10),
                &tasks,
                None,
                None,
            )
            .await
            else {
                return;
            };
            let Connection {
                mut reader, outbox, ..
            } = connection;
            let failures = Counter::default();
            let preauth = limits.max_preauth_frame_bytes;
            let accepted = handshake::accept_shardq(
                &mut reader,
                &outbox,
                &credentials,
                Accepts::Nodes,
                false,
                "consumer-0",
                preauth,
                deadline,
                &failures,
            );
            if accepted.await.is_err() {
                return;
            }
            let mut channel = Channel::new(
                reader,
                outbox.clone(),
                Liveness::links(&limits),
                CancellationToken::new(),
            );
            let mut offset = 0;
            while let Ok(text) = channel.next_text().await {
                if let Some(publish) = parse_publish_parts(&text) {
                    offset += 1;
                    let mut ack = Vec::new();
                    encode_publish_ack_into(
                        &mut ack,
                        publish.id,
                        Position { epoch: 1, offset },
                        false,
                    );
                    let _ = outbox.push(encode::text_frame(&ack));
                }
            }
        });
    }
}

/// A publisher connection over the nodes' own client side.
struct Publisher {
    reader: Reader,
    outbox: std::sync::Arc<Outbox>,
}

impl Publisher {
    async fn connect(url: &str, psk: &Psk, tasks: &TaskTracker) -> Option<Publisher> {
        let options = DialOptions {
            identity: DialIdentity::Client {
                key: psk.clone(),
                client: None,
                name: Some("test".into()),
            },
            timeout: Duration::from_secs(5),
            max_frame_bytes: 1 << 20,
            outbox_bytes: 64 << 20,
            write: shardq_net::writer::WriteLimit::default(),
            tls: None,
        };
        let dialed = dial(url, &options, tasks).await.ok()?;
        Some(Publisher {
            reader: dialed.reader,
            outbox: dialed.outbox,
        })
    }

    fn send(&self, text: &str) {
        self.outbox
            .push(encode::masked_text_frame(text.as_bytes()))
            .unwrap();
    }

    /// The next text frame, or the close code (`None` without one) as `Err`.
    async fn next(&mut self) -> Result<String, Option<u16>> {
        loop {
            match self.reader.next().await {
                Incoming::Text(text) => return Ok(text.to_string()),
                Incoming::PeerClosed(code) => return Err(code),
                Incoming::Closed | Incoming::Violation(..) => return Err(None),
                Incoming::Binary | Incoming::Pong => continue,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_publish_in_flight() {
    let psk = Psk::generate();
    let consumer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (producer_port, admin_port) = (free_port(), free_port());
    let mut queues = shardq_protocol::QueueConfig::new();
    queues.set_open_topics(true);
    let cluster = ClusterConfig::new(
        vec![NodeEntry {
            id: "consumer-0".into(),
            url: format!("ws://{}", consumer_listener.local_addr().unwrap()),
            admin: None,
            listen: None,
            http: None,
        }],
        vec![NodeEntry {
            id: "producer-0".into(),
            url: format!("ws://127.0.0.1:{producer_port}"),
            admin: Some(format!("http://127.0.0.1:{admin_port}")),
            listen: Some(format!("127.0.0.1:{producer_port}")),
            http: None,
        }],
        queues,
        Limits::default(),
    );
    let node_key = Psk::generate();
    let credentials = Credentials::new(psk.clone(), node_key.clone());
    let consumer = tokio::spawn(acking_consumer(consumer_listener, credentials));
    let dir = temp_dir("sigterm");
    let path = dir.join("shardq.toml");
    std::fs::write(&path, cluster.to_toml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardq-producer"))
        .args(["--config", path.to_str().unwrap(), "--id", "producer-0"])
        .env(
            "SHARDQ_PSK",
            String::from_utf8(psk.as_bytes().to_vec()).unwrap(),
        )
        .env(
            "SHARDQ_NODE_KEY",
            String::from_utf8(node_key.as_bytes().to_vec()).unwrap(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Wait for the link to the consumer.
    let url = format!("ws://127.0.0.1:{producer_port}/v1/publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let tasks = TaskTracker::new();
    let mut publisher = loop {
        if let Some(mut publisher) = Publisher::connect(&url, &psk, &tasks).await {
            publisher.send(r#"{"type":"publish","id":0,"topic":"t/probe","payload":0}"#);
            let answer = publisher.next().await.unwrap();
            if answer.contains(r#""type":"ack""#) {
                break publisher;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "producer never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    const N: u64 = 5000;
    for id in 1..=N {
        let frame = format!(
            r#"{{"type":"publish","id":{id},"topic":"t/e{}","payload":{id}}}"#,
            id % 11
        );
        publisher.send(&frame);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let mut answered = BTreeSet::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), publisher.next())
            .await
            .unwrap()
        {
            Ok(text) => {
                let id = match Frame::decode(text.as_bytes(), usize::MAX).unwrap() {
                    Frame::Ack(ack) => ack.id,
                    Frame::Error(error) => {
                        assert!(
                            matches!(error.code.as_str(), "shutting_down" | "unavailable"),
                            "{error:?}"
                        );
                        error.id.unwrap()
                    }
                    other => panic!("{other:?}"),
                };
                assert!(answered.insert(id), "{id} answered twice");
            }
            Err(code) => break code,
        }
    };
    eprintln!("answered {} of {N} before closing", answered.len());
    assert_eq!(
        close,
        Some(1001),
        "closed with going away after the answers"
    );
    let expected: Vec<u64> = (1..=answered.len() as u64).collect();
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        expected,
        "answers have gaps"
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    consumer.abort();
    let _ = std::fs::remove_dir_all(dir);
}
