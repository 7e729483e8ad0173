//! The end-to-end checks, shared by `e2e` (against a deployed cluster) and
//! `local` (against the embedded one): every node authenticates, messages
//! published through producers arrive unmodified and in order at the
//! topic's owner, and every node refuses a wrong psk.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;
use shardq::{Event, Publisher, PublisherConfig, Subscriber, SubscriberConfig, Subscription};
use shardq_protocol::{ClusterConfig, Psk, Router, Topic, TopicFilter};

use crate::cluster::ClusterArgs;

const PATIENCE: Duration = Duration::from_secs(5);
/// Messages per round trip (to check order, not only arrival).
const PER_TOPIC: usize = 3;

/// Options of `e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How many random topics to round-trip.
    #[arg(long, default_value_t = 20)]
    pub topics: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed, or what it measured.
    pub detail: String,
    /// Median publish → delivery time, for round trips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

/// Which round trips to make.
pub enum Plan {
    /// Through every producer, to a topic of every consumer.
    EveryPair,
    /// This many random topics, each through a random producer.
    Random(usize),
}

fn check(name: impl Into<String>, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Check {
        name: name.into(),
        ok,
        detail,
        latency_ms: None,
    }
}

/// Runs every check against the cluster.
pub async fn run_checks(
    config: &ClusterConfig,
    psk: &Psk,
    tls: Option<&shardq::Tls>,
    plan: Plan,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let nodes = config
        .producers
        .iter()
        .map(|e| (e, "/v1/publish"))
        .chain(config.consumers.iter().map(|e| (e, "/v1/subscribe")));
    for (entry, path) in nodes.clone() {
        let url = entry.endpoint(path);
        let result = shardq::authenticate_tls(&url, psk, Some("e2e"), PATIENCE, tls).await;
        checks.push(check(
            format!("{} authenticates ({url})", entry.id),
            match result {
                Ok(server) if server == entry.id => Ok("mutual handshake done".into()),
                Ok(server) => Err(format!("answered as {server:?}, not {:?}", entry.id)),
                Err(error) => Err(error.to_string()),
            },
        ));
    }
    checks.extend(round_trips(config, &Access { psk, tls }, plan).await);
    let wrong = Psk::generate();
    for (entry, path) in nodes {
        let url = entry.endpoint(path);
        let result = shardq::authenticate_tls(&url, &wrong, Some("e2e"), PATIENCE, tls).await;
        checks.push(check(
            format!("{} refuses a wrong psk", entry.id),
            match result {
                Err(error) if error.is_auth_failure() => Ok("refused".into()),
                Err(error) => Err(format!("failed otherwise: {error}")),
                Ok(_) => Err("accepted a wrong psk".into()),
            },
        ));
    }
    checks
}

/// Every declared topic (`queue/*` expanded), sorted.
fn declared_topics(config: &ClusterConfig) -> Vec<Topic> {
    config
        .queues
        .queues()
        .filter_map(|(queue, _)| TopicFilter::parse(&format!("{queue}/*")).ok())
        .filter_map(|filter| config.queues.expand(&filter).ok())
        .flatten()
        .collect()
}

/// How the checks' clients authenticate and check `wss://` nodes.
struct Access<'a> {
    psk: &'a Psk,
    tls: Option<&'a shardq::Tls>,
}

async fn round_trips(config: &ClusterConfig, access: &Access<'_>, plan: Plan) -> Vec<Check> {
    let router = Router::new(&config.consumer_ids());
    let topics = declared_topics(config);
    let mut rng = rand::rng();
    let pairs: Vec<(usize, Topic)> = match plan {
        Plan::EveryPair => {
            let mut pairs = Vec::new();
            for producer in 0..config.producers.len() {
                for consumer in 0..config.consumers.len() {
                    match topics.iter().find(|t| router.owner(t) == Some(consumer)) {
                        Some(topic) => pairs.push((producer, topic.clone())),
                        None => {
                            return vec![check(
                                format!("{} owns a declared topic", config.consumers[consumer].id),
                                Err("no declared topic is owned by it; declare more events".into()),
                            )];
                        }
                    }
                }
            }
            pairs
        }
        Plan::Random(count) => {
            if config.producers.is_empty() {
                return vec![check(
                    "round trips",
                    Err("the cluster file declares no [[producers]]".into()),
                )];
            }
            (0..count)
                .filter_map(|_| {
                    let topic = if topics.is_empty()
                        || (config.queues.open_topics() && rng.random_bool(0.5))
                    {
                        Topic::new("e2e", &format!("t{:08x}", rng.random::<u32>())).ok()?
                    } else {
                        topics[rng.random_range(0..topics.len())].clone()
                    };
                    Some((rng.random_range(0..config.producers.len()), topic))
                })
                .collect()
        }
    };
    let mut publishers: HashMap<usize, Publisher> = HashMap::new();
    let mut subscribers: HashMap<usize, Subscriber> = HashMap::new();
    let mut subscriptions: HashMap<Topic, Subscription> = HashMap::new();
    let mut checks = Vec::new();
    for (producer, topic) in pairs {
        let owner = router.owner(&topic).unwrap_or(0);
        let name = format!(
            "{} via {} arrives at its owner {}",
            topic, config.producers[producer].id, config.consumers[owner].id
        );
        let result = round_trip(
            config,
            access,
            producer,
            owner,
            &topic,
            &mut publishers,
            &mut subscribers,
            &mut subscriptions,
        )
        .await;
        let mut outcome = check(
            name,
            result
                .as_ref()
                .map(|_| format!("{PER_TOPIC} messages, unmodified, in order"))
                .map_err(Clone::clone),
        );
        outcome.latency_ms = result.ok().map(|latency| latency.as_secs_f64() * 1000.0);
        checks.push(outcome);
    }
    checks
}

