//! The producers' HTTP API: `POST /v1/topics/{queue}/{event}` publishes a
//! JSON body and answers with its position once the owner acked, or with
//! the protocol's error code as an HTTP status; Basic client credentials or
//! a bearer token; `Idempotency-Key` is the publish's key.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use base64::Engine as _;
use shardq_protocol::auth::ClientEntry;
use shardq_protocol::auth::TokenKeys;
use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
use shardq_tests::raw::{expect_ack, expect_message};
use shardq_tests::{Cluster, http_request, init_logging};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"token-secret-of-at-least-32-bytes!!";

/// A header: name and value.
type Header = (&'static str, String);
/// A refusal case: headers, path, body, status, code.
type Case<'a> = (Vec<Header>, &'a str, &'a str, u16, &'a str);

/// `POST path` with `headers` and `body`: the status and the JSON answer.
async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/json".to_owned()));
    let (status, body) = http_request(addr, "POST", path, &headers, body).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn basic(name: &str, secret: &str) -> (&'static str, String) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"));
    ("Authorization", format!("Basic {encoded}"))
}

fn http_addr(cluster: &Cluster) -> SocketAddr {
    let url = cluster.config.producers[0].http.as_deref().unwrap();
    shardq_protocol::config::host_port(url)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_are_acked_with_their_position() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .limits(|limits| limits.max_frame_bytes = 8 << 10)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .clients(vec![ClientEntry {
            name: "api".into(),
            tenant: "default".into(),
            secrets: vec!["api-secret-0123456".into()],
            publish: vec!["database/*".into()],
            subscribe: vec![],
        }])
        .start()
        .await;
    let addr = http_addr(&cluster);
    let mut subscriber = cluster.subscriber(0).await;
    expect_ack(subscriber.subscribe(1, "database/create").await);
    let api = basic("api", "api-secret-0123456");

    let (status, ack) = post(
        addr,
        "/v1/topics/database/create",
        std::slice::from_ref(&api),
        r#"{"id":99}"#,
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let message = expect_message(subscriber.recv().await);
    assert_eq!(message.payload.get(), r#"{"id":99}"#);
    assert_eq!(ack["offset"], message.offset, "{ack}");
    assert_eq!(ack["epoch"], message.epoch, "{ack}");

    // The same Idempotency-Key: the first position, not a second message.
    let keyed = [api.clone(), ("Idempotency-Key", "order-17".to_owned())];
    let (status, first) = post(addr, "/v1/topics/database/create", &keyed, "1").await;
    assert_eq!(status, 200);
    let (status, again) = post(addr, "/v1/topics/database/create", &keyed, "1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["offset"].clone(), again["duplicate"].clone()),
        (first["offset"].clone(), true.into())
    );

    // A bearer token.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = mint_hs256(
        SECRET,
        &TokenClaims {
            sub: "job".into(),
            tenant: "default".into(),
            publish: vec!["*".into()],
            subscribe: vec![],
            exp: now + 600,
        },
    )
    .unwrap();
    let bearer = ("Authorization", format!("Bearer {token}"));
    let (status, _) = post(addr, "/v1/topics/files/save", &[bearer], "2").await;
    assert_eq!(status, 200);

    // Refusals: the protocol's codes as statuses, with the code and a message.
    let big = format!("\"{}\"", "x".repeat(8 << 10));
    let cases: [Case<'_>; 7] = [
        (
            vec![],
            "/v1/topics/database/create",
            "1",
            401,
            "auth_failed",
        ),
        (
            vec![basic("api", "wrong-secret-000000")],
            "/v1/topics/database/create",
            "1",
            401,
            "auth_failed",
        ),
        (
            vec![api.clone()],
            "/v1/topics/files/save",
            "1",
            403,
            "not_authorized",
        ),
        (
            // The psk may publish anywhere: the queue's absence shows.
            vec![basic("-", &String::from_utf8_lossy(cluster.psk.as_bytes()))],
            "/v1/topics/nosuch/create",
            "1",
            404,
            "unknown_queue",
        ),
        (
            vec![api.clone()],
            "/v1/topics/database/create",
            "{not json",
            400,
            "bad_frame",
        ),
        (
            vec![api.clone()],
            "/v1/topics/database/create",
            &big,
            413,
            "payload_too_large",
        ),
        (
            vec![api.clone(), ("Idempotency-Key", "bad key!".into())],
            "/v1/topics/database/create",
            "1",
            400,
            "bad_frame",
        ),
    ];
    for (headers, path, body, expected, code) in cases {
        let (status, answer) = post(addr, path, &headers, body).await;
        assert_eq!(status, expected, "{path}: {answer}");
        assert_eq!(answer["code"], code, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_credentials_need_tls_by_default() {
    init_logging();
    let cluster = Cluster::builder().producers(1).start().await;
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let (status, answer) = post(
        http_addr(&cluster),
        "/v1/topics/database/create",
        &[basic("-", &psk)],
        "1",
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("not_authorized")),
        "{answer}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_over_tls() {
    init_logging();
    let cluster = Cluster::builder().producers(1).tls().start().await;
    let addr = http_addr(&cluster);
    let config = cluster.client_tls().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = shardq_net::tls::connect(&config, "127.0.0.1", tcp)
        .await
        .unwrap();
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let (name, value) = basic("-", &psk);
    let request = format!(
        "POST /v1/topics/database/create HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n{name}: {value}\r\nConnection: close\r\n\r\n1"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_many_requests_and_answers_cors_preflights() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let addr = http_addr(&cluster);
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let (name, value) = basic("-", &psk);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut offsets = Vec::new();
    for n in 0..3 {
        let body = format!(r#"{{"n":{n}}}"#);
        let request = format!(
            "POST /v1/topics/database/create HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{name}: {value}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // One answer per request, on the same connection.
        let mut answer = Vec::new();
        loop {
            let mut buf = [0u8; 1024];
            let read = stream.read(&mut buf).await.unwrap();
            assert!(read > 0, "the connection closed after {n} answers");
            answer.extend_from_slice(&buf[..read]);
            let text = String::from_utf8_lossy(&answer);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length: usize = text[..head_end]
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if answer.len() >= head_end + 4 + length {
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                    assert!(
                        text.to_ascii_lowercase()
                            .contains("access-control-allow-origin: *"),
                        "{text}"
                    );
                    let json: serde_json::Value =
                        serde_json::from_str(&text[head_end + 4..]).unwrap();
                    offsets.push(json["offset"].as_u64().unwrap());
                    break;
                }
            }
        }
    }
    assert_eq!(offsets.len(), 3);
    assert!(
        offsets.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{offsets:?}"
    );
    let (status, _) = http_request(
        addr,
        "OPTIONS",
        "/v1/topics/database/create",
        &[
            ("Origin", "http://page.example".to_owned()),
            ("Access-Control-Request-Method", "POST".to_owned()),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_or_is_too_large_is_refused_with_json() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .limits(|limits| limits.handshake_timeout_ms = 500)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let addr = http_addr(&cluster);
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let (name, value) = basic("-", &psk);
    // Ten bytes announced, one sent: answered 408 within the timeout.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/topics/database/create HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n{name}: {value}\r\n\r\n{{"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"bad_frame""#), "{answer}");
    // Far over the payload limit: the API's own 413 answer.
    let big = format!(r#""{}""#, "x".repeat(3 << 20));
    let (status, answer) = post(addr, "/v1/topics/database/create", &[(name, value)], &big).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_producer_answers_the_publishes_it_is_reading() {
    init_logging();
    let mut cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let addr = http_addr(&cluster);
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let (name, value) = basic("-", &psk);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for task in 0..4 {
        let (name, value, answered) = (name, value.clone(), answered.clone());
        publishers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return statuses;
            };
            for n in 0.. {
                let body = format!(r#"{{"task":{task},"n":{n}}}"#);
                let request = format!(
                    "POST /v1/topics/database/create HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{name}: {value}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(request.as_bytes()).await.is_err() {
                    break;
                }
                let mut buf = vec![0u8; 4096];
                let read = stream.read(&mut buf).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                let head = String::from_utf8_lossy(&buf[..read]).to_string();
                statuses.push(head[9..12].to_owned());
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            statuses
        }));
    }
    shardq_tests::eventually("publishes flow", || {
        let answered = answered.clone();
        async move { answered.load(std::sync::atomic::Ordering::Relaxed) > 200 }
    })
    .await;
    cluster.stop_producer(0).await;
    let mut statuses = Vec::new();
    for publisher in publishers {
        statuses.extend(publisher.await.unwrap());
    }
    assert!(
        statuses.iter().all(|status| status == "200"),
        "a stop answered something other than the owner's ack: {:?}",
        statuses.iter().filter(|s| *s != "200").collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_unknown_requests_get_json_refusals() {
    init_logging();
    let cluster = Cluster::builder()
        .producers(1)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .clients(vec![ClientEntry {
            name: "files-only".into(),
            tenant: "default".into(),
            secrets: vec!["files-secret-0123456".into()],
            publish: vec!["files/*".into()],
            subscribe: vec![],
        }])
        .start()
        .await;
    let addr = http_addr(&cluster);
    let psk = String::from_utf8(cluster.psk.as_bytes().to_vec()).unwrap();
    let psk_auth = basic("-", &psk);
    let files_only = basic("files-only", "files-secret-0123456");
    let cases: [Case; 5] = [
        (
            vec![psk_auth.clone(), psk_auth.clone()],
            "/v1/topics/database/create",
            "1",
            400,
            "bad_frame",
        ),
        (
            vec![
                psk_auth.clone(),
                ("Idempotency-Key", "a".into()),
                ("Idempotency-Key", "b".into()),
            ],
            "/v1/topics/database/create",
            "1",
            400,
            "bad_frame",
        ),
        // Permission before existence: nothing is learnt of other queues.
        (
            vec![files_only.clone()],
            "/v1/topics/secret/create",
            "1",
            403,
            "not_authorized",
        ),
        (
            vec![files_only],
            "/v1/topics/files/nope",
            "1",
            404,
            "unknown_event",
        ),
        (vec![psk_auth], "/v1/nowhere", "1", 404, "not_found"),
    ];
    for (headers, path, body, status, code) in cases {
        let (got, answer) = post(addr, path, &headers, body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
    let (status, body) = http_request(addr, "GET", "/v1/topics/database/create", &[], "").await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains(r#""code":"method_not_allowed""#), "{body}");
    cluster.shutdown().await;
}
