//! A node's TLS: links dial `wss://` and check the certificate against the
//! cluster's CA (an untrusted one is refused), and a certificate replaced
//! on disk is served after a reload (what SIGHUP does) without a restart.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use shardq_net::conn::ConnLimits;
use shardq_net::dial::{DialError, DialIdentity, DialOptions, dial};
use shardq_net::tls::{ServerTls, client_config};
use shardq_net::writer::WriteLimit;
use shardq_net::{handshake, upgrade};
use shardq_protocol::{Accepts, Credentials, Limits, Psk};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Writes a CA (`<name>-ca.pem`) and a certificate it signs for 127.0.0.1
/// (`node.pem`, `node.key`) into `dir`.
fn issue(dir: &Path, name: &str) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

/// A consumer stand-in on `listener`: TLS, upgrade, the node handshake.
async fn serve(listener: TcpListener, tls: Arc<ServerTls>, credentials: Credentials) {
    let tasks = TaskTracker::new();
    let limits = Limits::default();
    while let Ok((stream, _)) = listener.accept().await {
        let (tls, credentials, tasks, limits) = (
            tls.clone(),
            credentials.clone(),
            tasks.clone(),
            limits.clone(),
        );
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let conn_limits = ConnLimits::from(&limits);
            let Ok(mut connection) = upgrade::upgrade(
                stream,
                &conn_limits,
                deadline,
                |_| Some(4096),
                &tasks,
                None,
                Some(&tls),
            )
            .await
            else {
                return;
            };
            assert!(connection.tls);
            let failures = Counter::default();
            let _ = handshake::accept_shardq(
                &mut connection.reader,
                &connection.outbox,
                &credentials,
                Accepts::Nodes,
                connection.tls,
                "consumer-0",
                4096,
                deadline,
                &failures,
            )
            .await;
            // Hold the connection until the client goes.
            let _ = connection.reader.next().await;
        });
    }
}

fn options(node_key: &Psk, ca: &Path) -> DialOptions {
    DialOptions {
        identity: DialIdentity::Node {
            node_key: node_key.clone(),
            own: "producer-0".into(),
            expected: "consumer-0".into(),
        },
        timeout: Duration::from_secs(10),
        max_frame_bytes: 1 << 20,
        outbox_bytes: 1 << 20,
        write: WriteLimit::default(),
        tls: Some(client_config(ca).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_check_the_certificate_and_a_reload_serves_the_new_one() {
    let dir = std::env::temp_dir().join(format!("shardq-net-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    issue(&dir, "first");
    let tls = ServerTls::load(dir.join("node.pem"), dir.join("node.key")).unwrap();
    let node_key = Psk::generate();
    let credentials = Credentials::new(Psk::generate(), node_key.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}/v1/cluster", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, tls.clone(), credentials));
    let tasks = TaskTracker::new();

    let dialed = dial(&url, &options(&node_key, &dir.join("first-ca.pem")), &tasks)
        .await
        .unwrap();
    assert_eq!(dialed.server, "consumer-0");
    dialed.outbox.finish();

    // A new certificate from another CA, swapped in on disk and reloaded:
    // new connections get it; the old CA no longer verifies them.
    issue(&dir, "second");
    tls.reload().unwrap();
    let untrusted = dial(&url, &options(&node_key, &dir.join("first-ca.pem")), &tasks).await;
    match untrusted {
        Err(DialError::Tls { source, .. }) => {
            assert!(source.to_string().contains("certificate"), "{source}");
        }
        Err(other) => panic!("expected a TLS refusal, got {other}"),
        Ok(_) => panic!("an untrusted certificate was accepted"),
    }
    dial(
        &url,
        &options(&node_key, &dir.join("second-ca.pem")),
        &tasks,
    )
    .await
    .unwrap();
    // A broken file on disk keeps the current certificate.
    std::fs::write(dir.join("node.pem"), "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    dial(
        &url,
        &options(&node_key, &dir.join("second-ca.pem")),
        &tasks,
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_https_when_asked() {
    use shardq_net::admin::{self, AdminOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("shardq-net-admin-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    issue(&dir, "admin");
    let tls = ServerTls::load(dir.join("node.pem"), dir.join("node.key")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Arc::new(prometheus_client::registry::Registry::default());
    let options = AdminOptions {
        tls: Some(tls),
        ..AdminOptions::new(&Limits::default(), None)
    };
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(admin::serve(
        listener,
        admin::base_routes(registry),
        options,
        Counter::default(),
        stop.clone(),
    ));
    let config = client_config(&dir.join("admin-ca.pem")).unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = shardq_net::tls::connect(&config, "127.0.0.1", stream)
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP to it gets no answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    stop.cancel();
    std::fs::remove_dir_all(&dir).unwrap();
}
