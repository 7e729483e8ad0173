//! [`Subscriber`]: subscriptions as streams of messages, routed to each
//! topic's owner, resumed after any disconnect from the last position seen.
//!
//! This module owns the [`Subscriber`] handle: its API, which consumer
//! each topic goes to, and the connections opened so far. One task per
//! consumer connection owns its socket (`conn`); subscribe and unsubscribe
//! reach it through a bounded channel and are answered through a oneshot.
//! Messages go to each subscription's bounded channel (`events`): an
//! application that stops reading slows its connection (and may be cut as
//! a slow consumer, then resumes from the consumer's history).
//!
//! Queue-group memberships ([`Subscriber::join`]) are not subscriptions:
//! each has a connection of its own to the topic's owner (`member`).
//!
//! - `config`: [`SubscriberConfig`], [`ConsumerAddress`].
//! - `events`: [`Message`], [`Gap`], [`Event`], the [`Subscription`] stream.
//! - `conn`: the per-consumer connection task, its reconnect and resume.
//! - `work`: [`Work`], the stream of a membership's [`Job`]s, and their acks.
//! - `member`: a membership's connection task, its join and rejoin.

mod config;
mod conn;
mod events;
mod member;
mod work;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shardq_protocol::frame::is_valid_key;
use shardq_protocol::{Router, Topic, TopicFilter};
use tokio::sync::{mpsc, oneshot};

pub use self::config::{ConsumerAddress, SubscriberConfig};
pub use self::events::{Event, Gap, Message, Subscription};
pub use self::work::{Job, Work};

use self::conn::{Command, ConnHandle, Sink};
use crate::connection::{self, ConnectError};
use crate::error::SubscribeError;
use crate::publisher::with_path;

