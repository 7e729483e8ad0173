//! The connection caps at a node's door: connections in all, per remote
//! IP address, and not yet authenticated. An [`Admission`] holds a
//! connection's places and gives them back when dropped; a connection over
//! a cap is closed at once, counted by reason, and logged in summaries.
//! The gate also holds the node's other guard counters: peers cut by the
//! write timeout, admin connections over their cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shardq_protocol::Limits;

/// The caps, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections in all.
    pub total: usize,
    /// Connections from one IP address.
    pub per_address: usize,
    /// Connections that have not authenticated yet.
    pub unauthenticated: usize,
    /// Of those, from one IP address.
    pub unauthenticated_per_address: usize,
}

impl From<&Limits> for Caps {
    fn from(limits: &Limits) -> Caps {
        Caps {
            total: limits.max_connections,
            per_address: limits.max_connections_per_address,
            unauthenticated: limits.max_unauthenticated_connections,
            unauthenticated_per_address: limits.max_unauthenticated_per_address,
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections`.
    Total,
    /// `max_connections_per_address`.
    PerAddress,
    /// `max_unauthenticated_connections`.
    Unauthenticated,
    /// `max_unauthenticated_per_address`.
    UnauthenticatedPerAddress,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerAddress => "max_connections_per_address",
            Refusal::Unauthenticated => "max_unauthenticated_connections",
            Refusal::UnauthenticatedPerAddress => "max_unauthenticated_per_address",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabel {
    cap: &'static str,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: usize,
    /// Per address: connections, and of those not authenticated yet.
    per_address: HashMap<IpAddr, (usize, usize)>,
}

/// A node's connection caps and their counts.
pub struct Gate {
    caps: Caps,
    counts: Mutex<Counts>,
    refused: Family<CapLabel, Counter>,
    /// Connections cut because the peer took nothing within the write timeout.
    pub write_timeouts: Counter,
    /// Admin connections closed at accept (over `max_admin_connections`).
    pub admin_refused: Counter,
    /// TLS handshakes that failed on the WebSocket port.
    pub tls_failures: Counter,
}

impl Gate {
    /// A gate with these caps.
    pub fn new(caps: Caps) -> Arc<Gate> {
        Arc::new(Gate {
            caps,
            counts: Mutex::default(),
            refused: Family::default(),
            write_timeouts: Counter::default(),
            admin_refused: Counter::default(),
            tls_failures: Counter::default(),
        })
    }

    /// Registers `connections_refused{cap}`, `write_timeouts`,
    /// `tls_handshake_failures` and `admin_connections_refused`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "Connections closed at accept because a cap was reached, by cap",
            self.refused.clone(),
        );
        registry.register(
            "write_timeouts",
            "Connections cut because the peer took nothing within the write timeout",
            self.write_timeouts.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed on the WebSocket port",
            self.tls_failures.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Admin connections closed at accept (over max_admin_connections)",
            self.admin_refused.clone(),
        );
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places for a new, unauthenticated connection from `addr`, or the
    /// cap it would exceed (counted).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Admission, Refusal> {
        let refusal = {
            let mut counts = self.lock();
            let (from_addr, unauthenticated_from_addr) =
                counts.per_address.get(&addr).copied().unwrap_or((0, 0));
            if counts.total >= self.caps.total {
                Some(Refusal::Total)
            } else if from_addr >= self.caps.per_address {
                Some(Refusal::PerAddress)
            } else if unauthenticated_from_addr >= self.caps.unauthenticated_per_address {
                Some(Refusal::UnauthenticatedPerAddress)
            } else if counts.unauthenticated >= self.caps.unauthenticated {
                Some(Refusal::Unauthenticated)
            } else {
                counts.total += 1;
                counts.unauthenticated += 1;
                let entry = counts.per_address.entry(addr).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += 1;
                None
            }
        };
        match refusal {
            Some(refusal) => {
                self.refused
                    .get_or_create(&CapLabel {
                        cap: refusal.as_str(),
                    })
                    .inc();
                crate::log_summary::REFUSED_CONNECTIONS.note(refusal.as_str());
                Err(refusal)
            }
            None => Ok(Admission {
                gate: self.clone(),
                addr,
                authenticated: false,
            }),
        }
    }

    /// Connections held now: in all, and not authenticated yet.
    pub fn counts(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.total, counts.unauthenticated)
    }
}

/// One connection's places; given back on drop.
pub struct Admission {
    gate: Arc<Gate>,
    addr: IpAddr,
    authenticated: bool,
}

impl Admission {
    /// The connection's TLS handshake failed (counted).
    pub fn tls_failed(&self) {
        self.gate.tls_failures.inc();
    }

    /// The connection authenticated: its unauthenticated place is freed.
    pub fn authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            let mut counts = self.gate.lock();
            counts.unauthenticated -= 1;
            if let Some(entry) = counts.per_address.get_mut(&self.addr) {
                entry.1 -= 1;
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.gate.lock();
        counts.total -= 1;
        if !self.authenticated {
            counts.unauthenticated -= 1;
        }
        if let Some(entry) = counts.per_address.get_mut(&self.addr) {
            entry.0 -= 1;
            if !self.authenticated {
                entry.1 -= 1;
            }
            if entry.0 == 0 {
                counts.per_address.remove(&self.addr);
            }
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("addr", &self.addr)
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_refuse_and_places_come_back() {
        let gate = Gate::new(Caps {
            total: 4,
            per_address: 2,
            unauthenticated: 3,
            unauthenticated_per_address: 2,
        });
        let mut a1 = gate.admit(ip(1)).unwrap();
        let a2 = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).unwrap_err(), Refusal::PerAddress);
        let b1 = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.admit(ip(3)).unwrap_err(), Refusal::Unauthenticated);
        a1.authenticated();
        a1.authenticated(); // idempotent
        let c1 = gate.admit(ip(3)).unwrap();
        assert_eq!(gate.counts(), (4, 3));
        assert_eq!(gate.admit(ip(4)).unwrap_err(), Refusal::Total);
        drop((a2, b1, c1));
        assert_eq!(gate.counts(), (1, 0));
        drop(a1);
        assert_eq!(gate.counts(), (0, 0));
        assert!(gate.lock().per_address.is_empty());
        // One address cannot hold more unauthenticated places than its share.
        let gate_b = Gate::new(Caps {
            total: 100,
            per_address: 100,
            unauthenticated: 100,
            unauthenticated_per_address: 2,
        });
        let mut first = gate_b.admit(ip(9)).unwrap();
        let _second = gate_b.admit(ip(9)).unwrap();
        assert_eq!(
            gate_b.admit(ip(9)).unwrap_err(),
            Refusal::UnauthenticatedPerAddress
        );
        let _other = gate_b.admit(ip(8)).unwrap();
        first.authenticated();
        let _third = gate_b.admit(ip(9)).unwrap();
        // Refusals are counted by cap.
        let mut registry = Registry::default();
        gate.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"connections_refused_total{cap="max_connections_per_address"} 1"#),
            "{text}"
        );
    }
}
