//! The task behind one link: connect (with backoff and jitter), serve the
//! connection — read the consumer's frames in bursts, expire publishes
//! past their deadline — and start again until the link is retired or the
//! node stops.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rand::RngExt;
use shardq_protocol::ErrorCode;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval, interval_at};
use tokio_util::task::TaskTracker;

use super::{BACKOFF_MAX, BACKOFF_START, BURST, ConsumerLink, LinkContext, SWEEP_EVERY};
use crate::channel::{Channel, Ended, Liveness};
use crate::dial::{DialError, DialIdentity, DialOptions, Dialed, dial};
use crate::outbox::FrameBatch;
use crate::writer::WriteLimit;

/// Dials to one consumer in flight at once, at most.
const OVERLAPPING_DIALS: usize = 4;

impl ConsumerLink {
    /// Keeps the link connected until stopped or retired: connect, serve,
    /// back off, repeat.
    pub(super) async fn run(self: Arc<Self>, ctx: LinkContext) {
        let options = DialOptions {
            identity: DialIdentity::Node {
                node_key: ctx.node_key.clone(),
                own: ctx.node.clone(),
                expected: self.id.clone(),
            },
            timeout: self.limits.handshake_timeout(),
            max_frame_bytes: self.limits.max_frame_bytes,
            // Room for a full window: the window's bytes and one more of
            // the largest publishes.
            outbox_bytes: self
                .limits
                .link_window_bytes
                .saturating_add(self.limits.max_frame_bytes + 64),
            write: WriteLimit {
                timeout: self.limits.write_timeout(),
                timeouts: self.metrics.write_timeouts.clone(),
            },
            tls: ctx.tls.clone(),
        };
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        let mut sweep = interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Publishes held for the first connection expire meanwhile.
            let Some(result) = self
                .while_down(&mut sweep, self.connect(&options, &ctx.tasks))
                .await
            else {
                return;
            };
            match result {
                Ok(conn) => {
                    if connected_before {
                        self.lock().reconnects += 1;
                        self.metrics.reconnects.get_or_create(&self.label).inc();
                    }
                    connected_before = true;
                    backoff = BACKOFF_START;
                    let reason = self.serve(conn).await;
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
                Err(error) => self.dial_failed(&error),
            }
            // Exponential backoff with ±50% jitter, so nodes do not
            // reconnect in lockstep; never above the cap, so a node that
            // comes back is reached within BACKOFF_MAX.
            let jitter = rand::rng().random_range(0.5..1.5);
            let pause = backoff.mul_f64(jitter).min(BACKOFF_MAX);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let paused = async {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    // The node list changed: try now.
                    () = self.kick.notified() => {}
                }
            };
            if self.while_down(&mut sweep, paused).await.is_none() {
                return;
            }
        }
    }

    /// Runs `work` while the link is down: publishes held for it expire
    /// and its down time is reported on every `sweep`; `None` (the link
    /// marked down for good) if it is retired first.
    async fn while_down<T>(
        self: &Arc<Self>,
        sweep: &mut Interval,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                () = self.retired.cancelled() => {
                    self.down("the consumer left the node list".into(), ErrorCode::Unavailable);
                    return None;
                }
                _ = sweep.tick() => {
                    self.expire();
                    self.report_down_time();
                }
            }
        }
    }

    /// Dials the consumer. A dial that hangs (a name lookup or a SYN into
    /// a partition) does not hold the next one back: every BACKOFF_MAX
    /// another starts beside it, up to OVERLAPPING_DIALS, and the first to
    /// connect wins (the others are dropped, which abandons them).
    async fn connect(
        &self,
        options: &DialOptions,
        tasks: &TaskTracker,
    ) -> Result<Dialed, DialError> {
        let mut attempts = FuturesUnordered::new();
        attempts.push(dial(&self.url, options, tasks));
        let mut overlap = interval_at(Instant::now() + BACKOFF_MAX, BACKOFF_MAX);
        loop {
            tokio::select! {
                Some(result) = attempts.next() => match result {
                    Ok(conn) => return Ok(conn),
                    Err(error) if attempts.is_empty() => return Err(error),
                    // Others still run; the status says why this one failed.
                    Err(error) => self.dial_failed(&error),
                },
                _ = overlap.tick(), if attempts.len() < OVERLAPPING_DIALS => {
                    attempts.push(dial(&self.url, options, tasks));
                }
            }
        }
    }

    /// Records why a dial failed (`last_error`), logging it when the reason
    /// changed.
    fn dial_failed(&self, error: &DialError) {
        let reason = error.to_string();
        let mut state = self.lock();
        if state.last_error.as_deref() != Some(reason.as_str()) {
            tracing::warn!(link = %self.id, %reason, "cannot connect to consumer; retrying");
        }
        state.last_error = Some(reason);
    }

    /// Serves one connection until it breaks, `stop` or retirement; returns
    /// why it ended.
    async fn serve(self: &Arc<Self>, dialed: Dialed) -> String {
        let Dialed { reader, outbox, .. } = dialed;
        let mut channel = Channel::new(
            reader,
            outbox.clone(),
            Liveness::links(&self.limits),
            self.retired.clone(),
        );
        {
            let mut state = self.lock();
            state.last_error = None;
            state.down_since = None;
            let held = state.pipeline.up(outbox.clone());
            if !held.is_empty() {
                let _ = outbox.push_batch(&FrameBatch::new(held));
            }
        }
        self.metrics.up.get_or_create(&self.label).set(1);
        self.report_down_time();
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
        self.lock().pipeline.detach();
        outbox.close(shardq_protocol::CloseCode::GoingAway);
        match ended {
            Ended::Peer => "the consumer closed the connection".into(),
            Ended::Closed(code) => format!("closed ({} {})", code.code(), code.reason()),
            Ended::Stopped => "the node is stopping, or the consumer left the node list".into(),
        }
    }
}
