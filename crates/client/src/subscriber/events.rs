//! What a subscription yields: [`Message`]s and [`Gap`]s as [`Event`]s, and
//! the [`Subscription`] stream that carries them to the application.

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use shardq_protocol::{Position, RawValue, Topic};
use tokio::sync::mpsc;

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic.
    pub topic: Topic,
    /// The topic's epoch at its owner.
    pub epoch: u64,
    /// The message's offset in that epoch.
    pub offset: u64,
    /// The payload, byte for byte as published.
    pub payload: Box<RawValue>,
}

impl Message {
    /// The payload deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// Its position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// Messages may be missing: after a reconnect, the consumer's history no
/// longer reached back to the last message received; or the topic's owner
/// restarted and lost its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The topic.
    pub topic: Topic,
    /// The last position received before the gap.
    pub after: Position,
    /// The epoch the topic goes on in.
    pub epoch: u64,
    /// The messages that follow have greater offsets than this in `epoch`.
    pub offset: u64,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message.
    Message(Message),
    /// Some messages are missing (see [`Gap`]).
    Gap(Gap),
    /// The consumer relaying `topic` cannot reach its owner: nothing
    /// arrives until [`Event::Resumed`]. The subscription stays.
    Stalled {
        /// The topic.
        topic: Topic,
        /// The owner that cannot be reached.
        owner: String,
    },
    /// `topic`'s stream flows again after [`Event::Stalled`].
    Resumed {
        /// The topic.
        topic: Topic,
    },
}

/// The messages of one `subscribe`, as a `Stream` of [`Event`]s. Once it
/// is dropped, its topics are unsubscribed when their next message arrives
/// (call [`Subscriber::unsubscribe`](super::Subscriber::unsubscribe) to end them at once).
pub struct Subscription {
    pub(super) topics: Vec<Topic>,
    pub(super) events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` when the subscriber was closed or unsubscribed.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next message, skipping (and logging) gaps and stalls.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.events.recv().await? {
                Event::Message(message) => return Some(message),
                Event::Gap(gap) => tracing::warn!(?gap, "messages may be missing"),
                Event::Stalled { topic, owner } => {
                    tracing::warn!(%topic, %owner, "the topic's owner cannot be reached")
                }
                Event::Resumed { topic } => tracing::info!(%topic, "the topic flows again"),
            }
        }
    }

    /// The topics it covers (`queue/*` expanded).
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }
}

impl futures_util::Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}
