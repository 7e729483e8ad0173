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

/// Writes `text` as `shardq.toml` in a fresh directory named after `name`.
fn cluster_file(name: &str, text: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("shardq-demo-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardq.toml");
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap().to_owned();
    (dir, file)
}

async fn demo_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        demo(&args, None)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shows_every_nodes_view_and_names_the_one_that_disagrees() {
    let cluster = Cluster::builder().consumers(3).producers(2).start().await;
    let (dir, file) = cluster_file("cluster-view", &cluster.config.to_toml());
    let ids = [
        "consumer-0",
        "consumer-1",
        "consumer-2",
        "producer-0",
        "producer-1",
    ];
    let file_hash = cluster.config.node_list_hash();

    let agree = demo_async(vec!["cluster".into(), "--config".into(), file.clone()]).await;
    let stdout = text(&agree.stdout);
    assert!(agree.status.success(), "{stdout}\n{}", text(&agree.stderr));
    for id in ids {
        assert!(
            stdout.contains(&format!("\n{id} ")),
            "{id} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains(&file_hash), "{stdout}");
    assert!(
        stdout.contains("5 of 5 nodes answered; all run the file's node list"),
        "{stdout}"
    );

    let json = demo_async(vec![
        "cluster".into(),
        "--config".into(),
        file.clone(),
        "--json".into(),
    ])
    .await;
    assert!(json.status.success(), "{}", text(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["node_list_hash"], file_hash.as_str(), "{report}");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5, "{report}");
    for (node, id) in nodes.iter().zip(ids) {
        assert_eq!(node["id"], id, "{report}");
        assert_eq!(node["reachable"], true, "{report}");
        assert_eq!(
            node["answer"]["node_list_hash"],
            file_hash.as_str(),
            "{report}"
        );
    }

    // consumer-1 alone is handed a list without consumer-2.
    let mut shrunk = cluster.config.clone();
    shrunk.consumers.pop();
    cluster.consumers[1].reload(&shrunk);
    shardq_tests::eventually("consumer-1 applies the new list", || async {
        let (_, body) = shardq_tests::http_get(cluster.consumers[1].admin, "/v1/cluster").await;
        body.contains(&shrunk.node_list_hash())
    })
    .await;

    let disagree = demo_async(vec!["cluster".into(), "--config".into(), file.clone()]).await;
    let stdout = text(&disagree.stdout);
    let stderr = text(&disagree.stderr);
    assert_eq!(disagree.status.code(), Some(1), "{stdout}\n{stderr}");
    let warning = format!(
        "consumer-1 runs node list {} [consumer-0, consumer-1], not the file's {} \
         [consumer-0, consumer-1, consumer-2]: missing consumer-2",
        &shrunk.node_list_hash()[..8],
        &file_hash[..8]
    );
    assert!(stdout.contains(&warning), "{stdout}");
    assert!(
        stdout.contains("the nodes route with 2 different node lists"),
        "{stdout}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the cluster is not consistent: 1 of 5 nodes (1 on another node list)"),
        "{stderr}"
    );

    let json = demo_async(vec![
        "cluster".into(),
        "--config".into(),
        file,
        "--json".into(),
    ])
    .await;
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    let node_list = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|warning| warning["kind"] == "node_list")
        .unwrap();
    assert_eq!(node_list["nodes"], serde_json::json!(["consumer-1"]));
    assert_eq!(node_list["fails"], true);

    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cluster_reports_unreachable_and_unchecked_nodes_and_exits_1() {
    // Accepts connections (the kernel does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (dir, file) = cluster_file(
        "cluster-unreachable",
        &format!(
            "[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\nadmin = \"http://127.0.0.1:1\"\n\
             [[consumers]]\nid = \"d\"\nurl = \"ws://127.0.0.1:1\"\n\
             [[producers]]\nid = \"p\"\nurl = \"ws://127.0.0.1:2\"\nadmin = \"http://{silent_addr}/\"\n"
        ),
    );
    let output = demo(&["cluster", "--config", &file, "--timeout", "200ms"], None);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("c is unreachable: GET http://127.0.0.1:1/v1/status: "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "p is unreachable: GET http://{silent_addr}/v1/status: no answer within 200ms"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("d has no admin URL in the cluster file; its view cannot be checked"),
        "{stdout}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the cluster is not consistent: 2 of 3 nodes (2 unreachable)"),
        "{stderr}"
    );
    drop(silent);

    let (no_admin_dir, no_admin) = cluster_file(
        "cluster-no-admin",
        "[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\n",
    );
    let output = demo(&["cluster", "--config", &no_admin], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("nothing to check: no node in"),
        "{}",
        text(&output.stderr)
    );
    let bad_timeout = demo(&["cluster", "--config", &file, "--timeout", "soon"], None);
    assert!(!bad_timeout.status.success());
    assert!(text(&bad_timeout.stderr).contains("is not a duration"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(no_admin_dir);
}

#[test]
fn token_mints_what_the_nodes_accept() {
    use shardq_protocol::auth::TokenKeys;
    let secret = "token-secret-of-at-least-32-bytes!!";
    let (dir, path) = cluster_file(
        "token",
        "[tokens]\nhs256_secret_files = [\"token.key\"]\n[[consumers]]\nid = \"c\"\nurl = \"ws://127.0.0.1:1\"\n",
    );
    std::fs::write(dir.join("token.key"), format!("{secret}\n")).unwrap();
    let output = demo(
        &[
            "token",
            "--config",
            &path,
            "--name",
            "dashboard",
            "--subscribe",
            "database/*",
            "--ttl",
            "600",
        ],
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim().to_owned();
    let keys = TokenKeys::new(&[secret.as_bytes().to_vec()], &[], false).unwrap();
    let identity = keys.verify(&token).unwrap();
    assert_eq!(&*identity.name, "dashboard");
    let filter = shardq_protocol::TopicFilter::parse("database/*").unwrap();
    assert!(identity.permissions.may_subscribe(&filter));
    assert!(!identity.permissions.may_publish_text("database/create"));
    // Without a key to sign with: one clear line.
    let output = demo(&["token", "--name", "x"], None);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("--config"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn the_fanout_benchmark_runs() {
    // Its publisher speaks to /v1/cluster as a node: a smoke run keeps it so.
    let output = demo(
        &[
            "bench-consumer",
            "fanout",
            "--subscribers",
            "4",
            "--messages",
            "2000",
            "--no-pin",
            "--json",
        ],
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["subscribers"], 4, "{report}");
}

#[test]
fn the_http_benchmarks_run() {
    // Every publish answered 200 on both paths, every message delivered on
    // both: what a smoke run may check (never speed).
    let output = demo(
        &[
            "bench-http",
            "publish",
            "--seconds",
            "1",
            "--connections",
            "2",
            "--topics",
            "10",
            "--consumers",
            "2",
            "--rounds",
            "1",
            "--no-pin",
            "--json",
        ],
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for path in ["http", "ws"] {
        assert!(
            report[format!("{path}_acked")].as_u64().unwrap() > 0,
            "{report}"
        );
        assert_eq!(report[format!("{path}_errors")], 0, "{report}");
    }

    let output = demo(
        &[
            "bench-http",
            "fanout",
            "--subscribers",
            "4",
            "--messages",
            "200",
            "--rounds",
            "1",
            "--no-pin",
            "--json",
        ],
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for path in ["sse", "ws"] {
        assert_eq!(report[format!("{path}_deliveries")], 800, "{report}");
        assert_eq!(report[format!("{path}_lost")], 0, "{report}");
        assert_eq!(report[format!("{path}_gaps")], 0, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_lists_every_nodes_connections() {
    let cluster = Cluster::builder().producers(1).start().await;
    let mut subscriber = cluster.subscriber(0).await;
    shardq_tests::raw::expect_ack(subscriber.subscribe(1, "database/create").await);
    let (_dir, file) = cluster_file("clients", &cluster.config.to_toml());
    let table = demo_async(vec!["clients".into(), "--config".into(), file.clone()]).await;
    let stdout = text(&table.stdout);
    assert!(table.status.success(), "{stdout}\n{}", text(&table.stderr));
    assert!(stdout.contains("database/create"), "{stdout}");
    assert!(
        stdout.contains("producer-0"),
        "the producer's link: {stdout}"
    );
    let json = demo_async(vec![
        "clients".into(),
        "--config".into(),
        file,
        "--json".into(),
    ])
    .await;
    let nodes: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let consumer = &nodes[0];
    assert_eq!(consumer["node"], "consumer-0");
    let roles: Vec<&str> = consumer["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|client| client["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"subscriber") && roles.contains(&"node"),
        "{roles:?}"
    );
    drop(subscriber);
    cluster.shutdown().await;
}
