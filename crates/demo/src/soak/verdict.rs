//! The verdict of a soak run: a pure function of what was recorded and
//! the faults injected. It checks the promises of docs/PROTOCOL.md §5
//! under those faults — every publish answered; an acked publish delivered
//! once, at its acked position, to every subscriber, unless that
//! subscriber was told it is lost (`gap`, `recovered: false`, allowed only
//! for a killed owner's topics); a refusal that says "not sequenced" never
//! delivered; refusals only for a faulty node's topics and over within the
//! recovery time after the fault ends; no connection closed at a node
//! without a fault — and measures each fault's cost.

use std::collections::HashMap;

use shardq_protocol::Position;

use super::record::{
    Fault, FaultKind, Micros, Origin, Outcome, Publish, PublisherClose, SubscriberLog,
};

/// The time limits the verdict applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Refusals of a faulty node's topics must stop this soon after the
    /// fault ends (issue: 1 s).
    pub recovery: Micros,
    /// A publish sent this long before a fault began may still be refused
    /// because of it (the producers' publish timeout).
    pub before: Micros,
    /// Closed connections and gaps this long after a fault ended are still
    /// its consequences (reconnecting subscribers, a slow restart).
    pub settle: Micros,
    /// The client library must answer within this (its deadline + margin).
    pub keyed_deadline: Micros,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            recovery: 1_000_000,
            before: 5_000_000,
            settle: 10_000_000,
            keyed_deadline: 12_000_000,
        }
    }
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Each topic's owner (a consumer id), by topic index.
    pub owners: Vec<String>,
    /// The producers' ids, by index.
    pub producers: Vec<String>,
    /// Every publish; the index is its `n`.
    pub publishes: Vec<Publish>,
    /// Every subscriber.
    pub subscribers: Vec<SubscriberLog>,
    /// Raw publisher connections that ended.
    pub publisher_closes: Vec<PublisherClose>,
    /// The faults injected, in order.
    pub faults: Vec<Fault>,
}

/// One kind of broken promise: how often, and a few examples.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// What was broken (`missing`, `refused_but_delivered`, ...).
    pub kind: &'static str,
    /// How many times.
    pub count: u64,
    /// Up to five examples.
    pub examples: Vec<String>,
}

/// What one fault cost.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultReport {
    /// `kill`, `pause`, `partition`, `restart`.
    pub kind: &'static str,
    /// The node.
    pub service: String,
    /// How long the node was out, in seconds.
    pub seconds: f64,
    /// Raw publishes refused (any error) because of it.
    pub refused: u64,
    /// Of those, `outcome_unknown`.
    pub outcome_unknown: u64,
    /// Seconds between the fault's end and the last refused publish sent
    /// after it (0 when refusals stopped with the fault).
    pub refusals_beyond_s: f64,
    /// Gaps and unrecovered resumes reported because of it.
    pub gaps: u64,
    /// p99 ack latency (ms) during the fault of raw publishes to topics
    /// the faulty node does not own.
    pub healthy_p99_ms: Option<f64>,
}

/// Totals over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Publishes sent.
    pub published: u64,
    /// Acked.
    pub acked: u64,
    /// Answered with an error that says "not sequenced".
    pub refused: u64,
    /// Answered "may or may not have been sequenced".
    pub unknown: u64,
    /// Messages delivered, over all subscribers.
    pub delivered: u64,
    /// Subscriber connections that ended.
    pub subscriber_closes: u64,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Broken promises; empty when the run passed.
    pub violations: Vec<Violation>,
    /// Each fault's cost.
    pub faults: Vec<FaultReport>,
    /// p99 ack latency (ms) of raw publishes sent outside every fault.
    pub baseline_p99_ms: Option<f64>,
    /// Totals.
    pub totals: Totals,
}

