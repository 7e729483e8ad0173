//! The JSON of the nodes' admin status routes: what `GET /v1/status` (and
//! `/readyz`) answer, as typed values that the nodes serialize and tools
//! such as `shardq-demo cluster` read back. One definition, so the two
//! cannot drift.

use serde::{Deserialize, Serialize};

/// Which kind of node answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// `shardq-consumer`.
    Consumer,
    /// `shardq-producer`.
    Producer,
}

impl NodeKind {
    /// `consumer` or `producer`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Consumer => "consumer",
            NodeKind::Producer => "producer",
        }
    }
}

/// Whether a link to a consumer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Connected and authenticated.
    Up,
    /// Not connected (never yet, or lost and reconnecting).
    Down,
}

/// One link to a consumer, as a node reports it. (Fields in alphabetical
/// order, as the JSON has always listed them.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// While down: for how long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_for_ms: Option<u64>,
    /// The consumer's id.
    pub id: String,
    /// Publishes sent on the link and not answered yet.
    #[serde(default)]
    pub in_flight: usize,
    /// Why the last attempt failed, while down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Connections opened after the first.
    #[serde(default)]
    pub reconnects: u64,
    /// `up` or `down`.
    pub state: LinkState,
    /// Its `/v1/cluster` URL.
    pub url: String,
}

/// What `GET /v1/status` answers: the node's own view of the cluster.
/// (Fields in alphabetical order, as the JSON has always listed them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Topics it serves as an edge for another owner (consumers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_topics: Option<u64>,
    /// `consumer` or `producer`.
    pub kind: NodeKind,
    /// Its links to consumers.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// The id the node runs as.
    pub node: String,
    /// The consumer ids of the node list it runs with, in file order.
    pub node_list: Vec<String>,
    /// Fingerprint of that node list (ids and URLs).
    pub node_list_hash: String,
    /// Topics it owns (consumers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_topics: Option<u64>,
    /// Edge topics whose owner is unreachable, their subscribers told
    /// `stalled` (consumers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_topics: Option<u64>,
    /// The share of all topics (0 to 1) owned by consumers whose link is
    /// down, so that their publishes are refused (producers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_share: Option<f64>,
}

impl NodeStatus {
    /// How many of its links are up.
    pub fn links_up(&self) -> usize {
        self.links
            .iter()
            .filter(|link| link.state == LinkState::Up)
            .count()
    }
}

/// What a connected client is to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRole {
    /// On a producer's `/v1/publish` or `/produce`.
    Publisher,
    /// On a consumer's `/v1/subscribe` or `/subscribe/{topic}`.
    Subscriber,
    /// A node on `/v1/cluster` (a producer or an edge consumer).
    Node,
}

/// One connected client, as `GET /v1/clients` lists it (keys in
/// alphabetical order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Bytes written to it so far.
    pub bytes_sent: u64,
    /// Bytes queued for it now, not yet written.
    pub bytes_pending: u64,
    /// When it connected, milliseconds since the Unix epoch.
    pub connected_since_ms: u64,
    /// Frames written to it so far (messages, answers and notices).
    pub frames_sent: u64,
    /// Whether it speaks the origin's legacy dialect.
    pub legacy: bool,
    /// Its name: a `[[clients]]` name or a token's `sub`, the node id of a
    /// node, or the name it gave in `auth.node` (`-` for none).
    pub name: String,
    /// Its address, `ip:port`.
    pub remote: String,
    /// What it is to this node.
    pub role: ClientRole,
    /// Its subscriptions, `queue/event` (subscribers and nodes).
    pub subscriptions: Vec<String>,
    /// Its tenant.
    pub tenant: String,
}

/// `GET /v1/clients`: the node and its connected clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientsReport {
    /// The clients, oldest connection first.
    pub clients: Vec<ClientInfo>,
    /// The node's id.
    pub node: String,
}

/// What a consumer is to a topic in `GET /v1/topics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicRole {
    /// It sequences the topic.
    Owner,
    /// It relays the topic from its owner.
    Edge,
}

/// One topic a consumer holds, as `GET /v1/topics` lists it (keys in
/// alphabetical order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Edge consumers subscribed to it here (owners only).
    pub edges: u64,
    /// Its current epoch (0: nothing sequenced or relayed yet).
    pub epoch: u64,
    /// The last offset sequenced (owner) or relayed (edge) in that epoch.
    pub offset: u64,
    /// Owner or edge.
    pub role: TopicRole,
    /// Client subscriptions to it on this node.
    pub subscribers: u64,
    /// Its tenant.
    pub tenant: String,
    /// `queue/event`.
    pub topic: String,
}

