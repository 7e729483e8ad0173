//! The errors the client reports, typed, with the server's code when the
//! server refused.

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
