//! A connection's queue-group memberships: joining a group (`subscribe`
//! with `group`, at the topic's owner), acking messages (`ack_message`),
//! and leaving (unsubscribe or disconnect, which redelivers what the member
//! had in flight).

use shardq_net::codec::encode;
use shardq_protocol::{Ack, AckMessage, ErrorCode, Frame, Subscribe, Topic, TopicFilter};

use super::Session;
use crate::groups::dispatch::{AckError, GroupLimits};
use crate::server::Endpoint;
use crate::topics::JoinRefused;

impl Session {
    /// `subscribe` with a `group`: the connection joins it as a member.
    pub(super) fn join_group(&mut self, subscribe: &Subscribe, group: &str) -> Option<Frame> {
        let id = subscribe.id;
        if self.endpoint == Endpoint::Cluster {
            return Some(Frame::error(
                Some(id),
                ErrorCode::NotAuthorized,
                "queue groups are joined on /v1/subscribe",
            ));
        }
        let (named, scoped) = self.scoped(&subscribe.topic);
        if !self.permissions.may_subscribe(&named) {
            return Some(Frame::error(
                Some(id),
                ErrorCode::NotAuthorized,
                format!("this client may not subscribe to {named}"),
            ));
        }
        // The decoder lets only exact topics carry a group.
        let TopicFilter::Exact(topic) = scoped else {
            return Some(Frame::error(
                Some(id),
                ErrorCode::BadFrame,
                "a group needs an exact topic",
            ));
        };
        if let Err(error) = self.shared.queues.load().check(&topic) {
            return Some(Frame::error(Some(id), error.code(), error.to_string()));
        }
        if self.subscriptions.contains(&topic) || self.holds_group(&topic) {
            return Some(Frame::error(
                Some(id),
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {named}"),
            ));
        }
        let cap = self.shared.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() + self.memberships.len() >= cap {
            return Some(Frame::error(
                Some(id),
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {cap} subscriptions"),
            ));
        }
        let limits = GroupLimits::from(&self.shared.cluster.load().work_of(topic.queue()));
        match self
            .shared
            .topics
            .join_group(&topic, group, &self.subscriber, limits, id)
        {
            // The table queued the ack, ahead of any message.
            Ok(()) => {
                self.memberships.push((topic, group.to_owned()));
                None
            }
            Err(JoinRefused::NotOwner(owner)) => Some(Frame::error(
                Some(id),
                ErrorCode::NotOwner,
                format!(
                    "queue groups of {named} are served by its owner {}, not {}: subscribe there",
                    owner.as_deref().unwrap_or("(none)"),
                    self.shared.id
                ),
            )),
        }
    }

    /// `ack_message`: a member handled a message. Its answer is queued
    /// here, ahead of the messages the ack frees for this member.
    pub(super) fn ack_message(&mut self, ack: &AckMessage) -> Option<Frame> {
        let topic = match self.endpoint {
            Endpoint::Cluster => ack.topic.clone(),
            _ => ack.topic.in_tenant(self.tenant.as_deref()),
        };
        let member = self
            .memberships
            .iter()
            .any(|(held, group)| *held == topic && *group == ack.group);
        if !member {
            return Some(Frame::error(
                Some(ack.id),
                ErrorCode::NotSubscribed,
                format!("not a member of group {} of {}", ack.group, topic.name()),
            ));
        }
        let answer = encode::text_frame(Frame::Ack(Ack::bare(ack.id)).encode().as_bytes());
        match self.shared.topics.ack_group(
            &topic,
            &ack.group,
            &self.subscriber,
            (ack.epoch, ack.offset),
            answer,
        ) {
            Ok(()) => None,
            Err(AckError::NotInFlight { .. }) => Some(Frame::error(
                Some(ack.id),
                ErrorCode::NotInFlight,
                format!(
                    "{}:{} of {} is not in flight to this member (acked already, or redelivered after its ack timeout)",
                    ack.epoch,
                    ack.offset,
                    topic.name()
                ),
            )),
        }
    }

    /// Whether the connection is a member of a group of `topic`.
    pub(super) fn holds_group(&self, topic: &Topic) -> bool {
        self.memberships.iter().any(|(held, _)| held == topic)
    }

    /// Leaves the groups of `topics` (all of them with `None`).
    pub(super) fn leave_groups(&mut self, topics: Option<&[Topic]>) -> usize {
        let (leaving, staying): (Vec<_>, Vec<_>) = std::mem::take(&mut self.memberships)
            .into_iter()
            .partition(|(topic, _)| topics.is_none_or(|topics| topics.contains(topic)));
        self.memberships = staying;
        for (topic, group) in &leaving {
            self.shared
                .topics
                .leave_group(topic, group, self.subscriber.conn);
        }
        leaving.len()
    }
}
