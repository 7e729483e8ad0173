//! The server side: sends `hello`, verifies `auth` against the node's
//! [`Credentials`], answers `welcome`.

use crate::auth::{ClientIdentity, Credentials};
use crate::frame::{Auth, Frame, Hello, PROTOCOL_VERSION, Welcome};

use super::{
    HandshakeError, NodeIds, Nonce, Psk, client_proof, node_client_proof, node_server_proof,
    proof_matches, server_proof, valid_node_id,
};

/// Who an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// Clients: the psk or a named client's secret.
    Clients,
    /// Nodes only (`/v1/cluster`): the node key, with both ids bound.
    Nodes,
}

/// Who completed the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A node that proved the node key under this id.
    Node(String),
    /// A client.
    Client(ClientIdentity),
}

/// The server side of one handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    credentials: Credentials,
    node: String,
    nonce: Nonce,
    accepts: Accepts,
    tls: bool,
}

/// A verified peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccepted {
    /// The frame to send: `welcome` with the server's proof.
    pub welcome: Frame,
    /// Who it is.
    pub peer: Peer,
    /// The name it gave for logs (`auth.node`), if any.
    pub peer_node: Option<String>,
}

impl ServerHandshake {
    /// A handshake for one incoming connection. `nonce` must be fresh
    /// ([`Nonce::random`]); tests pass fixed ones.
    pub fn new(
        credentials: Credentials,
        node: impl Into<String>,
        nonce: Nonce,
        accepts: Accepts,
    ) -> ServerHandshake {
        ServerHandshake {
            credentials,
            node: node.into(),
            nonce,
            accepts,
            tls: false,
        }
    }

    /// Whether the connection is over TLS (tokens are accepted only then,
    /// unless the token keys allow plaintext).
    pub fn over_tls(mut self, tls: bool) -> ServerHandshake {
        self.tls = tls;
        self
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
        let Frame::Auth(auth) = frame else {
            return Err(HandshakeError::UnexpectedFrame {
                expected: "auth",
                got: frame.kind(),
            });
        };
        let client_nonce = Nonce::from_hex(&auth.nonce).ok_or(HandshakeError::BadNonce)?;
        let (welcome_proof, peer) = match self.accepts {
            Accepts::Nodes if auth.token.is_some() => return Err(HandshakeError::NotANode),
            Accepts::Nodes => self.verify_node(&auth, &client_nonce)?,
            Accepts::Clients if auth.token.is_some() => {
                let identity = self.verify_token(auth.token.as_deref().unwrap_or_default())?;
                // Nothing to prove with: a token client trusts the server
                // through TLS.
                return Ok(ServerAccepted {
                    welcome: Frame::Welcome(Welcome {
                        proof: String::new(),
                    }),
                    peer: Peer::Client(identity),
                    peer_node: auth.node,
                });
            }
            Accepts::Clients => {
                let (secret, identity) = self
                    .verify_client(&auth, &client_nonce)
                    .ok_or(HandshakeError::BadProof)?;
                let proof = server_proof(secret, &self.nonce, &client_nonce);
                (proof, Peer::Client(identity))
            }
        };
        // Checked after the proof so that both failures take the same path.
        if client_nonce == self.nonce {
            return Err(HandshakeError::ReflectedNonce);
        }
        Ok(ServerAccepted {
            welcome: Frame::Welcome(Welcome {
                proof: hex::encode(welcome_proof),
            }),
            peer,
            peer_node: auth.node,
        })
    }

    /// A token: only over TLS (or when plaintext is allowed), and only if it
    /// verifies and has not expired.
    fn verify_token(&self, token: &str) -> Result<ClientIdentity, HandshakeError> {
        let keys = &self.credentials.tokens;
        if !self.tls && !keys.allow_plaintext {
            return Err(HandshakeError::TokenNeedsTls);
        }
        keys.verify(token).map_err(|_| HandshakeError::BadProof)
    }

    /// A node endpoint: the node key's proof under the claimed id; a valid
    /// client credential is told it is not a node.
    fn verify_node(
        &self,
        auth: &Auth,
        client_nonce: &Nonce,
    ) -> Result<([u8; 32], Peer), HandshakeError> {
        if let Some(id) = auth.node.as_deref().filter(|id| valid_node_id(id)) {
            let ids = NodeIds {
                client: id,
                server: &self.node,
            };
            let key = &self.credentials.node_key;
            let expected = node_client_proof(key, ids, &self.nonce, client_nonce);
            if proof_matches(auth.proof.as_deref().unwrap_or_default(), &expected) {
                let proof = node_server_proof(key, ids, &self.nonce, client_nonce);
                return Ok((proof, Peer::Node(id.to_owned())));
            }
        }
        if self.verify_client(auth, client_nonce).is_some() {
            return Err(HandshakeError::NotANode);
        }
        Err(HandshakeError::BadProof)
    }

    /// The secret that verifies the client's proof, and whose it is: the
    /// named client's (either of its secrets), else the psk.
    fn verify_client(&self, auth: &Auth, client_nonce: &Nonce) -> Option<(&Psk, ClientIdentity)> {
        let candidates: Vec<(&Psk, ClientIdentity)> = match auth.client.as_deref() {
            None => vec![(&self.credentials.psk, ClientIdentity::psk_holder())],
            Some(name) => match self.credentials.clients.get(name) {
                Some(credential) => credential
                    .secrets
                    .iter()
                    .map(|secret| (secret, credential.identity.clone()))
                    .collect(),
                None => Vec::new(),
            },
        };
        // Every candidate is checked, so the time taken does not say which
        // secret of a rotation matched.
        let mut verified = None;
        for (secret, identity) in candidates {
            let expected = client_proof(secret, &self.nonce, client_nonce);
            if proof_matches(auth.proof.as_deref().unwrap_or_default(), &expected)
                && verified.is_none()
            {
                verified = Some((secret, identity));
            }
        }
        verified
    }
}
