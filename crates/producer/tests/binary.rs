//! The `shardq-producer` binary: refuses bad starts with one clear line,
//! and on SIGTERM answers every publish it took before it exits.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{ClusterConfig, Frame, NodeEntry, Psk};
use tokio_tungstenite::tungstenite::Message;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_publish_in_flight() {
    let psk = Psk::generate();
    let consumer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (producer_port, admin_port) = (free_port(), free_port());
    let mut queues = shardq_protocol::QueueConfig::new();
    queues.set_open_topics(true);
    let cluster = ClusterConfig {
        consumers: vec![NodeEntry {
            id: "consumer-0".into(),
            url: format!("ws://{}", consumer_listener.local_addr().unwrap()),
            admin: None,
            listen: None,
        }],
        producers: vec![NodeEntry {
            id: "producer-0".into(),
            url: format!("ws://127.0.0.1:{producer_port}"),
            admin: Some(format!("http://127.0.0.1:{admin_port}")),
            listen: Some(format!("127.0.0.1:{producer_port}")),
        }],
        queues,
        limits: Default::default(),
        psk_file: None,
    };
    let consumer = tokio::spawn(shardq_consumer::run(
        consumer_listener,
        None,
        shardq_consumer::ConsumerConfig {
            id: "consumer-0".into(),
            cluster: cluster.clone(),
            psk: psk.clone(),
            updates: None,
        },
        std::future::pending(),
    ));
    let dir = temp_dir("sigterm");
    let path = dir.join("shardq.toml");
    std::fs::write(&path, cluster.to_toml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardq-producer"))
        .args(["--config", path.to_str().unwrap(), "--id", "producer-0"])
        .env(
            "SHARDQ_PSK",
            String::from_utf8(psk.as_bytes().to_vec()).unwrap(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Wait for the link to the consumer.
    let url = format!("ws://127.0.0.1:{producer_port}/v1/publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut publisher = loop {
        if let Ok(connection) =
            shardq::connection::connect(&url, &psk, None, Duration::from_secs(5)).await
        {
            let mut socket = connection.socket;
            socket
                .send(Message::text(
                    r#"{"type":"publish","id":0,"topic":"t/probe","payload":0}"#,
                ))
                .await
                .unwrap();
            let answer = socket.next().await.unwrap().unwrap();
            if answer.to_text().unwrap().contains(r#""type":"ack""#) {
                break socket;
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
        publisher.feed(Message::text(frame)).await.unwrap();
    }
    publisher.flush().await.unwrap();
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
            Some(Ok(Message::Text(text))) => {
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
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
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
