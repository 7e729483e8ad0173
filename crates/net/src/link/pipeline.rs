//! The pipeline of one link, sans-IO: the connection it sends on (if any),
//! the publishes in flight under their link-local ids and deadlines, the
//! publishes held for the link's first connection, and the reading of what
//! the consumer sends back. Time is passed in; nothing here touches a
//! socket or a clock, so every transition is a plain-value test below.
//!
//! Every entry that goes in comes out exactly once: answered
//! ([`Pipeline::read`]), expired ([`Pipeline::expire`]) or drained when
//! the connection is lost ([`Pipeline::drain`]).

use bytes::Bytes;
use shardq_protocol::frame::parse_publish_ack;
use shardq_protocol::{DecodeError, ErrorCode, ErrorFrame, Frame, Position};
use tokio::time::Instant;

use super::pending::PendingRing;

/// Ids of requests a [`super::LinkHandler`] sends have this bit set, so
/// their answers reach the handler instead of the publish table.
pub const HANDLER_ID_BIT: u64 = 1 << 63;

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The owner sequenced it here (`duplicate`: earlier, under the same
    /// idempotency key).
    Acked {
        /// Its position.
        at: Position,
        /// Its key was seen before.
        duplicate: bool,
    },
    /// It was refused or its fate is unknown; the code says which.
    Failed(ErrorCode, String),
}

/// Where a publish offered to the link goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<C> {
    /// Sent on this connection (a handle on it) now.
    Send(C),
    /// Held until the link's first connection (the consumer was never
    /// reached yet: just added to the node list, or this node just started).
    Hold,
    /// Refused at once: the link was up and is down now.
    Refuse,
}

/// What one frame from the consumer was.
#[derive(Debug)]
pub enum Read<T> {
    /// The answer to a publish in flight, with its entry.
    Answer(T, Answer),
    /// The answer to a publish no longer in flight (it expired): dropped.
    Stale,
    /// A frame for the link's handler (a message, a `moved`, or the answer
    /// to a handler's request).
    Handler(Frame),
    /// An error frame without an id: the consumer reports a problem with
    /// the connection itself.
    ConnectionError(ErrorFrame),
    /// Not a shardq/1 frame.
    Undecodable(DecodeError),
}

#[derive(Debug)]
enum Phase<C> {
    /// Never connected yet: publishes are held.
    NotYetUp,
    /// Connected: publishes are sent on `C`.
    Up(C),
    /// Was connected, is not now: publishes are refused.
    Down,
}

/// Publishes taken out of the pipeline without an answer, by whether they
/// went out on a connection: `unsent` ones were certainly not sequenced;
/// the fate of `sent` ones is unknown.
#[derive(Debug)]
pub struct Unanswered<T> {
    /// Sent on a connection, no answer came.
    pub sent: Vec<T>,
    /// Held for the first connection, never sent.
    pub unsent: Vec<T>,
}

impl<T> Unanswered<T> {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.unsent.is_empty()
    }
}

/// One link's publishes in flight and its connection.
#[derive(Debug)]
pub struct Pipeline<T, C> {
    phase: Phase<C>,
    pending: PendingRing<T>,
    /// Frames waiting for the first connection, with their pending ids.
    held: Vec<(u64, Bytes)>,
}

impl<T, C> Default for Pipeline<T, C> {
    fn default() -> Self {
        Pipeline {
            phase: Phase::NotYetUp,
            pending: PendingRing::default(),
            held: Vec::new(),
        }
    }
}

/// Splits entries (`entries[i]` has id `first + i`, `None` for answered
/// ones) by whether their id is among the `held` frames.
fn split<T>(first: u64, entries: Vec<Option<T>>, held: &[(u64, Bytes)]) -> Unanswered<T> {
    let mut unanswered = Unanswered {
        sent: Vec::new(),
        unsent: Vec::new(),
    };
    for (id, entry) in (first..).zip(entries) {
        let Some(entry) = entry else { continue };
        if held.iter().any(|(held, _)| *held == id) {
            unanswered.unsent.push(entry);
        } else {
            unanswered.sent.push(entry);
        }
    }
    unanswered
}

