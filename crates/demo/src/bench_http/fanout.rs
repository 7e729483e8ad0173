//! `bench-http fanout`: one consumer's CPU and bytes on the wire per
//! delivery, over Server-Sent Events and over WebSocket, measured in turn.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::FanoutArgs;
use super::client::{EventStreamReader, basic_auth, event_name, message_offset};
use crate::bench_consumer::{
    ConsumerProcess, Deliveries, Load, Measured, open_subscribers, publish_measured,
    read_subscribers,
};

/// One path's measurements of `fanout`, summed over its rounds.
#[derive(Default)]
struct FanoutTotals {
    deliveries: u64,
    expected: u64,
    gaps: u64,
    wire_bytes: u64,
    measured: u64,
    wall: Duration,
    consumer_cpu: Duration,
    own_cpu: Duration,
    ns_per_delivery: Vec<f64>,
}

impl FanoutTotals {
    fn add(&mut self, measured: &Measured, deliveries: &Deliveries, expected: u64) {
        self.deliveries += deliveries.delivered();
        self.expected += expected;
        self.gaps += deliveries.gaps();
        self.wire_bytes += deliveries.bytes();
        self.measured += measured.deliveries;
        self.wall += measured.wall;
        self.consumer_cpu += measured.consumer_cpu;
        self.own_cpu += measured.own_cpu;
        self.ns_per_delivery.push(
            (measured.consumer_cpu.as_nanos() as f64 / measured.deliveries.max(1) as f64).round(),
        );
    }

    fn ns_per_delivery(&self) -> f64 {
        self.consumer_cpu.as_nanos() as f64 / self.measured.max(1) as f64
    }

    /// The report's fields for this path, named `{path}_…`.
    fn report(&self, path: &str, report: &mut Map<String, Value>) {
        let wall = self.wall.as_secs_f64().max(1e-9);
        let fields = [
            ("deliveries", json!(self.deliveries)),
            ("lost", json!(self.expected.saturating_sub(self.deliveries))),
            ("gaps", json!(self.gaps)),
            (
                "consumer_cpu_ns_per_delivery",
                json!(self.ns_per_delivery()),
            ),
            (
                "consumer_cpu_ns_per_delivery_rounds",
                json!(self.ns_per_delivery),
            ),
            ("deliveries_per_second", json!(self.measured as f64 / wall)),
            (
                "consumer_cpu_utilisation",
                json!(self.consumer_cpu.as_secs_f64() / wall),
            ),
            (
                "generator_cpu_utilisation",
                json!(self.own_cpu.as_secs_f64() / wall),
            ),
            (
                "wire_bytes_per_delivery",
                json!(self.wire_bytes as f64 / self.deliveries.max(1) as f64),
            ),
        ];
        for (name, value) in fields {
            report.insert(format!("{path}_{name}"), value);
        }
    }
}

/// `fanout`: rounds of Server-Sent Events then WebSocket, each on a fresh
/// topic, its subscribers closed after it.
pub(super) async fn fanout(
    consumer: &ConsumerProcess,
    pid: u32,
    args: &FanoutArgs,
) -> Result<Value, String> {
    let http = super::http_addr(&consumer.nodes.config.consumers[0].http);
    let auth = basic_auth("-", consumer.psk.as_bytes());
    let per_topic = args.subscribers as u64;
    let expected = args.messages * per_topic;
    let mut totals = [FanoutTotals::default(), FanoutTotals::default()];
    for round in 0..args.rounds {
        for (path, totals) in ["sse", "ws"].into_iter().zip(&mut totals) {
            let prefix = format!("{path}{round}-t");
            let topic = format!("bench/{prefix}0");
            let deliveries = Deliveries::new(expected);
            let readers = if path == "sse" {
                let streams = open_streams(&http, &auth, &topic, args.subscribers).await?;
                read_streams(streams, &deliveries)
            } else {
                let conns = open_subscribers(consumer, args.subscribers, |_| topic.clone()).await?;
                read_subscribers(conns, &deliveries)
            };
            let load = Load {
                prefix: &prefix,
                topics: 1,
                per_topic,
                messages: args.messages,
                payload: args.payload,
                window: None,
            };
            let measured = publish_measured(consumer, pid, &load, &deliveries).await;
            for reader in readers {
                reader.abort();
            }
            let measured = measured.map_err(|e| format!("{path} round {round}: {e}"))?;
            totals.add(&measured, &deliveries, expected);
            // Let the consumer close the connections before the next round.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut report = Map::new();
    report.insert("scenario".into(), json!("http_fanout"));
    report.insert("subscribers".into(), json!(args.subscribers));
    report.insert("messages".into(), json!(args.messages));
    report.insert("payload_bytes".into(), json!(args.payload));
    report.insert("rounds".into(), json!(args.rounds));
    totals[0].report("sse", &mut report);
    totals[1].report("ws", &mut report);
    let ratio = totals[0].ns_per_delivery() / totals[1].ns_per_delivery().max(1e-9);
    report.insert("sse_over_ws_consumer_cpu".into(), json!(ratio));
    Ok(Value::Object(report))
}

/// Opens `count` event streams of `topic`, 200 at a time, each past its
/// `subscribed` event.
async fn open_streams(
    addr: &str,
    auth: &str,
    topic: &str,
    count: usize,
) -> Result<Vec<EventStreamReader>, String> {
    let path = format!("/v1/topics/{topic}/events");
    let mut streams = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(200) {
        let chunk: Vec<_> = (chunk_start..(chunk_start + 200).min(count))
            .map(|_| {
                let (addr, auth, path) = (addr.to_owned(), auth.to_owned(), path.clone());
                tokio::spawn(async move {
                    let mut stream = EventStreamReader::open(&addr, &path, &auth).await?;
                    let mut subscribed = false;
                    while !subscribed {
                        stream
                            .next_events(|event| {
                                subscribed |= event_name(event) == Some(&b"subscribed"[..]);
                            })
                            .await?;
                    }
                    // Count the deliveries' bytes only.
                    stream.take_wire_bytes();
                    Ok::<_, std::io::Error>(stream)
                })
            })
            .collect();
        for task in chunk {
            let stream = task
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("event stream {}: {e}", streams.len()))?;
            streams.push(stream);
        }
    }
    Ok(streams)
}

/// Reads every stream in its own task, counting its `message` events (and
/// the bytes on the wire) in `deliveries`; abort the tasks to close them.
fn read_streams(
    streams: Vec<EventStreamReader>,
    deliveries: &Deliveries,
) -> Vec<tokio::task::JoinHandle<()>> {
    streams
        .into_iter()
        .map(|mut stream| {
            let deliveries = deliveries.clone();
            tokio::spawn(async move {
                let mut last = 0u64;
                while stream
                    .next_events(|event| {
                        if let Some(offset) = message_offset(event) {
                            deliveries.count(&mut last, offset);
                        }
                    })
                    .await
                    .is_ok()
                {
                    deliveries.add_bytes(stream.take_wire_bytes() as usize);
                }
            })
        })
        .collect()
}
