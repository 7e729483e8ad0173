//! The legacy dialect: the wire format of the origin TypeScript system
//! (`queue-protocol` 0.0.2), spoken on `/produce`, `/producer` and
//! `/subscribe/{topic}` so that its clients keep working.
//!
//! Frames: `{"t":"h","o":n}` challenge, `{"t":"h","a":answer}` answer,
//! `{"t":"m","d":data,"s":topic}` message, `{"t":"s"|"u","s":topic}`.
//! `answer = base64(SHA-256(psk ‖ lowercase hex of o))`.

use base64::Engine as _;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::frame::{CloseCode, DecodeError};
use crate::handshake::Psk;
use crate::topic::{Topic, TopicError};

/// The queue that legacy topics without a `/` are placed in: the origin
/// topic `topic1` is the shardq topic `legacy/topic1`.
pub const LEGACY_QUEUE: &str = "legacy";

/// Largest challenge the origin clients generate (exclusive): 2^31 - 1.
pub const CHALLENGE_BOUND: u64 = 2_147_483_647;

/// Largest challenge accepted from a peer: 2^53 - 1, the largest integer a
/// JavaScript number holds exactly.
pub const MAX_PEER_CHALLENGE: u64 = (1 << 53) - 1;

/// One legacy frame.
#[derive(Debug, Clone)]
pub enum LegacyFrame {
    /// `{"t":"h","o":n}`: a challenge.
    Challenge(u64),
    /// `{"t":"h","a":"..."}`: the answer to the peer's challenge.
    Answer(String),
    /// `{"t":"m","d":data,"s":topic}`: a message. `data` is a JSON string in
    /// the origin system; any JSON value is accepted.
    Message {
        /// The topic string, as the peer wrote it.
        topic: String,
        /// The `d` value, raw.
        data: Box<RawValue>,
    },
    /// `{"t":"s","s":topic}`.
    Subscribe(String),
    /// `{"t":"u","s":topic}`.
    Unsubscribe(String),
}

impl LegacyFrame {
    /// The frame's kind for logs: `challenge`, `answer`, `message`,
    /// `subscribe` or `unsubscribe` (never its data).
    pub fn kind(&self) -> &'static str {
        match self {
            LegacyFrame::Challenge(_) => "challenge",
            LegacyFrame::Answer(_) => "answer",
            LegacyFrame::Message { .. } => "message",
            LegacyFrame::Subscribe(_) => "subscribe",
            LegacyFrame::Unsubscribe(_) => "unsubscribe",
        }
    }
}

#[derive(Deserialize)]
struct WireLegacy {
    t: String,
    o: Option<serde_json::Number>,
    a: Option<String>,
    #[serde(default, deserialize_with = "present_raw")]
    d: Option<Box<RawValue>>,
    s: Option<String>,
}

fn present_raw<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// The outgoing shape of every legacy frame, fields in the origin's order.
#[derive(Serialize)]
struct WireLegacyOut<'a, D: Serialize + ?Sized> {
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    o: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    a: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<&'a D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'a str>,
}

impl<'a, D: Serialize + ?Sized> WireLegacyOut<'a, D> {
    fn new(t: &'static str) -> Self {
        WireLegacyOut {
            t,
            o: None,
            a: None,
            d: None,
            s: None,
        }
    }

    fn encode(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("legacy frames always serialize"))
    }
}

