//! [`Publisher`]: publish to any producer of a list, each publish answered
//! by an [`Ack`] (the owner's position for the message) or a typed error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use shardq_protocol::frame::{encode_publish_into, is_valid_key};
use shardq_protocol::{ClusterConfig, ErrorCode, Frame, Psk, RawValue, Topic};

use crate::tls::Tls;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::connection::{self, ConnectError, WsStream};
use crate::error::PublishError;

/// Where and how a [`Publisher`] connects.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Producer URLs (`ws://host:port`; `/v1/publish` is added when no path
    /// is given), tried in order; the next one is used when one fails.
    pub urls: Vec<String>,
    /// The key proved in the handshake: the cluster's psk, or the secret
    /// of the `[[clients]]` entry named in [`client`](Self::client).
    pub psk: Psk,
    /// The `[[clients]]` name `psk` belongs to; `None` for the psk.
    pub client: Option<String>,
    /// A signed token to present instead of proving `psk` (accepted over
    /// TLS only, unless the cluster allows plaintext tokens).
    pub token: Option<String>,
    /// The CA `wss://` nodes are checked against (`None`: `wss://` URLs
    /// are refused).
    pub tls: Option<Tls>,
    /// A name for the producers' logs.
    pub name: Option<String>,
    /// Time allowed to connect and authenticate. Default 5 s.
    pub connect_timeout: Duration,
    /// Time a publish may take in all, retries included. Default 10 s.
    pub answer_timeout: Duration,
    /// Retry a publish the cluster did not take (`unavailable`,
    /// `outcome_unknown`, `shutting_down`, a broken connection) with the
    /// same idempotency key until `answer_timeout`: the owner answers a
    /// retry of a publish it already sequenced with the first position, so
    /// a publish is delivered at most once. Default true.
    pub retry: bool,
}

impl PublisherConfig {
    /// How its connections authenticate.
    pub(crate) fn connect_options(&self) -> crate::connection::ConnectOptions<'_> {
        crate::connection::ConnectOptions {
            psk: &self.psk,
            client: self.client.as_deref(),
            token: self.token.as_deref(),
            name: self.name.as_deref(),
            tls: self.tls.as_ref(),
        }
    }

    /// A configuration for these producer URLs.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>, psk: Psk) -> PublisherConfig {
        PublisherConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            psk,
            client: None,
            token: None,
            tls: None,
            name: None,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
            retry: true,
        }
    }

    /// Every producer of a cluster file.
    pub fn from_cluster(cluster: &ClusterConfig, psk: Psk) -> PublisherConfig {
        PublisherConfig::new(cluster.producers.iter().map(|entry| entry.url.clone()), psk)
    }
}

/// What a producer answered for a published message: where the topic's
/// owner sequenced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The topic.
    pub topic: Topic,
    /// The topic's epoch at its owner.
    pub epoch: u64,
    /// The message's offset in that epoch.
    pub offset: u64,
}

struct Request {
    topic: Topic,
    key: Arc<str>,
    payload: Arc<RawValue>,
    reply: oneshot::Sender<Result<Ack, PublishError>>,
}

/// First pause before a publish is retried; it doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_millis(50);
/// Longest pause between retries of a publish.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A fresh idempotency key: 32 random hex digits.
fn new_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether a retry with the same key could turn `error` into an ack.
fn retryable(error: &PublishError) -> bool {
    match error {
        PublishError::Refused { code, .. } => matches!(
            code,
            ErrorCode::Unavailable | ErrorCode::OutcomeUnknown | ErrorCode::ShuttingDown
        ),
        PublishError::Disconnected => true,
        _ => false,
    }
}

/// Whether the publish may have been sequenced although `error` came back.
fn maybe_sequenced(error: &PublishError) -> bool {
    match error {
        PublishError::Refused { code, .. } => *code == ErrorCode::OutcomeUnknown,
        PublishError::Disconnected | PublishError::Timeout(_) => true,
        _ => false,
    }
}

/// Publishes to a shardq cluster through any of its producers. Cheap to
/// clone; clones share one connection, and their publishes are pipelined.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use shardq::{Publisher, PublisherConfig};
/// use shardq::protocol::Psk;
///
/// let psk = Psk::new(std::env::var("SHARDQ_PSK")?)?;
/// let publisher = Publisher::connect(PublisherConfig::new(["ws://127.0.0.1:7000"], psk)).await?;
/// let ack = publisher
///     .publish("database", "create", &serde_json::json!({"id": 99, "name": "John"}))
///     .await?;
/// println!("database/create got offset {} in epoch {}", ack.offset, ack.epoch);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    requests: mpsc::Sender<Request>,
    answer_timeout: Duration,
    retry: bool,
    _task: Arc<TaskGuard>,
}

