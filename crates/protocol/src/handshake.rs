//! The shardq/1 mutual handshake as two state machines: frames in, frames (or
//! a verdict) out.
//!
//! ```text
//! server                                   client
//!   hello {version, node, nonce: Ns}  ──▶
//!                                     ◀──  auth {nonce: Nc, proof: Pc}
//!   (verify Pc; refuse Nc == Ns)
//!   welcome {proof: Ps}               ──▶  (verify Ps)
//! ```
//!
//! `Pc = HMAC-SHA256(psk, "shardq/1 client" ‖ Ns ‖ Nc)`,
//! `Ps = HMAC-SHA256(psk, "shardq/1 server" ‖ Ns ‖ Nc)`, nonces as raw bytes.
//! The server proves nothing before the client has, so a node's own challenge
//! cannot be reflected back to it.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::frame::{Auth, CloseCode, ErrorCode, Frame, Hello, PROTOCOL_VERSION, Welcome};

/// Label of the client's proof.
pub const CLIENT_LABEL: &[u8] = b"shardq/1 client";
/// Label of the server's proof.
pub const SERVER_LABEL: &[u8] = b"shardq/1 server";

/// The pre-shared key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Arc<[u8]>);

/// Why a psk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    /// Fewer than [`Psk::MIN_LEN`] bytes.
    #[error("the psk is {0} bytes long; it must be at least 16 bytes")]
    TooShort(usize),
}

impl Psk {
    /// The shortest psk a node accepts, in bytes.
    pub const MIN_LEN: usize = 16;

    /// Wraps a key of at least [`Psk::MIN_LEN`] bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Psk, PskError> {
        let key = key.into();
        if key.len() < Psk::MIN_LEN {
            return Err(PskError::TooShort(key.len()));
        }
        Ok(Psk(key.into()))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A random 32-byte key, hex-encoded (64 characters).
    pub fn generate() -> Psk {
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        Psk(hex::encode(key).into_bytes().into())
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// A 32-byte random nonce (hex on the wire).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    /// A fresh nonce from the operating system's cryptographic generator.
    pub fn random() -> Nonce {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        Nonce(bytes)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Nonce> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Nonce(bytes))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

fn proof(psk: &Psk, label: &[u8], server: &Nonce, client: &Nonce) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(psk.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.update(&server.0);
    mac.update(&client.0);
    mac.finalize().into_bytes().into()
}

/// The client's proof: HMAC-SHA256(psk, "shardq/1 client" ‖ server nonce ‖ client nonce).
pub fn client_proof(psk: &Psk, server: &Nonce, client: &Nonce) -> [u8; 32] {
    proof(psk, CLIENT_LABEL, server, client)
}

/// The server's proof: HMAC-SHA256(psk, "shardq/1 server" ‖ server nonce ‖ client nonce).
pub fn server_proof(psk: &Psk, server: &Nonce, client: &Nonce) -> [u8; 32] {
    proof(psk, SERVER_LABEL, server, client)
}

/// Compares a hex proof from the wire with the expected bytes in constant time.
fn proof_matches(received_hex: &str, expected: &[u8; 32]) -> bool {
    let mut received = [0u8; 32];
    if hex::decode_to_slice(received_hex, &mut received).is_err() {
        return false;
    }
    received.ct_eq(expected).into()
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A frame other than the one the handshake expects next.
    #[error("expected {expected} frame during the handshake, got {got}")]
    UnexpectedFrame {
        /// The frame type expected.
        expected: &'static str,
        /// The frame type received.
        got: &'static str,
    },
    /// The server speaks another version.
    #[error("server speaks {0:?}, this client speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(String),
    /// A nonce is not 64 hex characters.
    #[error("nonce is not 64 hex characters")]
    BadNonce,
    /// The client echoed the server's own nonce.
    #[error("client nonce equals the server's nonce")]
    ReflectedNonce,
    /// The peer's proof did not verify (wrong psk, or an attack).
    #[error("authentication failed: the peer's proof does not match this psk")]
    BadProof,
    /// The server answered the client's auth with an error frame.
    #[error("server refused the handshake ({code}): {message}")]
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
}

impl HandshakeError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::UnexpectedFrame { .. } => ErrorCode::BadFrame,
            HandshakeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            HandshakeError::BadNonce
            | HandshakeError::ReflectedNonce
            | HandshakeError::BadProof => ErrorCode::AuthFailed,
            HandshakeError::Refused { code, .. } => code.clone(),
        }
    }

    /// The WebSocket close code that follows the error.
    pub fn close_code(&self) -> CloseCode {
        match self.code() {
            ErrorCode::AuthFailed => CloseCode::AuthFailed,
            _ => CloseCode::ProtocolError,
        }
    }

    /// The `error` frame a server sends before closing. Authentication
    /// failures all read the same, so a prober learns nothing from the text.
    pub fn to_frame(&self) -> Frame {
        let message = match self.code() {
            ErrorCode::AuthFailed => "authentication failed".to_owned(),
            _ => self.to_string(),
        };
        Frame::error(None, self.code(), message)
    }
}