impl LegacyFrame {
    /// Decodes one frame of at most `limit` bytes.
    ///
    /// A hello frame with both `a` and `o` is read as its answer (the origin
    /// library does the same); `o` must be an integer in 1..=2^53-1.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<LegacyFrame, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let wire: WireLegacy = serde_json::from_slice(bytes)
            .map_err(|source| DecodeError::Json { source, id: None })?;
        let missing = |field| DecodeError::MissingField {
            kind: "legacy",
            field,
            id: None,
        };
        match wire.t.as_str() {
            "h" => {
                if let Some(answer) = wire.a {
                    return Ok(LegacyFrame::Answer(answer));
                }
                let challenge = wire.o.ok_or(missing("o|a"))?;
                match challenge.as_u64() {
                    Some(o) if (1..=MAX_PEER_CHALLENGE).contains(&o) => {
                        Ok(LegacyFrame::Challenge(o))
                    }
                    _ => Err(DecodeError::BadValue {
                        kind: "legacy hello",
                        reason: "o must be an integer from 1 to 2^53-1",
                        id: None,
                    }),
                }
            }
            "m" => Ok(LegacyFrame::Message {
                topic: wire.s.ok_or(missing("s"))?,
                data: wire.d.ok_or(missing("d"))?,
            }),
            "s" => Ok(LegacyFrame::Subscribe(wire.s.ok_or(missing("s"))?)),
            "u" => Ok(LegacyFrame::Unsubscribe(wire.s.ok_or(missing("s"))?)),
            other => Err(DecodeError::UnknownType {
                kind: other.chars().take(40).collect(),
                id: None,
            }),
        }
    }

    /// Encodes the frame as compact JSON.
    pub fn encode(&self) -> String {
        match self {
            LegacyFrame::Challenge(o) => WireLegacyOut::<RawValue> {
                o: Some(*o),
                ..WireLegacyOut::new("h")
            }
            .encode(),
            LegacyFrame::Answer(a) => WireLegacyOut::<RawValue> {
                a: Some(a),
                ..WireLegacyOut::new("h")
            }
            .encode(),
            LegacyFrame::Message { topic, data } => WireLegacyOut {
                d: Some(&**data),
                s: Some(topic),
                ..WireLegacyOut::new("m")
            }
            .encode(),
            LegacyFrame::Subscribe(topic) => WireLegacyOut::<RawValue> {
                s: Some(topic),
                ..WireLegacyOut::new("s")
            }
            .encode(),
            LegacyFrame::Unsubscribe(topic) => WireLegacyOut::<RawValue> {
                s: Some(topic),
                ..WireLegacyOut::new("u")
            }
            .encode(),
        }
    }
}

/// The answer to a challenge: base64 (standard, padded) of
/// SHA-256(psk ‖ lowercase hex of the challenge without leading zeros).
pub fn answer(psk: &Psk, challenge: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(psk.as_bytes());
    hasher.update(format!("{challenge:x}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// A random challenge as the origin generates them: 1..2^31-1 (never 0,
/// which the origin client treats as absent).
pub fn random_challenge() -> u64 {
    rand::rng().random_range(1..CHALLENGE_BOUND)
}

/// The shardq topic for a legacy topic string: `queue/event` as is, a string
/// without `/` as `legacy/<string>`.
pub fn topic(legacy: &str) -> Result<Topic, TopicError> {
    if legacy.contains('/') {
        Topic::parse(legacy)
    } else {
        Topic::new(LEGACY_QUEUE, legacy)
    }
}

/// The topic of a `/subscribe/{topic}` path segment, percent-decoded.
pub fn topic_from_path(segment: &str) -> Result<(String, Topic), TopicError> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| TopicError::NotQueueEvent(segment.chars().take(80).collect()))?;
    let parsed = topic(&decoded)?;
    Ok((decoded, parsed))
}

/// The `d` string a legacy subscriber receives for a payload: a JSON string
/// payload as its plain string, anything else as its JSON text.
pub fn payload_to_data(payload: &RawValue) -> String {
    let text = payload.get();
    if text.starts_with('"')
        && let Ok(plain) = serde_json::from_str::<String>(text)
    {
        return plain;
    }
    text.to_owned()
}

/// Encodes the message frame a legacy subscriber receives.
pub fn encode_message(topic: &str, payload: &RawValue) -> String {
    let data = payload_to_data(payload);
    WireLegacyOut {
        d: Some(data.as_str()),
        s: Some(topic),
        ..WireLegacyOut::new("m")
    }
    .encode()
}

/// Who answers the peer's challenge when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerPolicy {
    /// shardq's servers: answer only after the peer's answer verified, and
    /// send a decoy when it did not.
    AfterVerified,
    /// The origin client's behaviour (for talking to origin servers and for
    /// tests): answer as soon as the challenge arrives.
    Immediately,
}

