//! The errors the client reports, typed, with the server's code when the
//! server refused: [`PublishError`], [`SubscribeError`] (subscribes and
//! queue-group joins) and [`AckError`] (a queue group's job acks).

use shardq_protocol::{ErrorCode, TopicError};

use crate::connection::ConnectError;

/// Why a publish did not get an ack.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic is not `queue/event` with valid names.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The payload is not valid JSON, or did not serialize.
    #[error("payload is not valid JSON: {0}")]
    InvalidPayload(#[source] serde_json::Error),
    /// An idempotency key that is not 1–64 characters of `A-Z a-z 0-9 . _ : -`.
    #[error("invalid idempotency key {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ : -")]
    InvalidKey(String),
    /// The producer answered with an error (`unknown_event`, `unavailable`, …).
    #[error("publish refused ({code}): {message}")]
    Refused {
        /// The server's error code (see docs/PROTOCOL.md).
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The connection broke before the answer came: the message may or may
    /// not have been delivered.
    #[error(
        "connection to the producer broke before the answer; the message may or may not have been delivered"
    )]
    Disconnected,
    /// No answer in time (the publisher may be reconnecting).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The publisher was closed.
    #[error("the publisher is closed")]
    Closed,
}

impl PublishError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            PublishError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Why a subscribe or unsubscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The topic or filter is malformed.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The consumer answered with an error (`unknown_queue`, `already_subscribed`, …).
    #[error("subscribe refused ({code}): {message}")]
    Refused {
        /// The server's error code (see docs/PROTOCOL.md).
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// `queue/*` across several consumers needs the queue configuration to
    /// know which topics it names.
    #[error(
        "queue/* with several consumers needs the queue configuration (use SubscriberConfig::from_cluster)"
    )]
    WildcardNeedsQueues,
    /// A queue group's name is not 1–64 characters of `A-Z a-z 0-9 . _ : -`.
    #[error("invalid group name {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ : -")]
    InvalidGroup(String),
    /// A queue group takes one exact topic (`queue/event`), not `queue/*`.
    #[error("a queue group takes one exact topic, not {0}: join each event's group on its own")]
    GroupNeedsExactTopic(String),
    /// The consumer could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection to the consumer broke after the handshake, before
    /// the answer came. The request did not take effect: the subscriber
    /// reconnects and resumes the subscriptions that were live before it
    /// (so an unanswered subscribe is not made, and the topics of an
    /// unanswered unsubscribe stay subscribed). Try again.
    #[error(
        "the connection to the consumer broke before the answer; the request did not take effect (on reconnect only the subscriptions live before it are resumed): try again"
    )]
    Disconnected,
    /// No answer in time (the connection may be reconnecting).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The subscriber was closed.
    #[error("the subscriber is closed")]
    Closed,
}

impl SubscribeError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            SubscribeError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Why a [`Job`](crate::Job)'s ack did not take (section 15 of
/// docs/PROTOCOL.md). Whatever the error, the job is not lost: a job the
/// owner does not count as acked is delivered again, to this member or
/// another, with a greater `redelivered`.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The owner answered `not_in_flight`: the job is no longer in flight
    /// to this member: acked already, or redelivered (to another member,
    /// or to this one again) after its ack timeout.
    #[error("ack refused (not_in_flight): {message}")]
    NotInFlight {
        /// The owner's explanation.
        message: String,
    },
    /// The owner refused the ack with another code (e.g. `not_subscribed`).
    #[error("ack refused ({code}): {message}")]
    Refused {
        /// The server's error code (see docs/PROTOCOL.md).
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The job came on a connection that has since broken (the member has
    /// rejoined on another, or is rejoining): the owner counted the lost
    /// connection's unacked jobs as left and delivers them again, so this
    /// ack is not sent. Nothing to retry: the job comes back.
    #[error(
        "the job came on a connection that was lost; it was not acked: the owner delivers it again"
    )]
    ConnectionLost,
    /// The ack was sent but the connection broke before its answer: the
    /// owner either took it or delivers the job again.
    #[error(
        "the connection broke before the ack's answer; the owner either took it or delivers the job again"
    )]
    Disconnected,
    /// No answer in time.
    #[error("no answer to the ack within {0:?}")]
    Timeout(std::time::Duration),
    /// The [`Work`](crate::Work) the job came from was dropped: its
    /// membership ended, and the owner delivers its unacked jobs to the
    /// group's other members.
    #[error("the work this job came from was dropped; the owner delivers the job again")]
    Closed,
}

impl AckError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            AckError::NotInFlight { .. } => Some(&ErrorCode::NotInFlight),
            AckError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}