/// The server side: sends `hello`, verifies `auth`, answers `welcome`.
#[derive(Debug)]
pub struct ServerHandshake {
    psk: Psk,
    node: String,
    nonce: Nonce,
}

/// A verified client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccepted {
    /// The frame to send: `welcome` with the server's proof.
    pub welcome: Frame,
    /// The name the client gave in its `auth`, if any.
    pub peer_node: Option<String>,
}

impl ServerHandshake {
    /// A handshake for one incoming connection. `nonce` must be fresh
    /// ([`Nonce::random`]); tests pass fixed ones.
    pub fn new(psk: Psk, node: impl Into<String>, nonce: Nonce) -> ServerHandshake {
        ServerHandshake {
            psk,
            node: node.into(),
            nonce,
        }
    }

    /// The first frame: `hello`.
    pub fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION.to_owned(),
            node: self.node.clone(),
            nonce: self.nonce.to_hex(),
        })
    }

    /// Takes the client's answer. On error, send [`HandshakeError::to_frame`]
    /// and close with [`HandshakeError::close_code`].
    pub fn receive(self, frame: Frame) -> Result<ServerAccepted, HandshakeError> {
        let Frame::Auth(Auth { nonce, proof, node }) = frame else {
            return Err(HandshakeError::UnexpectedFrame {
                expected: "auth",
                got: frame.kind(),
            });
        };
        let client_nonce = Nonce::from_hex(&nonce).ok_or(HandshakeError::BadNonce)?;
        let expected = client_proof(&self.psk, &self.nonce, &client_nonce);
        // Check the proof before the nonce so both failures take the same path.
        if !proof_matches(&proof, &expected) {
            return Err(HandshakeError::BadProof);
        }
        if client_nonce == self.nonce {
            return Err(HandshakeError::ReflectedNonce);
        }
        let welcome = Frame::Welcome(Welcome {
            proof: hex::encode(server_proof(&self.psk, &self.nonce, &client_nonce)),
        });
        Ok(ServerAccepted {
            welcome,
            peer_node: node,
        })
    }
}

/// The client side: answers `hello` with `auth`, verifies `welcome`.
#[derive(Debug)]
pub struct ClientHandshake {
    psk: Psk,
    nonce: Nonce,
    node: Option<String>,
    state: ClientState,
}

#[derive(Debug)]
enum ClientState {
    AwaitHello,
    AwaitWelcome { server_nonce: Nonce, server: String },
    Done,
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this frame (`auth`) and wait for the next one.
    Send(Frame),
    /// The server proved the psk: the connection is established.
    Established {
        /// The server's node id from its `hello`.
        server: String,
    },
}

impl ClientHandshake {
    /// A handshake for one outgoing connection; `node` names this side in
    /// the server's logs.
    pub fn new(psk: Psk, nonce: Nonce, node: Option<String>) -> ClientHandshake {
        ClientHandshake {
            psk,
            nonce,
            node,
            state: ClientState::AwaitHello,
        }
    }