/// The legacy handshake: both sides challenge, both answer.
#[derive(Debug)]
pub struct LegacyHandshake {
    psk: Psk,
    challenge: u64,
    policy: AnswerPolicy,
    peer_challenge: Option<u64>,
    answered: bool,
    verified: bool,
}

/// What to do after a frame was taken.
#[derive(Debug, Clone, Default)]
pub struct LegacyStep {
    /// A frame to send now (our answer).
    pub send: Option<LegacyFrame>,
    /// True when this frame completed the handshake.
    pub established: bool,
}

/// The peer's answer did not verify.
#[derive(Debug, Clone, thiserror::Error)]
#[error("legacy authentication failed: the peer's answer does not match this psk")]
pub struct LegacyAuthFailed {
    /// With [`AnswerPolicy::AfterVerified`]: a random answer to send before
    /// closing, so that an origin client reports an error, not a bare close.
    pub decoy: Option<LegacyFrame>,
}

impl LegacyAuthFailed {
    /// The close code to send after the decoy.
    pub fn close_code(&self) -> CloseCode {
        CloseCode::AuthFailed
    }
}

impl LegacyHandshake {
    /// A handshake with our `challenge` ([`random_challenge`] outside tests).
    pub fn new(psk: Psk, challenge: u64, policy: AnswerPolicy) -> LegacyHandshake {
        LegacyHandshake {
            psk,
            challenge,
            policy,
            peer_challenge: None,
            answered: false,
            verified: false,
        }
    }

    /// Our challenge frame, sent as soon as the socket opens.
    pub fn challenge(&self) -> LegacyFrame {
        LegacyFrame::Challenge(self.challenge)
    }

    /// Whether the peer proved the psk and we answered its challenge.
    pub fn is_established(&self) -> bool {
        self.verified && self.answered
    }

    /// Whether the peer proved the psk (it may still be owed our answer).
    pub fn peer_verified(&self) -> bool {
        self.verified
    }

    /// Takes a hello frame (`Challenge` or `Answer`); other frames are the
    /// caller's, and before [`is_established`](Self::is_established) they
    /// are a protocol error.
    pub fn receive(&mut self, frame: &LegacyFrame) -> Result<LegacyStep, LegacyAuthFailed> {
        let was_established = self.is_established();
        let mut step = LegacyStep::default();
        match frame {
            LegacyFrame::Challenge(o) => {
                self.peer_challenge = Some(*o);
            }
            LegacyFrame::Answer(a) => {
                let expected = answer(&self.psk, self.challenge);
                if !bool::from(a.as_bytes().ct_eq(expected.as_bytes())) {
                    let decoy = match self.policy {
                        AnswerPolicy::AfterVerified => Some(LegacyFrame::Answer(decoy_answer())),
                        AnswerPolicy::Immediately => None,
                    };
                    return Err(LegacyAuthFailed { decoy });
                }
                self.verified = true;
            }
            _ => return Ok(step),
        }
        let may_answer = self.verified || self.policy == AnswerPolicy::Immediately;
        if let (Some(o), false, true) = (self.peer_challenge, self.answered, may_answer) {
            self.answered = true;
            step.send = Some(LegacyFrame::Answer(answer(&self.psk, o)));
        }
        step.established = !was_established && self.is_established();
        Ok(step)
    }
}