impl<T, C> Pipeline<T, C> {
    /// Where a publish offered now goes.
    pub fn admit(&self) -> Admit<C>
    where
        C: Clone,
    {
        match &self.phase {
            Phase::NotYetUp => Admit::Hold,
            Phase::Up(conn) => Admit::Send(conn.clone()),
            Phase::Down => Admit::Refuse,
        }
    }

    /// The connection, while up.
    pub fn conn(&self) -> Option<&C> {
        match &self.phase {
            Phase::Up(conn) => Some(conn),
            _ => None,
        }
    }

    /// Enters a publish answered by `deadline` at the latest; its id (ids
    /// are consecutive and never reused). Deadlines must not decrease.
    pub fn enter(&mut self, deadline: Instant, entry: T) -> u64 {
        self.pending.push(deadline, entry)
    }

    /// Keeps the frame of entered publish `id` for the first connection.
    pub fn hold(&mut self, id: u64, frame: Bytes) {
        self.held.push((id, frame));
    }

    /// The link connected on `conn`: the held frames whose publishes are
    /// still in flight, to send first, in order.
    pub fn up(&mut self, conn: C) -> Vec<Bytes> {
        self.phase = Phase::Up(conn);
        let pending = &self.pending;
        std::mem::take(&mut self.held)
            .into_iter()
            .filter(|(id, _)| pending.contains(*id))
            .map(|(_, frame)| frame)
            .collect()
    }

    /// The connection is gone: nothing more is sent on it. What was in
    /// flight stays until [`drain`](Self::drain).
    pub fn detach(&mut self) -> Option<C> {
        match std::mem::replace(&mut self.phase, Phase::Down) {
            Phase::Up(conn) => Some(conn),
            Phase::NotYetUp | Phase::Down => None,
        }
    }

    /// Takes every publish in flight or held (the link broke or retired).
    pub fn drain(&mut self) -> Unanswered<T> {
        let held = std::mem::take(&mut self.held);
        let (first, entries) = self.pending.drain_with_ids();
        split(first, entries, &held)
    }

