//! Local subscribers: waiting until a topic can answer (an edge's upstream
//! is live), subscribing as one step — ack, replay, then live messages, no
//! gap and no duplicate — and unsubscribing.

use bytes::Bytes;
use shardq_net::codec::encode;
use shardq_net::outbox::{FrameBatch, PushError};
use shardq_protocol::{Ack, Frame, Position, Topic, TopicPosition};

use super::TopicTable;
use super::cell::{ConnId, Mode, Owner, Subscribed, Subscriber};

impl TopicTable {
    /// Waits until every topic's cell can answer a new local subscriber: an
    /// owned topic at once; an edge once its upstream subscription at the
    /// owner is live and the owner's history is mirrored (requested here
    /// when needed). `Err` names what did not come in time.
    pub async fn ready(
        &self,
        topics: &[Topic],
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Ask every upstream first, then wait: the round trips overlap.
        for topic in topics {
            let cell = self.cell(topic);
            let mut state = cell.lock();
            if !state.removed {
                self.sync(&cell, &mut state);
                self.ensure_upstream(&cell, &mut state);
            }
        }
        for topic in topics {
            loop {
                let cell = self.cell(topic);
                let notified = cell.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut state = cell.lock();
                    if state.removed {
                        continue;
                    }
                    self.sync(&cell, &mut state);
                    if state.is_ready() {
                        break;
                    }
                    self.ensure_upstream(&cell, &mut state);
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    let owner = self
                        .view
                        .load()
                        .owner(topic)
                        .map(str::to_owned)
                        .unwrap_or_default();
                    return Err(format!("{topic}: its owner {owner} did not answer in time"));
                }
            }
        }
        Ok(())
    }

    /// Subscribes one connection to `topics` (sorted and distinct) as one
    /// step: with `ack_id`, the ack is queued before any message of any of
    /// the topics, then the replay (`since`, one topic only), then live
    /// messages — no gap, no duplicate.
    pub fn subscribe(
        &self,
        topics: &[Topic],
        subscriber: &Subscriber,
        since: Option<Position>,
        ack_id: Option<u64>,
    ) -> Result<Subscribed, PushError> {
        loop {
            let cells: Vec<_> = topics.iter().map(|topic| self.cell(topic)).collect();
            let mut states: Vec<_> = cells.iter().map(|cell| cell.lock()).collect();
            if states.iter().any(|state| state.removed) {
                continue;
            }
            for (cell, state) in cells.iter().zip(states.iter_mut()) {
                self.sync(cell, state);
                // A cell that lost its upstream meanwhile asks again.
                self.ensure_upstream(cell, state);
            }
            let positions: Vec<_> = cells
                .iter()
                .zip(&states)
                .map(|(cell, state)| TopicPosition {
                    topic: cell.topic.clone(),
                    epoch: state.last.epoch,
                    offset: state.last.offset,
                })
                .collect();
            let mut resume = None;
            let mut replay: Vec<Bytes> = Vec::new();
            if let (Some(since), [state]) = (since, &states[..]) {
                // Messages a new owner holds back are not in its ring yet;
                // they reach this subscriber when released.
                let held = match &state.mode {
                    Mode::Owner(Owner {
                        deferred: Some(deferred),
                    }) => deferred.held.len() as u64,
                    _ => 0,
                };
                let current = Position {
                    offset: state.last.offset - held,
                    ..state.last
                };
                // Half the subscriber's buffer at most, leaving room for
                // live messages while it reads the replay.
                let budget = subscriber.outbox.limit() / 2;
                let found = state.ring.replay_within(since, current, budget);
                if !found.complete {
                    self.metrics.resumes_not_recovered.inc();
                }
                replay = found.frames;
                resume = Some((found.complete, found.after));
            }
            if let Some(id) = ack_id {
                let ack = Frame::Ack(Ack::subscribed(id, positions.clone(), resume));
                subscriber
                    .outbox
                    .push(encode::text_frame(ack.encode().as_bytes()))?;
            }
            if !replay.is_empty() {
                subscriber.outbox.push_batch(&FrameBatch::new(replay))?;
            }
            for state in &mut states {
                state.subscribers.push(subscriber.clone());
            }
            self.metrics.subscriptions.inc_by(topics.len() as i64);
            return Ok(Subscribed { positions, resume });
        }
    }

    /// Removes one connection's subscription to a topic.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) {
        let Some(cell) = self.existing(topic.as_str()) else {
            return;
        };
        let mut state = cell.lock();
        let before = state.subscribers.len();
        state
            .subscribers
            .retain(|subscriber| subscriber.conn != conn);
        self.metrics
            .subscriptions
            .dec_by((before - state.subscribers.len()) as i64);
        let idle = state.is_idle();
        drop(state);
        if idle {
            self.remove_if_idle(topic);
        }
    }
}
