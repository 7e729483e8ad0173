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
//! The set of links follows the node list: [`Links::update`] adds links to
//! new consumers and retires those to removed ones once their publishes are
//! answered.
//!
//! Locking: a link's state mutex is held to assign ids and queue frames (on
//! the link's outbox, which never waits) and to take answered entries out;
//! answers are pushed to publishers after it is released. Never held across
//! an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::RngExt;
use serde::Serialize;
use shardq::connection;
use shardq_protocol::frame::{encode_publish_ack_into, encode_publish_into, parse_publish_ack};
use shardq_protocol::{ClusterConfig, ErrorCode, Frame, Limits, NodeEntry, Position, Psk, Router};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_tungstenite::MaybeTlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channel::{Channel, Ended};
use super::conn::{Reader, spawn_writer};
use super::outbox::{FrameBatch, Outbox};
use super::pending::PendingRing;
use super::ws::{self, FrameBuf, Role};

pub use super::request::{Body, InFlight, Reply, Request};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_millis(50);
const BURST: usize = 256;

/// Ids of requests a [`LinkHandler`] sends have this bit set, so their
/// answers reach the handler instead of the publish table.
pub const HANDLER_ID_BIT: u64 = 1 << 63;

/// Label of per-link metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    /// The consumer's id.
    pub link: String,
}

/// Label of error counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code.
    pub code: String,
}

/// The metrics of a node's links.
#[derive(Default)]
pub struct LinkMetrics {
    /// Publishes the owner acked.
    pub acked: Counter,
    /// Publishes answered with an error, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Publishes in flight on each link.
    pub in_flight: Family<LinkLabel, Gauge>,
    /// 1 when a link is up, 0 when it is down.
    pub up: Family<LinkLabel, Gauge>,
    /// Connections each link opened after the first.
    pub reconnects: Family<LinkLabel, Counter>,
    /// Legacy messages that could not be delivered (the dialect has no acks).
    pub legacy_undelivered: Counter,
}

impl LinkMetrics {
    /// Registers the metrics (`acked`, `errors`, `link_in_flight`, `link_up`,
    /// `link_reconnects`, `legacy_undelivered`) under the registry's prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("acked", "Publishes the owner acked", self.acked.clone());
        registry.register(
            "errors",
            "Publishes answered with an error, by code",
            self.errors.clone(),
        );
        registry.register(
            "link_in_flight",
            "Publishes in flight per consumer link",
            self.in_flight.clone(),
        );
        registry.register("link_up", "1 when the consumer link is up", self.up.clone());
        registry.register(
            "link_reconnects",
            "Reconnections per consumer link",
            self.reconnects.clone(),
        );
        registry.register(
            "legacy_undelivered",
            "Legacy messages that could not be delivered",
            self.legacy_undelivered.clone(),
        );
    }

    /// Counts one error answer.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }
}

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

/// How a publish ended.
enum Answer {
    Acked(Position),
    Failed(ErrorCode, String),
}

struct Pending {
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// A link's state as `/readyz` and `/v1/cluster` show it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The consumer's id.
    pub id: String,
    /// Its URL.
    pub url: String,
    /// `up` or `down`.
    pub state: &'static str,
    /// Publishes in flight.
    pub in_flight: usize,
    /// Why the last attempt failed, while down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Connections opened after the first.
    pub reconnects: u64,
}

struct LinkState {
    conn: Option<Arc<Outbox>>,
    pending: PendingRing<Pending>,
    /// Whether the link was ever up. Until it is, publishes wait for the
    /// first connection (a consumer just added to the node list, or this
    /// node just started) instead of failing at once.
    connected_once: bool,
    /// Publishes waiting for the first connection: their pending id and frame.
    held: Vec<(u64, Bytes)>,
    last_error: Option<String>,
    reconnects: u64,
}

