//! The set of a node's links, following its node list: routing a topic to
//! its owner's link, opening links to consumers that join, retiring links
//! to consumers that leave; and the batching of publishes per link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use shardq_protocol::status::LinkStatus;
use shardq_protocol::{ClusterConfig, Psk, Router};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::LinkMetrics;
use super::request::Request;
use super::{ConsumerLink, LinkContext, LinkHandler, SWEEP_EVERY};

/// How long a link to a consumer that left the node list stays open: it
/// still carries that consumer's `moved` and relayed streams while the
/// topics it owned hand over.
pub const RETIRE_AFTER: Duration = Duration::from_secs(15);

/// The links of one node list, and the routing over it.
pub struct LinkSet {
    links: Vec<Arc<ConsumerLink>>,
    /// Links to consumers that left the list, open a while longer.
    retiring: Vec<Arc<ConsumerLink>>,
    router: Router,
    ids: Vec<String>,
}

impl LinkSet {
    /// The id of the topic's owner.
    pub fn owner_id(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<&str> {
        self.router
            .owner(topic)
            .map(|index| self.ids[index].as_str())
    }

    /// The link to the topic's owner (`None` when the owner is this node).
    pub fn owner(&self, topic: &(impl AsRef<str> + ?Sized)) -> Option<&Arc<ConsumerLink>> {
        self.link(self.owner_id(topic)?)
    }

    /// The link to consumer `id` (also while it retires).
    pub fn link(&self, id: &str) -> Option<&Arc<ConsumerLink>> {
        self.links
            .iter()
            .chain(&self.retiring)
            .find(|link| link.id == id)
    }

    /// Every link.
    pub fn links(&self) -> &[Arc<ConsumerLink>] {
        &self.links
    }

    /// The consumer ids routing is over.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// Who opens a node's links, and what it does with them.
pub struct LinkOptions {
    /// The node's own id when it is a consumer (no link to itself).
    pub own_id: Option<String>,
    /// The node key the links prove.
    pub node_key: Psk,
    /// The roots `wss://` consumers are checked against.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// This node's id, bound into the links' handshakes.
    pub node: String,
    /// Where the links count.
    pub metrics: Arc<LinkMetrics>,
    /// What takes the frames that are not publish answers.
    pub handler: Option<Arc<dyn LinkHandler>>,
}

/// A node's links to the consumers of its node list.
pub struct Links {
    current: ArcSwap<LinkSet>,
    update: Mutex<()>,
    ctx: LinkContext,
    metrics: Arc<LinkMetrics>,
    handler: Option<Arc<dyn LinkHandler>>,
    own_id: Option<String>,
}

impl Links {
    /// Links to every consumer of `cluster` except `options.own_id`,
    /// started at once on `tasks`; they stop with `stop`.
    pub fn start(
        cluster: &ClusterConfig,
        options: LinkOptions,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Links {
        let links = Links {
            current: ArcSwap::from_pointee(LinkSet {
                links: Vec::new(),
                retiring: Vec::new(),
                router: Router::new::<&str>(&[]),
                ids: Vec::new(),
            }),
            update: Mutex::new(()),
            ctx: LinkContext {
                node_key: options.node_key,
                tls: options.tls,
                node: options.node,
                stop,
                tasks: tasks.clone(),
            },
            metrics: options.metrics,
            handler: options.handler,
            own_id: options.own_id,
        };
        links.update(cluster);
        links
    }

    /// The current links and routing.
    pub fn current(&self) -> Arc<LinkSet> {
        self.current.load_full()
    }

    /// Follows a new node list: keeps the links that did not change, opens
    /// links to new consumers, and retires links to removed (or moved)
    /// consumers after [`RETIRE_AFTER`], once their publishes in flight are
    /// answered (until then they are not routed to, but still carry what
    /// the departing consumer sends).
    pub fn update(&self, cluster: &ClusterConfig) {
        let _serialized = self
            .update
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        let mut links = Vec::new();
        for entry in &cluster.consumers {
            if Some(&entry.id) == self.own_id.as_ref() {
                continue;
            }
            let url = entry.endpoint("/v1/cluster");
            let kept = old.links.iter().chain(&old.retiring).find(|link| {
                link.id == entry.id && link.url == url && !link.retired.is_cancelled()
            });
            match kept {
                Some(link) => {
                    // A link waiting to reconnect tries again at once: the
                    // node list changing is a hint the consumer is back.
                    link.kick();
                    links.push(link.clone());
                }
                None => {
                    let link = Arc::new(ConsumerLink::new(
                        entry,
                        &cluster.limits,
                        self.metrics.clone(),
                        self.handler.clone(),
                        &self.ctx.stop,
                    ));
                    self.ctx.tasks.spawn(link.clone().run(self.ctx.clone()));
                    links.push(link);
                }
            }
        }
        let mut retiring = Vec::new();
        for link in old.links.iter().chain(&old.retiring) {
            if links.iter().any(|kept| Arc::ptr_eq(kept, link)) || link.retired.is_cancelled() {
                continue;
            }
            retiring.push(link.clone());
            if old.retiring.iter().any(|held| Arc::ptr_eq(held, link)) {
                continue; // its retirement is already scheduled
            }
            let link = link.clone();
            let patience = link.limits.publish_timeout();
            self.ctx.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(RETIRE_AFTER) => {}
                    () = link.retired.cancelled() => return,
                }
                let deadline = Instant::now() + patience;
                while link.in_flight() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(SWEEP_EVERY).await;
                }
                tracing::info!(link = %link.id, "consumer left the node list; link retired");
                link.retired.cancel();
            });
        }
        self.current.store(Arc::new(LinkSet {
            links,
            retiring,
            router: Router::new(&cluster.consumer_ids()),
            ids: cluster.consumer_ids(),
        }));
    }

    /// Every link's state.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        self.current()
            .links
            .iter()
            .map(|link| link.status())
            .collect()
    }

    /// Publishes in flight over all links.
    pub fn in_flight(&self) -> usize {
        self.current()
            .links
            .iter()
            .map(|link| link.in_flight())
            .sum()
    }
}

