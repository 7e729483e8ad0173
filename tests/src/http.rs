//! The admin port from a test: plain HTTP GETs, Prometheus metrics read
//! and waited for, a node's status, a producer's readiness.

use std::net::SocketAddr;

use crate::PATIENCE;
use crate::poll::until;

/// `GET http://addr/path` over a plain socket: the status code and body
/// (status 0 when the node closed the connection unanswered).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// `method http://addr/path` with extra `headers` and `body`, over a plain
/// socket: the status code and body (status 0 when the node closed the
/// connection unanswered).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
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
/// the last body after [`PATIENCE`](crate::PATIENCE).
pub async fn wait_metric(addr: SocketAddr, name: &str, value: f64) {
    until(&format!("{name} reads {value}"), || async {
        let (_, body) = http_get(addr, "/metrics").await;
        if metric(&body, name) == Some(value) {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await
}

/// A node's `GET /v1/status`, parsed.
pub async fn node_status(addr: SocketAddr) -> shardq_protocol::status::NodeStatus {
    let (code, body) = http_get(addr, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

/// Polls a producer's `GET /readyz` until `done` holds for it; panics with
/// the last answer after [`PATIENCE`](crate::PATIENCE).
pub async fn wait_ready(
    admin: SocketAddr,
    done: impl Fn(&shardq_protocol::status::Readiness) -> bool,
) -> shardq_protocol::status::Readiness {
    until(&format!("{admin}/readyz gets there"), || async {
        let (_, body) = http_get(admin, "/readyz").await;
        let readiness: shardq_protocol::status::Readiness =
            serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"));
        if done(&readiness) {
            Ok(readiness)
        } else {
            Err(body)
        }
    })
    .await
}
