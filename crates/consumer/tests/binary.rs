//! The `shardq-consumer` binary refuses bad starts with one clear line.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cluster_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardq-consumer-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const CLUSTER: &str = "[[consumers]]\nid = \"consumer-0\"\nurl = \"ws://127.0.0.1:1\"\n";

fn run(args: &[&str], psk: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardq-consumer"));
    command
        .args(args)
        .env_remove("SHARDQ_PSK")
        .env_remove("SHARDQ_ID")
        .env_remove("SHARDQ_CONFIG");
    if let Some(psk) = psk {
        command.env("SHARDQ_PSK", psk);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn refuses_a_missing_psk() {
    let path = cluster_file("ok.toml", CLUSTER);
    let (ok, stderr) = run(
        &["--config", path.to_str().unwrap(), "--id", "consumer-0"],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("no psk: set SHARDQ_PSK"), "{stderr}");
}

#[test]
fn refuses_a_short_psk() {
    let path = cluster_file("ok.toml", CLUSTER);
    let (ok, stderr) = run(
        &["--config", path.to_str().unwrap(), "--id", "consumer-0"],
        Some("short"),
    );
    assert!(!ok);
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

#[test]
fn refuses_an_unknown_id() {
    let path = cluster_file("ok.toml", CLUSTER);
    let (ok, stderr) = run(
        &["--config", path.to_str().unwrap(), "--id", "consumer-9"],
        Some("0123456789abcdef"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("\"consumer-9\" is not a [[consumers]] entry"),
        "{stderr}"
    );
    assert!(stderr.contains("known: consumer-0"), "{stderr}");
}

#[test]
fn refuses_a_broken_file_naming_the_line() {
    let path = cluster_file(
        "broken.toml",
        &format!("{CLUSTER}\n[queues]\nfiles = [\"save\"\n"),
    );
    let (ok, stderr) = run(
        &["--config", path.to_str().unwrap(), "--id", "consumer-0"],
        Some("0123456789abcdef"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("broken.toml: line 6, column 16: "),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