/// The topics live now, each with the id of the subscription it feeds;
/// shared by the handle and every connection task.
type Live = Arc<Mutex<BTreeMap<Topic, u64>>>;

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
///         Event::Stalled { owner, .. } => eprintln!("waiting for {owner}"),
///         Event::Resumed { .. } => eprintln!("flowing again"),
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
    live: Live,
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
        let first =
            connection::connect(&url, &config.connect_options(), config.connect_timeout).await?;
        // Its own consumer first, then the others in list order.
        let urls = (0..config.consumers.len())
            .map(|offset| {
                config.consumers[(index + offset) % config.consumers.len()]
                    .url
                    .clone()
            })
            .collect();
        let handle = ConnHandle::spawn(first.socket, urls, config.clone(), self.inner.live.clone());
        let mut conns = lock(&self.inner.conns);
        // Another caller may have connected meanwhile: keep the first.
        Ok(conns[index].get_or_insert(handle).clone())
    }

    fn owner(&self, topic: &Topic) -> usize {
        // The cluster routes a tenant's topics by their key.
        let key = topic.in_tenant(self.inner.config.tenant.as_deref());
        self.inner.router.owner(&key).unwrap_or(0)
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

    /// Joins queue group `group` of `queue/event` (section 15 of
    /// docs/PROTOCOL.md): the topic's owner hands each of its messages to
    /// one member of the group, which [`ack`](Job::ack)s it. The
    /// membership is live when this returns: it gets its share of every
    /// message sequenced from then on, and of the group's backlog.
    ///
    /// The join goes to the topic's owner on a connection of its own (so a
    /// process may hold several members of a group, and a plain
    /// subscription of the same topic); a consumer that is not the owner
    /// answers `not_owner`, and the next one is tried. After a disconnect
    /// the member rejoins by itself; what happens to the jobs of the lost
    /// connection is told at [`Work`]. Drop the [`Work`] to leave.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(subscriber: shardq::Subscriber) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut work = subscriber.join("database", "create", "billing").await?;
    /// while let Some(job) = work.next().await {
    ///     println!("bill {} (delivered {} times before)", job.payload, job.redelivered);
    ///     job.ack().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join(
        &self,
        queue: &str,
        event: &str,
        group: &str,
    ) -> Result<Work, SubscribeError> {
        let (topic, urls) = self.membership_plan(queue, event, group)?;
        let spec = member::Spec {
            topic,
            group: group.to_owned(),
            urls,
            config: self.inner.config.clone(),
        };
        member::join(spec).await
    }

    /// Checks a join's topic and group; the consumers to join at, the
    /// topic's owner first.
    fn membership_plan(
        &self,
        queue: &str,
        event: &str,
        group: &str,
    ) -> Result<(Topic, Vec<String>), SubscribeError> {
        let topic = match TopicFilter::parse(&format!("{queue}/{event}"))? {
            TopicFilter::Exact(topic) => topic,
            TopicFilter::AllEvents(_) => {
                return Err(SubscribeError::GroupNeedsExactTopic(format!(
                    "{queue}/{event}"
                )));
            }
        };
        if !is_valid_key(group) {
            return Err(SubscribeError::InvalidGroup(group.to_owned()));
        }
        let consumers = &self.inner.config.consumers;
        let owner = self.owner(&topic);
        let urls = (0..consumers.len())
            .map(|offset| consumers[(owner + offset) % consumers.len()].url.clone())
            .collect();
        Ok((topic, urls))
    }

    /// The topics subscribed and live now (queue-group memberships are
    /// not subscriptions: see [`Work`]).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use shardq_protocol::Psk;

    /// A subscriber that has connected to nothing, over `ids`.
    fn offline(ids: &[&str]) -> Subscriber {
        let psk = Psk::new("0123456789abcdef0123").unwrap();
        let consumers = ids
            .iter()
            .map(|id| ConsumerAddress {
                id: (*id).to_owned(),
                url: format!("ws://{id}/v1/subscribe"),
            })
            .collect();
        let config = SubscriberConfig {
            consumers,
            ..SubscriberConfig::new(String::new(), psk)
        };
        Subscriber {
            inner: Arc::new(Inner {
                conns: Mutex::new(vec![None; ids.len()]),
                router: Router::new(ids),
                config,
                live: Arc::new(Mutex::new(BTreeMap::new())),
            }),
        }
    }

    #[test]
    fn a_join_goes_to_the_owner_first_then_every_other_consumer() {
        let ids = ["consumer-0", "consumer-1", "consumer-2"];
        let subscriber = offline(&ids);
        let topic = Topic::new("database", "create").unwrap();
        let owner = Router::new(&ids).owner_id(&topic).unwrap().to_owned();
        let (planned, urls) = subscriber
            .membership_plan("database", "create", "billing")
            .unwrap();
        assert_eq!(planned, topic);
        assert_eq!(urls.len(), 3);
        assert_eq!(urls[0], format!("ws://{owner}/v1/subscribe"));
        let mut sorted = urls.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "{urls:?}");
    }

    #[test]
    fn a_join_needs_an_exact_topic_and_a_valid_group() {
        let subscriber = offline(&["c"]);
        let wildcard = subscriber
            .membership_plan("database", "*", "billing")
            .unwrap_err();
        assert!(
            matches!(wildcard, SubscribeError::GroupNeedsExactTopic(ref t) if t == "database/*"),
            "{wildcard}"
        );
        for group in ["", "bill ing", &"g".repeat(65)] {
            let error = subscriber
                .membership_plan("database", "create", group)
                .unwrap_err();
            assert!(matches!(error, SubscribeError::InvalidGroup(_)), "{error}");
            assert!(error.to_string().contains("1-64 characters"), "{error}");
        }
        assert!(matches!(
            subscriber.membership_plan("data base", "create", "g"),
            Err(SubscribeError::InvalidTopic(_))
        ));
        subscriber
            .membership_plan("database", "create", "billing.v2:eu-1_x")
            .unwrap();
    }
}
