//! Stand-ins for nodes, for tests of what a node does when its peer
//! misbehaves: they hold the node key and complete the handshake, then do
//! whatever the test makes them do with the socket.

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{Accepts, Credentials, Frame, Nonce, Psk, ServerHandshake};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A stand-in for consumer `id` that holds the node key: accepts one link
/// and completes the handshake.
pub async fn impostor_link(
    listener: TcpListener,
    node_key: Psk,
    id: &str,
) -> WebSocketStream<tokio::net::TcpStream> {
    let (stream, _) = listener.accept().await.unwrap();
    let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
    let credentials = Credentials::new(Psk::generate(), node_key);
    let server = ServerHandshake::new(credentials, id, Nonce::random(), Accepts::Nodes);
    socket
        .send(Message::text(server.hello().encode()))
        .await
        .unwrap();
    let auth = socket.next().await.unwrap().unwrap();
    let frame = Frame::decode(auth.to_text().unwrap().as_bytes(), 1 << 20).unwrap();
    let welcome = server.receive(frame).unwrap().welcome;
    socket.send(Message::text(welcome.encode())).await.unwrap();
    socket
}

/// A stand-in for consumer `id` that completes the handshake, then holds
/// the socket without reading it.
pub async fn stalled_consumer(listener: TcpListener, node_key: Psk, id: &str) {
    let _socket = impostor_link(listener, node_key, id).await;
    std::future::pending::<()>().await;
}