/// The link to one consumer.
pub struct ConsumerLink {
    /// The consumer's id.
    pub id: String,
    url: String,
    window: Arc<Semaphore>,
    state: Mutex<LinkState>,
    limits: Limits,
    metrics: Arc<LinkMetrics>,
    label: LinkLabel,
    handler: Option<Arc<dyn LinkHandler>>,
    /// Cancelled when the consumer left the node list.
    retired: CancellationToken,
}

impl ConsumerLink {
    fn new(
        entry: &NodeEntry,
        limits: &Limits,
        metrics: Arc<LinkMetrics>,
        handler: Option<Arc<dyn LinkHandler>>,
        stop: &CancellationToken,
    ) -> ConsumerLink {
        let label = LinkLabel {
            link: entry.id.clone(),
        };
        metrics.up.get_or_create(&label).set(0);
        metrics.in_flight.get_or_create(&label).set(0);
        ConsumerLink {
            id: entry.id.clone(),
            url: entry.endpoint("/v1/cluster"),
            window: Arc::new(Semaphore::new(limits.link_window)),
            state: Mutex::new(LinkState {
                conn: None,
                pending: PendingRing::default(),
                connected_once: false,
                held: Vec::new(),
                last_error: Some("not connected yet".into()),
                reconnects: 0,
            }),
            limits: limits.clone(),
            metrics,
            label,
            handler,
            retired: stop.child_token(),
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

    /// Whether the link is connected.
    pub fn is_up(&self) -> bool {
        self.lock().conn.is_some()
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
            state: if state.conn.is_some() { "up" } else { "down" },
            in_flight: state.pending.len(),
            last_error: state.last_error.clone(),
            reconnects: state.reconnects,
        }
    }

    /// Sends a frame that is not a publish (a handler's subscribe or
    /// unsubscribe). `false` when the link is down: the handler sends it
    /// again from [`LinkHandler::on_up`].
    pub fn send_frame(&self, frame: &Frame) -> bool {
        let state = self.lock();
        match &state.conn {
            Some(outbox) => outbox
                .push_unbounded(ws::masked_text_frame(frame.encode().as_bytes()))
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
        if state.conn.is_none() && !state.connected_once && !self.retired.is_cancelled() {
            let deadline = Instant::now() + self.limits.publish_timeout();
            let mut json = Vec::with_capacity(256);
            for request in requests {
                let id = self.enter_pending(&mut state, deadline, request, &mut json);
                state.held.push((id, ws::masked_text_frame(&json)));
            }
            let in_flight = state.pending.len();
            drop(state);
            self.metrics
                .in_flight
                .get_or_create(&self.label)
                .set(in_flight as i64);
            return;
        }
        let Some(outbox) = state.conn.clone() else {
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
        };
        let deadline = Instant::now() + self.limits.publish_timeout();
        let mut json = Vec::with_capacity(256);
        // The whole batch as consecutive frames in one buffer.
        let estimate = requests.iter().map(|request| request.body.len() + 64).sum();
        let mut frames = FrameBuf::new(Role::Client, estimate);
        for request in requests {
            self.enter_pending(&mut state, deadline, request, &mut json);
            frames.push(&json);
        }
        // Pushed under the lock, so frames leave in id order.
        let _ = outbox.push_batch(&FrameBatch::new(vec![frames.into_bytes()]));
        let in_flight = state.pending.len();
        drop(state);
        self.metrics
            .in_flight
            .get_or_create(&self.label)
            .set(in_flight as i64);
    }

    /// Enters a publish in the pending table and encodes it into `json`
    /// (a scratch buffer reused across a batch); its id.
    fn enter_pending(
        &self,
        state: &mut LinkState,
        deadline: Instant,
        request: Request,
        json: &mut Vec<u8>,
    ) -> u64 {
        let id = state.pending.push(
            deadline,
            Pending {
                reply: request.reply,
                _permit: request.permit,
            },
        );
        json.clear();
        let body = &request.body;
        encode_publish_into(json, id, body.topic(), request.forwarded, body.payload());
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
                Answer::Acked(_) => acked += 1,
                Answer::Failed(code, _) => self.metrics.error(code.as_str()),
            }
            match reply {
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
                        Answer::Acked(at) => {
                            frames.push_with(|out| encode_publish_ack_into(out, id, at))
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

    /// Takes publish answers out of the pending table and delivers them;
    /// everything else goes to the handler.
    fn on_frames(
        self: &Arc<Self>,
        texts: impl Iterator<Item = tokio_tungstenite::tungstenite::Utf8Bytes>,
    ) {
        let mut answers = Vec::new();
        let mut for_handler = Vec::new();
        let mut state = self.lock();
        for text in texts {
            // Nearly every frame is a publish ack in the consumer's fixed form.
            if let Some((id, at)) = parse_publish_ack(text.as_str()) {
                if id & HANDLER_ID_BIT == 0 {
                    if let Some(pending) = state.pending.take(id) {
                        answers.push((pending.reply, Answer::Acked(at)));
                    }
                    continue;
                }
            }
            let frame = match Frame::decode_str(text.as_str(), usize::MAX) {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::warn!(link = %self.id, %error, "undecodable frame from consumer");
                    continue;
                }
            };
            let publish_answer = match &frame {
                Frame::Ack(ack) if ack.id & HANDLER_ID_BIT == 0 => Some((
                    ack.id,
                    match ack.position() {
                        Some(at) => Answer::Acked(at),
                        None => Answer::Failed(ErrorCode::Internal, "ack without position".into()),
                    },
                )),
                Frame::Error(error) => match error.id {
                    Some(id) if id & HANDLER_ID_BIT == 0 => Some((
                        id,
                        Answer::Failed(error.code.clone(), error.message.clone()),
                    )),
                    Some(_) => None,
                    None => {
                        tracing::warn!(link = %self.id, code = %error.code, message = %error.message, "consumer reported an error");
                        continue;
                    }
                },
                _ => None,
            };
            match publish_answer {
                Some((id, answer)) => {
                    if let Some(pending) = state.pending.take(id) {
                        answers.push((pending.reply, answer));
                    }
                }
                None => for_handler.push((frame, text)),
            }
        }
        let in_flight = state.pending.len();
        drop(state);
        self.metrics
            .in_flight
            .get_or_create(&self.label)
            .set(in_flight as i64);
        self.answer(answers);
        if let Some(handler) = &self.handler {
            for (frame, text) in for_handler {
                handler.on_frame(self, frame, text.as_str());
            }
        }
    }

    fn expire(&self) {
        let expired = {
            let mut state = self.lock();
            let expired = state.pending.expire(Instant::now());
            if !state.held.is_empty() {
                let LinkState { held, pending, .. } = &mut *state;
                held.retain(|(id, _)| pending.contains(*id));
            }
            expired
        };
        if expired.is_empty() {
            return;
        }
        let message = format!(
            "consumer {} did not answer within {} ms",
            self.id, self.limits.publish_timeout_ms
        );
        self.answer(
            expired
                .into_iter()
                .map(|pending| {
                    (
                        pending.reply,
                        Answer::Failed(ErrorCode::Unavailable, message.clone()),
                    )
                })
                .collect(),
        );
    }

    /// Marks the link down and answers everything in flight.
    fn down(self: &Arc<Self>, reason: String, code: ErrorCode) {
        let mut state = self.lock();
        state.conn = None;
        state.held.clear();
        let broken = state.pending.drain();
        state.last_error = Some(reason.clone());
        drop(state);
        self.metrics.up.get_or_create(&self.label).set(0);
        self.metrics.in_flight.get_or_create(&self.label).set(0);
        let message = match code {
            ErrorCode::Unavailable => format!(
                "link to consumer {} broke ({reason}); the publish may or may not have been sequenced",
                self.id
            ),
            _ => format!("link to consumer {} closed: {reason}", self.id),
        };
        self.answer(
            broken
                .into_iter()
                .map(|pending| (pending.reply, Answer::Failed(code.clone(), message.clone())))
                .collect(),
        );
        if let Some(handler) = &self.handler {
            handler.on_down(self);
        }
    }

    /// Keeps the link connected until stopped or retired: connect, serve,
    /// back off, repeat.
    async fn run(self: Arc<Self>, ctx: LinkContext) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        let mut sweep = interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let attempt = connection::connect(
                &self.url,
                &ctx.psk,
                Some(&ctx.node),
                self.limits.handshake_timeout(),
            );
            tokio::pin!(attempt);
            // Publishes held for the first connection expire meanwhile.
            let result = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    () = self.retired.cancelled() => {
                        self.down("the consumer left the node list".into(), ErrorCode::Unavailable);
                        return;
                    }
                    _ = sweep.tick() => self.expire(),
                }
            };
            match result {
                Ok(conn) => {
                    if connected_before {
                        self.lock().reconnects += 1;
                        self.metrics.reconnects.get_or_create(&self.label).inc();
                    }
                    connected_before = true;
                    backoff = BACKOFF_START;
                    let reason = self.serve(conn.socket, &ctx).await;
                    if self.retired.is_cancelled() {
                        let code = if ctx.stop.is_cancelled() {
                            ErrorCode::ShuttingDown
                        } else {
                            ErrorCode::Unavailable
                        };
                        self.down(reason, code);
                        return;
                    }
                    tracing::warn!(link = %self.id, %reason, "consumer link lost; reconnecting");
                    self.down(reason, ErrorCode::Unavailable);
                }
                Err(error) => {
                    let reason = error.to_string();
                    if self.lock().last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(link = %self.id, %reason, "cannot connect to consumer; retrying");
                    }
                    self.lock().last_error = Some(reason);
                }
            }
            // Exponential backoff with ±50% jitter, so nodes do not
            // reconnect in lockstep.
            let jitter = rand::rng().random_range(0.5..1.5);
            let pause = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let resume = tokio::time::sleep(pause);
            tokio::pin!(resume);
            loop {
                tokio::select! {
                    () = &mut resume => break,
                    () = self.retired.cancelled() => {
                        self.down("the consumer left the node list".into(), ErrorCode::Unavailable);
                        return;
                    }
                    _ = sweep.tick() => self.expire(),
                }
            }
        }
    }

    /// Serves one connection until it breaks, `stop` or retirement; returns
    /// why it ended.
    async fn serve(self: &Arc<Self>, socket: connection::WsStream, ctx: &LinkContext) -> String {
        let MaybeTlsStream::Plain(tcp) = socket.into_inner() else {
            return "TLS links are not supported".into();
        };
        let (read, write) = tcp.into_split();
        let outbox_limit = self
            .limits
            .link_window
            .saturating_mul(self.limits.max_frame_bytes + 64);
        let outbox = Arc::new(Outbox::with_role(outbox_limit, Role::Client));
        spawn_writer(write, outbox.clone(), &ctx.tasks);
        let reader = Reader::client(read, outbox.clone(), self.limits.max_frame_bytes);
        let mut channel = Channel::new(reader, outbox.clone(), &self.limits, self.retired.clone());
        {
            let mut state = self.lock();
            state.conn = Some(outbox.clone());
            state.last_error = None;
            state.connected_once = true;
            let held = std::mem::take(&mut state.held);
            if !held.is_empty() {
                let frames = held
                    .into_iter()
                    .filter(|(id, _)| state.pending.contains(*id))
                    .map(|(_, frame)| frame)
                    .collect();
                let _ = outbox.push_batch(&FrameBatch::new(frames));
            }
        }
        self.metrics.up.get_or_create(&self.label).set(1);
        tracing::info!(link = %self.id, url = %self.url, "consumer link up");
        if let Some(handler) = &self.handler {
            handler.on_up(self);
        }
        let mut sweep = interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut burst = Vec::new();
        let ended = loop {
            tokio::select! {
                text = channel.next_text() => match text {
                    Ok(text) => {
                        burst.push(text);
                        while burst.len() < BURST {
                            match channel.try_next_text() {
                                Some(text) => burst.push(text),
                                None => break,
                            }
                        }
                        self.on_frames(burst.drain(..));
                    }
                    Err(ended) => break ended,
                },
                _ = sweep.tick() => self.expire(),
            }
        };
        // Stop sending on this connection before answering what was on it.
        self.lock().conn = None;
        outbox.close(shardq_protocol::CloseCode::GoingAway);
        match ended {
            Ended::Peer => "the consumer closed the connection".into(),
            Ended::Closed(code) => format!("closed ({} {})", code.code(), code.reason()),
            Ended::Stopped => "the node is stopping, or the consumer left the node list".into(),
        }
    }
}

