//! The machine-readable codes: [`ErrorCode`] (the `code` of an `error`
//! frame, with its wire spelling) and [`CloseCode`] (the WebSocket close
//! codes and reasons shardq nodes send).

use std::fmt;

use serde::Serialize;

/// Machine-readable error codes (the `code` of an `error` frame).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, or a field missing or of the wrong type.
    BadFrame,
    /// The frame is larger than the connection's limit.
    FrameTooLarge,
    /// The topic is not `queue/event` with valid names.
    BadTopic,
    /// The queue is not declared (and `open_topics` is off).
    UnknownQueue,
    /// The event is not declared for its queue (and `open_topics` is off).
    UnknownEvent,
    /// The frame is not allowed on this endpoint.
    NotAuthorized,
    /// The psk proof did not verify.
    AuthFailed,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The request was certainly not carried out: the topic's owner could
    /// not be reached, or could not take it now. Safe to retry.
    Unavailable,
    /// A publish reached (or may have reached) the topic's owner but no
    /// answer came: it may or may not have been sequenced. Retry with the
    /// same idempotency key to find out without duplicating it.
    OutcomeUnknown,
    /// A publish's payload is larger than the payload limit.
    PayloadTooLarge,
    /// The connection already holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The connection is already subscribed to the topic.
    AlreadySubscribed,
    /// The connection is not subscribed to the topic.
    NotSubscribed,
    /// Consumer → consumer: a peer subscribed at a node that does not own
    /// the topic in its view of the node list (views disagree for a while).
    NotOwner,
    /// The node is shutting down and did not process the request.
    ShuttingDown,
    /// A queue group's backlog is full: the publish was not sequenced.
    BacklogFull,
    /// An `ack_message` for a message not in flight to this member (acked
    /// already, or redelivered elsewhere after its ack timeout).
    NotInFlight,
    /// A fault inside the node.
    Internal,
    /// A code this version does not know (kept verbatim).
    Other(String),
}

impl ErrorCode {
    /// Every code this version defines.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::BadTopic,
        ErrorCode::UnknownQueue,
        ErrorCode::UnknownEvent,
        ErrorCode::NotAuthorized,
        ErrorCode::AuthFailed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooManySubscriptions,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::NotOwner,
        ErrorCode::ShuttingDown,
        ErrorCode::BacklogFull,
        ErrorCode::NotInFlight,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::UnknownQueue => "unknown_queue",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::NotAuthorized => "not_authorized",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::BacklogFull => "backlog_full",
            ErrorCode::NotInFlight => "not_in_flight",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses a wire code; unknown codes become [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_owned()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// WebSocket close codes used by shardq nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the node is shutting down.
    GoingAway,
    /// 1009: a frame exceeded the size limit.
    FrameTooLarge,
    /// 4001: the psk proof did not verify.
    AuthFailed,
    /// 4002: the handshake did not finish in time.
    HandshakeTimeout,
    /// 4003: a frame that is not valid at this point (before or during the handshake).
    ProtocolError,
    /// 4004: a legacy subscriber's topic is malformed or not allowed.
    TopicRefused,
    /// 4008: the subscriber fell too far behind and was disconnected.
    SlowConsumer,
    /// 4010: the node lost part of a topic's stream it relays; reconnect
    /// and resume (the resume reports what is missing).
    Resync,
    /// 4009: the peer stopped answering pings.
    PingTimeout,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::FrameTooLarge => 1009,
            CloseCode::AuthFailed => 4001,
            CloseCode::HandshakeTimeout => 4002,
            CloseCode::ProtocolError => 4003,
            CloseCode::TopicRefused => 4004,
            CloseCode::SlowConsumer => 4008,
            CloseCode::Resync => 4010,
            CloseCode::PingTimeout => 4009,
        }
    }

    /// The short reason sent with the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going away",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::AuthFailed => "auth failed",
            CloseCode::HandshakeTimeout => "handshake timeout",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::TopicRefused => "topic refused",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::Resync => "resync",
            CloseCode::PingTimeout => "ping timeout",
        }
    }

    /// The close code with this number, if shardq defines it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::FrameTooLarge,
            CloseCode::AuthFailed,
            CloseCode::HandshakeTimeout,
            CloseCode::ProtocolError,
            CloseCode::TopicRefused,
            CloseCode::SlowConsumer,
            CloseCode::PingTimeout,
            CloseCode::Resync,
        ]
        .into_iter()
        .find(|known| known.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
        }
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1001, 1009, 4001, 4002, 4003, 4004, 4008, 4009, 4010] {
            assert_eq!(CloseCode::from_code(code).unwrap().code(), code);
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
