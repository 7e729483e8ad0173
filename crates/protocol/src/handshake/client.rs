//! The client side: answers `hello` with `auth`, verifies `welcome`. A
//! client proves the psk or a named client's secret; a node dialling
//! another node proves the node key under its own id and checks that the
//! node it reached is the one it dialled.

use crate::frame::{Auth, Frame, PROTOCOL_VERSION};

use super::{
    HandshakeError, NodeIds, Nonce, Psk, client_proof, node_client_proof, node_server_proof,
    proof_matches, server_proof,
};

/// How this side proves itself.
#[derive(Debug, Clone)]
enum As {
    /// A client: `auth.client` names the credential (none: the psk).
    Client { client: Option<String> },
    /// A node with id `own`, dialling the node `expected`.
    Node { own: String, expected: String },
    /// A client presenting a signed token (the server proves nothing: TLS
    /// authenticates it).
    Token { token: String },
}

/// The client side of one handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    key: Psk,
    nonce: Nonce,
    node: Option<String>,
    role: As,
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
    /// The server proved the key: the connection is established.
    Established {
        /// The server's node id from its `hello`.
        server: String,
    },
}

impl ClientHandshake {
    /// A client proving `key` (the psk, or its own secret after
    /// [`ClientHandshake::named`]); `node` names this side in the server's
    /// logs.
    pub fn new(key: Psk, nonce: Nonce, node: Option<String>) -> ClientHandshake {
        ClientHandshake {
            key,
            nonce,
            node,
            role: As::Client { client: None },
            state: ClientState::AwaitHello,
        }
    }

    /// Names the client credential `key` belongs to (`auth.client`).
    pub fn named(mut self, client: Option<String>) -> ClientHandshake {
        self.role = As::Client { client };
        self
    }

    /// A client presenting `token` instead of a proof (over TLS).
    pub fn token(token: impl Into<String>, nonce: Nonce, node: Option<String>) -> ClientHandshake {
        ClientHandshake {
            // Unused: nothing is proved with a key.
            key: Psk(std::sync::Arc::from(&b"token"[..])),
            nonce,
            node,
            role: As::Token {
                token: token.into(),
            },
            state: ClientState::AwaitHello,
        }
    }

    /// A node `own` dialling the node `expected` with the node key.
    pub fn node(
        node_key: Psk,
        nonce: Nonce,
        own: impl Into<String>,
        expected: impl Into<String>,
    ) -> ClientHandshake {
        let own = own.into();
        ClientHandshake {
            key: node_key,
            nonce,
            node: Some(own.clone()),
            role: As::Node {
                own,
                expected: expected.into(),
            },
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
                let mut token = None;
                let (proof, client) = match &self.role {
                    As::Client { client } => (
                        Some(hex::encode(client_proof(
                            &self.key,
                            &server_nonce,
                            &self.nonce,
                        ))),
                        client.clone(),
                    ),
                    As::Token { token: own } => {
                        token = Some(own.clone());
                        (None, None)
                    }
                    As::Node { own, expected } => {
                        if hello.node != *expected {
                            return Err(HandshakeError::WrongNode {
                                expected: expected.clone(),
                                got: hello.node,
                            });
                        }
                        let ids = NodeIds {
                            client: own,
                            server: expected,
                        };
                        let proof = node_client_proof(&self.key, ids, &server_nonce, &self.nonce);
                        (Some(hex::encode(proof)), None)
                    }
                };
                let auth = Frame::Auth(Auth {
                    nonce: self.nonce.to_hex(),
                    proof,
                    token,
                    node: self.node.clone(),
                    client,
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
                let expected = match &self.role {
                    As::Token { .. } => return Ok(ClientStep::Established { server }),
                    As::Client { .. } => server_proof(&self.key, &server_nonce, &self.nonce),
                    As::Node { own, .. } => {
                        let ids = NodeIds {
                            client: own,
                            server: &server,
                        };
                        node_server_proof(&self.key, ids, &server_nonce, &self.nonce)
                    }
                };
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
