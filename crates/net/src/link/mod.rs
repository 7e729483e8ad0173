//! Links to consumers: one persistent, authenticated shardq/1 connection per
//! consumer (on its `/v1/cluster`), used by producers to route publishes and
//! by consumers to forward publishes and to hold upstream subscriptions.
//!
//! Publishes are pipelined with link-local ids, bounded by an in-flight
//! window, and every one handed to a link is answered exactly once: the
//! owner's ack or error; `unavailable` when the link is down, breaks, or
//! the owner does not answer within the publish timeout; or
//! `shutting_down`. Answers go straight to each publisher's outbox.
//!
//! Frames that are not publish answers (messages, `moved`, and answers to
//! requests whose id has [`HANDLER_ID_BIT`] set) go to the link's
//! [`LinkHandler`], as do the link's ups and downs.
//!
//! - [`pipeline`]: the sans-IO state of one link (in flight, held, phase).
//! - `driver`: the task that connects, serves and reconnects a link.
//! - [`set`]: the links of a node list, routing, batching per link.
//! - [`request`]: what a publish carries over a link and where its answer goes.
//! - [`metrics`]: the links' metrics.
//!
//! Locking: a link's state mutex is held to assign ids and queue frames (on
//! the link's outbox, which never waits) and to take answered entries out;
//! answers are pushed to publishers after it is released. Never held across
//! an `.await`.

mod driver;
pub mod metrics;
mod pending;
pub mod pipeline;
pub mod request;
pub mod set;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shardq_protocol::frame::{encode_publish_ack_into, encode_publish_into};
use shardq_protocol::status::{LinkState as LinkUp, LinkStatus};
use shardq_protocol::{ErrorCode, Frame, Limits, NodeEntry, Psk};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{FrameBuf, Role, encode};
use crate::outbox::{FrameBatch, Outbox};

pub use metrics::LinkMetrics;
use pipeline::{Admit, Pipeline, Read, Unanswered};
pub use pipeline::{Answer, HANDLER_ID_BIT};
pub use request::{Body, InFlight, Reply, Request};
pub use set::{Batches, LinkOptions, LinkSet, Links, RETIRE_AFTER, WindowPermit, permit};

/// First pause before reconnecting a link; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(25);
/// Longest pause between reconnection attempts: a consumer that comes
/// back is reached within about this (plus jitter).
const BACKOFF_MAX: Duration = Duration::from_millis(250);
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Most frames read from a link and handled as one burst.
const BURST: usize = 256;

/// What a node does with the frames of its links that are not publish answers.
pub trait LinkHandler: Send + Sync + 'static {
    /// The link connected (again): requests it held must be sent again.
    fn on_up(&self, link: &Arc<ConsumerLink>);
    /// The link broke or was retired.
    fn on_down(&self, link: &Arc<ConsumerLink>);
    /// A message, a `moved`, or the answer to a request with
    /// [`HANDLER_ID_BIT`]; `text` is the frame as it arrived (a message is
    /// relayed as is, not encoded again).
    fn on_frame(&self, link: &Arc<ConsumerLink>, frame: Frame, text: &str);
}

/// A publish in flight: where its answer goes, and its window slot.
struct Pending {
    reply: Reply,
    _permit: WindowPermit,
}

struct LinkState {
    pipeline: Pipeline<Pending, Arc<Outbox>>,
    last_error: Option<String>,
    reconnects: u64,
    /// Since when the link is down (`None` while up).
    down_since: Option<Instant>,
}