/// `GET /v1/topics` (consumers): the node and the topics it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicsReport {
    /// The node's id.
    pub node: String,
    /// Its topics, by tenant and name.
    pub topics: Vec<TopicInfo>,
}

/// What a producer's `GET /readyz` answers (status 200 when `ready`, else 503).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// Every link.
    pub links: Vec<LinkStatus>,
    /// The ids of the consumers whose link is down.
    #[serde(default)]
    pub links_down: Vec<String>,
    /// Whether at least one consumer link is up.
    pub ready: bool,
    /// The share of all topics (0 to 1) owned by consumers whose link is
    /// down: rendezvous hashing gives each consumer an equal share.
    #[serde(default)]
    pub unavailable_share: f64,
}

impl Readiness {
    /// Readiness from a producer's links.
    pub fn from_links(links: Vec<LinkStatus>) -> Readiness {
        let links_down: Vec<String> = links
            .iter()
            .filter(|link| link.state == LinkState::Down)
            .map(|link| link.id.clone())
            .collect();
        Readiness {
            ready: links_down.len() < links.len(),
            unavailable_share: unavailable_share(&links),
            links_down,
            links,
        }
    }
}

/// The share of all topics (0 to 1, 3 decimals) owned by consumers whose
/// link is down: with rendezvous hashing, down links / links.
pub fn unavailable_share(links: &[LinkStatus]) -> f64 {
    if links.is_empty() {
        return 0.0;
    }
    let down = links
        .iter()
        .filter(|link| link.state == LinkState::Down)
        .count();
    (down as f64 / links.len() as f64 * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_status_reads_back_and_keeps_its_field_names() {
        let status = NodeStatus {
            node: "consumer-0".into(),
            kind: NodeKind::Consumer,
            node_list: vec!["consumer-0".into(), "consumer-1".into()],
            node_list_hash: "00112233aabbccdd".into(),
            links: vec![LinkStatus {
                down_for_ms: Some(1500),
                id: "consumer-1".into(),
                url: "ws://c1:7100/v1/cluster".into(),
                state: LinkState::Down,
                in_flight: 0,
                last_error: Some("connection refused".into()),
                reconnects: 2,
            }],
            owned_topics: Some(3),
            edge_topics: Some(1),
            stalled_topics: Some(1),
            unavailable_share: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            r#"{"edge_topics":1,"kind":"consumer","links":[{"down_for_ms":1500,"id":"consumer-1","in_flight":0,"last_error":"connection refused","reconnects":2,"state":"down","url":"ws://c1:7100/v1/cluster"}],"node":"consumer-0","node_list":["consumer-0","consumer-1"],"node_list_hash":"00112233aabbccdd","owned_topics":3,"stalled_topics":1}"#
        );
        let back: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.links_up(), 0);
    }

    #[test]
    fn readiness_names_the_down_links_and_their_share_of_topics() {
        let link = |id: &str, state| LinkStatus {
            down_for_ms: None,
            id: id.into(),
            url: format!("ws://{id}"),
            state,
            in_flight: 0,
            last_error: None,
            reconnects: 0,
        };
        let cases = [
            (vec![], false, 0.0, 0),
            (vec![LinkState::Up, LinkState::Up], true, 0.0, 0),
            (
                vec![LinkState::Up, LinkState::Down, LinkState::Up],
                true,
                0.333,
                1,
            ),
            (vec![LinkState::Down, LinkState::Down], false, 1.0, 2),
        ];
        for (states, ready, share, down) in cases {
            let links = states
                .iter()
                .enumerate()
                .map(|(i, state)| link(&format!("c{i}"), *state))
                .collect();
            let readiness = Readiness::from_links(links);
            assert_eq!(readiness.ready, ready, "{states:?}");
            assert_eq!(readiness.unavailable_share, share, "{states:?}");
            assert_eq!(readiness.links_down.len(), down, "{states:?}");
        }
    }

    #[test]
    fn a_producer_status_has_no_topic_counts() {
        let json = r#"{"node":"p","kind":"producer","node_list":["c"],"node_list_hash":"h","links":[{"id":"c","url":"u","state":"up"}]}"#;
        let status: NodeStatus = serde_json::from_str(json).unwrap();
        assert_eq!(status.kind, NodeKind::Producer);
        assert_eq!((status.owned_topics, status.links_up()), (None, 1));
        assert!(
            !serde_json::to_string(&status)
                .unwrap()
                .contains("owned_topics")
        );
    }
}