    /// Takes the publishes whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Unanswered<T> {
        let (first, expired) = self.pending.expire_with_ids(now);
        let unanswered = split(first, expired, &self.held);
        if !self.held.is_empty() {
            let pending = &self.pending;
            self.held.retain(|(id, _)| pending.contains(*id));
        }
        unanswered
    }

    /// Reads one text frame the consumer sent.
    pub fn read(&mut self, text: &str) -> Read<T> {
        // Nearly every frame is a publish ack in the consumer's fixed form.
        if let Some(ack) = parse_publish_ack(text)
            && ack.id & HANDLER_ID_BIT == 0
        {
            return self.answered(
                ack.id,
                Answer::Acked {
                    at: ack.at,
                    duplicate: ack.duplicate,
                },
            );
        }
        let frame = match Frame::decode_str(text, usize::MAX) {
            Ok(frame) => frame,
            Err(error) => return Read::Undecodable(error),
        };
        match frame {
            Frame::Ack(ack) if ack.id & HANDLER_ID_BIT == 0 => {
                let answer = match ack.position() {
                    Some(at) => Answer::Acked {
                        at,
                        duplicate: ack.duplicate,
                    },
                    None => Answer::Failed(ErrorCode::Internal, "ack without position".into()),
                };
                self.answered(ack.id, answer)
            }
            Frame::Error(error) => match error.id {
                Some(id) if id & HANDLER_ID_BIT == 0 => {
                    self.answered(id, Answer::Failed(error.code, error.message))
                }
                Some(_) => Read::Handler(Frame::Error(error)),
                None => Read::ConnectionError(error),
            },
            other => Read::Handler(other),
        }
    }

    fn answered(&mut self, id: u64, answer: Answer) -> Read<T> {
        match self.pending.take(id) {
            Some(entry) => Read::Answer(entry, answer),
            None => Read::Stale,
        }
    }

    /// Publishes in flight (held ones included).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the link is connected.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Line = Pipeline<&'static str, &'static str>;

    #[test]
    fn admission_follows_the_phase() {
        let mut line = Line::default();
        assert_eq!(line.admit(), Admit::Hold);
        line.up("conn-1");
        assert_eq!(line.admit(), Admit::Send("conn-1"));
        assert_eq!(line.detach(), Some("conn-1"));
        assert_eq!(line.admit(), Admit::Refuse);
        assert_eq!(line.detach(), None);
        line.up("conn-2");
        assert_eq!(line.conn(), Some(&"conn-2"));
    }

    #[test]
    fn held_frames_go_out_on_the_first_connection_unless_expired() {
        let now = Instant::now();
        let mut line = Line::default();
        let early = line.enter(now + Duration::from_secs(1), "early");
        line.hold(early, Bytes::from_static(b"frame-early"));
        let late = line.enter(now + Duration::from_secs(5), "late");
        line.hold(late, Bytes::from_static(b"frame-late"));
        let expired = line.expire(now + Duration::from_secs(2));
        assert_eq!((expired.sent, expired.unsent), (vec![], vec!["early"]));
        assert_eq!(line.up("conn"), [Bytes::from_static(b"frame-late")]);
        assert_eq!(line.len(), 1);
        // Sent now: past its deadline, its fate is unknown.
        let expired = line.expire(now + Duration::from_secs(6));
        assert_eq!((expired.sent, expired.unsent), (vec!["late"], vec![]));
    }

    #[test]
    fn each_frame_read_is_classified() {
        let now = Instant::now();
        let mut line = Line::default();
        line.up("conn");
        let one = line.enter(now, "one");
        let two = line.enter(now, "two");
        let three = line.enter(now, "three");
        let handler_id = 5 | HANDLER_ID_BIT;
        let rows: Vec<(String, &str)> = vec![
            (
                format!(r#"{{"type":"ack","id":{one},"epoch":9,"offset":1}}"#),
                "answer one acked 9:1",
            ),
            (
                format!(r#"{{"type":"ack","id":{one},"epoch":9,"offset":1}}"#),
                "stale",
            ),
            (
                format!(r#"{{"type":"error","id":{two},"code":"unknown_event","message":"no"}}"#),
                "answer two failed unknown_event",
            ),
            (
                // An ack in another field order takes the slow path.
                format!(r#"{{"type":"ack","offset":2,"epoch":9,"id":{three}}}"#),
                "answer three acked 9:2",
            ),
            (
                format!(r#"{{"type":"ack","id":{handler_id},"topics":[]}}"#),
                "handler ack",
            ),
            (
                format!(r#"{{"type":"error","id":{handler_id},"code":"not_owner","message":"x"}}"#),
                "handler error",
            ),
            (
                r#"{"type":"message","topic":"a/b","epoch":1,"offset":1,"payload":1}"#.into(),
                "handler message",
            ),
            (
                r#"{"type":"error","code":"internal","message":"x"}"#.into(),
                "connection error",
            ),
            ("not json".into(), "undecodable"),
        ];
        for (text, expected) in rows {
            let got = match line.read(&text) {
                Read::Answer(entry, Answer::Acked { at: position, .. }) => {
                    format!(
                        "answer {entry} acked {}:{}",
                        position.epoch, position.offset
                    )
                }
                Read::Answer(entry, Answer::Failed(code, _)) => {
                    format!("answer {entry} failed {code}")
                }
                Read::Stale => "stale".into(),
                Read::Handler(frame) => format!("handler {}", frame.kind()),
                Read::ConnectionError(_) => "connection error".into(),
                Read::Undecodable(_) => "undecodable".into(),
            };
            assert_eq!(got, expected, "{text}");
        }
        assert!(line.is_empty());
    }

    #[test]
    fn a_lost_connection_drains_everything_once() {
        let now = Instant::now();
        let mut line = Line::default();
        let held = line.enter(now, "held");
        line.hold(held, Bytes::from_static(b"held"));
        line.up("conn");
        line.enter(now, "a");
        line.enter(now, "b");
        assert_eq!(line.detach(), Some("conn"));
        let drained = line.drain();
        // "held" went out on the connection too, when it came up.
        assert_eq!(drained.sent, ["held", "a", "b"]);
        assert!(drained.unsent.is_empty());
        assert!(line.drain().is_empty());
        // Ids keep increasing: an old answer cannot hit a new publish.
        let fresh = line.enter(now, "c");
        assert_eq!(fresh, 4);
        assert!(matches!(
            line.read(r#"{"type":"ack","id":1,"epoch":1,"offset":1}"#),
            Read::Stale
        ));
    }
}
