//! Sans-IO: one Server-Sent Events stream's state. It turns the WebSocket
//! frames the topic table queues for a subscriber (encoded once for every
//! subscriber) into SSE events, keeps the stream's position per topic, and
//! writes it as each event's `id`, so that a browser's `EventSource`
//! reconnecting with `Last-Event-ID` resumes every topic where it was.
//!
//! Ids: `epoch:offset` on a one-topic stream; on a `queue/*` stream, every
//! topic's position, `event=epoch:offset` joined by `,`; no id until
//! every topic of the stream has a position.

use shardq_net::codec::decode::FrameHeader;
use shardq_protocol::{Frame, Position, Topic};

/// One topic of the stream.
#[derive(Debug, Clone)]
struct Tracked {
    topic: Topic,
    /// Where the stream is: the last message (or gap) delivered, or where
    /// the subscription started.
    at: Option<Position>,
    /// The position it resumed after, if any.
    since: Option<Position>,
}

/// Why a `Last-Event-ID` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Last-Event-ID {given:?} is not a position of this stream: {why}")]
pub(crate) struct BadEventId {
    given: String,
    why: &'static str,
}

/// The state of one stream.
#[derive(Debug)]
pub(crate) struct EventStream {
    topics: Vec<Tracked>,
    /// Whether the stream is `queue/*` (ids name each event).
    wildcard: bool,
    /// The id's bytes, rewritten for each event (kept to reuse its memory).
    id_buf: Vec<u8>,
}

/// Where each topic of a stream resumes (`None`: from now).
pub(crate) type Resume = Vec<Option<Position>>;

impl EventStream {
    /// A stream of `topics` (sorted), resuming each after `resume`.
    pub(crate) fn new(
        topics: &[Topic],
        wildcard: bool,
        resume: &[Option<Position>],
    ) -> EventStream {
        let topics = topics
            .iter()
            .enumerate()
            .map(|(index, topic)| Tracked {
                topic: topic.clone(),
                at: None,
                since: resume.get(index).copied().flatten(),
            })
            .collect();
        EventStream {
            topics,
            wildcard,
            id_buf: Vec::new(),
        }
    }

    /// Reads a `Last-Event-ID` for `topics` (the stream's, sorted).
    pub(crate) fn resume_from(
        id: &str,
        topics: &[Topic],
        wildcard: bool,
    ) -> Result<Resume, BadEventId> {
        let bad = |why| BadEventId {
            given: id.chars().take(200).collect(),
            why,
        };
        // `event=` + two u64s per topic at most: anything longer was not
        // sent by this stream (and is not worth parsing).
        if id.len() > topics.len() * (64 + 2 * 20 + 2) {
            return Err(bad("too long"));
        }
        let mut resume = vec![None; topics.len()];
        if !wildcard {
            resume[0] = Some(parse_position(id).ok_or_else(|| bad("expected epoch:offset"))?);
            return Ok(resume);
        }
        for part in id.split(',') {
            let (event, position) = part
                .split_once('=')
                .ok_or_else(|| bad("expected event=epoch:offset,…"))?;
            let index = topics
                .iter()
                .position(|topic| topic.event() == event)
                // An event no longer declared starts nothing.
                .ok_or_else(|| bad("it names an event the queue does not declare"))?;
            if resume[index].is_some() {
                return Err(bad("it names an event twice"));
            }
            resume[index] =
                Some(parse_position(position).ok_or_else(|| bad("expected event=epoch:offset,…"))?);
        }
        Ok(resume)
    }

    /// The stream's position, as an event `id`; `None` until every topic
    /// has one (a `queue/*` stream's topics start one by one: an id
    /// naming only some of them would resume the others from "now").
    pub(crate) fn id(&self) -> Option<String> {
        let mut id = Vec::new();
        self.write_id(&mut id)
            .then(|| String::from_utf8_lossy(&id).into_owned())
    }

    /// Writes [`id`](Self::id) into `id` (cleared first); false when there
    /// is none yet.
    fn write_id(&self, id: &mut Vec<u8>) -> bool {
        id.clear();
        if self.topics.iter().any(|tracked| tracked.at.is_none()) {
            return false;
        }
        let mut digits = itoa::Buffer::new();
        for tracked in &self.topics {
            let Some(at) = tracked.at else { continue };
            if self.wildcard {
                if !id.is_empty() {
                    id.push(b',');
                }
                id.extend_from_slice(tracked.topic.event().as_bytes());
                id.push(b'=');
            }
            id.extend_from_slice(digits.format(at.epoch).as_bytes());
            id.push(b':');
            id.extend_from_slice(digits.format(at.offset).as_bytes());
        }
        true
    }

    /// Appends one event carrying the stream's id (when it has one).
    fn event_with_id(&mut self, out: &mut Vec<u8>, name: &str, data: &str) {
        let mut id = std::mem::take(&mut self.id_buf);
        let some = self.write_id(&mut id);
        let id_text = std::str::from_utf8(&id).ok().filter(|_| some);
        event(out, name, id_text, data);
        self.id_buf = id;
    }

    fn tracked(&mut self, topic: &Topic) -> Option<&mut Tracked> {
        self.topics
            .iter_mut()
            .find(|t| t.topic.as_str() == topic.as_str())
    }

