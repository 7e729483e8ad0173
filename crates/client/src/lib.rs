//! The shardq client library.
//!
//! # Layout
//!
//! - [`connection`]: open an authenticated shardq/1 connection.

pub mod connection;

pub use shardq_protocol as protocol;
