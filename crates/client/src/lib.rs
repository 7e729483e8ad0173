//! The shardq client library: publish to and subscribe from a shardq
//! cluster over WebSocket, with acks as `Result`s, topics routed to their
//! owner consumer, and automatic reconnect-and-resume.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use shardq::{Publisher, PublisherConfig, Subscriber, SubscriberConfig};
//! use shardq::protocol::Psk;
//!
//! let psk = Psk::new(std::env::var("SHARDQ_PSK")?)?;
//! let subscriber = Subscriber::connect(SubscriberConfig::new("ws://127.0.0.1:7100", psk.clone())).await?;
//! let mut creates = subscriber.subscribe("database", "create").await?;
//! let publisher = Publisher::connect(PublisherConfig::new(["ws://127.0.0.1:7000"], psk)).await?;
//! publisher.publish("database", "create", &serde_json::json!({"id": 99})).await?;
//! let message = creates.next_message().await.expect("subscribed");
//! assert_eq!(message.payload.get(), r#"{"id":99}"#);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`publisher`]: [`Publisher`] and its [`Ack`].
//! - [`subscriber`]: [`Subscriber`], [`Subscription`] streams, [`Event`]s
//!   (a [`Message`] or a [`Gap`] a resume could not fill); queue groups:
//!   [`Subscriber::join`], the [`Work`] stream of [`Job`]s to ack.
//! - [`error`]: [`PublishError`], [`SubscribeError`], [`AckError`].
//! - [`cluster_file`]: read a cluster file and its psk.
//! - [`tls`]: [`Tls`], the CA `wss://` nodes are checked against.
//! - [`connection`]: [`authenticate`] (check a node and hang up) and
//!   [`ConnectError`], why a connection could not be opened.

pub mod cluster_file;
pub mod connection;
pub mod error;
pub mod publisher;
pub mod subscriber;
pub mod tls;

pub use connection::{ConnectError, authenticate, authenticate_tls};
pub use error::{AckError, PublishError, SubscribeError};
pub use publisher::{Ack, Publisher, PublisherConfig};
pub use shardq_protocol as protocol;
pub use subscriber::{
    ConsumerAddress, Event, Gap, Job, Message, Subscriber, SubscriberConfig, Subscription, Work,
};
pub use tls::Tls;