#[derive(Default)]
struct Tally {
    by_kind: Vec<Violation>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        let entry = match self.by_kind.iter().position(|v| v.kind == kind) {
            Some(at) => &mut self.by_kind[at],
            None => {
                self.by_kind.push(Violation {
                    kind,
                    count: 0,
                    examples: Vec::new(),
                });
                let last = self.by_kind.len() - 1;
                &mut self.by_kind[last]
            }
        };
        entry.count += 1;
        if entry.examples.len() < 5 {
            entry.examples.push(example());
        }
    }
}

/// Ranges of a topic's positions a subscriber was told are lost.
#[derive(Debug, Clone, Copy)]
struct Loss {
    epoch: u64,
    from: u64,
    to: u64,
}

fn losses(after: Position, resume: Position, out: &mut Vec<Loss>) {
    if after.epoch == resume.epoch {
        out.push(Loss {
            epoch: after.epoch,
            from: after.offset + 1,
            to: resume.offset,
        });
    } else {
        out.push(Loss {
            epoch: after.epoch,
            from: after.offset + 1,
            to: u64::MAX,
        });
        out.push(Loss {
            epoch: resume.epoch,
            from: 1,
            to: resume.offset,
        });
    }
}

fn excused(losses: Option<&Vec<Loss>>, at: Position) -> bool {
    losses.is_some_and(|losses| {
        losses
            .iter()
            .any(|loss| loss.epoch == at.epoch && (loss.from..=loss.to).contains(&at.offset))
    })
}

fn p99_ms(mut latencies: Vec<Micros>) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = (latencies.len() * 99).div_ceil(100).saturating_sub(1);
    Some(latencies[at] as f64 / 1000.0)
}

fn seconds(micros: Micros) -> f64 {
    (micros as f64 / 1e5).round() / 10.0
}

impl Run {
    /// The fault on `service` whose window, widened by `before` and
    /// `after`, holds `at`.
    fn fault_on(&self, service: &str, at: Micros, before: Micros, after: Micros) -> Option<usize> {
        self.faults.iter().position(|fault| {
            fault.service == service
                && at + before >= fault.start
                && at <= fault.end.saturating_add(after)
        })
    }

    /// Judges the run.
    pub fn verdict(&self, rules: &Rules) -> Report {
        let mut tally = Tally::default();
        let mut totals = Totals {
            published: self.publishes.len() as u64,
            ..Totals::default()
        };
        let mut reports: Vec<FaultReport> = self
            .faults
            .iter()
            .map(|fault| FaultReport {
                kind: fault.kind.name(),
                service: fault.service.clone(),
                seconds: seconds(fault.end - fault.start),
                refused: 0,
                outcome_unknown: 0,
                refusals_beyond_s: 0.0,
                gaps: 0,
                healthy_p99_ms: None,
            })
            .collect();
        self.judge_publishes(rules, &mut tally, &mut totals, &mut reports);
        self.judge_deliveries(&mut tally, &mut totals);
        self.judge_subscribers(rules, &mut tally, &mut totals, &mut reports);
        for close in &self.publisher_closes {
            let producer = self
                .producers
                .get(close.producer)
                .map_or("?", String::as_str);
            if self.fault_on(producer, close.at, 0, rules.settle).is_none() {
                tally.add("closed_connection", || {
                    format!("a publisher's connection to {producer}: {}", close.why)
                });
            }
        }
        let baseline = self.latencies(|publish| {
            self.faults.iter().all(|fault| {
                publish.sent + rules.before < fault.start || publish.sent > fault.end + rules.settle
            })
        });
        for (index, fault) in self.faults.iter().enumerate() {
            reports[index].healthy_p99_ms = self.latencies_p99_during(fault);
        }
        Report {
            violations: tally.by_kind,
            faults: reports,
            baseline_p99_ms: p99_ms(baseline),
            totals,
        }
    }

    fn latencies(&self, keep: impl Fn(&Publish) -> bool) -> Vec<Micros> {
        self.publishes
            .iter()
            .filter(|p| matches!(p.origin, Origin::Raw { .. }))
            .filter(|p| matches!(p.outcome, Outcome::Acked(_)))
            .filter(|p| keep(p))
            .map(|p| p.answered.saturating_sub(p.sent))
            .collect()
    }

