//! The admin port from a test: plain HTTP GETs, Prometheus metrics read
//! and waited for, a node's status, a producer's readiness.

use std::net::SocketAddr;
use std::time::Duration;

use crate::PATIENCE;

/// `GET http://addr/path` over a plain socket: the status code and body
/// (status 0 when the node closed the connection unanswered).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // A connection the node closed at once (an admin cap) reads as status 0.
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("no answer within PATIENCE");
    if read.is_err() {
        return (0, String::new());
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line `name value` (or `name{labels} value`) in a
/// Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.starts_with(name)
                && matches!(line.as_bytes().get(name.len()), Some(b' ') | Some(b'{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Polls `GET http://addr/metrics` until `name` reads `value`; panics with
/// the last body after [`PATIENCE`].
pub async fn wait_metric(addr: SocketAddr, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = http_get(addr, "/metrics").await;
        if metric(&body, name) == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never read {value}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node's `GET /v1/status`, parsed.
pub async fn node_status(addr: SocketAddr) -> shardq_protocol::status::NodeStatus {
    let (code, body) = http_get(addr, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

/// Polls a producer's `GET /readyz` until `done` holds for it; panics with
/// the last answer after [`PATIENCE`].
pub async fn wait_ready(
    admin: SocketAddr,
    done: impl Fn(&shardq_protocol::status::Readiness) -> bool,
) -> shardq_protocol::status::Readiness {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = http_get(admin, "/readyz").await;
        let readiness: shardq_protocol::status::Readiness =
            serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"));
        if done(&readiness) {
            return readiness;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{admin}/readyz never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
