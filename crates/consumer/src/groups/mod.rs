//! Queue groups (work queues): the members of a group share a topic's
//! messages, each message handled by one member, acked, redelivered on
//! timeout or departure, dead-lettered after too many deliveries.
//!
//! - `dispatch`: one group's state at the topic's owner, sans-IO.

pub mod dispatch;
