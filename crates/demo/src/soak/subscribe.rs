//! A soak subscriber: one connection at a time to one consumer, subscribed
//! to every soak topic, recording each message, notice and closed
//! connection. It answers the node's pings, pings the node every second
//! and gives a connection up after 3 s of silence (a paused or partitioned
//! node), and on reconnecting resumes every topic with `since` its last
//! position, as docs/PROTOCOL.md §5.3 tells a client to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq_net::codec::{Role, encode};
use shardq_protocol::{Frame, Position, Psk, Topic};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::record::{Notice, SubscriberLog, now_micros};
use crate::lean::LeanConn;

/// Silence after which a connection is given up.
const SILENCE: Duration = Duration::from_secs(3);
/// Pause before a refused subscribe is tried again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);
/// Largest frame accepted.
const MAX_FRAME: usize = 16 << 20;

/// One subscriber's fixed inputs.
pub struct SubscriberPlan {
    /// The consumer's `host:port`.
    pub addr: String,
    /// The topics, by index.
    pub topics: Arc<Vec<Topic>>,
    /// Each topic's index.
    pub index: Arc<HashMap<Topic, usize>>,
    /// The psk.
    pub psk: Psk,
    /// What it saw.
    pub log: Arc<Mutex<SubscriberLog>>,
    /// Counts subscribers whose first connection has every topic acked.
    pub ready: Arc<AtomicUsize>,
}

