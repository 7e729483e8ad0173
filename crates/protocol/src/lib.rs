//! The shardq/1 protocol, sans-IO: everything a node or client must agree on,
//! as plain values and state machines, with no sockets and no runtime.
//!
//! # Layout
//!
//! - [`frame`]: the JSON frames, their bounded decoder, error and close codes.
//! - [`handshake`]: the mutual handshake (`ServerHandshake`, `ClientHandshake`).
//! - [`auth`]: node key, client credentials, tenants and permissions.
//! - [`topic`]: `queue/event` topics, `queue/*` filters, and `QueueConfig`.
//! - [`routing`]: which consumer owns a topic (rendezvous hashing over ids).
//! - [`legacy`]: the origin system's dialect and its handshake.
//! - [`config`]: the cluster file shared by every node; [`limits`]: its `[limits]`.
//! - [`cluster_file`]: loading it and its psk (the reading is the caller's).
//! - [`status`]: the JSON of the nodes' admin status routes.
//!
//! `docs/PROTOCOL.md` in the repository is the normative description; the
//! test vectors there are asserted by this crate's tests.

pub mod auth;
pub mod cluster_file;
pub mod config;
pub mod frame;
pub mod handshake;
pub mod legacy;
pub mod limits;
pub mod routing;
pub mod status;
pub mod topic;
pub mod work;

pub use auth::{ClientIdentity, Credentials, Permissions};
pub use cluster_file::ClusterFileError;
pub use config::{ClusterConfig, ConfigError, ENVELOPE_BYTES, Limits, NodeEntry};
pub use frame::{
    Ack, AckMessage, CloseCode, DecodeError, ErrorCode, ErrorFrame, Frame, Gap, Message, Moved,
    PROTOCOL_VERSION, Position, Publish, Resumed, Stalled, Subscribe, TopicPosition, Unsubscribe,
};
pub use handshake::{
    Accepts, ClientHandshake, ClientStep, HandshakeError, Nonce, Peer, Psk, ServerHandshake,
};
pub use routing::Router;
pub use topic::{QueueConfig, Topic, TopicError, TopicFilter};

/// Raw JSON, as payloads are carried (re-exported from `serde_json`).
pub use serde_json::value::RawValue;
