//! Soak publishers. A raw one per producer: one connection (reopened when
//! it ends), paced publishes round-robin over the topics without key or
//! retry, so each answer is the cluster's own; a publish still unanswered
//! when its connection ends is `closed_1001` (never read, §5.1) or lost.
//! And one keyed publisher, the client library's `Publisher` over every
//! producer, whose own retries must deliver at most once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq::{PublishError, Publisher};
use shardq_protocol::{ErrorCode, Frame, Position, Psk, Topic};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::record::{Micros, Origin, Outcome, Publish, PublisherClose, now_micros};
use crate::lean::LeanConn;

/// How often a publisher sends its share.
const PACE: Duration = Duration::from_millis(10);

/// The run's publishes, indexed by `n`, shared by every publisher.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<Publish>>>);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Publish>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a publish about to be sent; its `n`.
    fn open(&self, topic: usize, origin: Origin) -> usize {
        let mut publishes = self.lock();
        publishes.push(Publish {
            topic,
            origin,
            sent: now_micros(),
            answered: 0,
            outcome: Outcome::Pending,
        });
        publishes.len() - 1
    }

    /// Records the answer to publish `n` (the first one counts).
    fn answer(&self, n: usize, outcome: Outcome) {
        let mut publishes = self.lock();
        if let Some(publish) = publishes.get_mut(n)
            && publish.outcome == Outcome::Pending
        {
            publish.outcome = outcome;
            publish.answered = now_micros();
        }
    }

    /// A copy of every publish so far.
    pub fn snapshot(&self) -> Vec<Publish> {
        self.lock().clone()
    }

    /// Publishes not answered yet.
    pub fn pending(&self) -> usize {
        self.lock()
            .iter()
            .filter(|p| p.outcome == Outcome::Pending)
            .count()
    }
}

/// Publishes to send per `PACE` tick at `rate` per second, carrying the
/// remainder over.
struct Pacer {
    per_tick: f64,
    owed: f64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            per_tick: rate * PACE.as_secs_f64(),
            owed: 0.0,
        }
    }

    fn due(&mut self) -> usize {
        self.owed += self.per_tick;
        let due = self.owed.floor();
        self.owed -= due;
        due as usize
    }
}

/// A raw publisher's fixed inputs.
pub struct RawPlan {
    /// The producer's index.
    pub producer: usize,
    /// Its `host:port`.
    pub addr: String,
    /// The topics.
    pub topics: Arc<Vec<Topic>>,
    /// The psk.
    pub psk: Psk,
    /// Publishes per second.
    pub rate: f64,
    /// Every publish.
    pub ledger: Ledger,
    /// Connections that ended.
    pub closes: Arc<Mutex<Vec<PublisherClose>>>,
}

/// Runs until `publishing` is cancelled and every publish is answered, or
/// until `stop`.
pub async fn raw(plan: RawPlan, publishing: CancellationToken, stop: CancellationToken) {
    let mut next_topic = plan.producer;
    while !stop.is_cancelled() && !publishing.is_cancelled() {
        let conn = tokio::select! {
            conn = LeanConn::open(&plan.addr, "/v1/publish", &plan.psk) => conn,
            () = stop.cancelled() => return,
        };
        let Ok(mut conn) = conn else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut in_flight: HashSet<usize> = HashSet::new();
        let mut pacer = Pacer::new(plan.rate);
        let mut tick = tokio::time::interval(PACE);
        let ended = loop {
            tokio::select! {
                text = conn.reader.next_text() => match text {
                    Ok(text) => {
                        if let Ok(frame) = Frame::decode(text, 1 << 20) {
                            answer(&plan.ledger, &mut in_flight, frame);
                        }
                        if publishing.is_cancelled() && in_flight.is_empty() {
                            return;
                        }
                    }
                    Err(error) => break conn.reader.close_code().map_or_else(|| error.to_string(), |code| format!("closed {code}")),
                },
                _ = tick.tick() => {
                    let mut out = Vec::new();
                    if let Some(pong) = conn.reader.take_pong() {
                        out.extend_from_slice(&pong);
                    }
                    if !publishing.is_cancelled() {
                        for _ in 0..pacer.due() {
                            let topic = next_topic % plan.topics.len();
                            next_topic += 1;
                            let n = plan.ledger.open(topic, Origin::Raw { producer: plan.producer });
                            in_flight.insert(n);
                            let frame = format!(
                                r#"{{"type":"publish","id":{n},"topic":"{}","payload":{{"n":{n}}}}}"#,
                                plan.topics[topic]
                            );
                            LeanConn::encode_text(&mut out, frame.as_bytes());
                        }
                    } else if in_flight.is_empty() {
                        return;
                    }
                    if let Err(error) = conn.writer.write_all(&out).await {
                        break error.to_string();
                    }
                }
                () = stop.cancelled() => return,
            }
        };
        let closed_1001 = conn.reader.close_code() == Some(1001);
        for n in in_flight {
            let outcome = if closed_1001 {
                Outcome::Refused("closed_1001".into())
            } else {
                Outcome::Lost(ended.clone())
            };
            plan.ledger.answer(n, outcome);
        }
        plan.closes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(PublisherClose {
                at: now_micros(),
                producer: plan.producer,
                why: ended,
            });
    }
}

