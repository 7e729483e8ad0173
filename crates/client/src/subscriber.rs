//! [`Subscriber`]: subscriptions as streams of messages, routed to each
//! topic's owner, resumed after any disconnect from the last position seen.
//!
//! One task per consumer connection owns its socket; subscribe and
//! unsubscribe reach it through a bounded channel and are answered through
//! a oneshot. Messages go to each subscription's bounded channel: an
//! application that stops reading slows its connection (and may be cut as a
//! slow consumer, then resumes from the consumer's history).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use shardq_protocol::{
    ClusterConfig, Frame, Position, Psk, QueueConfig, RawValue, Router, Subscribe, Topic,
    TopicFilter, TopicPosition, Unsubscribe,
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connection::{self, ConnectError, WsStream};
use crate::error::SubscribeError;
use crate::publisher::with_path;

/// One consumer a subscriber may connect to.
#[derive(Debug, Clone)]
pub struct ConsumerAddress {
    /// Its id (routing hashes ids).
    pub id: String,
    /// Its URL (`ws://host:port`; `/v1/subscribe` is added when no path is given).
    pub url: String,
}

/// Where and how a [`Subscriber`] connects.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The consumers. With one, everything goes to it; with several, each
    /// topic goes to its owner (one connection per consumer).
    pub consumers: Vec<ConsumerAddress>,
    /// The queue configuration, to expand `queue/*` across several consumers.
    pub queues: Option<QueueConfig>,
    /// The pre-shared key.
    pub psk: Psk,
    /// A name for the consumers' logs.
    pub name: Option<String>,
    /// Time allowed to connect and authenticate. Default 5 s.
    pub connect_timeout: Duration,
    /// Time a subscribe waits for its answer. Default 10 s.
    pub answer_timeout: Duration,
    /// Messages buffered per subscription. Default 1,024.
    pub buffer: usize,
}

impl SubscriberConfig {
    /// One consumer URL: every subscription goes there.
    pub fn new(url: impl Into<String>, psk: Psk) -> SubscriberConfig {
        SubscriberConfig {
            consumers: vec![ConsumerAddress {
                id: String::new(),
                url: url.into(),
            }],
            queues: None,
            psk,
            name: None,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
            buffer: 1024,
        }
    }

    /// Every consumer of a cluster file, with its queues: each topic is
    /// subscribed at its owner.
    pub fn from_cluster(cluster: &ClusterConfig, psk: Psk) -> SubscriberConfig {
        SubscriberConfig {
            consumers: cluster
                .consumers
                .iter()
                .map(|entry| ConsumerAddress {
                    id: entry.id.clone(),
                    url: entry.url.clone(),
                })
                .collect(),
            queues: Some(cluster.queues.clone()),
            ..SubscriberConfig::new(String::new(), psk)
        }
    }
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic.
    pub topic: Topic,
    /// The topic's epoch at its owner.
    pub epoch: u64,
    /// The message's offset in that epoch.
    pub offset: u64,
    /// The payload, byte for byte as published.
    pub payload: Box<RawValue>,
}

impl Message {
    /// The payload deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// Its position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// Messages may be missing: after a reconnect, the consumer's history no
/// longer reached back to the last message received (or the consumer
/// restarted and its history was lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The topic.
    pub topic: Topic,
    /// The last position received before the gap.
    pub after: Position,
    /// The topic's epoch now.
    pub epoch: u64,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message.
    Message(Message),
    /// A resume could not recover everything: some messages are missing.
    Gap(Gap),
}

