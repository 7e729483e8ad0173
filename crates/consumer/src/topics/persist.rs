//! A consumer's owned topics to and from a [`Snapshot`]: exported when it
//! stops gracefully, imported when it starts again, so a rolling restart
//! keeps every epoch, position, history and idempotency key.

use std::collections::HashMap;
use std::sync::Arc;

use shardq_net::codec::encode;
use shardq_protocol::frame::encode_message_into;
use shardq_protocol::{Frame, Position};
use tokio::time::{Duration, Instant};

use super::TopicTable;
use super::cell::{Mode, Owner};
use super::keys::KeyEntry;
use crate::snapshot::{FORMAT, KeySnapshot, MessageSnapshot, Snapshot, TopicSnapshot, VERSION};

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Topics restored as owned.
    pub topics: usize,
    /// Messages of history restored.
    pub messages: usize,
    /// Topics skipped: this node no longer owns them.
    pub skipped: usize,
}

impl TopicTable {
    /// The owned topics' state (call it once nothing else runs: after the
    /// connections closed).
    pub fn export(&self, node: &str) -> Snapshot {
        let now = Instant::now();
        // Each key's age, from the node-wide FIFO.
        let ages: HashMap<(usize, Box<str>), Duration> = self
            .keys
            .entries()
            .into_iter()
            .map(|(cell, key, at)| ((cell, key), now.duration_since(at)))
            .collect();
        let mut topics = Vec::new();
        for cell in self.cells() {
            let state = cell.lock();
            let Mode::Owner(Owner { deferred }) = &state.mode else {
                continue;
            };
            let frames = state
                .ring
                .entries()
                .map(|(at, frame)| (at, frame.clone()))
                .chain(deferred.iter().flat_map(|d| d.held.iter().cloned()));
            let messages = frames
                .filter_map(|(at, frame)| {
                    let payload = match Frame::decode(encode::payload_of(&frame), usize::MAX) {
                        Ok(Frame::Message(message)) => message.payload,
                        _ => return None,
                    };
                    Some(MessageSnapshot {
                        epoch: at.epoch,
                        offset: at.offset,
                        payload,
                    })
                })
                .collect();
            let cell_id = Arc::as_ptr(&cell) as usize;
            let keys = state
                .keys
                .iter()
                .map(|(key, at)| KeySnapshot {
                    key: key.to_string(),
                    epoch: at.epoch,
                    offset: at.offset,
                    age_ms: ages
                        .get(&(cell_id, key.clone()))
                        .map_or(0, |age| age.as_millis() as u64),
                })
                .collect();
            topics.push(TopicSnapshot {
                topic: cell.topic.clone(),
                epoch: state.last.epoch,
                offset: state.last.offset,
                sealed: state.ring.sealed().collect(),
                keys,
                messages,
            });
        }
        for (topic, at) in self.lock_dormant().positions() {
            topics.push(TopicSnapshot {
                topic,
                epoch: at.epoch,
                offset: at.offset,
                sealed: Vec::new(),
                keys: Vec::new(),
                messages: Vec::new(),
            });
        }
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            node: node.into(),
            topics,
        }
    }

    /// Restores the topics of `snapshot` that this node owns in its view.
    pub fn import(&self, snapshot: Snapshot) -> Imported {
        let now = Instant::now();
        let view = self.view.load();
        let mut imported = Imported::default();
        let mut keys = Vec::new();
        for topic in snapshot.topics {
            if !view.owns(&topic.topic) {
                imported.skipped += 1;
                continue;
            }
            let last = Position {
                epoch: topic.epoch,
                offset: topic.offset,
            };
            if topic.messages.is_empty() && topic.keys.is_empty() {
                self.lock_dormant().keep(topic.topic, last);
                imported.topics += 1;
                continue;
            }
            let cell = self.cell(&topic.topic);
            let mut state = cell.lock();
            state.last = last;
            for end in topic.sealed {
                state.ring.seal(end);
            }
            for message in &topic.messages {
                let at = Position {
                    epoch: message.epoch,
                    offset: message.offset,
                };
                let frame = encode::text_frame_with(|out| {
                    encode_message_into(out, topic.topic.as_str(), at, &message.payload)
                });
                self.retain(&cell, &mut state, at, frame);
            }
            imported.messages += topic.messages.len();
            for key in topic.keys {
                let at = Position {
                    epoch: key.epoch,
                    offset: key.offset,
                };
                state.keys.insert(key.key.clone().into(), at);
                let when = now
                    .checked_sub(Duration::from_millis(key.age_ms))
                    .unwrap_or(now);
                keys.push(KeyEntry {
                    cell: cell.weak(),
                    key: key.key.into(),
                    at: when,
                });
            }
            imported.topics += 1;
        }
        // Oldest first, as the FIFO keeps them.
        keys.sort_by_key(|entry| entry.at);
        self.keys.added(keys);
        self.forget_keys(now);
        self.evict_over_budget();
        imported
    }
}
