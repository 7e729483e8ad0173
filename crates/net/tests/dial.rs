//! A node's outgoing connections keep every byte the server sends: frames
//! that arrive in the same TCP write as the upgrade response or as
//! `welcome` are delivered, not stranded in a buffer the handshake used.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shardq_net::codec::{Decoder, WsMessage, encode};
use shardq_net::conn::Incoming;
use shardq_net::dial::{DialError, DialIdentity, DialOptions, dial};
use shardq_net::upgrade::accept_key;
use shardq_net::writer::WriteLimit;
use shardq_protocol::{Accepts, Credentials, ErrorCode, Frame, Nonce, Psk, ServerHandshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

const MESSAGE: &str =
    r#"{"type":"message","topic":"a/b","epoch":7,"offset":1,"payload":{"right":"behind welcome"}}"#;

fn options(psk: &Psk) -> DialOptions {
    DialOptions {
        identity: DialIdentity::Client {
            key: psk.clone(),
            client: None,
            name: Some("consumer-1".into()),
        },
        timeout: Duration::from_secs(10),
        max_frame_bytes: 1 << 20,
        outbox_bytes: 1 << 20,
        write: WriteLimit::default(),
        tls: None,
    }
}

/// Reads an HTTP request head; the `Sec-WebSocket-Key`.
async fn read_request(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("GET /v1/cluster HTTP/1.1\r\n"), "{head}");
    head.lines()
        .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap()
        .to_owned()
}

/// Reads one masked client frame; its payload.
async fn read_frame(stream: &mut TcpStream, decoder: &mut Decoder) -> String {
    loop {
        if let Some(WsMessage::Text(text)) = decoder.decode().unwrap() {
            return text.to_string();
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client hung up");
        decoder.buffer().extend_from_slice(&chunk[..n]);
    }
}

/// A server that sends the 101 and `hello` in one write, then `welcome`
/// and a message in one write.
async fn eager_server(listener: TcpListener, psk: Psk) {
    let (mut stream, _) = listener.accept().await.unwrap();
    let key = read_request(&mut stream).await;
    let server = ServerHandshake::new(
        Credentials::new(psk.clone(), psk),
        "consumer-0",
        Nonce::random(),
        Accepts::Clients,
    );
    let mut first = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    )
    .into_bytes();
    first.extend_from_slice(&encode::text_frame(server.hello().encode().as_bytes()));
    stream.write_all(&first).await.unwrap();
    let mut decoder = Decoder::new(true, 1 << 20, Default::default());
    let auth = read_frame(&mut stream, &mut decoder).await;
    let accepted = server
        .receive(Frame::decode(auth.as_bytes(), 1 << 20).unwrap())
        .unwrap();
    assert_eq!(accepted.peer_node.as_deref(), Some("consumer-1"));
    let mut second = encode::text_frame(accepted.welcome.encode().as_bytes()).to_vec();
    second.extend_from_slice(&encode::text_frame(MESSAGE.as_bytes()));
    stream.write_all(&second).await.unwrap();
    // Stay open until the client is done.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn a_frame_right_behind_welcome_is_not_lost() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/cluster", listener.local_addr().unwrap());
    let psk = Psk::generate();
    let server = tokio::spawn(eager_server(listener, psk.clone()));
    let tasks = TaskTracker::new();
    let mut dialed = dial(&url, &options(&psk), &tasks).await.unwrap();
    assert_eq!(dialed.server, "consumer-0");
    let next = tokio::time::timeout(Duration::from_secs(10), dialed.reader.next())
        .await
        .unwrap();
    match next {
        Incoming::Text(text) => assert_eq!(&*text, MESSAGE),
        other => panic!("expected the message, got {other:?}"),
    }
    dialed.outbox.finish();
    server.await.unwrap();
}

#[tokio::test]
async fn a_wrong_psk_is_reported_as_such() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/cluster", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let key = read_request(&mut stream).await;
        // The server answers with a proof made from another psk.
        let other = Psk::generate();
        let server = ServerHandshake::new(
            Credentials::new(other.clone(), other),
            "consumer-0",
            Nonce::random(),
            Accepts::Clients,
        );
        let mut reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key.as_bytes())
        )
        .into_bytes();
        reply.extend_from_slice(&encode::text_frame(server.hello().encode().as_bytes()));
        stream.write_all(&reply).await.unwrap();
        let mut decoder = Decoder::new(true, 1 << 20, Default::default());
        let auth = read_frame(&mut stream, &mut decoder).await;
        let refused = server
            .receive(Frame::decode(auth.as_bytes(), 1 << 20).unwrap())
            .unwrap_err();
        let frame = encode::text_frame(refused.to_frame().encode().as_bytes());
        stream.write_all(&frame).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let error = dial(&url, &options(&Psk::generate()), &TaskTracker::new())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&error, DialError::Handshake { source, .. } if source.code() == ErrorCode::AuthFailed),
        "{error}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_upgrade_names_the_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/cluster", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    let error = dial(&url, &options(&Psk::generate()), &TaskTracker::new())
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("answered HTTP 404 Not Found instead of switching to WebSocket"),
        "{error}"
    );
}
