//! The task behind one queue-group membership ([`Work`]): its own
//! connection to the topic's owner, the join (`subscribe` with `group`),
//! the jobs it hands out, the acks it sends (`ack_message`), and after a
//! disconnect the rejoin, on a new incarnation that makes every job of the
//! lost connection stale (see `work`).
//!
//! A membership never shares a connection: a connection holds one
//! subscription per topic, and several members of a group (or a member
//! and a plain subscriber of its topic) may live in one process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardq_protocol::{AckMessage, ErrorCode, ErrorFrame, Frame, Subscribe, Topic, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::SubscriberConfig;
use super::conn::TaskGuard;
use super::work::{AckRequest, Acker, Job, Work};
use crate::connection::{self, ConnectError, WsStream};
use crate::error::{AckError, SubscribeError};

/// The id of the join on every connection; acks count on from it.
const JOIN_ID: u64 = 1;

/// The longest wait between two rounds of rejoin attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a membership is: which group of which topic, and where to join.
pub(super) struct Spec {
    /// The topic.
    pub(super) topic: Topic,
    /// The group.
    pub(super) group: String,
    /// Consumer URLs to join at, in order: the topic's owner (in the
    /// client's view) first, then the others.
    pub(super) urls: Vec<String>,
    /// The subscriber's configuration (credentials, timeouts).
    pub(super) config: SubscriberConfig,
}

/// Why one attempt to join at one consumer failed.
#[derive(Debug)]
enum Failure {
    /// Another consumer, or a later attempt, may take it (unreachable,
    /// `not_owner`, `unavailable`, the connection broke, no answer).
    Elsewhere(SubscribeError),
    /// Refused for good (a wrong psk, `not_authorized`, `unknown_event`, …).
    Final(SubscribeError),
}

impl Failure {
    fn from_connect(error: ConnectError) -> Failure {
        if error.is_auth_failure() {
            Failure::Final(error.into())
        } else {
            Failure::Elsewhere(error.into())
        }
    }

    fn from_refusal(error: ErrorFrame) -> Failure {
        let retry = retry_elsewhere(&error.code);
        let error = SubscribeError::Refused {
            code: error.code,
            message: error.message,
        };
        if retry {
            Failure::Elsewhere(error)
        } else {
            Failure::Final(error)
        }
    }
}

/// Whether a join refused with `code` may succeed at another consumer or
/// later: the node does not own the topic (in its view), cannot serve now,
/// or is stopping.
fn retry_elsewhere(code: &ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotOwner
            | ErrorCode::Unavailable
            | ErrorCode::ShuttingDown
            | ErrorCode::Internal
    )
}

/// The answer to an ack the owner refused.
fn ack_refusal(error: ErrorFrame) -> AckError {
    match error.code {
        ErrorCode::NotInFlight => AckError::NotInFlight {
            message: error.message,
        },
        code => AckError::Refused {
            code,
            message: error.message,
        },
    }
}

