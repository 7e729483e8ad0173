//! What a queue-group membership yields: the [`Work`] stream of [`Job`]s,
//! and each job's [`ack`](Job::ack), which reaches the membership's
//! connection task (`member`) as an [`AckRequest`].
//!
//! Every connection the membership opens is an *incarnation*, counted from
//! 0; a job carries the incarnation it came on. Once that connection is
//! lost the owner redelivers the job, so the job is stale: [`Work`] skips
//! the stale jobs it still holds, and a stale job's ack is answered
//! [`AckError::ConnectionLost`] without being sent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use shardq_protocol::{Position, RawValue, Topic};
use tokio::sync::{mpsc, oneshot};

use super::conn::TaskGuard;
use crate::error::AckError;

/// One message of a queue group, delivered to this member to handle and
/// [`ack`](Job::ack).
#[derive(Debug, Clone)]
pub struct Job {
    /// The topic.
    pub topic: Topic,
    /// The group it was delivered in.
    pub group: String,
    /// The topic's epoch at its owner.
    pub epoch: u64,
    /// The message's offset in that epoch.
    pub offset: u64,
    /// How many times it was delivered before (0 on its first delivery).
    pub redelivered: u32,
    /// The payload, byte for byte as published.
    pub payload: Box<RawValue>,
    acker: Acker,
}

/// How a job reaches the connection it came on.
#[derive(Debug, Clone)]
pub(super) struct Acker {
    /// The membership's connection task.
    pub(super) requests: mpsc::Sender<AckRequest>,
    /// The connection (incarnation) the job came on.
    pub(super) incarnation: u64,
    /// The membership's connection now.
    pub(super) current: Arc<AtomicU64>,
    /// Time an ack waits for its answer.
    pub(super) timeout: Duration,
}

impl Acker {
    /// Whether the job's connection is still the membership's.
    fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire) == self.incarnation
    }
}

/// A job's ack, on its way to the connection task.
#[derive(Debug)]
pub(super) struct AckRequest {
    /// The connection the job came on.
    pub(super) incarnation: u64,
    /// The job.
    pub(super) position: Position,
    /// The answer.
    pub(super) reply: oneshot::Sender<Result<(), AckError>>,
}

impl Job {
    /// A job from a member's `message` frame.
    pub(super) fn new(message: shardq_protocol::Message, group: &str, acker: Acker) -> Job {
        Job {
            topic: message.topic,
            group: message.group.unwrap_or_else(|| group.to_owned()),
            epoch: message.epoch,
            offset: message.offset,
            redelivered: message.redelivered.unwrap_or(0),
            payload: message.payload,
            acker,
        }
    }

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

    /// Tells the owner the job was handled (`ack_message`), so it is not
    /// delivered again. `Ok` once the owner took it.
    ///
    /// A job whose connection was lost meanwhile is not acked (the owner
    /// delivers it again): [`AckError::ConnectionLost`], without sending
    /// anything. An ack after the job's ack timeout, or a second ack, is
    /// [`AckError::NotInFlight`].
    pub async fn ack(&self) -> Result<(), AckError> {
        if !self.acker.is_current() {
            return Err(AckError::ConnectionLost);
        }
        let (reply, answer) = oneshot::channel();
        let request = AckRequest {
            incarnation: self.acker.incarnation,
            position: self.position(),
            reply,
        };
        let timeout = self.acker.timeout;
        tokio::time::timeout(timeout, async {
            self.acker
                .requests
                .send(request)
                .await
                .map_err(|_| AckError::Closed)?;
            answer.await.map_err(|_| AckError::Closed)?
        })
        .await
        .unwrap_or(Err(AckError::Timeout(timeout)))
    }
}

/// A membership in a queue group, from
/// [`Subscriber::join`](super::Subscriber::join): the [`Job`]s the topic's
/// owner hands this member, as a `Stream`.
///
/// It has a connection of its own to the owner. When that connection
/// breaks, the member rejoins by itself (the owner first, then the other
/// consumers, which send it back with `not_owner` until the owner takes
/// it); the owner delivers the lost connection's unacked jobs again, to
/// the group's members, this one included once it is back. The jobs of the
/// lost connection are stale: those not taken yet are skipped, and the
/// ack of one already taken is [`AckError::ConnectionLost`] (never sent on
/// the new connection, where the owner would not know it). A job may so be
/// handled twice: a group delivers at least once.
///
/// Dropping it leaves the group: the owner delivers its unacked jobs to the
/// other members. The stream ends (`None`) only if a rejoin is refused for
/// good (`not_authorized`, `unknown_event`, …; logged).
pub struct Work {
    pub(super) topic: Topic,
    pub(super) group: String,
    pub(super) jobs: mpsc::UnboundedReceiver<Job>,
    pub(super) current: Arc<AtomicU64>,
    pub(super) _task: TaskGuard,
}