/// What every link task needs.
#[derive(Clone)]
struct LinkContext {
    node_key: Psk,
    tls: Option<Arc<rustls::ClientConfig>>,
    node: String,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The link to one consumer.
pub struct ConsumerLink {
    /// The consumer's id.
    pub id: String,
    url: String,
    window: Arc<Semaphore>,
    window_bytes: Arc<Semaphore>,
    state: Mutex<LinkState>,
    limits: Limits,
    metrics: Arc<LinkMetrics>,
    label: metrics::LinkLabel,
    handler: Option<Arc<dyn LinkHandler>>,
    /// Cancelled when the consumer left the node list.
    retired: CancellationToken,
    /// Wakes a link waiting to reconnect: try now (the node list changed).
    kick: tokio::sync::Notify,
}

impl ConsumerLink {
    fn new(
        entry: &NodeEntry,
        limits: &Limits,
        metrics: Arc<LinkMetrics>,
        handler: Option<Arc<dyn LinkHandler>>,
        stop: &CancellationToken,
    ) -> ConsumerLink {
        let label = metrics::LinkLabel {
            link: entry.id.clone(),
        };
        metrics.up.get_or_create(&label).set(0);
        metrics.in_flight.get_or_create(&label).set(0);
        ConsumerLink {
            id: entry.id.clone(),
            url: entry.endpoint("/v1/cluster"),
            window: Arc::new(Semaphore::new(limits.link_window)),
            window_bytes: Arc::new(Semaphore::new(
                limits.link_window_bytes.min(u32::MAX as usize),
            )),
            state: Mutex::new(LinkState {
                pipeline: Pipeline::default(),
                last_error: Some("not connected yet".into()),
                reconnects: 0,
                down_since: Some(Instant::now()),
            }),
            limits: limits.clone(),
            metrics,
            label,
            handler,
            retired: stop.child_token(),
            kick: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The in-flight window: a permit per publish until it is answered.
    pub fn window(&self) -> &Arc<Semaphore> {
        &self.window
    }

    /// The in-flight window in bytes: a permit per byte of topic, key and
    /// payload until answered.
    pub fn window_bytes(&self) -> &Arc<Semaphore> {
        &self.window_bytes
    }

    /// Whether the link is connected.
    pub fn is_up(&self) -> bool {
        self.lock().pipeline.is_up()
    }

    /// Publishes in flight on the link.
    pub fn in_flight(&self) -> usize {
        self.lock().pipeline.len()
    }

    /// The consumer's `/v1/cluster` URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The link's state.
    pub fn status(&self) -> LinkStatus {
        let state = self.lock();
        LinkStatus {
            id: self.id.clone(),
            url: self.url.clone(),
            state: if state.pipeline.is_up() {
                LinkUp::Up
            } else {
                LinkUp::Down
            },
            in_flight: state.pipeline.len(),
            last_error: state.last_error.clone(),
            reconnects: state.reconnects,
            down_for_ms: state
                .down_since
                .map(|since| since.elapsed().as_millis() as u64),
        }
    }

    /// Asks a link waiting to reconnect to try at once.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Publishes how long the link has been down (0 while up).
    fn report_down_time(&self) {
        let down_for = self
            .lock()
            .down_since
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        self.metrics
            .down_seconds
            .get_or_create(&self.label)
            .set(down_for);
    }

    /// Sends a frame that is not a publish (a handler's subscribe or
    /// unsubscribe). `false` when the link is down: the handler sends it
    /// again from [`LinkHandler::on_up`].
    pub fn send_frame(&self, frame: &Frame) -> bool {
        let state = self.lock();
        match state.pipeline.conn() {
            Some(outbox) => outbox
                .push_unbounded(encode::masked_text_frame(frame.encode().as_bytes()))
                .is_ok(),
            None => false,
        }
    }

    /// Sends publishes over the link as one batch. If the link went down
    /// they are answered `unavailable` at once (so a publisher's other
    /// topics keep flowing instead of queueing behind a dead consumer); if
    /// it was never up yet they wait for its first connection, up to the
    /// publish timeout.
    pub fn send(&self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let mut state = self.lock();
        let admit = match state.pipeline.admit() {
            // A consumer that left the list before it was ever reached.
            Admit::Hold if self.retired.is_cancelled() => Admit::Refuse,
            admit => admit,
        };
        let deadline = Instant::now() + self.limits.publish_timeout();
        let mut json = Vec::with_capacity(256);
        match admit {
            Admit::Hold => {
                for request in requests {
                    let id = Self::enter(&mut state, deadline, request, &mut json);
                    state.pipeline.hold(id, encode::masked_text_frame(&json));
                }
            }
            Admit::Send(outbox) => {
                // The whole batch as consecutive frames in one buffer.
                let estimate = requests.iter().map(|request| request.body.len() + 64).sum();
                let mut frames = FrameBuf::new(Role::Client, estimate);
                for request in requests {
                    Self::enter(&mut state, deadline, request, &mut json);
                    frames.push(&json);
                }
                // Pushed under the lock, so frames leave in id order.
                let _ = outbox.push_batch(&FrameBatch::new(vec![frames.into_bytes()]));
            }
            Admit::Refuse => {
                let reason = format!(
                    "consumer {} is unreachable: {}",
                    self.id,
                    state.last_error.as_deref().unwrap_or("reconnecting")
                );
                drop(state);
                let failed = requests
                    .into_iter()
                    .map(|request| {
                        (
                            request.reply,
                            Answer::Failed(ErrorCode::Unavailable, reason.clone()),
                        )
                    })
                    .collect();
                self.answer(failed);
                return;
            }
        }
        let in_flight = state.pipeline.len();
        drop(state);
        self.report_in_flight(in_flight);
    }

    /// Publishes the link's in-flight count (taken under the lock, set after).
    fn report_in_flight(&self, in_flight: usize) {
        self.metrics
            .in_flight
            .get_or_create(&self.label)
            .set(in_flight as i64);
    }

    /// Enters a publish in the pipeline and encodes it into `json` (a
    /// scratch buffer reused across a batch); its id.
    fn enter(
        state: &mut LinkState,
        deadline: Instant,
        request: Request,
        json: &mut Vec<u8>,
    ) -> u64 {
        let id = state.pipeline.enter(
            deadline,
            Pending {
                reply: request.reply,
                _permit: request.permit,
            },
        );
        json.clear();
        let body = &request.body;
        encode_publish_into(
            json,
            id,
            body.topic(),
            body.key(),
            request.forwarded,
            body.priority(),
            body.payload(),
        );
        id
    }

    /// Sends each answer to its publisher: one batch per publisher outbox.
    fn answer(&self, answers: Vec<(Reply, Answer)>) {
        // Per publisher: its answers as consecutive frames in one buffer,
        // and how many.
        let mut batches: Vec<(Arc<Outbox>, Arc<InFlight>, FrameBuf)> = Vec::new();
        let mut acked = 0;
        for (reply, answer) in answers {
            match &answer {
                Answer::Acked { .. } => acked += 1,
                Answer::Failed(code, _) => self.metrics.error(code.as_str()),
            }
            match reply {
                Reply::Http(waiting) => {
                    let _ = waiting.send(answer);
                }
                Reply::Legacy => {
                    if let Answer::Failed(code, message) = answer {
                        self.metrics.legacy_undelivered.inc();
                        tracing::warn!(%code, %message, "legacy publish not delivered");
                    }
                }
                Reply::Publisher {
                    outbox,
                    id,
                    in_flight,
                } => {
                    let index = match batches.iter().position(|(o, ..)| Arc::ptr_eq(o, &outbox)) {
                        Some(index) => index,
                        None => {
                            batches.push((outbox, in_flight, FrameBuf::new(Role::Server, 4096)));
                            batches.len() - 1
                        }
                    };
                    let frames = &mut batches[index].2;
                    match answer {
                        Answer::Acked { at, duplicate } => {
                            frames.push_with(|out| encode_publish_ack_into(out, id, at, duplicate))
                        }
                        Answer::Failed(code, message) => {
                            frames.push(Frame::error(Some(id), code, message).encode().as_bytes())
                        }
                    }
                }
            }
        }
        if acked > 0 {
            self.metrics.acked.inc_by(acked);
        }
        for (outbox, in_flight, frames) in batches {
            let count = frames.len();
            if outbox
                .push_batch(&FrameBatch::new(vec![frames.into_bytes()]))
                .is_err()
            {
                tracing::debug!("publisher gone before its answers");
            }
            in_flight.done(count);
        }
    }

    /// Takes publish answers out of the pipeline and delivers them;
    /// everything else goes to the handler.
    fn on_frames(self: &Arc<Self>, texts: impl Iterator<Item = crate::codec::Text>) {
        let mut answers = Vec::new();
        let mut for_handler = Vec::new();
        let mut state = self.lock();
        for text in texts {
            match state.pipeline.read(&text) {
                Read::Answer(pending, answer) => answers.push((pending.reply, answer)),
                Read::Stale => {}
                Read::Handler(frame) => for_handler.push((frame, text)),
                Read::ConnectionError(error) => {
                    tracing::warn!(link = %self.id, code = %error.code, message = %error.message, "consumer reported an error");
                }
                Read::Undecodable(error) => {
                    tracing::warn!(link = %self.id, %error, "undecodable frame from consumer");
                }
            }
        }
        let in_flight = state.pipeline.len();
        drop(state);
        self.report_in_flight(in_flight);
        self.answer(answers);
        if let Some(handler) = &self.handler {
            for (frame, text) in for_handler {
                handler.on_frame(self, frame, &text);
            }
        }
    }

    /// Answers the publishes past their deadline with `unavailable`.
    fn expire(&self) {
        let expired = self.lock().pipeline.expire(Instant::now());
        if expired.is_empty() {
            return;
        }
        let unknown = format!(
            "consumer {} did not answer within {} ms: the publish may or may not have been sequenced (retry with the same key to find out)",
            self.id, self.limits.publish_timeout_ms
        );
        let unreached = format!(
            "consumer {} was not reached within {} ms",
            self.id, self.limits.publish_timeout_ms
        );
        self.answer_unanswered(
            expired,
            (ErrorCode::OutcomeUnknown, unknown),
            (ErrorCode::Unavailable, unreached),
        );
    }

    /// Answers publishes taken out unanswered: those sent with `sent`,
    /// those never sent with `unsent`.
    fn answer_unanswered(
        &self,
        unanswered: Unanswered<Pending>,
        sent: (ErrorCode, String),
        unsent: (ErrorCode, String),
    ) {
        let answers = unanswered
            .sent
            .into_iter()
            .map(|pending| (pending, &sent))
            .chain(
                unanswered
                    .unsent
                    .into_iter()
                    .map(|pending| (pending, &unsent)),
            )
            .map(|(pending, (code, message))| {
                (pending.reply, Answer::Failed(code.clone(), message.clone()))
            })
            .collect();
        self.answer(answers);
    }

    /// Marks the link down and answers everything in flight: what was sent
    /// is `outcome_unknown`, what was never sent `unsent` (`unavailable`,
    /// or `shutting_down` when the node stops).
    fn down(self: &Arc<Self>, reason: String, unsent: ErrorCode) {
        let mut state = self.lock();
        state.pipeline.detach();
        let broken = state.pipeline.drain();
        state.last_error = Some(reason.clone());
        state.down_since.get_or_insert_with(Instant::now);
        drop(state);
        self.metrics.up.get_or_create(&self.label).set(0);
        self.metrics.downs.get_or_create(&self.label).inc();
        self.metrics.in_flight.get_or_create(&self.label).set(0);
        let unknown = format!(
            "link to consumer {} broke ({reason}) after the publish was sent: it may or may not have been sequenced (retry with the same key to find out)",
            self.id
        );
        let unsent_message = format!("link to consumer {} closed: {reason}", self.id);
        self.answer_unanswered(
            broken,
            (ErrorCode::OutcomeUnknown, unknown),
            (unsent, unsent_message),
        );
        if let Some(handler) = &self.handler {
            handler.on_down(self);
        }
    }
}