/// Requests gathered per link during a burst, sent as one batch each.
#[derive(Default)]
pub struct Batches(Vec<(Arc<ConsumerLink>, Vec<Request>)>);

impl Batches {
    /// Adds a request for `link`.
    pub fn add(&mut self, link: &Arc<ConsumerLink>, request: Request) {
        match self.0.iter_mut().find(|(held, _)| Arc::ptr_eq(held, link)) {
            Some((_, requests)) => requests.push(request),
            None => self.0.push((link.clone(), vec![request])),
        }
    }

    /// Sends every link its batch.
    pub fn flush(&mut self) {
        for (link, requests) in self.0.drain(..) {
            link.send(requests);
        }
    }
}

/// A publish's slot in a link's window: one of `link_window` publishes
/// and its bytes of `link_window_bytes`, both given back when it is answered.
#[derive(Debug)]
pub struct WindowPermit {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// A window slot for a publish of `bytes` on `link`, at once; `Err` with the
/// reason when its window is full (in publishes or in bytes). The publish
/// is then refused (`unavailable`: certainly not sent) instead of waited
/// for, so one slow or hung consumer never stops a connection from reading:
/// the publisher's other topics keep flowing.
pub fn permit(link: &Arc<ConsumerLink>, bytes: usize) -> Result<WindowPermit, String> {
    let full = |what: String| {
        link.metrics.window_full.get_or_create(&link.label).inc();
        format!(
            "consumer {} has {what} in flight (its link's window is full): not sent",
            link.id
        )
    };
    let count = link
        .window()
        .clone()
        .try_acquire_owned()
        .map_err(|_| full(format!("{} publishes", link.limits.link_window)))?;
    // A publish larger than the whole byte window still goes, alone.
    let wanted = bytes.clamp(1, link.limits.link_window_bytes.min(u32::MAX as usize));
    let bytes = u32::try_from(wanted)
        .ok()
        .and_then(|wanted| {
            link.window_bytes()
                .clone()
                .try_acquire_many_owned(wanted)
                .ok()
        })
        .ok_or_else(|| {
            full(format!(
                "{} bytes of publishes",
                link.limits.link_window_bytes
            ))
        })?;
    Ok(WindowPermit {
        _count: count,
        _bytes: bytes,
    })
}