fn decoy_answer() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk() -> Psk {
        Psk::new("legacy-test-psk-0001").unwrap()
    }

    #[test]
    fn decodes_the_origin_frames() {
        let limit = 4096;
        assert!(matches!(
            LegacyFrame::decode(br#"{"t":"h","o":123456}"#, limit).unwrap(),
            LegacyFrame::Challenge(123456)
        ));
        assert!(matches!(
            LegacyFrame::decode(br#"{"t":"h","a":"xyz="}"#, limit).unwrap(),
            LegacyFrame::Answer(a) if a == "xyz="
        ));
        let LegacyFrame::Message { topic, data } =
            LegacyFrame::decode(br#"{"t":"m","d":"4f2a","s":"topic3"}"#, limit).unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!((topic.as_str(), data.get()), ("topic3", "\"4f2a\""));
        assert!(matches!(
            LegacyFrame::decode(br#"{"t":"s","s":"a/b"}"#, limit).unwrap(),
            LegacyFrame::Subscribe(s) if s == "a/b"
        ));
        for bad in [
            &br#"{"t":"h","o":0}"#[..],
            br#"{"t":"h","o":-5}"#,
            br#"{"t":"h","o":1.5}"#,
            br#"{"t":"h"}"#,
            br#"{"t":"m","s":"x"}"#,
            br#"{"t":"q"}"#,
            b"nope",
        ] {
            assert!(LegacyFrame::decode(bad, limit).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn acceptor_answers_only_after_the_peer_verified() {
        let mut server = LegacyHandshake::new(psk(), 1000, AnswerPolicy::AfterVerified);
        let mut client = LegacyHandshake::new(psk(), 2000, AnswerPolicy::Immediately);
        // Both send challenges on open.
        let to_client = server.challenge();
        let to_server = client.challenge();
        // The server holds its answer back.
        let step = server.receive(&to_server).unwrap();
        assert!(step.send.is_none());
        // The client answers at once.
        let step = client.receive(&to_client).unwrap();
        let client_answer = step.send.unwrap();
        assert!(!client.is_established());
        // Now the server verifies and answers.
        let step = server.receive(&client_answer).unwrap();
        assert!(step.established);
        let server_answer = step.send.unwrap();
        let step = client.receive(&server_answer).unwrap();
        assert!(step.established && client.is_established());
    }

    #[test]
    fn wrong_answer_gets_a_decoy() {
        let mut server = LegacyHandshake::new(psk(), 1000, AnswerPolicy::AfterVerified);
        let mut impostor = LegacyHandshake::new(
            Psk::new("some-other-psk-0000").unwrap(),
            2000,
            AnswerPolicy::Immediately,
        );
        server.receive(&impostor.challenge()).unwrap();
        let wrong = impostor.receive(&server.challenge()).unwrap().send.unwrap();
        let failed = server.receive(&wrong).unwrap_err();
        let LegacyFrame::Answer(decoy) = failed.decoy.unwrap() else {
            panic!("decoy is not an answer")
        };
        // The impostor's library rejects the decoy, as the origin client does.
        assert_ne!(decoy, answer(&psk(), 2000));
        assert!(impostor.receive(&LegacyFrame::Answer(decoy)).is_err());
        assert!(!server.is_established());
    }

    #[test]
    fn topics_and_payloads() {
        assert_eq!(topic("topic3").unwrap().as_str(), "legacy/topic3");
        assert_eq!(topic("files/save").unwrap().as_str(), "files/save");
        assert!(topic("\u{0}").is_err());
        let (raw, parsed) = topic_from_path("database%2Fcreate").unwrap();
        assert_eq!(
            (raw.as_str(), parsed.as_str()),
            ("database/create", "database/create")
        );
        let string = RawValue::from_string(r#""a \"quoted\" line""#.into()).unwrap();
        assert_eq!(payload_to_data(&string), r#"a "quoted" line"#);
        let object = RawValue::from_string(r#"{"id":1}"#.into()).unwrap();
        assert_eq!(payload_to_data(&object), r#"{"id":1}"#);
        assert_eq!(
            encode_message("topic3", &string),
            r#"{"t":"m","d":"a \"quoted\" line","s":"topic3"}"#
        );
    }
}
