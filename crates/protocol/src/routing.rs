//! Which consumer owns a topic: rendezvous (highest-random-weight) hashing
//! over node ids with xxh3-64. Constant and the same on every node and client
//! that has the same list of ids, in any order.
//!
//! ```text
//! seed(id)          = xxh3_64(utf8(id))                        (seed 0)
//! weight(topic, id) = xxh3_64_with_seed(utf8(topic), seed(id))
//! owner(topic)      = the id with the highest weight; on a tie, the smallest id (bytewise)
//! ```

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::topic::Topic;

/// The per-node seed: xxh3-64 of the id's UTF-8 bytes.
pub fn node_seed(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// A node's weight for a topic.
pub fn weight(topic: &str, seed: u64) -> u64 {
    xxh3_64_with_seed(topic.as_bytes(), seed)
}

/// The index in `node_ids` of the topic's owner, or `None` for an empty list.
pub fn owner<S: AsRef<str>>(topic: &Topic, node_ids: &[S]) -> Option<usize> {
    best(
        topic.as_str(),
        node_ids
            .iter()
            .map(|id| (id.as_ref(), node_seed(id.as_ref()))),
    )
}

fn best<'a>(topic: &str, nodes: impl Iterator<Item = (&'a str, u64)>) -> Option<usize> {
    let mut best: Option<(usize, u64, &str)> = None;
    for (index, (id, seed)) in nodes.enumerate() {
        let w = weight(topic, seed);
        let better = match best {
            None => true,
            Some((_, best_w, best_id)) => w > best_w || (w == best_w && id < best_id),
        };
        if better {
            best = Some((index, w, id));
        }
    }
    best.map(|(index, _, _)| index)
}

/// A node list with its seeds computed once, for routing on a hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    nodes: Vec<(String, u64)>,
}

impl Router {
    /// A router over these ids, in this order (the order only fixes the
    /// indices it returns, never which id owns a topic).
    pub fn new<S: AsRef<str>>(node_ids: &[S]) -> Router {
        Router {
            nodes: node_ids
                .iter()
                .map(|id| (id.as_ref().to_owned(), node_seed(id.as_ref())))
                .collect(),
        }
    }

    /// The index of the topic's owner, `None` when there are no nodes.
    /// `topic` is a [`Topic`] or its text.
    pub fn owner(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<usize> {
        best(
            topic.as_ref(),
            self.nodes.iter().map(|(id, seed)| (id.as_str(), *seed)),
        )
    }

    /// The id of the topic's owner.
    pub fn owner_id(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<&str> {
        self.owner(topic).map(|index| self.nodes[index].0.as_str())
    }

    /// The ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|(id, _)| id.as_str())
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(n: usize) -> Vec<Topic> {
        (0..n)
            .map(|i| Topic::new("bench", &format!("event-{i}")).unwrap())
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("consumer-{i}")).collect()
    }

    #[test]
    fn spreads_evenly() {
        let topics = topics(100_000);
        for nodes in [3, 5, 16] {
            let router = Router::new(&ids(nodes));
            let mut counts = vec![0usize; nodes];
            for topic in &topics {
                counts[router.owner(topic).unwrap()] += 1;
            }
            let even = topics.len() as f64 / nodes as f64;
            for (node, count) in counts.iter().enumerate() {
                let deviation = (*count as f64 - even).abs() / even;
                assert!(
                    deviation <= 0.05,
                    "{nodes} nodes: node {node} owns {count}, {:.1}% from even",
                    deviation * 100.0
                );
            }
        }
    }

    #[test]
    fn adding_a_fourth_node_moves_a_quarter_onto_it() {
        let topics = topics(100_000);
        let three = Router::new(&ids(3));
        let four = Router::new(&ids(4));
        let mut moved = 0;
        for topic in &topics {
            let before = three.owner_id(topic).unwrap();
            let after = four.owner_id(topic).unwrap();
            if before != after {
                moved += 1;
                assert_eq!(after, "consumer-3", "{topic} moved between old nodes");
            }
        }
        let fraction = moved as f64 / topics.len() as f64;
        assert!(
            (0.22..=0.28).contains(&fraction),
            "moved {:.2}%",
            fraction * 100.0
        );
    }

    #[test]
    fn order_of_the_list_does_not_matter() {
        let forward = ids(5);
        let mut backward = forward.clone();
        backward.reverse();
        let (a, b) = (Router::new(&forward), Router::new(&backward));
        for topic in topics(1000) {
            assert_eq!(a.owner_id(&topic), b.owner_id(&topic));
            assert_eq!(
                owner(&topic, &forward).map(|i| forward[i].as_str()),
                a.owner_id(&topic)
            );
        }
    }

    #[test]
    fn empty_list_has_no_owner() {
        let none: [&str; 0] = [];
        assert_eq!(owner(&Topic::parse("a/b").unwrap(), &none), None);
    }
}
