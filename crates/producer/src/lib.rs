//! The shardq producer node: the cluster's front door for publishers. It
//! authenticates them, checks each topic against the queue configuration,
//! routes it to the consumer that owns it, and acks only what the owner
//! accepted.
//!
//! # Layout
//!
//! - [`server`]: [`run`], accept loop, admin routes (`/healthz`, `/readyz`,
//!   `/metrics`), graceful shutdown.
//! - `session`: publisher connections (`/v1/publish`, legacy `/produce`).
//! - [`metrics`]: the Prometheus metrics.
//!
//! The connection runtime (outbox, writer task, keepalive, handshakes) and
//! the links to consumers are shared with the consumer:
//! `shardq_consumer::net`.

pub mod metrics;
pub mod server;
mod session;

pub use server::{ProducerConfig, run};
