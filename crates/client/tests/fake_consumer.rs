//! The client against a fake consumer that breaks its connections on cue:
//! a request whose connection broke after the handshake is reported as
//! such (not as a handshake failure), the reconnect resumes exactly what was
//! live, and `authenticate` hangs up with a normal close.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq::protocol::{
    Accepts, Ack, Credentials, Frame, Nonce, Position, Psk, ServerHandshake, Topic, TopicFilter,
    TopicPosition,
};
use shardq::{ConnectError, SubscribeError, Subscriber, SubscriberConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(20);

type Socket = WebSocketStream<TcpStream>;

fn psk() -> Psk {
    Psk::new("0123456789abcdef0123").unwrap()
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Accepts one connection and runs the server side of the handshake as
/// the node `id`.
async fn accept(listener: &TcpListener, id: &str) -> Socket {
    let (stream, _) = listener.accept().await.unwrap();
    let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
    let server = ServerHandshake::new(
        Credentials::new(psk(), psk()),
        id,
        Nonce::random(),
        Accepts::Clients,
    );
    socket
        .send(Message::text(server.hello().encode()))
        .await
        .unwrap();
    let auth = next_frame(&mut socket).await.unwrap();
    let welcome = server.receive(auth).unwrap().welcome;
    socket.send(Message::text(welcome.encode())).await.unwrap();
    socket
}

/// The next frame; `None` when the connection ends.
async fn next_frame(socket: &mut Socket) -> Option<Frame> {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                return Some(Frame::decode(text.as_bytes(), usize::MAX).unwrap());
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

fn files_save() -> Topic {
    Topic::new("files", "save").unwrap()
}

#[tokio::test]
async fn a_subscribe_cut_off_before_its_answer_is_disconnected_not_a_handshake_failure() {
    let (listener, url) = listen().await;
    let node = tokio::spawn(async move {
        let mut socket = accept(&listener, "consumer-0").await;
        let subscribe = next_frame(&mut socket).await;
        assert!(
            matches!(subscribe, Some(Frame::Subscribe(_))),
            "{subscribe:?}"
        );
        // Hang up before answering.
        drop(socket);
        listener
    });
    let subscriber = Subscriber::connect(SubscriberConfig::new(url, psk()))
        .await
        .unwrap();
    let error = subscriber
        .subscribe("files", "save")
        .await
        .err()
        .expect("the connection broke before the answer");
    assert!(matches!(error, SubscribeError::Disconnected), "{error:?}");
    let text = error.to_string();
    assert!(!text.contains("handshake"), "{text}");
    assert!(
        text.starts_with("the connection to the consumer broke before the answer"),
        "{text}"
    );
    // Not made, so not resumed either.
    assert_eq!(subscriber.subscriptions(), []);
    drop(node.await.unwrap());
}

#[tokio::test]
async fn an_unsubscribe_cut_off_before_its_answer_leaves_the_topic_subscribed_and_resumed() {
    let (listener, url) = listen().await;
    let node = tokio::spawn(async move {
        let mut socket = accept(&listener, "consumer-0").await;
        let Some(Frame::Subscribe(subscribe)) = next_frame(&mut socket).await else {
            panic!("a subscribe first");
        };
        let start = TopicPosition {
            topic: files_save(),
            epoch: 7,
            offset: 3,
        };
        let ack = Frame::Ack(Ack::subscribed(subscribe.id, vec![start], None));
        socket.send(Message::text(ack.encode())).await.unwrap();
        let unsubscribe = next_frame(&mut socket).await;
        assert!(
            matches!(unsubscribe, Some(Frame::Unsubscribe(_))),
            "{unsubscribe:?}"
        );
        // Hang up before answering; the subscriber reconnects and resumes.
        drop(socket);
        let mut again = accept(&listener, "consumer-0").await;
        let Some(Frame::Subscribe(resume)) = next_frame(&mut again).await else {
            panic!("a resume after the reconnect");
        };
        (resume.topic, resume.since)
    });
    let subscriber = Subscriber::connect(SubscriberConfig::new(url, psk()))
        .await
        .unwrap();
    let _subscription = subscriber.subscribe("files", "save").await.unwrap();
    let error = subscriber
        .unsubscribe("files", "save")
        .await
        .expect_err("the connection broke before the answer");
    assert!(matches!(error, SubscribeError::Disconnected), "{error:?}");
    assert!(!error.to_string().contains("handshake"), "{error}");
    assert_eq!(subscriber.subscriptions(), [files_save()]);
    let (topic, since) = tokio::time::timeout(PATIENCE, node).await.unwrap().unwrap();
    assert_eq!(topic, TopicFilter::Exact(files_save()));
    assert_eq!(
        since,
        Some(Position {
            epoch: 7,
            offset: 3
        })
    );
}

#[tokio::test]
async fn authenticate_returns_the_node_id_and_closes_normally() {
    let (listener, url) = listen().await;
    let node = tokio::spawn(async move {
        let mut socket = accept(&listener, "consumer-7").await;
        let close = loop {
            match tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        // Polling on sends the close reply.
        while let Some(Ok(_)) = socket.next().await {}
        close
    });
    let id = shardq::authenticate(&url, &psk(), Some("check"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(id, "consumer-7");
    assert_eq!(node.await.unwrap(), Some(1000));
}

#[tokio::test]
async fn authenticate_refuses_a_wrong_psk_and_wss() {
    let wrong = Psk::new("another-psk-of-16-bytes").unwrap();
    let (listener, url) = listen().await;
    let refusing = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let server = ServerHandshake::new(
            Credentials::new(psk(), psk()),
            "consumer-0",
            Nonce::random(),
            Accepts::Clients,
        );
        socket
            .send(Message::text(server.hello().encode()))
            .await
            .unwrap();
        let auth = next_frame(&mut socket).await.unwrap();
        let error = server.receive(auth).unwrap_err();
        socket
            .send(Message::text(error.to_frame().encode()))
            .await
            .unwrap();
    });
    let error = shardq::authenticate(&url, &wrong, None, PATIENCE)
        .await
        .unwrap_err();
    assert!(error.is_auth_failure(), "{error}");
    refusing.await.unwrap();

    let error = shardq::authenticate("wss://127.0.0.1:1/v1/subscribe", &psk(), None, PATIENCE)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::TlsUnconfigured { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "wss://127.0.0.1:1/v1/subscribe: wss:// needs the cluster's CA to check the node's certificate against"
    );
}
