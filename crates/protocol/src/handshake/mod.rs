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
//!
//! Who the key belongs to:
//! - **clients** prove the psk (anonymous: the default tenant, every
//!   permission) or, naming themselves in `auth.client`, one of their own
//!   secrets ([`crate::auth`]);
//! - **nodes**, on `/v1/cluster` only, prove the node key with the node
//!   labels, and both ids are inside the proofs:
//!   `HMAC(node_key, "shardq/1 node client" ‖ Ns ‖ Nc ‖ len ‖ client id ‖ len ‖ server id)`
//!   (and `"shardq/1 node server"` for the welcome), so a node's proof
//!   cannot be replayed under another id, and a dialling node knows it
//!   reached the node it dialled.
//!
//! Files: [`server`] and [`client`] hold the two state machines.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::frame::{CloseCode, ErrorCode, Frame, PROTOCOL_VERSION};

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientHandshake, ClientStep};
pub use server::{Accepts, Peer, ServerAccepted, ServerHandshake};

/// Label of the client's proof.
pub const CLIENT_LABEL: &[u8] = b"shardq/1 client";
/// Label of the server's proof.
pub const SERVER_LABEL: &[u8] = b"shardq/1 server";
/// Label of a dialling node's proof.
pub const NODE_CLIENT_LABEL: &[u8] = b"shardq/1 node client";
/// Label of an accepting node's proof to a node.
pub const NODE_SERVER_LABEL: &[u8] = b"shardq/1 node server";

/// The pre-shared key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Arc<[u8]>);

/// Why a psk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    /// Fewer than [`Psk::MIN_LEN`] bytes.
    #[error("the key is {0} bytes long; it must be at least 16 bytes")]
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

fn node_proof(
    key: &Psk,
    label: &[u8],
    ids: NodeIds<'_>,
    server: &Nonce,
    client: &Nonce,
) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.update(&server.0);
    mac.update(&client.0);
    for id in [ids.client, ids.server] {
        // Ids are at most 64 bytes (validated); the length keeps the two apart.
        mac.update(&[id.len().min(255) as u8]);
        mac.update(id.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// The two node ids a node handshake binds: the dialling node's and the
/// accepting node's.
#[derive(Debug, Clone, Copy)]
pub struct NodeIds<'a> {
    /// The dialling node (`auth.node`).
    pub client: &'a str,
    /// The accepting node (`hello.node`).
    pub server: &'a str,
}

/// A dialling node's proof: HMAC-SHA256(node key, "shardq/1 node client" ‖
/// Ns ‖ Nc ‖ len(client id) ‖ client id ‖ len(server id) ‖ server id).
pub fn node_client_proof(key: &Psk, ids: NodeIds<'_>, server: &Nonce, client: &Nonce) -> [u8; 32] {
    node_proof(key, NODE_CLIENT_LABEL, ids, server, client)
}

/// The accepting node's proof, as [`node_client_proof`] with the label
/// "shardq/1 node server".
pub fn node_server_proof(key: &Psk, ids: NodeIds<'_>, server: &Nonce, client: &Nonce) -> [u8; 32] {
    node_proof(key, NODE_SERVER_LABEL, ids, server, client)
}

/// Whether a node id is well formed: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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
    #[error("authentication failed: the peer's proof does not match our key")]
    BadProof,
    /// A token over a plaintext connection (and plaintext is not allowed).
    #[error("tokens are accepted over TLS only")]
    TokenNeedsTls,
    /// A client credential on a node endpoint (`/v1/cluster`).
    #[error("client credentials cannot open node endpoints")]
    NotANode,
    /// The node that answered is not the one dialled.
    #[error("dialled node {expected:?} but {got:?} answered")]
    WrongNode {
        /// The id dialled.
        expected: String,
        /// The id in the peer's `hello`.
        got: String,
    },
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
            | HandshakeError::BadProof
            | HandshakeError::WrongNode { .. } => ErrorCode::AuthFailed,
            HandshakeError::NotANode | HandshakeError::TokenNeedsTls => ErrorCode::NotAuthorized,
            HandshakeError::Refused { code, .. } => code.clone(),
        }
    }

    /// The WebSocket close code that follows the error.
    pub fn close_code(&self) -> CloseCode {
        match self.code() {
            ErrorCode::AuthFailed | ErrorCode::NotAuthorized => CloseCode::AuthFailed,
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