    /// Appends the events of one chunk of WebSocket frames (server role,
    /// unmasked; several may be concatenated) to `out`.
    pub(crate) fn frames(&mut self, mut bytes: &[u8], limit: usize, out: &mut Vec<u8>) {
        // An event is its frame plus a few dozen bytes.
        out.reserve(bytes.len() + 64);
        while let Ok(Some(header)) = FrameHeader::parse(bytes, false, 0, usize::MAX) {
            let end = header.header_len + header.payload_len as usize;
            let Some(payload) = bytes.get(header.header_len..end) else {
                return;
            };
            // Text frames only: pings and closes are the writer's business.
            if header.opcode == 1
                && let Ok(text) = std::str::from_utf8(payload)
            {
                self.frame(text, limit, out);
            }
            bytes = &bytes[end..];
        }
    }

    /// Appends the events of one frame's text to `out`.
    pub(crate) fn frame(&mut self, text: &str, limit: usize, out: &mut Vec<u8>) {
        // Nearly every frame is a message the node encoded itself: its
        // head is read without decoding the payload.
        if let Some((name, tenant, at)) = message_head(text) {
            let Some(tracked) = self
                .topics
                .iter_mut()
                .find(|t| t.topic.name() == name && t.topic.tenant() == tenant)
            else {
                return;
            };
            tracked.at = Some(at);
            self.event_with_id(out, "message", text);
            return;
        }
        let Ok(frame) = Frame::decode_str(text, limit) else {
            return;
        };
        match &frame {
            Frame::Message(message) => {
                let Some(tracked) = self.tracked(&message.topic) else {
                    return;
                };
                tracked.at = Some(Position {
                    epoch: message.epoch,
                    offset: message.offset,
                });
                self.event_with_id(out, "message", text);
            }
            Frame::Gap(gap) => {
                let Some(tracked) = self.tracked(&gap.topic) else {
                    return;
                };
                tracked.at = Some(Position {
                    epoch: gap.epoch,
                    offset: gap.offset,
                });
                self.event_with_id(out, "gap", text);
            }
            Frame::Ack(ack) => {
                // One subscribe per topic: its ack names that topic alone.
                let Some(started) = ack.topics.as_ref().and_then(|t| t.first()) else {
                    return;
                };
                let topic = started.topic.clone();
                let Some(tracked) = self.tracked(&topic) else {
                    return;
                };
                let since = tracked.since;
                let replay = ack.replay;
                tracked.at = Some(replay.unwrap_or(Position {
                    epoch: started.epoch,
                    offset: started.offset,
                }));
                let id = self.id();
                event(out, "subscribed", id.as_deref(), text);
                // Resumed from beyond the topic's latest position: nothing
                // that exists was missed, the position just moves back.
                let beyond = |after: Position, replay: Position| {
                    after.epoch == replay.epoch && after.offset >= replay.offset
                };
                if let (Some(after), Some(replay), Some(false)) = (since, replay, ack.recovered)
                    && !beyond(after, replay)
                {
                    // The messages after `since` up to `replay` are missing.
                    let gap = Frame::Gap(shardq_protocol::Gap {
                        topic,
                        after,
                        epoch: replay.epoch,
                        offset: replay.offset,
                    });
                    event(out, "gap", id.as_deref(), &gap.encode());
                }
            }
            Frame::Stalled(_) => event(out, "stalled", None, text),
            Frame::Resumed(_) => event(out, "resumed", None, text),
            Frame::Error(_) => event(out, "refused", None, text),
            _ => {}
        }
    }
}

/// A message frame's topic name, tenant and position, read from the head
/// the node's encoder writes:
/// `{"type":"message","topic":"…",["tenant":"…",]"epoch":…,"offset":…,`.
/// `None` for anything else (then the frame is decoded in full). Topic and
/// tenant names never hold `"` or `\`.
fn message_head(text: &str) -> Option<(&str, Option<&str>, Position)> {
    let rest = text.strip_prefix(r#"{"type":"message","topic":""#)?;
    let (name, rest) = rest.split_once('"')?;
    let (tenant, rest) = match rest.strip_prefix(r#","tenant":""#) {
        Some(rest) => {
            let (tenant, rest) = rest.split_once('"')?;
            (Some(tenant), rest)
        }
        None => (None, rest),
    };
    let rest = rest.strip_prefix(r#","epoch":"#)?;
    let (epoch, rest) = rest.split_once(',')?;
    let rest = rest.strip_prefix(r#""offset":"#)?;
    let (offset, rest) = rest.split_once(',')?;
    rest.starts_with(r#""payload":"#).then_some(())?;
    Some((
        name,
        tenant,
        Position {
            epoch: epoch.parse().ok()?,
            offset: offset.parse().ok()?,
        },
    ))
}

/// `epoch:offset`, decimal digits only.
fn parse_position(text: &str) -> Option<Position> {
    let (epoch, offset) = text.trim().split_once(':')?;
    let number = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    Some(Position {
        epoch: number(epoch)?,
        offset: number(offset)?,
    })
}

/// Appends one event; `data` may hold line breaks (a payload's own
/// whitespace): each line becomes a `data:` line, which the client joins
/// with `\n`.
pub(crate) fn event(out: &mut Vec<u8>, name: &str, id: Option<&str>, data: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    let bytes = data.as_bytes();
    if !bytes.iter().any(|&b| b == b'\n' || b == b'\r') {
        // The common case: one line.
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\n\n");
        return;
    }
    // Every line, empty ones too, so that the client's join gives back the
    // text with each line break (`\r\n`, `\r` or `\n`) as `\n`.
    let mut rest = bytes;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