    /// Takes the server's next frame.
    pub fn receive(&mut self, frame: Frame) -> Result<ClientStep, HandshakeError> {
        if let Frame::Error(error) = frame {
            self.state = ClientState::Done;
            return Err(HandshakeError::Refused {
                code: error.code,
                message: error.message,
            });
        }
        match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::AwaitHello => {
                let Frame::Hello(hello) = frame else {
                    return Err(HandshakeError::UnexpectedFrame {
                        expected: "hello",
                        got: frame.kind(),
                    });
                };
                if hello.version != PROTOCOL_VERSION {
                    return Err(HandshakeError::UnsupportedVersion(hello.version));
                }
                let server_nonce = Nonce::from_hex(&hello.nonce).ok_or(HandshakeError::BadNonce)?;
                if server_nonce == self.nonce {
                    return Err(HandshakeError::ReflectedNonce);
                }
                let auth = Frame::Auth(Auth {
                    nonce: self.nonce.to_hex(),
                    proof: hex::encode(client_proof(&self.psk, &server_nonce, &self.nonce)),
                    node: self.node.clone(),
                });
                self.state = ClientState::AwaitWelcome {
                    server_nonce,
                    server: hello.node,
                };
                Ok(ClientStep::Send(auth))
            }
            ClientState::AwaitWelcome {
                server_nonce,
                server,
            } => {
                let Frame::Welcome(welcome) = frame else {
                    return Err(HandshakeError::UnexpectedFrame {
                        expected: "welcome",
                        got: frame.kind(),
                    });
                };
                let expected = server_proof(&self.psk, &server_nonce, &self.nonce);
                if !proof_matches(&welcome.proof, &expected) {
                    return Err(HandshakeError::BadProof);
                }
                Ok(ClientStep::Established { server })
            }
            ClientState::Done => Err(HandshakeError::UnexpectedFrame {
                expected: "nothing",
                got: frame.kind(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk(text: &str) -> Psk {
        Psk::new(text.as_bytes()).unwrap()
    }

    fn run(
        server_psk: &str,
        client_psk: &str,
    ) -> (Result<ServerAccepted, HandshakeError>, ClientHandshake) {
        let server = ServerHandshake::new(psk(server_psk), "consumer-0", Nonce::random());
        let mut client = ClientHandshake::new(psk(client_psk), Nonce::random(), None);
        let ClientStep::Send(auth) = client.receive(server.hello()).unwrap() else {
            panic!("client did not answer hello")
        };
        (server.receive(auth), client)
    }

    #[test]
    fn matching_psks_establish() {
        let (accepted, mut client) = run("0123456789abcdef", "0123456789abcdef");
        let accepted = accepted.unwrap();
        assert_eq!(
            client.receive(accepted.welcome).unwrap(),
            ClientStep::Established {
                server: "consumer-0".into()
            }
        );
    }

    #[test]
    fn wrong_psk_fails_at_the_server() {
        let (accepted, _) = run("0123456789abcdef", "0123456789abcdeX");
        let err = accepted.unwrap_err();
        assert_eq!(err, HandshakeError::BadProof);
        assert_eq!(err.close_code(), CloseCode::AuthFailed);
        assert_eq!(
            err.to_frame().encode(),
            r#"{"type":"error","code":"auth_failed","message":"authentication failed"}"#
        );
    }

    #[test]
    fn wrong_psk_fails_at_the_client() {
        // An impostor server that does not know the psk cannot forge a welcome.
        let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
        let impostor = ServerHandshake::new(psk("fedcba9876543210"), "evil", Nonce::random());
        client.receive(impostor.hello()).unwrap();
        let forged = Frame::Welcome(Welcome {
            proof: "ab".repeat(32),
        });
        assert_eq!(client.receive(forged), Err(HandshakeError::BadProof));
    }

    #[test]
    fn client_reports_the_servers_refusal() {
        let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
        let server = ServerHandshake::new(psk("0123456789abcdef"), "c", Nonce::random());
        client.receive(server.hello()).unwrap();
        let err = client
            .receive(Frame::error(
                None,
                ErrorCode::AuthFailed,
                "authentication failed",
            ))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::AuthFailed);
    }

    #[test]
    fn reflection_gets_nothing() {
        // The attack on the origin protocol: open two connections to the same
        // node and use the challenge of one as the challenge answered on the
        // other. Here the server answers only after the client proved the psk,
        // so there is no server proof to harvest, and mirroring the server's
        // own nonce is refused even with a valid-looking proof.
        let key = psk("0123456789abcdef");
        let server_nonce = Nonce::random();
        let server = ServerHandshake::new(key.clone(), "consumer-0", server_nonce);
        // The attacker echoes the server nonce and guesses a proof.
        let attempt = Frame::Auth(Auth {
            nonce: server_nonce.to_hex(),
            proof: hex::encode(server_proof(
                &psk("attacker-guess-00"),
                &server_nonce,
                &server_nonce,
            )),
            node: None,
        });
        assert_eq!(server.receive(attempt), Err(HandshakeError::BadProof));
        // Even a proof computed with the real key is refused when the nonces match.
        let server = ServerHandshake::new(key.clone(), "consumer-0", server_nonce);
        let mirrored = Frame::Auth(Auth {
            nonce: server_nonce.to_hex(),
            proof: hex::encode(client_proof(&key, &server_nonce, &server_nonce)),
            node: None,
        });
        assert_eq!(
            server.receive(mirrored),
            Err(HandshakeError::ReflectedNonce)
        );
        // A server proof replayed as a client proof fails: the labels differ.
        let client_nonce = Nonce::random();
        let server = ServerHandshake::new(key.clone(), "consumer-0", server_nonce);
        let replayed = Frame::Auth(Auth {
            nonce: client_nonce.to_hex(),
            proof: hex::encode(server_proof(&key, &server_nonce, &client_nonce)),
            node: None,
        });
        assert_eq!(server.receive(replayed), Err(HandshakeError::BadProof));
    }

    #[test]
    fn client_refuses_a_hello_with_its_own_nonce() {
        let nonce = Nonce::random();
        let mut client = ClientHandshake::new(psk("0123456789abcdef"), nonce, None);
        let hello = Frame::Hello(Hello {
            version: PROTOCOL_VERSION.into(),
            node: "x".into(),
            nonce: nonce.to_hex(),
        });
        assert_eq!(client.receive(hello), Err(HandshakeError::ReflectedNonce));
    }

    #[test]
    fn unexpected_frames_and_versions() {
        let server = ServerHandshake::new(psk("0123456789abcdef"), "c", Nonce::random());
        let err = server
            .receive(Frame::Ack(crate::frame::Ack::unsubscribed(1)))
            .unwrap_err();
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        let mut client = ClientHandshake::new(psk("0123456789abcdef"), Nonce::random(), None);
        let hello = Frame::Hello(Hello {
            version: "shardq/9".into(),
            node: "x".into(),
            nonce: Nonce::random().to_hex(),
        });
        assert_eq!(
            client.receive(hello).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let server = ServerHandshake::new(psk("0123456789abcdef"), "c", Nonce::random());
        let bad_nonce = Frame::Auth(Auth {
            nonce: "zz".into(),
            proof: "00".into(),
            node: None,
        });
        assert_eq!(server.receive(bad_nonce), Err(HandshakeError::BadNonce));
    }

    #[test]
    fn psk_rules() {
        assert_eq!(Psk::new("short"), Err(PskError::TooShort(5)));
        assert!(Psk::new("0123456789abcdef").is_ok());
        assert_eq!(format!("{:?}", psk("0123456789abcdef")), "Psk(<redacted>)");
        assert_eq!(Psk::generate().as_bytes().len(), 64);
    }
}
