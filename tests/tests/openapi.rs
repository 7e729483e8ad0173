//! The OpenAPI document (docs/openapi.json) against the nodes: every
//! route the nodes serve is in it, it is served as checked in, and every
//! JSON answer the tests provoke (successes and refusals, on the
//! producers' publish, the consumers' event streams and the admin ports)
//! validates against the schema it declares for that status.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use serde_json::Value;
use shardq_protocol::auth::TokenKeys;
use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
use shardq_tests::{Cluster, http_request, init_logging};

const SECRET: &[u8] = b"token-secret-of-at-least-32-bytes!!";

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `body` (answered `status` to `method path`) against what the
/// document declares for the route `route`.
fn check(doc: &Value, route: &str, method: &str, status: u16, body: &str) {
    let operation = &doc["paths"][route][method];
    assert!(
        operation.is_object(),
        "{method} {route} is not in the document"
    );
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {route} answered {status}, which the document does not declare: {body}"
    );
    let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
        return;
    };
    // The schema, with the document's components beside it for its $refs.
    let mut root = Value::Object(schema.clone());
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).unwrap();
    let instance: Value = serde_json::from_str(body)
        .unwrap_or_else(|error| panic!("{method} {route} {status}: not JSON ({error}): {body}"));
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {route} {status} does not match the document: {errors:?}\n{body}"
    );
}

/// A request: server, method, path, the document's route, headers, body,
/// and the status expected.
type Case<'a> = (
    SocketAddr,
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, String)>,
    &'a str,
    u16,
);

fn addr(url: Option<&str>) -> SocketAddr {
    shardq_protocol::config::host_port(url.unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

fn token(publish: &[&str], subscribe: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = TokenClaims {
        sub: "openapi".into(),
        tenant: "default".into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        exp,
    };
    format!("Bearer {}", mint_hs256(SECRET, &claims).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_openapi_document() {
    init_logging();
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .limits(|limits| limits.max_frame_bytes = 4 << 10)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let producer = addr(cluster.config.producers[0].http.as_deref());
    let consumer = addr(cluster.config.consumers[0].http.as_deref());
    let writer = token(&["database/*"], &[]);
    let reader = token(&[], &["files/*"]);
    let json = ("Content-Type", "application/json".to_owned());
    let big = format!(r#""{}""#, "x".repeat(8 << 10));
    let publish = "/v1/topics/{queue}/{event}";
    let events = "/v1/topics/{queue}/{event}/events";
    let cases: Vec<Case> = vec![
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![("Authorization", writer.clone()), json.clone()],
            r#"{"id":1}"#,
            200,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![
                ("Authorization", writer.clone()),
                ("Idempotency-Key", "k-1".into()),
            ],
            "1",
            200,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![
                ("Authorization", writer.clone()),
                ("Idempotency-Key", "k-1".into()),
            ],
            "1",
            200,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![],
            "1",
            401,
        ),
        (
            producer,
            "POST",
            "/v1/topics/files/save",
            publish,
            vec![("Authorization", writer.clone())],
            "1",
            403,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/nope",
            publish,
            vec![("Authorization", writer.clone())],
            "1",
            404,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![("Authorization", writer.clone())],
            "{not json",
            400,
        ),
        (
            producer,
            "POST",
            "/v1/topics/database/create",
            publish,
            vec![("Authorization", writer.clone())],
            &big,
            413,
        ),
        (
            consumer,
            "GET",
            "/v1/topics/files/save/events",
            events,
            vec![],
            "",
            401,
        ),
        (
            consumer,
            "GET",
            "/v1/topics/database/create/events",
            events,
            vec![("Authorization", reader.clone())],
            "",
            403,
        ),
        (
            consumer,
            "GET",
            "/v1/topics/files/nope/events",
            events,
            vec![("Authorization", reader.clone())],
            "",
            404,
        ),
        (
            consumer,
            "GET",
            "/v1/topics/files/save/events",
            events,
            vec![
                ("Authorization", reader.clone()),
                ("Last-Event-ID", "x".into()),
            ],
            "",
            400,
        ),
        (
            cluster.consumers[0].admin,
            "GET",
            "/v1/status",
            "/v1/status",
            vec![],
            "",
            200,
        ),
        (
            cluster.producers[0].admin,
            "GET",
            "/v1/status",
            "/v1/status",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[1].admin,
            "GET",
            "/v1/clients",
            "/v1/clients",
            vec![],
            "",
            200,
        ),
        (
            cluster.producers[0].admin,
            "GET",
            "/v1/clients",
            "/v1/clients",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[0].admin,
            "GET",
            "/v1/topics",
            "/v1/topics",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[1].admin,
            "GET",
            "/v1/topics",
            "/v1/topics",
            vec![],
            "",
            200,
        ),
        (
            cluster.producers[0].admin,
            "GET",
            "/v1/topics",
            "/v1/topics",
            vec![],
            "",
            404,
        ),
        (
            cluster.producers[0].admin,
            "GET",
            "/readyz",
            "/readyz",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[0].admin,
            "GET",
            "/healthz",
            "/healthz",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[0].admin,
            "GET",
            "/dashboard",
            "/dashboard",
            vec![],
            "",
            200,
        ),
        (
            cluster.consumers[0].admin,
            "GET",
            "/v1/openapi.json",
            "/v1/openapi.json",
            vec![],
            "",
            200,
        ),
        (
            producer,
            "GET",
            "/v1/openapi.json",
            "/v1/openapi.json",
            vec![],
            "",
            200,
        ),
        (
            consumer,
            "GET",
            "/v1/openapi.json",
            "/v1/openapi.json",
            vec![],
            "",
            200,
        ),
        (
            producer,
            "OPTIONS",
            "/v1/topics/database/create",
            publish,
            vec![],
            "",
            204,
        ),
        (
            consumer,
            "OPTIONS",
            "/v1/topics/files/save/events",
            events,
            vec![],
            "",
            204,
        ),
    ];
    let mut duplicates = 0;
    for (server, method, path, route, headers, body, expected) in cases {
        let (status, answer) = http_request(server, method, path, &headers, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        check(&doc, route, &method.to_ascii_lowercase(), status, &answer);
        if path == "/v1/openapi.json" {
            let served: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(served, doc, "the document served is the one checked in");
        }
        duplicates += usize::from(answer.contains(r#""duplicate":true"#));
    }
    assert_eq!(
        duplicates, 1,
        "the second publish with one key is a duplicate"
    );
    cluster.shutdown().await;
}

#[test]
fn the_document_declares_only_what_the_nodes_serve() {
    let doc = document();
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/dashboard",
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/clients",
            "/v1/openapi.json",
            "/v1/status",
            "/v1/topics",
            "/v1/topics/{queue}/{event}",
            "/v1/topics/{queue}/{event}/events",
        ]
    );
    // Every error code the document names is one the protocol defines.
    for code in doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
    {
        let code = code.as_str().unwrap();
        assert!(
            !matches!(
                shardq_protocol::ErrorCode::parse(code),
                shardq_protocol::ErrorCode::Other(_)
            ),
            "{code} is not a protocol error code"
        );
    }
}
