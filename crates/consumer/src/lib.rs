//! The shardq consumer node: holds subscriptions, sequences the topics it
//! owns, keeps a short history for resume, and fans messages out without
//! ever waiting on a slow subscriber.
//!
//! # Layout
//!
//! - `server`: [`run`], the accept loop, endpoint dispatch, admin routes.
//! - `session`: one shardq/1 connection (`/v1/subscribe`, `/v1/cluster`).
//! - `legacy_session`: the origin dialect (`/producer`, `/subscribe/{topic}`).
//! - `topics`: per-topic state, sequencing, fan-out, edges, handoff.
//! - `history`: per-topic rings under one node-wide byte budget.
//! - `metrics`: the Prometheus metrics.
//! - `snapshot`: the state kept across a graceful restart, on disk.
//!
//! The connection runtime (upgrade, codec, outbox, writer task, keepalive,
//! handshakes, links to other consumers, admin HTTP, start-up) is
//! `shardq-net`, shared with the producer.

mod groups;
mod history;
mod http;
mod legacy_session;
mod metrics;
mod server;
mod session;
mod snapshot;
mod topics;

pub use server::{ConsumerConfig, SHUTDOWN_GRACE, run, run_with_http};