/// Joins at `spec.urls[index]`: connects, subscribes with the group and
/// waits for the answer. The owner sends the ack before any message, so
/// nothing is dropped while waiting.
async fn join_at(spec: &Spec, index: usize) -> Result<WsStream, Failure> {
    let config = &spec.config;
    let url = &spec.urls[index];
    let mut socket = connection::connect(url, &config.connect_options(), config.connect_timeout)
        .await
        .map_err(Failure::from_connect)?
        .socket;
    let frame = Frame::Subscribe(Subscribe {
        id: JOIN_ID,
        topic: TopicFilter::Exact(spec.topic.clone()),
        since: None,
        group: Some(spec.group.clone()),
    });
    let broken = || Failure::Elsewhere(SubscribeError::Disconnected);
    socket
        .send(WsMessage::text(frame.encode()))
        .await
        .map_err(|_| broken())?;
    let timeout = config.answer_timeout;
    let answer = tokio::time::timeout(timeout, async {
        loop {
            let text = match socket.next().await {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return Err(broken()),
                Some(Ok(_)) => continue,
            };
            match Frame::decode_str(text.as_str(), usize::MAX).map(Frame::without_tenant) {
                Ok(Frame::Ack(ack)) if ack.id == JOIN_ID => return Ok(()),
                Ok(Frame::Error(error)) if error.id == Some(JOIN_ID) => {
                    return Err(Failure::from_refusal(error));
                }
                _ => continue,
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::Elsewhere(SubscribeError::Timeout(timeout))),
    }
}

/// Joins `spec.group` of `spec.topic`: at its owner, else at each other
/// consumer in turn (one that is not the owner answers `not_owner`), and
/// starts the membership's task.
pub(super) async fn join(spec: Spec) -> Result<Work, SubscribeError> {
    let mut last = None;
    for index in 0..spec.urls.len() {
        match join_at(&spec, index).await {
            Ok(socket) => return Ok(start(spec, socket)),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::Elsewhere(error)) => {
                tracing::debug!(%error, url = %spec.urls[index], "group join failed here; trying the next consumer");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or(SubscribeError::Connect(ConnectError::NoConsumers)))
}

/// Starts the task of a membership joined on `socket`.
fn start(spec: Spec, socket: WsStream) -> Work {
    let (jobs, receiver) = mpsc::unbounded_channel();
    let (requests, inbox) = mpsc::channel(256);
    let current = Arc::new(AtomicU64::new(0));
    let topic = spec.topic.clone();
    let group = spec.group.clone();
    let member = Member {
        spec,
        jobs,
        requests,
        current: current.clone(),
    };
    Work {
        topic,
        group,
        jobs: receiver,
        current,
        _task: TaskGuard(tokio::spawn(member.run(socket, inbox))),
    }
}

/// The task behind one membership.
struct Member {
    spec: Spec,
    /// Where jobs go. Unbounded: the owner bounds what is in flight to a
    /// member (`max_unacked_per_member`), and the task must go on taking
    /// acks while the application is busy.
    jobs: mpsc::UnboundedSender<Job>,
    /// A sender to this task's own inbox, for the jobs' ackers.
    requests: mpsc::Sender<AckRequest>,
    /// The incarnation in use.
    current: Arc<AtomicU64>,
}

/// The application dropped the [`Work`], or a rejoin was refused for good.
struct Ended;

impl Member {
    async fn run(mut self, mut socket: WsStream, mut inbox: mpsc::Receiver<AckRequest>) {
        loop {
            if self.serve(&mut socket, &mut inbox).await.is_err() {
                return;
            }
            // Every job of the lost connection is stale from here on.
            self.current.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(topic = %self.spec.topic, group = %self.spec.group, "group member lost its connection; rejoining");
            match self.rejoin(&mut inbox).await {
                Ok(joined) => socket = joined,
                Err(Ended) => return,
            }
        }
    }

    /// Serves one connection until it breaks (`Ok`) or the work is gone.
    async fn serve(
        &mut self,
        socket: &mut WsStream,
        inbox: &mut mpsc::Receiver<AckRequest>,
    ) -> Result<(), Ended> {
        let incarnation = self.current.load(Ordering::Acquire);
        let mut waiting: HashMap<u64, oneshot::Sender<Result<(), AckError>>> = HashMap::new();
        let mut next_id = JOIN_ID + 1;
        let broke = |waiting: HashMap<u64, oneshot::Sender<_>>| {
            for reply in waiting.into_values() {
                let _ = reply.send(Err(AckError::Disconnected));
            }
            Ok(())
        };
        loop {
            tokio::select! {
                request = inbox.recv() => {
                    let Some(request) = request else { return Err(Ended) };
                    if request.incarnation != incarnation {
                        let _ = request.reply.send(Err(AckError::ConnectionLost));
                        continue;
                    }
                    let id = next_id;
                    next_id += 1;
                    let frame = Frame::AckMessage(AckMessage {
                        id,
                        topic: self.spec.topic.clone(),
                        group: self.spec.group.clone(),
                        epoch: request.position.epoch,
                        offset: request.position.offset,
                    });
                    if socket.send(WsMessage::text(frame.encode())).await.is_err() {
                        let _ = request.reply.send(Err(AckError::Disconnected));
                        return broke(waiting);
                    }
                    waiting.insert(id, request.reply);
                }
                incoming = socket.next() => {
                    let text = match incoming {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return broke(waiting),
                        Some(Ok(_)) => continue,
                    };
                    match Frame::decode_str(text.as_str(), usize::MAX).map(Frame::without_tenant) {
                        Ok(Frame::Message(message)) if message.topic == self.spec.topic => {
                            let acker = Acker {
                                requests: self.requests.clone(),
                                incarnation,
                                current: self.current.clone(),
                                timeout: self.spec.config.answer_timeout,
                            };
                            let job = Job::new(message, &self.spec.group, acker);
                            if self.jobs.send(job).is_err() {
                                return Err(Ended);
                            }
                        }
                        Ok(Frame::Ack(ack)) => {
                            if let Some(reply) = waiting.remove(&ack.id) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        Ok(Frame::Error(error)) => match error.id.and_then(|id| waiting.remove(&id)) {
                            Some(reply) => {
                                let _ = reply.send(Err(ack_refusal(error)));
                            }
                            None => {
                                tracing::warn!(code = %error.code, message = %error.message, "consumer reported an error to a group member");
                            }
                        },
                        _ => {}
                    }
                }
            }
        }
    }

    /// Joins again: a round over every consumer (the owner first), then
    /// a wait that doubles up to [`MAX_BACKOFF`]; acks meanwhile are
    /// answered [`AckError::ConnectionLost`].
    async fn rejoin(&mut self, inbox: &mut mpsc::Receiver<AckRequest>) -> Result<WsStream, Ended> {
        let mut backoff = Duration::from_millis(100);
        loop {
            answering(inbox, tokio::time::sleep(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            for index in 0..self.spec.urls.len() {
                match answering(inbox, join_at(&self.spec, index)).await {
                    Ok(socket) => {
                        tracing::info!(topic = %self.spec.topic, group = %self.spec.group, url = %self.spec.urls[index], "group member rejoined");
                        return Ok(socket);
                    }
                    Err(Failure::Final(error)) => {
                        tracing::error!(%error, topic = %self.spec.topic, group = %self.spec.group, "group member cannot rejoin; its work ends");
                        return Err(Ended);
                    }
                    Err(Failure::Elsewhere(error)) => {
                        tracing::warn!(%error, url = %self.spec.urls[index], "group member could not rejoin here");
                    }
                }
            }
            if self.jobs.is_closed() {
                return Err(Ended);
            }
        }
    }
}

/// Runs `work`, answering every ack that arrives meanwhile as
/// [`AckError::ConnectionLost`] (between connections, every job is stale).
async fn answering<T>(inbox: &mut mpsc::Receiver<AckRequest>, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(request) = inbox.recv() => {
                let _ = request.reply.send(Err(AckError::ConnectionLost));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refusal(code: ErrorCode) -> ErrorFrame {
        ErrorFrame {
            id: Some(JOIN_ID),
            code,
            message: "why".into(),
        }
    }

    #[test]
    fn not_owner_and_transient_refusals_try_elsewhere_the_rest_is_final() {
        for code in [
            ErrorCode::NotOwner,
            ErrorCode::Unavailable,
            ErrorCode::ShuttingDown,
        ] {
            let failure = Failure::from_refusal(refusal(code.clone()));
            assert!(matches!(failure, Failure::Elsewhere(_)), "{code}");
        }
        for code in [
            ErrorCode::NotAuthorized,
            ErrorCode::UnknownEvent,
            ErrorCode::UnknownQueue,
            ErrorCode::BadFrame,
            ErrorCode::AlreadySubscribed,
        ] {
            match Failure::from_refusal(refusal(code.clone())) {
                Failure::Final(error) => assert_eq!(error.code(), Some(&code)),
                other => panic!("{code} retried: {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_ack_is_typed() {
        let not_in_flight = ack_refusal(refusal(ErrorCode::NotInFlight));
        assert!(matches!(not_in_flight, AckError::NotInFlight { ref message } if message == "why"));
        let other = ack_refusal(refusal(ErrorCode::NotSubscribed));
        assert_eq!(other.code(), Some(&ErrorCode::NotSubscribed));
        assert!(other.to_string().contains("not_subscribed"), "{other}");
    }

    #[tokio::test]
    async fn acks_between_connections_are_answered_connection_lost() {
        let (requests, mut inbox) = mpsc::channel(4);
        let (reply, answer) = oneshot::channel();
        requests
            .send(AckRequest {
                incarnation: 0,
                position: shardq_protocol::Position {
                    epoch: 1,
                    offset: 1,
                },
                reply,
            })
            .await
            .unwrap();
        let (release, released) = oneshot::channel::<()>();
        let waiting = tokio::spawn(async move {
            answering(&mut inbox, async move { released.await.unwrap() }).await;
        });
        assert!(matches!(
            answer.await.unwrap(),
            Err(AckError::ConnectionLost)
        ));
        release.send(()).unwrap();
        waiting.await.unwrap();
    }
}
