//! The shardq consumer node: holds subscriptions, sequences the topics it
//! owns, keeps a short history for resume, and fans messages out without
//! ever waiting on a slow subscriber.
//!
//! # Layout
//!
//! - [`server`]: [`run`], the accept loop, endpoint dispatch.
//! - `session`: one shardq/1 connection (`/v1/subscribe`, `/v1/cluster`).
//! - `legacy_session`: the origin dialect (`/producer`, `/subscribe/{topic}`).
//! - [`topics`]: per-topic state, sequencing, fan-out, edges.
//! - [`handoff`]: ownership changes, upstream streams, the peer-link handler.
//! - [`history`]: per-topic rings under one node-wide byte budget.
//! - [`net`]: the connection runtime both node kinds share (outbox, writer
//!   task, keepalive, admin HTTP).
//! - [`node`]: flags, environment, psk and cluster file loading.
//! - [`metrics`]: the Prometheus metrics.

pub mod handoff;
pub mod history;
mod legacy_session;
pub mod metrics;
pub mod net;
pub mod node;
pub mod server;
mod session;
pub mod topics;

pub use server::{ConsumerConfig, run};
