//! The node runtime shared by shardq's consumers and producers: everything
//! between a TCP socket and a node's own logic.
//!
//! # Layout
//!
//! - [`codec`]: the WebSocket codec, sans-IO (decode, encode, masking).
//! - [`upgrade`]: the HTTP upgrade, as server and as client.
//! - [`conn`]: the accept loop, per-connection limits, the [`conn::Reader`].
//! - [`gate`]: the connection caps (in all, per address, unauthenticated).
//! - [`log_summary`]: peer-caused failures logged as periodic summaries.
//! - [`presence`]: who is connected (`GET /v1/clients`).
//! - [`outbox`]: the bounded, never-waiting queue of frames per connection.
//! - [`writer`]: the writer task, the only code that writes a socket.
//! - [`tls`]: rustls for client ports and links (plain or TLS halves,
//!   certificates reloaded on SIGHUP).
//! - [`channel`]: an authenticated connection's read loop (keepalive,
//!   backpressure, the stop signal).
//! - [`handshake`]: the server side of the shardq/1 and legacy handshakes.
//! - [`dial`]: opening a connection to another node (upgrade + handshake).
//! - [`link`]: the links to consumers: pipeline, window, reconnect, the set
//!   that follows the node list.
//! - [`admin`]: the admin HTTP port's shared routes.
//! - [`http_api`]: the client HTTP API's serving, authentication, CORS and
//!   refusals (producers' publish, consumers' Server-Sent Events).
//! - [`node`]: start-up: flags, cluster file and credentials, binding, signals.
//! - [`cluster_watch`]: following the cluster file (SIGHUP or a change).
//!
//! Tasks per connection: the node's connection task owns the [`conn::Reader`]
//! and the handling; the writer task owns the write half. Everyone else
//! reaches a connection only by pushing to its [`outbox::Outbox`], which
//! never waits.

pub mod admin;
pub mod channel;
pub mod cluster_watch;
pub mod codec;
pub mod conn;
/// The operator dashboard page on the admin port (`GET /`, `GET /dashboard`).
pub mod dashboard;
pub mod dial;
pub mod gate;
pub mod handshake;
pub mod http_api;
pub mod link;
pub mod log_summary;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod tls;
pub mod upgrade;
pub mod writer;
