//! The task behind one consumer connection ([`Conn`]): it owns the socket,
//! sends subscribes and unsubscribes, matches their answers, delivers
//! messages to their subscriptions, and after a disconnect reconnects and
//! resumes every live topic from the last position delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{Frame, Position, Subscribe, Topic, TopicFilter, TopicPosition, Unsubscribe};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::events::{Event, Gap, Message};
use super::{Live, SubscriberConfig, lock};
use crate::connection::{self, WsStream};
use crate::error::SubscribeError;

/// The handle to one connection task; the task stops when the last clone
/// is dropped.
#[derive(Clone)]
pub(super) struct ConnHandle {
    /// Where subscribes and unsubscribes go.
    pub(super) commands: mpsc::Sender<Command>,
    _task: Arc<TaskGuard>,
}

/// Aborts the connection task when dropped.
pub(super) struct TaskGuard(pub(super) tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ConnHandle {
    /// Starts the task for a connection already authenticated on `socket`;
    /// it reconnects to `urls` in order (its own consumer first).
    pub(super) fn spawn(
        socket: WsStream,
        urls: Vec<String>,
        config: SubscriberConfig,
        live: Live,
    ) -> ConnHandle {
        let (commands, inbox) = mpsc::channel(256);
        let task = tokio::spawn(
            Conn {
                urls,
                config,
                topics: HashMap::new(),
                live,
            }
            .run(socket, inbox),
        );
        ConnHandle {
            commands,
            _task: Arc::new(TaskGuard(task)),
        }
    }
}

/// A request from the handle to the connection task.
pub(super) enum Command {
    /// Subscribe `filter`; its messages go to `sink`.
    Subscribe {
        filter: TopicFilter,
        sink: Sink,
        reply: oneshot::Sender<Result<Vec<TopicPosition>, SubscribeError>>,
    },
    /// Unsubscribe `filter`.
    Unsubscribe {
        filter: TopicFilter,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
}

/// Where one subscription's events go.
#[derive(Clone)]
pub(super) struct Sink {
    /// The subscription's id (in the live map).
    pub(super) id: u64,
    /// Its stream's channel.
    pub(super) events: mpsc::Sender<Event>,
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
    live: Live,
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
                match connection::connect(url, &config.connect_options(), config.connect_timeout)
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
                group: None,
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
                            Frame::Subscribe(Subscribe { id, topic: filter, since: None, group: None }),
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
                    let frame = Frame::decode_str(text.as_str(), usize::MAX).map(Frame::without_tenant);
                    if let Ok(Frame::Message(message)) = frame {
                        if self.deliver(message, socket).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    match frame {
                        Ok(Frame::Ack(ack)) => {
                            if let Some(wait) = waiting.remove(&ack.id) {
                                let resume = ack.recovered.map(|recovered| (recovered, ack.replay));
                                self.acked(wait, ack.topics.unwrap_or_default(), resume).await;
                            }
                        }
                        Ok(Frame::Gap(gap)) => {
                            let resume = Position { epoch: gap.epoch, offset: gap.offset };
                            self.gap(gap.topic, gap.after, resume).await;
                        }
                        Ok(Frame::Stalled(stalled)) => {
                            self.notify(&stalled.topic, Event::Stalled { topic: stalled.topic.clone(), owner: stalled.owner }).await;
                        }
                        Ok(Frame::Resumed(resumed)) => {
                            self.notify(&resumed.topic, Event::Resumed { topic: resumed.topic.clone() }).await;
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

    /// `resume`: with `since`, whether it was recovered and where the
    /// replay starts.
    async fn acked(
        &mut self,
        wait: Waiting,
        positions: Vec<TopicPosition>,
        resume: Option<(bool, Option<Position>)>,
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
                    if resume.is_some_and(|(recovered, _)| recovered) {
                        continue;
                    }
                    // What follows goes on from where the replay starts
                    // (from the live position when the node did not say).
                    let from = resume.and_then(|(_, replay)| replay).unwrap_or(Position {
                        epoch: position.epoch,
                        offset: position.offset,
                    });
                    self.gap(position.topic, after, from).await;
                }
            }
        }
    }

    /// Messages of `topic` after `after` may be missing; the stream goes on
    /// after `resume`.
    async fn gap(&mut self, topic: Topic, after: Position, resume: Position) {
        let Some(sub) = self.topics.get_mut(&topic) else {
            return;
        };
        sub.last = resume;
        let gap = Gap {
            topic,
            after,
            epoch: resume.epoch,
            offset: resume.offset,
        };
        tracing::warn!(topic = %gap.topic, ?after, ?resume, "messages may be missing");
        let _ = sub.sink.events.send(Event::Gap(gap)).await;
    }

    /// Hands `event` to `topic`'s subscription.
    async fn notify(&mut self, topic: &Topic, event: Event) {
        if let Some(sub) = self.topics.get(topic) {
            let _ = sub.sink.events.send(event).await;
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

/// Answers a request whose connection broke before its answer came.
fn fail(wait: Waiting) {
    match wait {
        Waiting::Subscribe { reply, .. } => {
            let _ = reply.send(Err(SubscribeError::Disconnected));
        }
        Waiting::Unsubscribe { reply, .. } => {
            let _ = reply.send(Err(SubscribeError::Disconnected));
        }
        Waiting::Resume { .. } => {}
    }
}