fn answer(ledger: &Ledger, in_flight: &mut HashSet<usize>, frame: Frame) {
    let (id, outcome) = match frame {
        Frame::Ack(ack) => match ack.position() {
            Some(at) => (ack.id, Outcome::Acked(at)),
            None => return,
        },
        Frame::Error(error) => {
            let Some(id) = error.id else { return };
            let code = error.code.to_string();
            let outcome = if error.code == ErrorCode::OutcomeUnknown {
                Outcome::Unknown(code)
            } else {
                Outcome::Refused(code)
            };
            (id, outcome)
        }
        _ => return,
    };
    let n = id as usize;
    if in_flight.remove(&n) {
        ledger.answer(n, outcome);
    }
}

/// The keyed publisher: `rate` publishes per second through the client
/// library, each awaited in its own task; returns once `publishing` is
/// cancelled and every publish came back.
pub async fn keyed(
    publisher: Publisher,
    topics: Arc<Vec<Topic>>,
    rate: f64,
    ledger: Ledger,
    publishing: CancellationToken,
) {
    let mut pacer = Pacer::new(rate);
    let mut tick = tokio::time::interval(PACE);
    let tasks = tokio_util::task::TaskTracker::new();
    let mut next_topic = 0usize;
    while !publishing.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            () = publishing.cancelled() => break,
        }
        for _ in 0..pacer.due() {
            let topic = next_topic % topics.len();
            next_topic += 1;
            let n = ledger.open(topic, Origin::Keyed);
            let (publisher, ledger, name) =
                (publisher.clone(), ledger.clone(), topics[topic].clone());
            tasks.spawn(async move {
                let result = publisher
                    .publish_raw(name.queue(), name.event(), &format!(r#"{{"n":{n}}}"#))
                    .await;
                ledger.answer(n, keyed_outcome(result));
            });
        }
    }
    tasks.close();
    tasks.wait().await;
}

fn keyed_outcome(result: Result<shardq::Ack, PublishError>) -> Outcome {
    match result {
        Ok(ack) => Outcome::Acked(Position {
            epoch: ack.epoch,
            offset: ack.offset,
        }),
        Err(PublishError::Refused { code, .. }) if code == ErrorCode::OutcomeUnknown => {
            Outcome::Unknown(code.to_string())
        }
        Err(PublishError::Refused { code, .. }) => Outcome::Refused(code.to_string()),
        Err(PublishError::Disconnected) => Outcome::Unknown("disconnected".into()),
        Err(PublishError::Timeout(_)) => Outcome::Unknown("timeout".into()),
        Err(other) => Outcome::Refused(other.to_string()),
    }
}

/// Seconds elapsed since `start` (for progress lines).
pub fn since(start: Micros) -> f64 {
    now_micros().saturating_sub(start) as f64 / 1e6
}
