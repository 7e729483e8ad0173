//! The shardq producer node: the cluster's front door for publishers. It
//! authenticates them, checks each topic against the queue configuration,
//! routes it to the consumer that owns it, and acks only what the owner
//! accepted.
//!
//! # Layout
//!
//! - `server`: [`run`], accept loop, admin routes (`/healthz`, `/readyz`,
//!   `/metrics`, `/v1/status`), graceful shutdown.
//! - `session`: publisher connections (`/v1/publish`, legacy `/produce`):
//!   check, route to the owner's link, let the link answer.
//! - `http`: the HTTP API (`POST /v1/topics/{queue}/{event}`).
//! - `metrics`: the Prometheus metrics.
//!
//! The connection runtime (upgrade, codec, outbox, writer task, keepalive,
//! handshakes) and the links to consumers (pipeline, window, reconnect,
//! routing over the node list) are `shardq-net`, shared with the consumer.

mod http;
mod metrics;
mod server;
mod session;

pub use server::{ProducerConfig, run, run_with_http};
