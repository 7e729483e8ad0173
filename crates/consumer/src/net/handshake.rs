//! The server side of both handshakes, run on a freshly upgraded
//! connection under the connection's deadline. Failures queue their error
//! (or decoy) and close on the outbox; the caller only learns whether the
//! peer was refused for a wrong psk, to count it.

use shardq_protocol::legacy::{self, AnswerPolicy, LegacyFrame, LegacyHandshake};
use shardq_protocol::{CloseCode, ErrorCode, Frame, Nonce, Psk, ServerHandshake};
use tokio::time::{Instant, timeout_at};

use super::conn::{Incoming, Reader};
use super::outbox::Outbox;
use super::ws;

/// The handshake did not complete; the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The peer's proof (or legacy answer) was wrong.
    pub auth_failed: bool,
}

const NOT_AUTH: Refused = Refused { auth_failed: false };

fn send(outbox: &Outbox, text: &str) {
    let _ = outbox.push_unbounded(ws::text_frame(text.as_bytes()));
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
            Err(NOT_AUTH)
        }
        Ok(Incoming::Text(text)) => Ok(text.to_string()),
        Ok(Incoming::Violation(code, why)) => {
            tracing::debug!(%why, "handshake refused");
            outbox.close(code);
            Err(NOT_AUTH)
        }
        Ok(_) => {
            outbox.finish();
            Err(NOT_AUTH)
        }
    }
}

/// The shardq/1 handshake: `hello`, the client's `auth`, `welcome`. Returns
/// the name the client gave, if any.
pub async fn accept_shardq(
    reader: &mut Reader,
    outbox: &Outbox,
    psk: &Psk,
    node: &str,
    preauth_limit: usize,
    deadline: Instant,
) -> Result<Option<String>, Refused> {
    let server = ServerHandshake::new(psk.clone(), node, Nonce::random());
    send(outbox, &server.hello().encode());
    let text = next_text(reader, outbox, deadline).await?;
    let frame = match Frame::decode_str(&text, preauth_limit) {
        Ok(frame) => frame,
        Err(error) => {
            send(outbox, &error.to_frame().encode());
            outbox.close(CloseCode::ProtocolError);
            return Err(NOT_AUTH);
        }
    };
    match server.receive(frame) {
        Ok(accepted) => {
            send(outbox, &accepted.welcome.encode());
            Ok(accepted.peer_node)
        }
        Err(error) => {
            let auth_failed = error.code() == ErrorCode::AuthFailed;
            if auth_failed {
                tracing::info!("authentication failed");
            } else {
                tracing::debug!(%error, "handshake failed");
            }
            send(outbox, &error.to_frame().encode());
            outbox.close(error.close_code());
            Err(Refused { auth_failed })
        }
    }
}

/// The legacy handshake. `on_verified` runs the moment the peer's answer
/// checks out, before our answer tells the peer the connection is open (a
/// legacy subscriber is subscribed there); its `Err` ends the connection.
pub async fn accept_legacy<F, Fut>(
    reader: &mut Reader,
    outbox: &Outbox,
    psk: &Psk,
    preauth_limit: usize,
    deadline: Instant,
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
                return Err(NOT_AUTH);
            }
        };
        let step = match handshake.receive(&frame) {
            Ok(step) => step,
            Err(failed) => {
                tracing::info!("legacy authentication failed");
                if let Some(decoy) = &failed.decoy {
                    send(outbox, &decoy.encode());
                }
                outbox.close(failed.close_code());
                return Err(Refused { auth_failed: true });
            }
        };
        if handshake.peer_verified() {
            if let Some(on_verified) = on_verified.take() {
                if on_verified().await.is_err() {
                    outbox.close(CloseCode::TopicRefused);
                    return Err(NOT_AUTH);
                }
            }
        }
        if let Some(answer) = &step.send {
            send(outbox, &answer.encode());
        }
    }
    Ok(())
}