/// The messages of one `subscribe`, as a `Stream` of [`Event`]s. Once it
/// is dropped, its topics are unsubscribed when their next message arrives
/// (call [`Subscriber::unsubscribe`] to end them at once).
pub struct Subscription {
    topics: Vec<Topic>,
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` when the subscriber was closed or unsubscribed.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next message, skipping (and logging) gaps.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.events.recv().await? {
                Event::Message(message) => return Some(message),
                Event::Gap(gap) => tracing::warn!(?gap, "messages may be missing"),
            }
        }
    }

    /// The topics it covers (`queue/*` expanded).
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }
}

impl futures_util::Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// Subscribes to a shardq cluster. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use shardq::{Event, Subscriber, SubscriberConfig};
/// use shardq::protocol::Psk;
///
/// let psk = Psk::new(std::env::var("SHARDQ_PSK")?)?;
/// let subscriber = Subscriber::connect(SubscriberConfig::new("ws://127.0.0.1:7100", psk)).await?;
/// let mut deletes = subscriber.subscribe("database", "delete").await?;
/// while let Some(event) = deletes.next().await {
///     match event {
///         Event::Message(message) => println!("delete happened: {}", message.payload),
///         Event::Gap(gap) => eprintln!("messages may be missing after {:?}", gap.after),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Inner>,
}

struct Inner {
    config: SubscriberConfig,
    router: Router,
    conns: Mutex<Vec<Option<ConnHandle>>>,
    live: Arc<Mutex<BTreeMap<Topic, u64>>>,
}

#[derive(Clone)]
struct ConnHandle {
    commands: mpsc::Sender<Command>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Command {
    Subscribe {
        filter: TopicFilter,
        sink: Sink,
        reply: oneshot::Sender<Result<Vec<TopicPosition>, SubscribeError>>,
    },
    Unsubscribe {
        filter: TopicFilter,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
}

/// Where one subscription's events go.
#[derive(Clone)]
struct Sink {
    id: u64,
    events: mpsc::Sender<Event>,
}

impl Subscriber {
    /// Connects to the first consumer (the others are connected when a topic
    /// they own is subscribed).
    pub async fn connect(mut config: SubscriberConfig) -> Result<Subscriber, ConnectError> {
        for consumer in &mut config.consumers {
            consumer.url = with_path(&consumer.url, "/v1/subscribe");
        }
        let ids: Vec<&str> = config.consumers.iter().map(|c| c.id.as_str()).collect();
        let router = Router::new(&ids);
        let inner = Arc::new(Inner {
            conns: Mutex::new(vec![None; config.consumers.len()]),
            router,
            config,
            live: Arc::new(Mutex::new(BTreeMap::new())),
        });
        let subscriber = Subscriber { inner };
        // Any consumer serves any topic, so one reachable consumer is enough
        // to start; the others are connected on first use.
        let mut last_error = None;
        for index in 0..subscriber.inner.config.consumers.len() {
            match subscriber.conn(index).await {
                Ok(_) => return Ok(subscriber),
                // A wrong key is wrong everywhere: say so at once.
                Err(error) if error.is_auth_failure() => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, consumer = %subscriber.inner.config.consumers[index].id, "consumer unreachable; trying the next");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or(ConnectError::NoConsumers))
    }

    /// The connection to consumer `index`, opened on first use.
    async fn conn(&self, index: usize) -> Result<ConnHandle, ConnectError> {
        if let Some(handle) = lock(&self.inner.conns)[index].clone() {
            return Ok(handle);
        }
        let config = &self.inner.config;
        let url = config.consumers[index].url.clone();
        let first = connection::connect(
            &url,
            &config.psk,
            config.name.as_deref(),
            config.connect_timeout,
        )
        .await?;
        let (commands, inbox) = mpsc::channel(256);
        // Its own consumer first, then the others in list order.
        let urls = (0..config.consumers.len())
            .map(|offset| {
                config.consumers[(index + offset) % config.consumers.len()]
                    .url
                    .clone()
            })
            .collect();
        let task = tokio::spawn(
            Conn {
                urls,
                config: config.clone(),
                topics: HashMap::new(),
                live: self.inner.live.clone(),
            }
            .run(first.socket, inbox),
        );
        let handle = ConnHandle {
            commands,
            _task: Arc::new(TaskGuard(task)),
        };
        let mut conns = lock(&self.inner.conns);
        // Another caller may have connected meanwhile: keep the first.
        Ok(conns[index].get_or_insert(handle).clone())
    }

    fn owner(&self, topic: &Topic) -> usize {
        self.inner.router.owner(topic).unwrap_or(0)
    }

    /// Subscribes to `queue/event`, or to every declared event of `queue`
    /// with `event = "*"`. The subscription is live when this returns: every
    /// message published after it is delivered.
    pub async fn subscribe(
        &self,
        queue: &str,
        event: &str,
    ) -> Result<Subscription, SubscribeError> {
        let filter = TopicFilter::parse(&format!("{queue}/{event}"))?;
        let (tx, events) = mpsc::channel(self.inner.config.buffer.max(1));
        let sink = Sink {
            id: rand::random(),
            events: tx,
        };
        // Which consumer gets which filter.
        let mut plan: Vec<(usize, TopicFilter)> = Vec::new();
        match &filter {
            TopicFilter::Exact(topic) => plan.push((self.owner(topic), filter.clone())),
            TopicFilter::AllEvents(_) if self.inner.config.consumers.len() == 1 => {
                plan.push((0, filter.clone()))
            }
            TopicFilter::AllEvents(_) => {
                let queues = self
                    .inner
                    .config
                    .queues
                    .as_ref()
                    .ok_or(SubscribeError::WildcardNeedsQueues)?;
                for topic in queues.expand(&filter)? {
                    plan.push((self.owner(&topic), TopicFilter::Exact(topic)));
                }
            }
        }
        let mut topics = Vec::new();
        for (index, filter) in plan {
            let handle = self.conn(index).await?;
            let (reply, answer) = oneshot::channel();
            let command = Command::Subscribe {
                filter,
                sink: sink.clone(),
                reply,
            };
            let positions = self.ask(&handle, command, answer).await??;
            topics.extend(positions.into_iter().map(|p| p.topic));
        }
        Ok(Subscription { topics, events })
    }

    /// Ends the subscription(s) to `queue/event` (or `queue/*`).
    pub async fn unsubscribe(&self, queue: &str, event: &str) -> Result<(), SubscribeError> {
        let filter = TopicFilter::parse(&format!("{queue}/{event}"))?;
        let targets: Vec<(usize, TopicFilter)> = match &filter {
            TopicFilter::Exact(topic) => vec![(self.owner(topic), filter.clone())],
            TopicFilter::AllEvents(queue) => {
                let live = lock(&self.inner.live);
                live.keys()
                    .filter(|topic| topic.queue() == queue)
                    .map(|topic| (self.owner(topic), TopicFilter::Exact(topic.clone())))
                    .collect()
            }
        };
        for (index, filter) in targets {
            let handle = self.conn(index).await?;
            let (reply, answer) = oneshot::channel();
            self.ask(&handle, Command::Unsubscribe { filter, reply }, answer)
                .await??;
        }
        Ok(())
    }

    /// The topics subscribed and live now.
    pub fn subscriptions(&self) -> Vec<Topic> {
        lock(&self.inner.live).keys().cloned().collect()
    }

    /// Calls `handler` with every message of `queue/event` (gaps are
    /// logged), in a task of its own; abort the returned handle to stop.
    pub async fn on<F>(
        &self,
        queue: &str,
        event: &str,
        mut handler: F,
    ) -> Result<tokio::task::JoinHandle<()>, SubscribeError>
    where
        F: FnMut(Message) + Send + 'static,
    {
        let mut subscription = self.subscribe(queue, event).await?;
        Ok(tokio::spawn(async move {
            while let Some(message) = subscription.next_message().await {
                handler(message);
            }
        }))
    }

    async fn ask<T>(
        &self,
        handle: &ConnHandle,
        command: Command,
        answer: oneshot::Receiver<Result<T, SubscribeError>>,
    ) -> Result<Result<T, SubscribeError>, SubscribeError> {
        let timeout = self.inner.config.answer_timeout;
        tokio::time::timeout(timeout, async {
            handle
                .commands
                .send(command)
                .await
                .map_err(|_| SubscribeError::Closed)?;
            answer.await.map_err(|_| SubscribeError::Closed)
        })
        .await
        .unwrap_or(Err(SubscribeError::Timeout(timeout)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One topic subscribed on a connection.
struct TopicSub {
    sink: Sink,
    /// The last position delivered (or the subscription's start).
    last: Position,
}

/// A request sent, waiting for its answer.
enum Waiting {
    Subscribe {
        sink: Sink,
        reply: oneshot::Sender<Result<Vec<TopicPosition>, SubscribeError>>,
    },
    Unsubscribe {
        topics: Vec<Topic>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    /// A resubscription after a reconnect: the previous position, to report a gap.
    Resume { after: Position },
}

/// The task behind one consumer connection.
struct Conn {
    /// Where it reconnects: its own consumer first, then the others (any
    /// consumer serves any topic, so a consumer that is gone for good, e.g.
    /// removed from the node list, does not strand its subscriptions).
    urls: Vec<String>,
    config: SubscriberConfig,
    topics: HashMap<Topic, TopicSub>,
    live: Arc<Mutex<BTreeMap<Topic, u64>>>,
}

impl Conn {
    async fn run(mut self, mut socket: WsStream, mut inbox: mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(100);
        // Index into `urls` of the consumer connected to.
        let mut current = 0;
        loop {
            match self.serve(&mut socket, &mut inbox).await {
                Ok(()) => {
                    tracing::warn!(url = %self.urls[current], "subscriber connection lost; reconnecting")
                }
                Err(()) => return,
            }
            // Two attempts at the same consumer (a restart), then the next.
            let mut attempts = 0;
            socket = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                let config = &self.config;
                let url = &self.urls[current];
                match connection::connect(
                    url,
                    &config.psk,
                    config.name.as_deref(),
                    config.connect_timeout,
                )
                .await
                {
                    Ok(conn) => {
                        backoff = Duration::from_millis(100);
                        break conn.socket;
                    }
                    Err(error) => {
                        attempts += 1;
                        if attempts % 2 == 0 {
                            current = (current + 1) % self.urls.len();
                        }
                        tracing::warn!(%error, next = %self.urls[current], "consumer unreachable; retrying");
                    }
                }
            };
        }
    }

    /// Serves one connection: resubscribes what was live, then takes
    /// commands and frames until the socket breaks (`Ok`) or every handle
    /// is gone (`Err`).
    async fn serve(
        &mut self,
        socket: &mut WsStream,
        inbox: &mut mpsc::Receiver<Command>,
    ) -> Result<(), ()> {
        let mut waiting: HashMap<u64, Waiting> = HashMap::new();
        let mut next_id = 1u64;
        // Resume every topic from the last position delivered.
        let resumes: Vec<(Topic, Position)> = self
            .topics
            .iter()
            .map(|(t, s)| (t.clone(), s.last))
            .collect();
        for (topic, after) in resumes {
            let id = next_id;
            next_id += 1;
            let frame = Frame::Subscribe(Subscribe {
                id,
                topic: TopicFilter::Exact(topic),
                since: Some(after),
            });
            if socket.feed(WsMessage::text(frame.encode())).await.is_err() {
                return Ok(());
            }
            waiting.insert(id, Waiting::Resume { after });
        }
        if socket.flush().await.is_err() {
            return Ok(());
        }
        loop {
            tokio::select! {
                command = inbox.recv() => {
                    let Some(command) = command else { return Err(()) };
                    let id = next_id;
                    next_id += 1;
                    let (frame, wait) = match command {
                        Command::Subscribe { filter, sink, reply } => (
                            Frame::Subscribe(Subscribe { id, topic: filter, since: None }),
                            Waiting::Subscribe { sink, reply },
                        ),
                        Command::Unsubscribe { filter, reply } => {
                            let topics = match &filter {
                                TopicFilter::Exact(topic) => vec![topic.clone()],
                                TopicFilter::AllEvents(queue) => self
                                    .topics
                                    .keys()
                                    .filter(|t| t.queue() == queue)
                                    .cloned()
                                    .collect(),
                            };
                            (
                                Frame::Unsubscribe(Unsubscribe { id, topic: filter }),
                                Waiting::Unsubscribe { topics, reply },
                            )
                        }
                    };
                    if socket.send(WsMessage::text(frame.encode())).await.is_err() {
                        fail(wait);
                        return Ok(());
                    }
                    waiting.insert(id, wait);
                }
                incoming = socket.next() => {
                    let text = match incoming {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                            waiting.into_values().for_each(fail);
                            return Ok(());
                        }
                        Some(Ok(_)) => continue,
                    };
                    let frame = Frame::decode_str(text.as_str(), usize::MAX);
                    if let Ok(Frame::Message(message)) = frame {
                        if self.deliver(message, socket).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    match frame {
                        Ok(Frame::Ack(ack)) => {
                            if let Some(wait) = waiting.remove(&ack.id) {
                                self.acked(wait, ack.topics.unwrap_or_default(), ack.recovered).await;
                            }
                        }
                        Ok(Frame::Error(error)) => {
                            let refusal = SubscribeError::Refused { code: error.code.clone(), message: error.message.clone() };
                            match error.id.and_then(|id| waiting.remove(&id)) {
                                Some(Waiting::Subscribe { reply, .. }) => { let _ = reply.send(Err(refusal)); }
                                Some(Waiting::Unsubscribe { reply, .. }) => { let _ = reply.send(Err(refusal)); }
                                Some(Waiting::Resume { .. }) | None => {
                                    tracing::warn!(code = %error.code, message = %error.message, "consumer reported an error");
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    async fn acked(
        &mut self,
        wait: Waiting,
        positions: Vec<TopicPosition>,
        recovered: Option<bool>,
    ) {
        match wait {
            Waiting::Subscribe { sink, reply } => {
                for position in &positions {
                    self.register(position, sink.clone());
                }
                let _ = reply.send(Ok(positions));
            }
            Waiting::Unsubscribe { topics, reply } => {
                for topic in topics {
                    self.topics.remove(&topic);
                    lock(&self.live).remove(&topic);
                }
                let _ = reply.send(Ok(()));
            }
            Waiting::Resume { after } => {
                for position in positions {
                    let Some(sub) = self.topics.get(&position.topic) else {
                        continue;
                    };
                    if recovered != Some(true) {
                        let gap = Gap {
                            topic: position.topic.clone(),
                            after,
                            epoch: position.epoch,
                        };
                        tracing::warn!(topic = %gap.topic, "resume could not recover every message");
                        let _ = sub.sink.events.send(Event::Gap(gap)).await;
                    }
                }
            }
        }
    }

    fn register(&mut self, position: &TopicPosition, sink: Sink) {
        let start = Position {
            epoch: position.epoch,
            offset: position.offset,
        };
        lock(&self.live).insert(position.topic.clone(), sink.id);
        self.topics
            .insert(position.topic.clone(), TopicSub { sink, last: start });
    }

    /// Hands a message to its subscription, dropping duplicates by
    /// `(epoch, offset)`; a subscription whose stream was dropped is
    /// unsubscribed.
    async fn deliver(
        &mut self,
        message: shardq_protocol::Message,
        socket: &mut WsStream,
    ) -> Result<(), ()> {
        let Some(sub) = self.topics.get_mut(&message.topic) else {
            return Ok(());
        };
        if message.epoch == sub.last.epoch && message.offset <= sub.last.offset {
            return Ok(());
        }
        sub.last = message.position();
        let event = Event::Message(Message {
            topic: message.topic.clone(),
            epoch: message.epoch,
            offset: message.offset,
            payload: message.payload,
        });
        if sub.sink.events.send(event).await.is_err() {
            // The application dropped the stream: stop the subscription.
            self.topics.remove(&message.topic);
            lock(&self.live).remove(&message.topic);
            let frame = Frame::Unsubscribe(Unsubscribe {
                id: 0,
                topic: TopicFilter::Exact(message.topic),
            });
            socket
                .send(WsMessage::text(frame.encode()))
                .await
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

fn fail(wait: Waiting) {
    match wait {
        Waiting::Subscribe { reply, .. } => {
            let _ = reply.send(Err(SubscribeError::Connect(ConnectError::Closed {
                url: String::new(),
                code: None,
            })));
        }
        Waiting::Unsubscribe { reply, .. } => {
            let _ = reply.send(Err(SubscribeError::Connect(ConnectError::Closed {
                url: String::new(),
                code: None,
            })));
        }
        Waiting::Resume { .. } => {}
    }
}