impl Work {
    /// The next job; `None` when the membership ended. Cancel-safe: a
    /// `next` dropped before it returns loses no job.
    pub async fn next(&mut self) -> Option<Job> {
        loop {
            let job = self.jobs.recv().await?;
            if self.fresh(&job) {
                return Some(job);
            }
        }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How many times the member rejoined after losing its connection.
    pub fn rejoins(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Whether `job` came on the connection in use: a stale one is
    /// dropped (the owner delivers it again).
    fn fresh(&self, job: &Job) -> bool {
        let fresh = job.acker.is_current();
        if !fresh {
            tracing::debug!(topic = %job.topic, offset = job.offset, "a job of a lost connection skipped; the owner delivers it again");
        }
        fresh
    }
}

impl futures_util::Stream for Work {
    type Item = Job;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Job>> {
        loop {
            match self.jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) if !self.fresh(&job) => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn job(
        incarnation: u64,
        current: &Arc<AtomicU64>,
        offset: u64,
    ) -> (Job, mpsc::Receiver<AckRequest>) {
        let (requests, inbox) = mpsc::channel(4);
        let message = shardq_protocol::Message {
            topic: Topic::new("database", "create").unwrap(),
            epoch: 7,
            offset,
            group: Some("billing".into()),
            redelivered: None,
            payload: RawValue::from_string(r#"{"id":1}"#.into()).unwrap(),
        };
        let acker = Acker {
            requests,
            incarnation,
            current: current.clone(),
            timeout: Duration::from_secs(5),
        };
        (Job::new(message, "billing", acker), inbox)
    }

    fn work(current: &Arc<AtomicU64>) -> (Work, mpsc::UnboundedSender<Job>) {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let work = Work {
            topic: Topic::new("database", "create").unwrap(),
            group: "billing".into(),
            jobs: receiver,
            current: current.clone(),
            _task: TaskGuard(tokio::spawn(async {})),
        };
        (work, jobs)
    }

    #[test]
    fn a_job_counts_its_earlier_deliveries_from_zero() {
        let current = Arc::new(AtomicU64::new(0));
        let (job, _inbox) = job(0, &current, 3);
        assert_eq!(job.redelivered, 0);
        assert_eq!(job.group, "billing");
        assert_eq!(
            job.position(),
            Position {
                epoch: 7,
                offset: 3
            }
        );
        assert_eq!(job.json::<serde_json::Value>().unwrap()["id"], 1);
        let mut frame = shardq_protocol::Message {
            topic: job.topic.clone(),
            epoch: 7,
            offset: 3,
            group: Some("billing".into()),
            redelivered: Some(2),
            payload: job.payload.clone(),
        };
        frame.group = None;
        let again = Job::new(frame, "fallback", job.acker.clone());
        assert_eq!((again.redelivered, again.group.as_str()), (2, "fallback"));
    }

    #[tokio::test]
    async fn an_ack_goes_to_the_task_and_returns_its_answer() {
        let current = Arc::new(AtomicU64::new(1));
        let (job, mut inbox) = job(1, &current, 9);
        let task = tokio::spawn(async move {
            let request = inbox.recv().await.unwrap();
            assert_eq!(request.incarnation, 1);
            assert_eq!(
                request.position,
                Position {
                    epoch: 7,
                    offset: 9
                }
            );
            request
                .reply
                .send(Err(AckError::NotInFlight {
                    message: "acked already".into(),
                }))
                .unwrap();
            let request = inbox.recv().await.unwrap();
            request.reply.send(Ok(())).unwrap();
        });
        let refused = job.ack().await.unwrap_err();
        assert!(matches!(refused, AckError::NotInFlight { .. }), "{refused}");
        assert_eq!(refused.code().map(|c| c.as_str()), Some("not_in_flight"));
        job.ack().await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_job_of_a_lost_connection_is_not_acked_and_not_handed_out() {
        let current = Arc::new(AtomicU64::new(0));
        let (old, mut inbox) = job(0, &current, 1);
        let (work, jobs) = work(&current);
        let mut work = work;
        jobs.send(old.clone()).unwrap();
        // The connection breaks: the member rejoins on incarnation 1.
        current.store(1, Ordering::Release);
        let (new, _new_inbox) = job(1, &current, 2);
        jobs.send(new).unwrap();
        assert!(matches!(old.ack().await, Err(AckError::ConnectionLost)));
        assert!(inbox.try_recv().is_err(), "a stale ack was sent");
        assert_eq!(
            work.next().await.unwrap().offset,
            2,
            "the stale job was skipped"
        );
        assert_eq!(work.rejoins(), 1);
        drop(jobs);
        assert!(work.next().await.is_none());
    }

    #[tokio::test]
    async fn an_ack_after_the_work_is_gone_is_closed() {
        let current = Arc::new(AtomicU64::new(0));
        let (job, inbox) = job(0, &current, 1);
        drop(inbox);
        assert!(matches!(job.ack().await, Err(AckError::Closed)));
    }
}
