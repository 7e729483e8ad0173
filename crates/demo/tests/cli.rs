//! The `shardq-demo` binary as people run it.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use shardq_tests::Cluster;

fn demo(args: &[&str], psk: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardq-demo"));
    command
        .args(args)
        .env_remove("SHARDQ_PSK")
        .env_remove("SHARDQ_CONFIG");
    if let Some(psk) = psk {
        command.env("SHARDQ_PSK", psk);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn local_checks_an_embedded_cluster_and_exits_0() {
    let output = demo(&["local"], None);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    // Through both producers to a topic of each of the three consumers.
    assert_eq!(
        stdout.matches("arrives at its owner").count(),
        6,
        "{stdout}"
    );
    assert!(stdout.contains("publish → delivery"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_passes_with_the_psk_and_fails_without_it() {
    let cluster = Cluster::builder().consumers(3).producers(2).start().await;
    let dir = std::env::temp_dir().join(format!("shardq-demo-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardq.toml");
    std::fs::write(&path, cluster.config.to_toml()).unwrap();
    let file = path.to_str().unwrap().to_owned();
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();

    let (good_file, good_psk) = (file.clone(), psk.clone());
    let good = tokio::task::spawn_blocking(move || {
        demo(&["e2e", "--config", &good_file], Some(&good_psk))
    })
    .await
    .unwrap();
    let stdout = text(&good.stdout);
    assert!(good.status.success(), "{stdout}\n{}", text(&good.stderr));
    assert_eq!(
        stdout.matches("arrives at its owner").count(),
        20,
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let json_file = file.clone();
    let json = tokio::task::spawn_blocking(move || {
        demo(
            &["e2e", "--config", &json_file, "--json", "--topics", "3"],
            Some(&psk),
        )
    })
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["failed"], 0, "{report}");

    let bad = tokio::task::spawn_blocking(move || {
        demo(&["e2e", "--config", &file], Some("some-other-psk-entirely"))
    })
    .await
    .unwrap();
    let stdout = text(&bad.stdout);
    assert!(!bad.status.success());
    assert!(
        stdout.contains("FAIL  producer-0 authenticates"),
        "{stdout}"
    );
    assert!(
        text(&bad.stderr).contains("checks failed"),
        "{}",
        text(&bad.stderr)
    );
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mistakes_get_one_clear_line() {
    let missing = demo(
        &[
            "pub",
            "--config",
            "/nonexistent/shardq.toml",
            "database",
            "create",
            "1",
        ],
        Some("0123456789abcdef"),
    );
    assert!(!missing.status.success());
    let stderr = text(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read cluster file /nonexistent/shardq.toml"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("shardq-demo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardq.toml");
    std::fs::write(
        &path,
        "[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\n[[producers]]\nid = \"p\"\nurl = \"ws://127.0.0.1:2\"\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let no_psk = demo(&["pub", "--config", file, "database", "create", "1"], None);
    assert!(text(&no_psk.stderr).contains("no psk: set SHARDQ_PSK"));
    let unreachable = demo(
        &["pub", "--config", file, "database", "create", "1"],
        Some("0123456789abcdef"),
    );
    let stderr = text(&unreachable.stderr);
    assert!(
        stderr.contains("cannot reach ws://127.0.0.1:2/v1/publish"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let owner = demo(&["owner", "--config", file, "files/save"], None);
    assert_eq!(text(&owner.stdout).trim(), "c");
    let bad_url = demo(&["health", "ftp://x"], None);
    assert!(text(&bad_url.stderr).contains("only http:// URLs"));
    let _ = std::fs::remove_dir_all(dir);
}