#[allow(clippy::too_many_arguments)]
async fn round_trip(
    config: &ClusterConfig,
    access: &Access<'_>,
    producer: usize,
    owner: usize,
    topic: &Topic,
    publishers: &mut HashMap<usize, Publisher>,
    subscribers: &mut HashMap<usize, Subscriber>,
    subscriptions: &mut HashMap<Topic, Subscription>,
) -> Result<Duration, String> {
    let subscription = match subscriptions.entry(topic.clone()) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let subscriber = match subscribers.entry(owner) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let url = config.consumers[owner].url.clone();
                    let subscriber = Subscriber::connect(SubscriberConfig {
                        tls: access.tls.cloned(),
                        ..SubscriberConfig::new(url, access.psk.clone())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    entry.insert(subscriber)
                }
            };
            let subscription = subscriber
                .subscribe(topic.queue(), topic.event())
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            entry.insert(subscription)
        }
    };
    let publisher = match publishers.entry(producer) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let url = config.producers[producer].url.clone();
            let publisher = Publisher::connect(PublisherConfig {
                tls: access.tls.cloned(),
                ..PublisherConfig::new([url], access.psk.clone())
            })
            .await
            .map_err(|e| e.to_string())?;
            entry.insert(publisher)
        }
    };
    let nonce: u64 = rand::random();
    let mut latencies = Vec::with_capacity(PER_TOPIC);
    // One at a time: each message's publish → delivery time is measured.
    for seq in 0..PER_TOPIC {
        let payload =
            format!(r#"{{"e2e":"{nonce:016x}","seq":{seq},"text":"h\u00e9llo \"world\""}}"#);
        let started = Instant::now();
        let ack = publisher
            .publish_raw(topic.queue(), topic.event(), &payload)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let event = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .map_err(|_| format!("nothing arrived within {PATIENCE:?}"))?
            .ok_or("the subscription closed")?;
        latencies.push(started.elapsed());
        let message = match event {
            Event::Message(message) => message,
            Event::Gap(gap) => return Err(format!("gap reported: {gap:?}")),
            Event::Stalled { owner, .. } => {
                return Err(format!("the topic's owner {owner} cannot be reached"));
            }
            Event::Resumed { .. } => return Err("resumed before the message".into()),
        };
        if message.payload.get() != payload {
            return Err(format!(
                "payload changed: sent {payload}, got {}",
                message.payload.get()
            ));
        }
        if (message.epoch, message.offset) != (ack.epoch, ack.offset) {
            return Err(format!(
                "out of order: expected offset {} got {}",
                ack.offset, message.offset
            ));
        }
    }
    latencies.sort();
    Ok(latencies[latencies.len() / 2])
}

/// Prints the checks (PASS/FAIL lines and a summary, or JSON); `Ok` when all passed.
pub fn report(checks: &[Check], json: bool) -> Result<(), String> {
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        let body = serde_json::json!({
            "passed": checks.len() - failed,
            "failed": failed,
            "checks": checks,
        });
        println!("{body}");
    } else {
        for check in checks {
            let verdict = if check.ok { "PASS" } else { "FAIL" };
            let latency = check
                .latency_ms
                .map(|ms| format!(" ({ms:.2} ms)"))
                .unwrap_or_default();
            println!("{verdict}  {}{latency}  {}", check.name, check.detail);
        }
        println!("{} passed, {failed} failed", checks.len() - failed);
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {} checks failed", checks.len()))
    }
}

/// `shardq-demo e2e`.
pub async fn run(args: E2eArgs) -> Result<(), String> {
    let (config, psk) = args.cluster.load()?;
    let tls = args.cluster.tls(&config)?;
    let checks = run_checks(&config, &psk, tls.as_ref(), Plan::Random(args.topics)).await;
    report(&checks, args.json)
}