/// The `n` of a soak payload `{"n":N}`.
pub fn payload_n(payload: &str) -> Option<usize> {
    payload
        .strip_prefix(r#"{"n":"#)?
        .strip_suffix('}')?
        .parse()
        .ok()
}

/// Per-connection state: what to (re)subscribe and where each topic is.
struct Positions {
    last: Vec<Option<Position>>,
    /// `since` of each subscribe in flight on this connection.
    asked: Vec<Option<Position>>,
    acked: usize,
    retry: Vec<(Instant, usize)>,
    /// Topics told `stalled` and not flowing again yet.
    stalled: Vec<bool>,
}

fn subscribe_frame(id: usize, topic: &Topic, since: Option<Position>) -> String {
    match since {
        Some(at) => format!(
            r#"{{"type":"subscribe","id":{id},"topic":"{topic}","since":{{"epoch":{},"offset":{}}}}}"#,
            at.epoch, at.offset
        ),
        None => format!(r#"{{"type":"subscribe","id":{id},"topic":"{topic}"}}"#),
    }
}

/// Runs until `stop`.
pub async fn run(plan: SubscriberPlan, stop: CancellationToken) {
    let topics = plan.topics.len();
    let mut positions = Positions {
        last: vec![None; topics],
        asked: vec![None; topics],
        acked: 0,
        retry: Vec::new(),
        stalled: vec![false; topics],
    };
    let mut first = true;
    while !stop.is_cancelled() {
        let conn = tokio::select! {
            conn = LeanConn::open(&plan.addr, "/v1/subscribe", &plan.psk) => conn,
            () = stop.cancelled() => return,
        };
        let Ok(conn) = conn else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let why = connection(&plan, conn, &mut positions, &mut first, &stop).await;
        if let Some(why) = why {
            lock(&plan.log).closes.push((now_micros(), why));
        }
    }
}

fn lock(log: &Mutex<SubscriberLog>) -> std::sync::MutexGuard<'_, SubscriberLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves one connection; why it ended (`None` when stopped).
async fn connection(
    plan: &SubscriberPlan,
    mut conn: LeanConn,
    positions: &mut Positions,
    first: &mut bool,
    stop: &CancellationToken,
) -> Option<String> {
    let mut out = Vec::new();
    positions.acked = 0;
    positions.retry.clear();
    for (id, topic) in plan.topics.iter().enumerate() {
        positions.asked[id] = positions.last[id];
        LeanConn::encode_text(
            &mut out,
            subscribe_frame(id, topic, positions.last[id]).as_bytes(),
        );
    }
    if let Err(error) = conn.writer.write_all(&out).await {
        return Some(format!("subscribe: {error}"));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_ping = Instant::now();
    loop {
        tokio::select! {
            text = conn.reader.next_text() => match text {
                Ok(text) => {
                    let frame = Frame::decode(text, MAX_FRAME);
                    if let Ok(frame) = frame {
                        handle(plan, frame, positions, first);
                    }
                }
                Err(error) => {
                    return Some(match conn.reader.close_code() {
                        Some(code) => format!("closed {code}"),
                        None => error.to_string(),
                    });
                }
            },
            _ = tick.tick() => {
                let mut out = Vec::new();
                if let Some(pong) = conn.reader.take_pong() {
                    out.extend_from_slice(&pong);
                }
                if last_ping.elapsed() >= Duration::from_secs(1) {
                    out.extend_from_slice(&encode::ping_frame(Role::Client));
                    last_ping = Instant::now();
                }
                let now = Instant::now();
                let due: Vec<usize> = positions.retry.iter().filter(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
                positions.retry.retain(|(at, _)| *at > now);
                for id in due {
                    positions.asked[id] = positions.last[id];
                    LeanConn::encode_text(&mut out, subscribe_frame(id, &plan.topics[id], positions.last[id]).as_bytes());
                }
                if let Err(error) = conn.writer.write_all(&out).await {
                    return Some(format!("write: {error}"));
                }
                if conn.reader.last_read().elapsed() > SILENCE {
                    return Some(format!("silent for {} s", SILENCE.as_secs()));
                }
            }
            () = stop.cancelled() => return None,
        }
    }
}

fn handle(plan: &SubscriberPlan, frame: Frame, positions: &mut Positions, first: &mut bool) {
    let topic_index = |topic: &Topic| plan.index.get(topic).copied();
    let now = now_micros();
    match frame {
        Frame::Message(message) => {
            let Some(i) = topic_index(&message.topic) else {
                return;
            };
            let at = message.position();
            let mut log = lock(&plan.log);
            if let Some(last) = positions.last[i]
                && last.epoch == at.epoch
                && at.offset <= last.offset
            {
                log.repeats += 1;
                return;
            }
            positions.last[i] = Some(at);
            let Some(n) = payload_n(message.payload.get()) else {
                return;
            };
            if log.delivered.len() <= n {
                log.delivered.resize(n + 1, None);
            }
            match log.delivered[n] {
                None => log.delivered[n] = Some(at),
                Some(before) if before == at => log.repeats += 1,
                Some(_) => log.duplicates.push(n as u64),
            }
        }
        Frame::Ack(ack) => {
            let id = ack.id as usize;
            if id >= plan.topics.len() {
                return;
            }
            if positions.last[id].is_none() {
                // The first subscribe: the topic's position at that moment.
                positions.last[id] =
                    ack.topics
                        .as_ref()
                        .and_then(|topics| topics.first())
                        .map(|t| Position {
                            epoch: t.epoch,
                            offset: t.offset,
                        });
            }
            if let (Some(false), Some(replay), Some(since)) =
                (ack.recovered, ack.replay, positions.asked[id])
            {
                lock(&plan.log)
                    .notices
                    .push((now, id, Notice::NotRecovered { since, replay }));
                positions.last[id] = Some(replay);
            }
            if std::mem::take(&mut positions.stalled[id]) {
                // Subscribed again (after a reconnect): it flows.
                lock(&plan.log).notices.push((now, id, Notice::Resumed));
            }
            positions.acked += 1;
            if *first && positions.acked == plan.topics.len() {
                *first = false;
                plan.ready.fetch_add(1, Ordering::SeqCst);
            }
        }
        Frame::Error(error) => {
            if let Some(id) = error
                .id
                .map(|id| id as usize)
                .filter(|id| *id < plan.topics.len())
            {
                positions
                    .retry
                    .push((Instant::now() + RESUBSCRIBE_AFTER, id));
            }
        }
        Frame::Gap(gap) => {
            let Some(i) = topic_index(&gap.topic) else {
                return;
            };
            let resume = Position {
                epoch: gap.epoch,
                offset: gap.offset,
            };
            lock(&plan.log).notices.push((
                now,
                i,
                Notice::Gap {
                    after: gap.after,
                    resume,
                },
            ));
            positions.last[i] = Some(resume);
        }
        Frame::Stalled(stalled) => {
            if let Some(i) = topic_index(&stalled.topic) {
                positions.stalled[i] = true;
                lock(&plan.log).notices.push((now, i, Notice::Stalled));
            }
        }
        Frame::Resumed(resumed) => {
            if let Some(i) = topic_index(&resumed.topic) {
                positions.stalled[i] = false;
                lock(&plan.log).notices.push((now, i, Notice::Resumed));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_payloads_carry_their_index() {
        assert_eq!(payload_n(r#"{"n":42}"#), Some(42));
        for bad in [r#"{"n":-1}"#, r#"{"m":1}"#, "42", r#"{"n":1,"x":2}"#] {
            assert_eq!(payload_n(bad), None, "{bad}");
        }
    }
}
