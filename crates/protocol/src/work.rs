//! The cluster file's `[work.<queue>]` sections: how the queue groups of a
//! queue's topics behave (order, ack timeout, deliveries, backlog bounds).
//! A queue without a section gets the defaults.
//!
//! ```toml
//! [work.database]
//! discipline = "lifo"            # fifo (default) | lifo | priority
//! ack_timeout_ms = 30000
//! max_deliveries = 5
//! max_unacked_per_member = 16
//! backlog_messages = 10000
//! backlog_bytes = 67108864
//! overflow = "refuse"            # refuse (default) | drop_oldest
//! ```

use serde::{Deserialize, Serialize};

/// The order in which a group hands out waiting messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discipline {
    /// Oldest first.
    #[default]
    Fifo,
    /// Newest first.
    Lifo,
    /// Highest publish `priority` first, oldest first within one.
    Priority,
}

/// What a full group backlog does with a new publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Refuse it with `backlog_full`.
    #[default]
    Refuse,
    /// Drop the oldest waiting messages.
    DropOldest,
}

/// One queue's group settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkConfig {
    /// Waiting order.
    pub discipline: Discipline,
    /// Time a member has to ack a message before it is redelivered.
    pub ack_timeout_ms: u64,
    /// Deliveries of one message before it goes to the dead letters.
    pub max_deliveries: u32,
    /// Messages in flight to one member at most.
    pub max_unacked_per_member: usize,
    /// Messages a group holds (waiting and in flight) at most.
    pub backlog_messages: usize,
    /// Payload bytes a group holds at most.
    pub backlog_bytes: usize,
    /// What a full backlog does.
    pub overflow: Overflow,
}

impl Default for WorkConfig {
    fn default() -> WorkConfig {
        WorkConfig {
            discipline: Discipline::Fifo,
            ack_timeout_ms: 30_000,
            max_deliveries: 5,
            max_unacked_per_member: 16,
            backlog_messages: 10_000,
            backlog_bytes: 64 << 20,
            overflow: Overflow::Refuse,
        }
    }
}

impl WorkConfig {
    /// The first setting that cannot work, named.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.ack_timeout_ms == 0 {
            Some("ack_timeout_ms must be greater than 0")
        } else if self.max_deliveries == 0 {
            Some("max_deliveries must be greater than 0")
        } else if self.max_unacked_per_member == 0 {
            Some("max_unacked_per_member must be greater than 0")
        } else if self.backlog_messages == 0 || self.backlog_bytes == 0 {
            Some("backlog_messages and backlog_bytes must be greater than 0")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_with_defaults_and_refuse_nonsense() {
        let config: WorkConfig =
            toml::from_str("discipline = \"priority\"\nack_timeout_ms = 500").expect("parses");
        assert_eq!(config.discipline, Discipline::Priority);
        assert_eq!(config.ack_timeout_ms, 500);
        assert_eq!(config.max_deliveries, 5);
        assert!(config.invalid().is_none());
        assert!(toml::from_str::<WorkConfig>("disipline = \"lifo\"").is_err());
        assert!(toml::from_str::<WorkConfig>("overflow = \"maybe\"").is_err());
        let zero = WorkConfig {
            max_deliveries: 0,
            ..WorkConfig::default()
        };
        assert_eq!(
            zero.invalid(),
            Some("max_deliveries must be greater than 0")
        );
    }
}