/// Aborts the connection task when the last handle is dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `url` with `path` appended when it has none.
pub(crate) fn with_path(url: &str, path: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        Some(at) if rest[at..].len() > 1 => url.to_owned(),
        _ => format!("{}{path}", url.trim_end_matches('/')),
    }
}

impl Publisher {
    /// Connects to the first reachable producer of the list.
    pub async fn connect(config: PublisherConfig) -> Result<Publisher, ConnectError> {
        let urls: Vec<String> = config
            .urls
            .iter()
            .map(|url| with_path(url, "/v1/publish"))
            .collect();
        let (socket, next) = connect_any(&urls, &config, 0).await?;
        let (requests, inbox) = mpsc::channel(1024);
        let task = tokio::spawn(run(socket, next, urls, config.clone(), inbox));
        Ok(Publisher {
            requests,
            answer_timeout: config.answer_timeout,
            retry: config.retry,
            _task: Arc::new(TaskGuard(task)),
        })
    }

    /// Publishes `payload` (serialized as JSON) to `queue/event` and waits
    /// for the owner's ack: the `Result` is the success or error callback.
    /// The publish carries a fresh idempotency key and is retried with it
    /// (see [`PublisherConfig::retry`]): delivered at most once.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        event: &str,
        payload: &T,
    ) -> Result<Ack, PublishError> {
        let json = serde_json::to_string(payload).map_err(PublishError::InvalidPayload)?;
        let payload = RawValue::from_string(json).map_err(PublishError::InvalidPayload)?;
        self.send(Topic::new(queue, event)?, None, payload).await
    }

    /// Publishes pre-encoded JSON (checked, then sent byte for byte).
    pub async fn publish_raw(
        &self,
        queue: &str,
        event: &str,
        json: &str,
    ) -> Result<Ack, PublishError> {
        let payload =
            RawValue::from_string(json.to_owned()).map_err(PublishError::InvalidPayload)?;
        self.send(Topic::new(queue, event)?, None, payload).await
    }

    /// Publishes pre-encoded JSON under the application's own idempotency
    /// key (1–64 characters of `A-Z a-z 0-9 . _ : -`): publishing the same
    /// key to the same topic again within the owner's window (60 s by
    /// default) is answered with the first publish's position, from any
    /// publisher.
    pub async fn publish_raw_with_key(
        &self,
        queue: &str,
        event: &str,
        key: &str,
        json: &str,
    ) -> Result<Ack, PublishError> {
        if !is_valid_key(key) {
            return Err(PublishError::InvalidKey(key.to_owned()));
        }
        let payload =
            RawValue::from_string(json.to_owned()).map_err(PublishError::InvalidPayload)?;
        self.send(Topic::new(queue, event)?, Some(key.to_owned()), payload)
            .await
    }

    async fn send(
        &self,
        topic: Topic,
        key: Option<String>,
        payload: Box<RawValue>,
    ) -> Result<Ack, PublishError> {
        let key: Arc<str> = key.unwrap_or_else(new_key).into();
        let payload: Arc<RawValue> = payload.into();
        let deadline = tokio::time::Instant::now() + self.answer_timeout;
        let mut pause = RETRY_START;
        let mut unsure = false;
        loop {
            let result = self
                .attempt(topic.clone(), key.clone(), payload.clone(), deadline)
                .await;
            let error = match result {
                Ok(ack) => return Ok(ack),
                Err(error) => error,
            };
            unsure |= maybe_sequenced(&error);
            let retry =
                self.retry && retryable(&error) && tokio::time::Instant::now() + pause < deadline;
            if !retry {
                // An earlier attempt may have been sequenced: that is the
                // true answer, whatever the last one said.
                return Err(match error {
                    PublishError::Refused { code, message }
                        if unsure && code != ErrorCode::OutcomeUnknown =>
                    {
                        PublishError::Refused {
                            code: ErrorCode::OutcomeUnknown,
                            message: format!(
                                "an earlier attempt may have been sequenced; the last one said ({code}) {message}"
                            ),
                        }
                    }
                    error => error,
                });
            }
            tracing::debug!(%topic, %error, ?pause, "publish not taken; retrying with the same key");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One attempt, answered by `deadline` at the latest.
    async fn attempt(
        &self,
        topic: Topic,
        key: Arc<str>,
        payload: Arc<RawValue>,
        deadline: tokio::time::Instant,
    ) -> Result<Ack, PublishError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            topic,
            key,
            payload,
            reply,
        };
        let answered = tokio::time::timeout_at(deadline, async {
            self.requests
                .send(request)
                .await
                .map_err(|_| PublishError::Closed)?;
            answer.await.map_err(|_| PublishError::Closed)?
        });
        answered
            .await
            .unwrap_or(Err(PublishError::Timeout(self.answer_timeout)))
    }
}