/// Requests gathered per link during a burst, sent as one batch each.
#[derive(Default)]
pub struct Batches(Vec<(Arc<ConsumerLink>, Vec<Request>)>);

impl Batches {
    /// Adds a request for `link`.
    pub fn add(&mut self, link: &Arc<ConsumerLink>, request: Request) {
        match self.0.iter_mut().find(|(held, _)| Arc::ptr_eq(held, link)) {
            Some((_, requests)) => requests.push(request),
            None => self.0.push((link.clone(), vec![request])),
        }
    }

    /// Sends every link its batch.
    pub fn flush(&mut self) {
        for (link, requests) in self.0.drain(..) {
            link.send(requests);
        }
    }
}

/// A window slot on `link`: at once if one is free; otherwise what was
/// gathered is sent first and the caller waits (so its connection stops
/// reading: backpressure). `None` when `stop` fires meanwhile.
pub async fn permit(
    link: &Arc<ConsumerLink>,
    batches: &mut Batches,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let window = link.window().clone();
    if let Ok(permit) = window.clone().try_acquire_owned() {
        return Some(permit);
    }
    batches.flush();
    tokio::select! {
        permit = window.acquire_owned() => permit.ok(),
        () = stop.cancelled() => None,
    }
}

/// What every link task needs.
#[derive(Clone)]
struct LinkContext {
    psk: Psk,
    node: String,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// How long a link to a consumer that left the node list stays open: it
/// still carries that consumer's `moved` and relayed streams while the
/// topics it owned hand over.
pub const RETIRE_AFTER: Duration = Duration::from_secs(15);

/// The links of one node list, and the routing over it.
pub struct LinkSet {
    links: Vec<Arc<ConsumerLink>>,
    /// Links to consumers that left the list, open a while longer.
    retiring: Vec<Arc<ConsumerLink>>,
    router: Router,
    ids: Vec<String>,
}

impl LinkSet {
    /// The id of the topic's owner.
    pub fn owner_id(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<&str> {
        self.router
            .owner(topic)
            .map(|index| self.ids[index].as_str())
    }

    /// The link to the topic's owner (`None` when the owner is this node).
    pub fn owner(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<&Arc<ConsumerLink>> {
        self.link(self.owner_id(topic)?)
    }

    /// The link to consumer `id` (also while it retires).
    pub fn link(&self, id: &str) -> Option<&Arc<ConsumerLink>> {
        self.links
            .iter()
            .chain(&self.retiring)
            .find(|link| link.id == id)
    }

    /// Every link.
    pub fn links(&self) -> &[Arc<ConsumerLink>] {
        &self.links
    }

    /// The consumer ids routing is over.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// Who opens a node's links, and what it does with them.
pub struct LinkOptions {
    /// The node's own id when it is a consumer (no link to itself).
    pub own_id: Option<String>,
    /// The psk.
    pub psk: Psk,
    /// The name the links give in their handshake.
    pub node: String,
    /// Where the links count.
    pub metrics: Arc<LinkMetrics>,
    /// What takes the frames that are not publish answers.
    pub handler: Option<Arc<dyn LinkHandler>>,
}

/// A node's links to the consumers of its node list.
pub struct Links {
    current: ArcSwap<LinkSet>,
    update: Mutex<()>,
    ctx: LinkContext,
    metrics: Arc<LinkMetrics>,
    handler: Option<Arc<dyn LinkHandler>>,
    own_id: Option<String>,
}

impl Links {
    /// Links to every consumer of `cluster` except `options.own_id`,
    /// started at once on `tasks`; they stop with `stop`.
    pub fn start(
        cluster: &ClusterConfig,
        options: LinkOptions,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Links {
        let links = Links {
            current: ArcSwap::from_pointee(LinkSet {
                links: Vec::new(),
                retiring: Vec::new(),
                router: Router::new::<&str>(&[]),
                ids: Vec::new(),
            }),
            update: Mutex::new(()),
            ctx: LinkContext {
                psk: options.psk,
                node: options.node,
                stop,
                tasks: tasks.clone(),
            },
            metrics: options.metrics,
            handler: options.handler,
            own_id: options.own_id,
        };
        links.update(cluster);
        links
    }

    /// The current links and routing.
    pub fn current(&self) -> Arc<LinkSet> {
        self.current.load_full()
    }

    /// Follows a new node list: keeps the links that did not change, opens
    /// links to new consumers, and retires links to removed (or moved)
    /// consumers after [`RETIRE_AFTER`], once their publishes in flight are
    /// answered (until then they are not routed to, but still carry what
    /// the departing consumer sends).
    pub fn update(&self, cluster: &ClusterConfig) {
        let _serialized = self
            .update
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        let mut links = Vec::new();
        for entry in &cluster.consumers {
            if Some(&entry.id) == self.own_id.as_ref() {
                continue;
            }
            let url = entry.endpoint("/v1/cluster");
            let kept = old.links.iter().chain(&old.retiring).find(|link| {
                link.id == entry.id && link.url == url && !link.retired.is_cancelled()
            });
            match kept {
                Some(link) => links.push(link.clone()),
                None => {
                    let link = Arc::new(ConsumerLink::new(
                        entry,
                        &cluster.limits,
                        self.metrics.clone(),
                        self.handler.clone(),
                        &self.ctx.stop,
                    ));
                    self.ctx.tasks.spawn(link.clone().run(self.ctx.clone()));
                    links.push(link);
                }
            }
        }
        let mut retiring = Vec::new();
        for link in old.links.iter().chain(&old.retiring) {
            if links.iter().any(|kept| Arc::ptr_eq(kept, link)) || link.retired.is_cancelled() {
                continue;
            }
            retiring.push(link.clone());
            if old.retiring.iter().any(|held| Arc::ptr_eq(held, link)) {
                continue; // its retirement is already scheduled
            }
            let link = link.clone();
            let patience = link.limits.publish_timeout();
            self.ctx.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(RETIRE_AFTER) => {}
                    () = link.retired.cancelled() => return,
                }
                let deadline = Instant::now() + patience;
                while !link.lock().pending.is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(SWEEP_EVERY).await;
                }
                tracing::info!(link = %link.id, "consumer left the node list; link retired");
                link.retired.cancel();
            });
        }
        self.current.store(Arc::new(LinkSet {
            links,
            retiring,
            router: Router::new(&cluster.consumer_ids()),
            ids: cluster.consumer_ids(),
        }));
    }

    /// Every link's state.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        self.current()
            .links
            .iter()
            .map(|link| link.status())
            .collect()
    }

    /// Whether at least one link is up.
    pub fn any_up(&self) -> bool {
        self.current().links.iter().any(|link| link.is_up())
    }

    /// Publishes in flight over all links.
    pub fn in_flight(&self) -> usize {
        self.current()
            .links
            .iter()
            .map(|link| link.lock().pending.len())
            .sum()
    }
}