    fn latencies_p99_during(&self, fault: &Fault) -> Option<f64> {
        p99_ms(self.latencies(|publish| {
            (fault.start..=fault.end).contains(&publish.sent)
                && self.owners.get(publish.topic) != Some(&fault.service)
        }))
    }

    fn judge_publishes(
        &self,
        rules: &Rules,
        tally: &mut Tally,
        totals: &mut Totals,
        reports: &mut [FaultReport],
    ) {
        for (n, publish) in self.publishes.iter().enumerate() {
            let owner = self.owners.get(publish.topic).map_or("?", String::as_str);
            if publish.origin == Origin::Keyed
                && publish.answered > publish.sent + rules.keyed_deadline
            {
                tally.add("answered_late", || {
                    format!(
                        "keyed publish {n} of topic {}: {:?}",
                        publish.topic, publish.outcome
                    )
                });
            }
            let (code, certain) = match &publish.outcome {
                Outcome::Acked(_) => {
                    totals.acked += 1;
                    continue;
                }
                Outcome::Pending | Outcome::Lost(_) => {
                    tally.add("unanswered", || {
                        format!(
                            "publish {n} ({:?}) of a topic of {owner}: {:?}",
                            publish.origin, publish.outcome
                        )
                    });
                    continue;
                }
                Outcome::Refused(code) => {
                    totals.refused += 1;
                    (code.as_str(), true)
                }
                Outcome::Unknown(code) => {
                    totals.unknown += 1;
                    (code.as_str(), false)
                }
            };
            if certain
                && self
                    .subscribers
                    .iter()
                    .any(|s| s.delivered.get(n).is_some_and(Option::is_some))
            {
                tally.add("refused_but_delivered", || {
                    format!(
                        "publish {n} ({:?}) answered {code} was delivered",
                        publish.origin
                    )
                });
            }
            let Origin::Raw { producer } = publish.origin else {
                continue;
            };
            // Which fault explains it: the owner's, or for `shutting_down`
            // and a close the producer's own stop (a stopping owner says
            // `shutting_down` too).
            let producer_id = self.producers.get(producer).map_or("?", String::as_str);
            let mut suspects = vec![owner];
            match code {
                "closed_1001" => suspects = vec![producer_id],
                "shutting_down" => suspects.push(producer_id),
                _ => {}
            }
            let find = |after| {
                suspects
                    .iter()
                    .find_map(|suspect| self.fault_on(suspect, publish.sent, rules.before, after))
            };
            let blamed = suspects[0];
            let (within, late) = (find(rules.recovery), find(rules.settle));
            match (within, late) {
                (Some(index), _) => {
                    let report = &mut reports[index];
                    report.refused += 1;
                    report.outcome_unknown += u64::from(code == "outcome_unknown");
                    let beyond = publish.sent.saturating_sub(self.faults[index].end);
                    report.refusals_beyond_s = report.refusals_beyond_s.max(seconds(beyond));
                }
                (None, Some(index)) => {
                    let report = &mut reports[index];
                    report.refused += 1;
                    let beyond = publish.sent.saturating_sub(self.faults[index].end);
                    report.refusals_beyond_s = report.refusals_beyond_s.max(seconds(beyond));
                    tally.add("slow_recovery", || {
                        format!(
                            "publish {n} via {producer_id} to a topic of {owner} sent {:.1} s after the {} of {blamed} ended: {code}",
                            beyond as f64 / 1e6,
                            self.faults[index].kind.name()
                        )
                    });
                }
                (None, None) => tally.add("refused_without_fault", || {
                    format!("publish {n} via {producer_id} to a topic of healthy {owner}: {code}")
                }),
            }
        }
    }