/// Tries the URLs in turn, starting at `start`; the socket and the index
/// to try next time.
async fn connect_any(
    urls: &[String],
    config: &PublisherConfig,
    start: usize,
) -> Result<(WsStream, usize), ConnectError> {
    let mut last = None;
    for step in 0..urls.len() {
        let index = (start + step) % urls.len();
        match connection::connect(
            &urls[index],
            &config.connect_options(),
            config.connect_timeout,
        )
        .await
        {
            Ok(conn) => return Ok((conn.socket, index + 1)),
            Err(error) if error.is_auth_failure() => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "producer unreachable; trying the next");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or(ConnectError::NotShardq {
        url: String::new(),
        reason: "no producer URL given".into(),
    }))
}

/// The connection task: sends requests, matches answers, reconnects.
async fn run(
    mut socket: WsStream,
    mut next: usize,
    urls: Vec<String>,
    config: PublisherConfig,
    mut inbox: mpsc::Receiver<Request>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if serve(&mut socket, &mut inbox).await.is_err() {
            return; // every handle is gone
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match connect_any(&urls, &config, next).await {
                Ok((fresh, after)) => {
                    socket = fresh;
                    next = after;
                    backoff = Duration::from_millis(100);
                    break;
                }
                Err(error) => tracing::warn!(%error, "no producer reachable; retrying"),
            }
        }
    }
}

/// Serves one connection until it breaks (`Ok`) or every handle is gone (`Err`).
async fn serve(socket: &mut WsStream, inbox: &mut mpsc::Receiver<Request>) -> Result<(), ()> {
    let mut pending: HashMap<u64, (Topic, oneshot::Sender<Result<Ack, PublishError>>)> =
        HashMap::new();
    let mut next_id = 1u64;
    let mut frame = Vec::new();
    let outcome = loop {
        tokio::select! {
            request = inbox.recv() => {
                let Some(mut request) = request else { break Err(()) };
                // Send what is waiting as one flush.
                loop {
                    let id = next_id;
                    next_id += 1;
                    frame.clear();
                    encode_publish_into(&mut frame, id, request.topic.as_str(), Some(&request.key), false, None, request.payload.get());
                    // Valid UTF-8: JSON text around a JSON payload.
                    let text = String::from_utf8(std::mem::take(&mut frame)).unwrap_or_default();
                    if socket.feed(Message::text(text)).await.is_err() {
                        let _ = request.reply.send(Err(PublishError::Disconnected));
                        break;
                    }
                    pending.insert(id, (request.topic, request.reply));
                    match inbox.try_recv() {
                        Ok(more) => request = more,
                        Err(_) => break,
                    }
                }
                if socket.flush().await.is_err() {
                    break Ok(());
                }
            }
            incoming = socket.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ok(()),
                    Some(Ok(_)) => continue,
                };
                let (id, answer) = match Frame::decode_str(text.as_str(), usize::MAX) {
                    Ok(Frame::Ack(ack)) => match ack.position() {
                        Some(at) => (ack.id, Ok(at)),
                        None => continue,
                    },
                    Ok(Frame::Error(error)) => match error.id {
                        Some(id) => (id, Err(PublishError::Refused { code: error.code, message: error.message })),
                        None => {
                            tracing::warn!(code = %error.code, message = %error.message, "producer reported an error");
                            continue;
                        }
                    },
                    _ => continue,
                };
                if let Some((topic, reply)) = pending.remove(&id) {
                    let _ = reply.send(answer.map(|at| Ack { topic, epoch: at.epoch, offset: at.offset }));
                }
            }
        }
    };
    for (_, (_, reply)) in pending.drain() {
        let _ = reply.send(Err(PublishError::Disconnected));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_paths() {
        assert_eq!(with_path("ws://h:1", "/v1/publish"), "ws://h:1/v1/publish");
        assert_eq!(with_path("ws://h:1/", "/v1/publish"), "ws://h:1/v1/publish");
        assert_eq!(
            with_path("ws://h:1/custom", "/v1/publish"),
            "ws://h:1/custom"
        );
    }
}
