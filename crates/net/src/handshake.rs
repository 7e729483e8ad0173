//! The server side of both handshakes (shardq/1 and the legacy dialect),
//! run on a freshly upgraded connection under the connection's deadline.
//! Failures queue their error (or decoy) and close on the outbox, and a
//! wrong psk is counted; the caller only learns that the connection is
//! closing. The client side, for connections a node opens, is
//! [`crate::dial`].

use prometheus_client::metrics::counter::Counter;
use shardq_protocol::legacy::{self, AnswerPolicy, LegacyFrame, LegacyHandshake};
use shardq_protocol::{
    Accepts, CloseCode, Credentials, ErrorCode, Frame, Nonce, Peer, Psk, ServerHandshake,
};
use tokio::time::{Instant, timeout_at};

use crate::codec::encode;
use crate::conn::{Incoming, Reader, binary_refusal};
use crate::log_summary::HANDSHAKE_FAILURES;
use crate::outbox::Outbox;

/// The handshake did not complete; the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

fn send(outbox: &Outbox, text: &str) {
    let _ = outbox.push_unbounded(encode::text_frame(text.as_bytes()));
}

/// The next text message before `deadline`; on anything else the close is
/// arranged and `Err` returned.
async fn next_text(
    reader: &mut Reader,
    outbox: &Outbox,
    deadline: Instant,
) -> Result<String, Refused> {
    match timeout_at(deadline, reader.next()).await {
        Err(_) => {
            tracing::debug!("handshake timed out");
            outbox.close(CloseCode::HandshakeTimeout);
            Err(Refused)
        }
        Ok(Incoming::Text(text)) => Ok(text.to_string()),
        Ok(Incoming::Violation(code, why)) => {
            tracing::debug!(%why, "handshake refused");
            outbox.close(code);
            Err(Refused)
        }
        Ok(Incoming::Binary) => {
            send(outbox, &binary_refusal().encode());
            outbox.close(CloseCode::ProtocolError);
            Err(Refused)
        }
        Ok(_) => {
            outbox.finish();
            Err(Refused)
        }
    }
}

/// The shardq/1 handshake: `hello`, the client's `auth`, `welcome`; who
/// the peer proved to be, and the name it goes by (its credential's name,
/// a node's id, else the name it gave in `auth.node`, else `-`). Its name goes into the current span's `client`
/// field; a wrong proof is counted in `auth_failures` (and logged in
/// summaries).
#[allow(clippy::too_many_arguments)]
pub async fn accept_shardq(
    reader: &mut Reader,
    outbox: &Outbox,
    credentials: &Credentials,
    accepts: Accepts,
    tls: bool,
    node: &str,
    preauth_limit: usize,
    deadline: Instant,
    auth_failures: &Counter,
) -> Result<(Peer, String), Refused> {
    let server =
        ServerHandshake::new(credentials.clone(), node, Nonce::random(), accepts).over_tls(tls);
    send(outbox, &server.hello().encode());
    let text = next_text(reader, outbox, deadline).await?;
    let frame = match Frame::decode_str(&text, preauth_limit) {
        Ok(frame) => frame,
        Err(error) => {
            // A handshake error concerns the connection: no id (§4 error).
            let refusal = Frame::error(None, error.code(), error.to_string());
            send(outbox, &refusal.encode());
            outbox.close(CloseCode::ProtocolError);
            return Err(Refused);
        }
    };
    match server.receive(frame) {
        Ok(accepted) => {
            send(outbox, &accepted.welcome.encode());
            let client = match &accepted.peer {
                Peer::Node(id) => id.as_str(),
                Peer::Client(identity) if &*identity.name != "-" => &identity.name,
                Peer::Client(_) => accepted.peer_node.as_deref().unwrap_or("-"),
            };
            tracing::Span::current().record("client", client);
            tracing::debug!("authenticated");
            let name = client.to_owned();
            Ok((accepted.peer, name))
        }
        Err(error) => {
            if matches!(
                error.code(),
                ErrorCode::AuthFailed | ErrorCode::NotAuthorized
            ) {
                HANDSHAKE_FAILURES.note(&error.to_string());
                auth_failures.inc();
            } else {
                tracing::debug!(%error, "handshake failed");
            }
            send(outbox, &error.to_frame().encode());
            outbox.close(error.close_code());
            Err(Refused)
        }
    }
}

/// The legacy handshake. `on_verified` runs the moment the peer's answer
/// checks out, before our answer tells the peer the connection is open (a
/// legacy subscriber is subscribed there); its `Err` ends the connection.
/// A wrong answer is counted in `auth_failures`.
pub async fn accept_legacy<F, Fut>(
    reader: &mut Reader,
    outbox: &Outbox,
    psk: &Psk,
    preauth_limit: usize,
    deadline: Instant,
    auth_failures: &Counter,
    on_verified: F,
) -> Result<(), Refused>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), ()>>,
{
    let mut on_verified = Some(on_verified);
    let mut handshake = LegacyHandshake::new(
        psk.clone(),
        legacy::random_challenge(),
        AnswerPolicy::AfterVerified,
    );
    send(outbox, &handshake.challenge().encode());
    while !handshake.is_established() {
        let text = next_text(reader, outbox, deadline).await?;
        let frame = match LegacyFrame::decode(text.as_bytes(), preauth_limit) {
            Ok(frame @ (LegacyFrame::Challenge(_) | LegacyFrame::Answer(_))) => frame,
            Ok(_) | Err(_) => {
                tracing::debug!("legacy frame before the handshake completed");
                outbox.close(CloseCode::ProtocolError);
                return Err(Refused);
            }
        };
        let step = match handshake.receive(&frame) {
            Ok(step) => step,
            Err(failed) => {
                HANDSHAKE_FAILURES.note("legacy authentication failed");
                auth_failures.inc();
                if let Some(decoy) = &failed.decoy {
                    send(outbox, &decoy.encode());
                }
                outbox.close(failed.close_code());
                return Err(Refused);
            }
        };
        if handshake.peer_verified()
            && let Some(on_verified) = on_verified.take()
            && on_verified().await.is_err()
        {
            outbox.close(CloseCode::TopicRefused);
            return Err(Refused);
        }
        if let Some(answer) = &step.send {
            send(outbox, &answer.encode());
        }
    }
    Ok(())
}
