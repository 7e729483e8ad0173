//! The node runtime shared by consumers and producers: server-side
//! WebSocket connections whose writes go through a bounded [`outbox`] to one
//! writer task per connection, the authenticated [`channel`] loop, and the
//! admin HTTP port.

pub mod admin;
pub mod channel;
pub mod conn;
pub mod handshake;
pub mod outbox;
pub mod ws;
