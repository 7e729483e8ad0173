//! One persistent, authenticated link per consumer (shardq/1 on its
//! `/v1/cluster`): publishes pipelined over it with link-local ids, a
//! bounded in-flight window, answers routed straight to each publisher's
//! outbox, reconnection with exponential backoff and jitter.
//!
//! Every publish handed to a link is answered exactly once: the owner's
//! ack or error, `unavailable` when the link is down, breaks, or the owner
//! does not answer within the publish timeout, or `shutting_down`.
//!
//! Locking: a link's state mutex is held to assign ids and queue frames (on
//! the link's outbox, which never waits) and to take answered entries out;
//! answers are pushed to publishers after it is released. Never held across
//! an `.await`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rand::RngExt;
use serde::Serialize;
use shardq::connection;
use shardq_consumer::net::channel::{Channel, Ended};
use shardq_consumer::net::conn::{Reader, spawn_writer};
use shardq_consumer::net::outbox::{FrameBatch, Outbox};
use shardq_consumer::net::ws::{self, Role};
use shardq_protocol::frame::{encode_publish_ack_into, encode_publish_into, parse_publish_ack};
use shardq_protocol::{
    ClusterConfig, ErrorCode, Frame, Limits, NodeEntry, Position, Psk, RawValue, Router, Topic,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_tungstenite::MaybeTlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{LinkLabel, ProducerMetrics};
use crate::pending::PendingRing;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_millis(50);
const BURST: usize = 256;

/// Publishes a publisher connection has in flight, so it can wait for all
/// of them to be answered before it closes.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts `n` more publishes in flight.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    /// How many are unanswered.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes when none is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Where a publish's answer goes.
pub enum Reply {
    /// A shardq/1 publisher: its outbox and its request id.
    Publisher {
        /// The publisher connection's outbox.
        outbox: Arc<Outbox>,
        /// The publisher's id for the request.
        id: u64,
        /// The connection's in-flight count.
        in_flight: Arc<InFlight>,
    },
    /// A legacy publisher: there is no answer to send; failures are counted.
    Legacy,
}

/// One publish on its way to a link.
pub struct Request {
    /// The topic.
    pub topic: Topic,
    /// The payload, passed through byte for byte.
    pub payload: Box<RawValue>,
    /// Where the answer goes.
    pub reply: Reply,
    /// The window slot it holds until answered.
    pub permit: OwnedSemaphorePermit,
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

/// A link's state as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The consumer's id.
    pub id: String,
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
    metrics: Arc<ProducerMetrics>,
    label: LinkLabel,
}

impl ConsumerLink {
    fn new(entry: &NodeEntry, limits: &Limits, metrics: Arc<ProducerMetrics>) -> ConsumerLink {
        let label = LinkLabel {
            link: entry.id.clone(),
        };
        metrics.link_up.get_or_create(&label).set(0);
        ConsumerLink {
            id: entry.id.clone(),
            url: entry.endpoint("/v1/cluster"),
            window: Arc::new(Semaphore::new(limits.link_window)),
            state: Mutex::new(LinkState {
                conn: None,
                pending: PendingRing::default(),
                last_error: Some("not connected yet".into()),
                reconnects: 0,
            }),
            limits: limits.clone(),
            metrics,
            label,
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

    /// The link's state for `/readyz`.
    pub fn status(&self) -> LinkStatus {
        let state = self.lock();
        LinkStatus {
            id: self.id.clone(),
            state: if state.conn.is_some() { "up" } else { "down" },
            in_flight: state.pending.len(),
            last_error: state.last_error.clone(),
            reconnects: state.reconnects,
        }
    }

    /// Sends publishes over the link as one batch. If the link is down they
    /// are answered `unavailable` at once (so a publisher's other topics
    /// keep flowing instead of queueing behind a dead consumer).
    pub fn send(&self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let mut state = self.lock();
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
        let mut frames = Vec::with_capacity(requests.len());
        let mut json = Vec::with_capacity(256);
        for request in requests {
            let id = state.pending.push(
                deadline,
                Pending {
                    reply: request.reply,
                    _permit: request.permit,
                },
            );
            json.clear();
            encode_publish_into(&mut json, id, &request.topic, false, &request.payload);
            frames.push(ws::masked_text_frame(&json));
        }
        // Pushed under the lock, so frames leave in id order.
        let _ = outbox.push_batch(&FrameBatch::new(frames));
        let in_flight = state.pending.len();
        drop(state);
        self.metrics
            .link_in_flight
            .get_or_create(&self.label)
            .set(in_flight as i64);
    }

    /// Sends each answer to its publisher: one batch per publisher outbox.
    fn answer(&self, answers: Vec<(Reply, Answer)>) {
        let mut batches: Vec<(Arc<Outbox>, Arc<InFlight>, Vec<Bytes>)> = Vec::new();
        for (reply, answer) in answers {
            match &answer {
                Answer::Acked(_) => {
                    self.metrics.acked.inc();
                }
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
                    let frame = match answer {
                        Answer::Acked(at) => encode_ack(id, at),
                        Answer::Failed(code, message) => ws::text_frame(
                            Frame::error(Some(id), code, message).encode().as_bytes(),
                        ),
                    };
                    match batches.iter_mut().find(|(o, _, _)| Arc::ptr_eq(o, &outbox)) {
                        Some((_, _, frames)) => frames.push(frame),
                        None => batches.push((outbox, in_flight, vec![frame])),
                    }
                }
            }
        }
        for (outbox, in_flight, frames) in batches {
            let n = frames.len();
            if outbox.push_batch(&FrameBatch::new(frames)).is_err() {
                tracing::debug!("publisher gone before its answers");
            }
            in_flight.done(n);
        }
    }

    /// Takes the answers among `texts` out of the pending table and delivers them.
    fn on_frames(&self, texts: impl Iterator<Item = tokio_tungstenite::tungstenite::Utf8Bytes>) {
        let mut answers = Vec::new();
        let mut state = self.lock();
        for text in texts {
            // Nearly every frame is an ack in the consumer's fixed form.
            if let Some((id, at)) = parse_publish_ack(text.as_str()) {
                if let Some(pending) = state.pending.take(id) {
                    answers.push((pending.reply, Answer::Acked(at)));
                }
                continue;
            }
            let (id, answer) = match Frame::decode_str(text.as_str(), usize::MAX) {
                Ok(Frame::Ack(ack)) => match ack.position() {
                    Some(at) => (ack.id, Answer::Acked(at)),
                    None => (
                        ack.id,
                        Answer::Failed(ErrorCode::Internal, "ack without position".into()),
                    ),
                },
                Ok(Frame::Error(error)) => match error.id {
                    Some(id) => (id, Answer::Failed(error.code, error.message)),
                    None => {
                        tracing::warn!(link = %self.id, code = %error.code, message = %error.message, "consumer reported an error");
                        continue;
                    }
                },
                Ok(other) => {
                    tracing::debug!(link = %self.id, kind = other.kind(), "unexpected frame on a link");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(link = %self.id, %error, "undecodable frame from consumer");
                    continue;
                }
            };
            if let Some(pending) = state.pending.take(id) {
                answers.push((pending.reply, answer));
            }
        }
        let in_flight = state.pending.len();
        drop(state);
        self.metrics
            .link_in_flight
            .get_or_create(&self.label)
            .set(in_flight as i64);
        self.answer(answers);
    }

    fn expire(&self) {
        let expired = self.lock().pending.expire(Instant::now());
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
    fn down(&self, reason: String, code: ErrorCode) {
        let mut state = self.lock();
        state.conn = None;
        let broken = state.pending.drain();
        state.last_error = Some(reason.clone());
        drop(state);
        self.metrics.link_up.get_or_create(&self.label).set(0);
        self.metrics
            .link_in_flight
            .get_or_create(&self.label)
            .set(0);
        let message = match code {
            ErrorCode::Unavailable => format!(
                "link to consumer {} broke ({reason}); the publish may or may not have been sequenced",
                self.id
            ),
            _ => format!(
                "producer is shutting down; link to consumer {} closed",
                self.id
            ),
        };
        self.answer(
            broken
                .into_iter()
                .map(|pending| (pending.reply, Answer::Failed(code.clone(), message.clone())))
                .collect(),
        );
    }

    /// Keeps the link connected until `stop`: connect, serve, back off, repeat.
    async fn run(self: Arc<Self>, ctx: LinkContext) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        loop {
            let attempt = connection::connect(
                &self.url,
                &ctx.psk,
                Some(&ctx.node),
                self.limits.handshake_timeout(),
            );
            let result = tokio::select! {
                result = attempt => result,
                () = ctx.stop.cancelled() => return,
            };
            match result {
                Ok(conn) => {
                    if connected_before {
                        self.lock().reconnects += 1;
                        self.metrics
                            .link_reconnects
                            .get_or_create(&self.label)
                            .inc();
                    }
                    connected_before = true;
                    backoff = BACKOFF_START;
                    let reason = self.serve(conn.socket, &ctx).await;
                    if ctx.stop.is_cancelled() {
                        self.down(reason, ErrorCode::ShuttingDown);
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
            // Exponential backoff with ±50% jitter, so producers do not
            // reconnect in lockstep.
            let jitter = rand::rng().random_range(0.5..1.5);
            let pause = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = ctx.stop.cancelled() => return,
            }
        }
    }

    /// Serves one connection until it breaks or `stop`; returns why it ended.
    async fn serve(&self, socket: connection::WsStream, ctx: &LinkContext) -> String {
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
        let reader = Reader::client(read, outbox.clone(), self.limits.max_frame_bytes).await;
        let mut channel = Channel::new(
            reader,
            outbox.clone(),
            self.limits.ping_interval(),
            self.limits.max_missed_pongs,
            ctx.stop.clone(),
        );
        {
            let mut state = self.lock();
            state.conn = Some(outbox.clone());
            state.last_error = None;
        }
        self.metrics.link_up.get_or_create(&self.label).set(1);
        tracing::info!(link = %self.id, url = %self.url, "consumer link up");
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
            Ended::Stopped => "the producer is stopping".into(),
        }
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

/// All of a producer's links and the routing over them.
pub struct Links {
    links: Vec<Arc<ConsumerLink>>,
    router: Router,
}

impl Links {
    /// One link per consumer of the cluster file (not yet connected).
    pub fn new(cluster: &ClusterConfig, metrics: Arc<ProducerMetrics>) -> Links {
        Links {
            links: cluster
                .consumers
                .iter()
                .map(|entry| Arc::new(ConsumerLink::new(entry, &cluster.limits, metrics.clone())))
                .collect(),
            router: Router::new(&cluster.consumer_ids()),
        }
    }

    /// Starts every link's connection task on `tasks`; they stop with `stop`.
    pub fn start(&self, psk: &Psk, node: &str, stop: CancellationToken, tasks: &TaskTracker) {
        let ctx = LinkContext {
            psk: psk.clone(),
            node: node.to_owned(),
            stop,
            tasks: tasks.clone(),
        };
        for link in &self.links {
            tasks.spawn(link.clone().run(ctx.clone()));
        }
    }

    /// The index of the link to the topic's owner.
    pub fn owner(&self, topic: &Topic) -> usize {
        // The cluster file always names at least one consumer.
        self.router.owner(topic).unwrap_or(0)
    }

    /// The link at `index`.
    pub fn get(&self, index: usize) -> &Arc<ConsumerLink> {
        &self.links[index]
    }

    /// Every link's state.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        self.links.iter().map(|link| link.status()).collect()
    }

    /// Whether at least one link is up.
    pub fn any_up(&self) -> bool {
        self.links.iter().any(|link| link.is_up())
    }

    /// Publishes in flight over all links.
    pub fn in_flight(&self) -> usize {
        self.links
            .iter()
            .map(|link| link.lock().pending.len())
            .sum()
    }
}

/// A publish's ack as a server frame for the publisher.
fn encode_ack(id: u64, at: Position) -> Bytes {
    ws::text_frame_with(64, |out| encode_publish_ack_into(out, id, at))
}
