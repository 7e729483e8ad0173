//! The node runtime shared by consumers and producers: server-side
//! WebSocket connections whose writes go through a bounded [`outbox`] to one
//! writer task per connection, the authenticated [`channel`] loop, the
//! [`link`]s nodes open to consumers, and the admin HTTP port.

pub mod admin;
pub mod channel;
pub mod conn;
pub mod decode;
pub mod handshake;
pub mod link;
pub mod outbox;
pub mod pending;
pub mod request;
pub mod ws;
