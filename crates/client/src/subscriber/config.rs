//! Where and how a [`Subscriber`](super::Subscriber) connects: the
//! consumers it may use, the psk, timeouts and buffer sizes.

use std::time::Duration;

use shardq_protocol::{ClusterConfig, Psk, QueueConfig};

use crate::tls::Tls;

/// One consumer a subscriber may connect to.
#[derive(Debug, Clone)]
pub struct ConsumerAddress {
    /// Its id (routing hashes ids).
    pub id: String,
    /// Its URL (`ws://host:port`; `/v1/subscribe` is added when no path is given).
    pub url: String,
}

/// Where and how a [`Subscriber`](super::Subscriber) connects.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The consumers. With one, everything goes to it; with several, each
    /// topic goes to its owner (one connection per consumer).
    pub consumers: Vec<ConsumerAddress>,
    /// The queue configuration, to expand `queue/*` across several consumers.
    pub queues: Option<QueueConfig>,
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
    /// The client's tenant (its `[[clients]]` entry's or token's), so each
    /// topic is subscribed at its owner in that tenant; `None`: the
    /// default tenant. Only a hint: a wrong one costs a hop, not a message.
    pub tenant: Option<String>,
    /// A name for the consumers' logs.
    pub name: Option<String>,
    /// Time allowed to connect and authenticate. Default 5 s.
    pub connect_timeout: Duration,
    /// Time a subscribe, a queue-group join or a job's ack waits for its
    /// answer. Default 10 s.
    pub answer_timeout: Duration,
    /// Messages buffered per subscription. Default 1,024.
    pub buffer: usize,
}

impl SubscriberConfig {
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

    /// One consumer URL: every subscription goes there.
    pub fn new(url: impl Into<String>, psk: Psk) -> SubscriberConfig {
        SubscriberConfig {
            consumers: vec![ConsumerAddress {
                id: String::new(),
                url: url.into(),
            }],
            queues: None,
            psk,
            client: None,
            token: None,
            tls: None,
            tenant: None,
            name: None,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
            buffer: 1024,
        }
    }

    /// Every consumer of a cluster file, with its queues: each topic is
    /// subscribed at its owner.
    pub fn from_cluster(cluster: &ClusterConfig, psk: Psk) -> SubscriberConfig {
        SubscriberConfig {
            consumers: cluster
                .consumers
                .iter()
                .map(|entry| ConsumerAddress {
                    id: entry.id.clone(),
                    url: entry.url.clone(),
                })
                .collect(),
            queues: Some(cluster.queues.clone()),
            ..SubscriberConfig::new(String::new(), psk)
        }
    }
}
