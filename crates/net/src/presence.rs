//! Who is connected to a node (`GET /v1/clients`): each authenticated
//! connection joins with who it proved to be, and leaves when its
//! [`Present`] guard drops. What a client was sent is read from its outbox;
//! its subscriptions are updated by its session when they change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use shardq_protocol::Topic;
use shardq_protocol::status::{ClientInfo, ClientRole, ClientsReport};

use crate::outbox::Outbox;

/// Who a connection is, as it joins.
pub struct Joining {
    /// Its name (`-` when it gave none).
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// What it is to the node.
    pub role: ClientRole,
    /// Its address.
    pub remote: SocketAddr,
    /// Whether it speaks the legacy dialect.
    pub legacy: bool,
    /// Its outbox (what it was sent, what is pending).
    pub outbox: Arc<Outbox>,
}

struct Entry {
    joining: Joining,
    since_ms: u64,
    subscriptions: Vec<String>,
}

/// The connected clients of a node.
#[derive(Default)]
pub struct Presence {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
}

impl Presence {
    /// An empty registry.
    pub fn new() -> Arc<Presence> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection until the returned guard drops.
    pub fn join(self: &Arc<Self>, joining: Joining) -> Present {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.lock().insert(
            id,
            Entry {
                joining,
                since_ms,
                subscriptions: Vec::new(),
            },
        );
        Present {
            presence: self.clone(),
            id,
        }
    }

    /// Every connected client, oldest first.
    pub fn report(&self, node: &str) -> ClientsReport {
        let clients = self
            .lock()
            .values()
            .map(|entry| {
                let joining = &entry.joining;
                let (frames_sent, bytes_sent, pending) = joining.outbox.traffic();
                ClientInfo {
                    bytes_sent,
                    bytes_pending: pending as u64,
                    connected_since_ms: entry.since_ms,
                    frames_sent,
                    legacy: joining.legacy,
                    name: joining.name.clone(),
                    remote: joining.remote.to_string(),
                    role: joining.role,
                    subscriptions: entry.subscriptions.clone(),
                    tenant: joining.tenant.clone(),
                }
            })
            .collect();
        ClientsReport {
            clients,
            node: node.to_owned(),
        }
    }
}

/// A connection's place in its node's [`Presence`]; it leaves on drop.
pub struct Present {
    presence: Arc<Presence>,
    id: u64,
}

impl Present {
    /// Its subscriptions now (by their names, as the client wrote them).
    pub fn subscribed<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) {
        let names = topics.into_iter().map(|t| t.name().to_owned()).collect();
        if let Some(entry) = self.presence.lock().get_mut(&self.id) {
            entry.subscriptions = names;
        }
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        self.presence.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_join_report_and_leave() {
        let presence = Presence::new();
        let outbox = Arc::new(Outbox::new(1 << 20));
        let present = presence.join(Joining {
            name: "dashboard".into(),
            tenant: "acme".into(),
            role: ClientRole::Subscriber,
            remote: "10.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!()),
            legacy: false,
            outbox: outbox.clone(),
        });
        let topic = Topic::parse("database/create")
            .unwrap_or_else(|_| unreachable!())
            .in_tenant(Some("acme"));
        present.subscribed([&topic]);
        outbox.written(3, 120);
        let report = presence.report("consumer-0");
        assert_eq!(report.clients.len(), 1);
        let client = &report.clients[0];
        assert_eq!(client.subscriptions, ["database/create"]);
        assert_eq!((client.frames_sent, client.bytes_sent), (3, 120));
        assert_eq!(client.tenant, "acme");
        drop(present);
        assert!(presence.report("consumer-0").clients.is_empty());
    }
}