    fn judge_deliveries(&self, tally: &mut Tally, totals: &mut Totals) {
        let lost: Vec<HashMap<usize, Vec<Loss>>> = self
            .subscribers
            .iter()
            .map(|subscriber| {
                let mut by_topic: HashMap<usize, Vec<Loss>> = HashMap::new();
                for (_, topic, notice) in &subscriber.notices {
                    let out = by_topic.entry(*topic).or_default();
                    match notice {
                        super::record::Notice::Gap { after, resume } => {
                            losses(*after, *resume, out)
                        }
                        super::record::Notice::NotRecovered { since, replay } => {
                            losses(*since, *replay, out)
                        }
                        _ => {}
                    }
                }
                by_topic
            })
            .collect();
        for subscriber in &self.subscribers {
            totals.delivered += subscriber.delivered.iter().flatten().count() as u64;
            totals.delivered += subscriber.duplicates.len() as u64;
        }
        for (n, publish) in self.publishes.iter().enumerate() {
            // Where it should be: its ack's position, or for an unknown
            // outcome wherever any subscriber got it.
            let expected = match &publish.outcome {
                Outcome::Acked(at) => Some(*at),
                Outcome::Unknown(_) => self
                    .subscribers
                    .iter()
                    .find_map(|s| s.delivered.get(n).copied().flatten()),
                _ => None,
            };
            let Some(expected) = expected else { continue };
            for (index, subscriber) in self.subscribers.iter().enumerate() {
                match subscriber.delivered.get(n).copied().flatten() {
                    Some(at) if at == expected => {}
                    Some(at) => tally.add("misplaced", || {
                        format!("publish {n} acked at {expected:?} reached the subscriber at {} at {at:?}", subscriber.consumer)
                    }),
                    None if excused(lost[index].get(&publish.topic), expected) => {}
                    None => tally.add("missing", || {
                        format!(
                            "publish {n} (topic {} of {}, {:?}, at {expected:?}) never reached the subscriber at {}",
                            publish.topic,
                            self.owners.get(publish.topic).map_or("?", String::as_str),
                            publish.origin,
                            subscriber.consumer
                        )
                    }),
                }
            }
        }
    }

    fn judge_subscribers(
        &self,
        rules: &Rules,
        tally: &mut Tally,
        totals: &mut Totals,
        reports: &mut [FaultReport],
    ) {
        for subscriber in &self.subscribers {
            let at = &subscriber.consumer;
            for n in &subscriber.duplicates {
                tally.add("duplicate", || {
                    format!("publish {n} delivered twice at {at}")
                });
            }
            if subscriber.repeats > 0 {
                tally.add("repeat", || {
                    format!(
                        "{} messages at {at} not after their topic's last position",
                        subscriber.repeats
                    )
                });
            }
            let mut stalled: HashMap<usize, Micros> = HashMap::new();
            for (when, topic, notice) in &subscriber.notices {
                let owner = self.owners.get(*topic).map_or("?", String::as_str);
                match notice {
                    super::record::Notice::Stalled => {
                        stalled.insert(*topic, *when);
                    }
                    super::record::Notice::Resumed => {
                        stalled.remove(topic);
                    }
                    lost => {
                        let kill = self
                            .fault_on(owner, *when, 0, rules.settle)
                            .filter(|&index| self.faults[index].kind == FaultKind::Kill);
                        match kill {
                            Some(index) => reports[index].gaps += 1,
                            None => tally.add("gap_without_crash", || {
                                format!("topic {topic} (owner {owner}) at {at}: {lost:?}")
                            }),
                        }
                    }
                }
            }
            for (topic, since) in stalled {
                tally.add("stalled_forever", || {
                    format!("topic {topic} at {at}: stalled at {since} and never resumed")
                });
            }
            for (when, why) in &subscriber.closes {
                totals.subscriber_closes += 1;
                if self.fault_on(at, *when, 0, rules.settle).is_none() {
                    tally.add("closed_connection", || {
                        format!("the subscriber at {at}: {why}")
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
