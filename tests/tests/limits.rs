//! What an unauthenticated or misbehaving peer can cost a node, over real
//! sockets: a peer that pings and never reads is cut; connection caps close
//! the connection at accept; admin floods do not reach the WebSocket port;
//! the admin token; the legacy switch and the legacy dialect's caps; the
//! byte-bounded link window.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;

use shardq_tests::raw::{expect_ack, expect_error};
use shardq_tests::{
    Cluster, LegacyClient, PATIENCE, eventually, http_get, http_request, init_logging, metric,
    wait_metric,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const UPGRADE: &str = "GET /v1/subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked ping frame with a 125-byte payload.
fn ping() -> Vec<u8> {
    let mut frame = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    frame.extend((0..125).map(|i| (i as u8) ^ [1, 2, 3, 4][i % 4]));
    frame
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pings_and_never_reads_is_cut() {
    init_logging();
    let cluster = Cluster::builder()
        .limits(|limits| {
            limits.handshake_timeout_ms = 300;
            limits.write_timeout_ms = 1_000;
        })
        .start()
        .await;
    // A small receive buffer, never read: the node's pongs back up at once.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(cluster.consumers[0].addr).await.unwrap();
    stream.write_all(UPGRADE.as_bytes()).await.unwrap();
    let pings: Vec<u8> = (0..64).flat_map(|_| ping()).collect();
    // Ping without reading until the node hangs up. Before, it queued up
    // to 4 MiB of pongs behind the full socket and its writer waited on it
    // forever, so these writes ended up blocking for good.
    let deadline = Instant::now() + PATIENCE;
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(100), stream.write_all(&pings)).await {
            Ok(Ok(())) => sent += pings.len(),
            Ok(Err(_)) => break,
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "still connected after {sent} bytes of pings"
        );
    }
    eventually("the connection's place is freed", || async {
        let body = metrics(cluster.consumers[0].admin).await;
        metric(&body, "shardq_consumer_connections") == Some(0.0)
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_takes_nothing_is_cut_after_the_write_timeout() {
    init_logging();
    let cluster = Cluster::builder()
        .limits(|limits| {
            limits.write_timeout_ms = 500;
            // Far more than is sent: only the write timeout can cut it.
            limits.subscriber_buffer_bytes = 256 << 20;
        })
        .start()
        .await;
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "database/create").await);
    // The subscriber never reads again. 40 MiB: more than both kernels'
    // socket buffers hold.
    let mut node = cluster.cluster_client(0).await;
    let payload = format!("\"{}\"", "x".repeat(512 << 10));
    for id in 0..80 {
        node.publish_nowait(id, "database/create", &payload).await;
    }
    wait_metric(
        cluster.consumers[0].admin,
        "shardq_consumer_write_timeouts_total",
        1.0,
    )
    .await;
    eventually("the subscriber's connection is gone", || async {
        let body = metrics(cluster.consumers[0].admin).await;
        metric(&body, "shardq_consumer_subscriptions") == Some(0.0)
    })
    .await;
    drop(subscriber);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_close_at_accept_and_places_come_back() {
    init_logging();
    let cluster = Cluster::builder()
        .limits(|limits| {
            limits.max_connections_per_address = 4;
            limits.max_unauthenticated_connections = 2;
        })
        .start()
        .await;
    let addr = cluster.consumers[0].addr;
    // Two connections that never authenticate take the unauthenticated
    // places; a third is closed at once, unanswered.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let closed_at_once = |mut stream: TcpStream| async move {
        let _ = stream.write_all(UPGRADE.as_bytes()).await;
        let mut buffer = [0u8; 64];
        matches!(
            tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    eventually("a third unauthenticated connection is refused", || async {
        closed_at_once(TcpStream::connect(addr).await.unwrap()).await
    })
    .await;
    drop(idle);
    // Authenticated connections hold only their per-address place.
    let mut subscribers = Vec::new();
    for _ in 0..4 {
        let url = cluster.consumers[0].url("/v1/subscribe");
        let client = shardq_tests::until("a subscriber gets a place", || async {
            shardq_tests::RawClient::connect(&url, &cluster.psk)
                .await
                .map_err(|error| error.to_string())
        })
        .await;
        subscribers.push(client);
    }
    assert!(closed_at_once(TcpStream::connect(addr).await.unwrap()).await);
    let body = metrics(cluster.consumers[0].admin).await;
    assert!(
        body.contains(r#"connections_refused_total{cap="max_connections_per_address"}"#)
            && body.contains(r#"connections_refused_total{cap="max_unauthenticated_connections"}"#),
        "{body}"
    );
    // A place freed is a place taken again.
    subscribers.pop();
    eventually("a freed place is usable", || async {
        shardq_tests::RawClient::connect(&cluster.consumers[0].url("/v1/subscribe"), &cluster.psk)
            .await
            .is_ok()
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_does_not_stop_the_websocket_port() {
    init_logging();
    let cluster = Cluster::builder()
        .limits(|limits| {
            limits.max_admin_connections = 8;
            limits.admin_request_timeout_ms = 500;
        })
        .start()
        .await;
    let admin = cluster.consumers[0].admin;
    // Half-sent requests, never finished, far more than the cap.
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await;
        flood.push(stream);
    }
    // The WebSocket port serves as ever.
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "database/create").await);
    // The half-sent requests are cut after the request timeout, so the
    // admin port answers again while the flood's sockets are still open.
    eventually("the admin port answers again", || async {
        http_get(admin, "/healthz").await.0 == 200
    })
    .await;
    let body = metrics(admin).await;
    assert!(
        metric(&body, "shardq_consumer_admin_connections_refused_total").unwrap() > 0.0,
        "{body}"
    );
    drop(flood);
    cluster.shutdown().await;
}

/// `GET path` with an optional `Authorization` value: the status code.
async fn get_with_authorization(addr: SocketAddr, path: &str, value: Option<String>) -> u16 {
    let headers: Vec<_> = value
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    http_request(addr, "GET", path, &headers, "").await.0
}

/// `GET path` with an optional bearer token: the status code.
async fn get_with_token(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    get_with_authorization(addr, path, token.map(|token| format!("Bearer {token}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_everything_but_the_probes() {
    init_logging();
    const TOKEN: &str = "admin-token-0123456789";
    let cluster = Cluster::builder()
        .producers(1)
        .admin_token(TOKEN)
        .start()
        .await;
    for admin in [cluster.consumers[0].admin, cluster.producers[0].admin] {
        assert_eq!(get_with_token(admin, "/healthz", None).await, 200);
        for path in ["/metrics", "/v1/status"] {
            assert_eq!(get_with_token(admin, path, None).await, 401, "{path}");
            assert_eq!(
                get_with_token(admin, path, Some("wrong-token")).await,
                401,
                "{path}"
            );
            assert_eq!(
                get_with_token(admin, path, Some(TOKEN)).await,
                200,
                "{path}"
            );
        }
    }
    assert_eq!(
        get_with_token(cluster.producers[0].admin, "/readyz", None).await,
        200
    );
    // The scheme is case-insensitive.
    let lower = Some(format!("bearer {TOKEN}"));
    assert_eq!(
        get_with_authorization(cluster.consumers[0].admin, "/metrics", lower).await,
        200
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_legacy_off_the_legacy_paths_are_not_found() {
    init_logging();
    let cluster = Cluster::builder().producers(1).legacy(false).start().await;
    for url in [
        cluster.consumers[0].url("/subscribe/database%2Fcreate"),
        cluster.consumers[0].url("/producer"),
        cluster.producers[0].url("/produce"),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 404, "{url}");
            }
            other => panic!("{url}: expected 404, got {other:?}"),
        }
    }
    // shardq/1 is unaffected.
    let mut publisher = cluster.publisher(0).await;
    expect_ack(publisher.publish(1, "database/create", "1").await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_subscribers_obey_the_subscription_cap() {
    init_logging();
    let cluster = Cluster::builder()
        .limits(|limits| limits.max_subscriptions_per_connection = 2)
        .start()
        .await;
    let url = cluster.consumers[0].url("/subscribe/database%2Fcreate");
    let mut legacy = LegacyClient::connect(&url, &cluster.psk).await.unwrap();
    for topic in ["database/read", "database/update", "database/delete"] {
        let frame = format!(r#"{{"t":"s","s":"{topic}"}}"#);
        legacy.socket.send(Message::text(frame)).await.unwrap();
    }
    let admin = cluster.consumers[0].admin;
    wait_metric(admin, "shardq_consumer_legacy_dropped_total", 2.0).await;
    let body = metrics(admin).await;
    assert_eq!(
        metric(&body, "shardq_consumer_subscriptions"),
        Some(2.0),
        "{body}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_window_is_bounded_in_bytes_too() {
    init_logging();
    const WINDOW_BYTES: usize = 100 << 10;
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let mut cluster = Cluster::builder()
        .consumers(1)
        .producers(1)
        .limits(|limits| limits.link_window_bytes = WINDOW_BYTES)
        .start()
        .await;
    cluster.stop_producer(0).await;
    // The only consumer is a stand-in that shakes hands and never answers.
    cluster.config.consumers[0].url = format!("ws://{impostor_addr}");
    tokio::spawn(shardq_tests::impostor::stalled_consumer(
        impostor,
        cluster.node_key.clone(),
        "consumer-0",
    ));
    cluster.restart_producer(0).await;
    let mut publisher = cluster.publisher(0).await;
    // 30 KiB payloads: three fit in 100 KiB, the fourth does not.
    let payload = format!("\"{}\"", "x".repeat(30 << 10));
    for id in 0..3 {
        publisher
            .publish_nowait(id, "database/create", &payload)
            .await;
    }
    let refused = expect_error(
        publisher.publish(3, "database/create", &payload).await,
        "unavailable",
    );
    assert_eq!(refused.id, Some(3));
    assert!(refused.message.contains("bytes"), "{}", refused.message);
    // Small publishes still fit beside them.
    publisher.publish_nowait(4, "database/create", "1").await;
    wait_metric(
        cluster.producers[0].admin,
        "shardq_producer_link_in_flight",
        4.0,
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_peer_never_says_hello_reports_why() {
    init_logging();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut cluster = Cluster::builder()
        .consumers(1)
        .producers(1)
        .limits(|limits| limits.handshake_timeout_ms = 300)
        .start()
        .await;
    // Upgrades every connection, then says nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            if let Ok(socket) = tokio_tungstenite::accept_async(stream).await {
                held.push(socket);
            }
        }
    });
    let mut moved = cluster.config.clone();
    moved.consumers[0].url = format!("ws://{silent_addr}");
    cluster.reload(moved);
    let admin = cluster.producers[0].admin;
    eventually("last_error names the silent peer's timeout", || async {
        let status = shardq_tests::node_status(admin).await;
        status.links[0]
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains(&silent_addr.to_string()))
    })
    .await;
    cluster.shutdown().await;
}
