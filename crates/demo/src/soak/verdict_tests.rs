//! Table-driven tests of the soak verdict: each case is a small run and
//! the violations it must (or must not) produce.

use super::*;
use crate::soak::record::{Notice, parse_faults};

const S: Micros = 1_000_000;

fn at(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

/// Two topics: 0 owned by consumer-0, 1 by consumer-1; producers p0, p1;
/// one subscriber at each consumer.
fn run() -> Run {
    Run {
        owners: vec!["consumer-0".into(), "consumer-1".into()],
        producers: vec!["producer-0".into(), "producer-1".into()],
        subscribers: vec![
            SubscriberLog {
                consumer: "consumer-0".into(),
                ..SubscriberLog::default()
            },
            SubscriberLog {
                consumer: "consumer-1".into(),
                ..SubscriberLog::default()
            },
        ],
        ..Run::default()
    }
}

fn raw(topic: usize, sent: Micros, outcome: Outcome) -> Publish {
    Publish {
        topic,
        origin: Origin::Raw { producer: 0 },
        sent,
        answered: sent + 1000,
        outcome,
    }
}

fn fault(kind: FaultKind, service: &str, start: Micros, end: Micros) -> Fault {
    Fault {
        kind,
        service: service.into(),
        start,
        end,
    }
}

/// Publishes `publishes` and delivers each acked one everywhere.
fn with(publishes: Vec<Publish>) -> Run {
    let mut run = run();
    for subscriber in &mut run.subscribers {
        subscriber.delivered = publishes
            .iter()
            .map(|p| match p.outcome {
                Outcome::Acked(at) => Some(at),
                _ => None,
            })
            .collect();
    }
    run.publishes = publishes;
    run
}

fn kinds(run: &Run) -> Vec<&'static str> {
    let mut kinds: Vec<_> = run
        .verdict(&Rules::default())
        .violations
        .iter()
        .map(|v| v.kind)
        .collect();
    kinds.sort_unstable();
    kinds
}

#[test]
fn each_broken_promise_is_named() {
    type Case = (&'static str, Box<dyn Fn() -> Run>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "a healthy run",
            Box::new(|| with(vec![raw(0, S, Outcome::Acked(at(7, 1)))])),
            vec![],
        ),
        (
            "an acked publish missing at one subscriber",
            Box::new(|| {
                let mut run = with(vec![raw(0, S, Outcome::Acked(at(7, 1)))]);
                run.subscribers[1].delivered[0] = None;
                run
            }),
            vec!["missing"],
        ),
        (
            "missing, but that subscriber was told by a gap after a kill",
            Box::new(|| {
                let mut run = with(vec![raw(0, S, Outcome::Acked(at(7, 1)))]);
                run.subscribers[1].delivered[0] = None;
                run.subscribers[1].notices.push((
                    3 * S,
                    0,
                    Notice::Gap {
                        after: at(7, 0),
                        resume: at(9, 0),
                    },
                ));
                run.faults
                    .push(fault(FaultKind::Kill, "consumer-0", 2 * S, 3 * S));
                run
            }),
            vec![],
        ),
        (
            "a gap without a crash (a graceful restart must keep everything)",
            Box::new(|| {
                let mut run = with(vec![raw(0, S, Outcome::Acked(at(7, 1)))]);
                run.subscribers[1].delivered[0] = None;
                run.subscribers[1].notices.push((
                    3 * S,
                    0,
                    Notice::NotRecovered {
                        since: at(7, 0),
                        replay: at(7, 1),
                    },
                ));
                run.faults
                    .push(fault(FaultKind::Restart, "consumer-0", 2 * S, 3 * S));
                run
            }),
            vec!["gap_without_crash"],
        ),
        (
            "delivered at another position than its ack",
            Box::new(|| {
                let mut run = with(vec![raw(0, S, Outcome::Acked(at(7, 1)))]);
                run.subscribers[0].delivered[0] = Some(at(7, 2));
                run
            }),
            vec!["misplaced"],
        ),
        (
            "answered unavailable, delivered anyway",
            Box::new(|| {
                let mut run = with(vec![raw(0, 3 * S, Outcome::Refused("unavailable".into()))]);
                run.subscribers[0].delivered[0] = Some(at(7, 1));
                run.subscribers[1].delivered[0] = Some(at(7, 1));
                run.faults
                    .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["refused_but_delivered"],
        ),
        (
            "outcome_unknown delivered to one subscriber only",
            Box::new(|| {
                let mut run = with(vec![raw(
                    0,
                    3 * S,
                    Outcome::Unknown("outcome_unknown".into()),
                )]);
                run.subscribers[0].delivered[0] = Some(at(7, 1));
                run.faults
                    .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["missing"],
        ),
        (
            "outcome_unknown delivered everywhere is honest",
            Box::new(|| {
                let mut run = with(vec![raw(
                    0,
                    3 * S,
                    Outcome::Unknown("outcome_unknown".into()),
                )]);
                run.subscribers[0].delivered[0] = Some(at(7, 1));
                run.subscribers[1].delivered[0] = Some(at(7, 1));
                run.faults
                    .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec![],
        ),
        (
            "a healthy consumer's topic refused during another's fault",
            Box::new(|| {
                let mut run = with(vec![raw(1, 3 * S, Outcome::Refused("unavailable".into()))]);
                run.faults
                    .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["refused_without_fault"],
        ),
        (
            "refusals 0.9 s after the fault ended are within the recovery time",
            Box::new(|| {
                let mut run = with(vec![raw(
                    0,
                    4 * S + 900_000,
                    Outcome::Refused("unavailable".into()),
                )]);
                run.faults
                    .push(fault(FaultKind::Kill, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec![],
        ),
        (
            "refusals 2 s after the fault ended are a slow recovery",
            Box::new(|| {
                let mut run = with(vec![raw(0, 6 * S, Outcome::Refused("unavailable".into()))]);
                run.faults
                    .push(fault(FaultKind::Kill, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["slow_recovery"],
        ),
        (
            "a publish never answered",
            Box::new(|| with(vec![raw(0, S, Outcome::Pending)])),
            vec!["unanswered"],
        ),
        (
            "a publish lost with its connection (no 1001)",
            Box::new(|| with(vec![raw(0, S, Outcome::Lost("eof".into()))])),
            vec!["unanswered"],
        ),
        (
            "unanswered at a restarting producer's 1001, never delivered",
            Box::new(|| {
                let mut run = with(vec![raw(0, 3 * S, Outcome::Refused("closed_1001".into()))]);
                run.faults
                    .push(fault(FaultKind::Restart, "producer-0", 2 * S, 4 * S));
                run.publisher_closes.push(PublisherClose {
                    at: 3 * S,
                    producer: 0,
                    why: "1001".into(),
                });
                run
            }),
            vec![],
        ),
        (
            "shutting_down from a restarting owner, or from the producer itself",
            Box::new(|| {
                let mut run = with(vec![
                    raw(0, 3 * S, Outcome::Refused("shutting_down".into())),
                    raw(1, 6 * S, Outcome::Refused("shutting_down".into())),
                ]);
                run.faults
                    .push(fault(FaultKind::Restart, "consumer-0", 2 * S, 4 * S));
                run.faults
                    .push(fault(FaultKind::Restart, "producer-0", 5 * S, 7 * S));
                run
            }),
            vec![],
        ),
        (
            "closed_1001 is the producer's doing only",
            Box::new(|| {
                let mut run = with(vec![raw(0, 3 * S, Outcome::Refused("closed_1001".into()))]);
                run.faults
                    .push(fault(FaultKind::Restart, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["refused_without_fault"],
        ),
        (
            "a subscriber closed at a consumer without a fault",
            Box::new(|| {
                let mut run = with(vec![]);
                run.subscribers[1].closes.push((3 * S, "eof".into()));
                run.faults
                    .push(fault(FaultKind::Kill, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["closed_connection"],
        ),
        (
            "a subscriber closed at the killed consumer",
            Box::new(|| {
                let mut run = with(vec![]);
                run.subscribers[0].closes.push((3 * S, "eof".into()));
                run.faults
                    .push(fault(FaultKind::Kill, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec![],
        ),
        (
            "delivered twice",
            Box::new(|| {
                let mut run = with(vec![raw(0, S, Outcome::Acked(at(7, 1)))]);
                run.subscribers[0].duplicates.push(0);
                run
            }),
            vec!["duplicate"],
        ),
        (
            "stalled and never resumed",
            Box::new(|| {
                let mut run = with(vec![]);
                run.subscribers[1].notices.push((3 * S, 0, Notice::Stalled));
                run.faults
                    .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
                run
            }),
            vec!["stalled_forever"],
        ),
        (
            "a keyed publish answered after its deadline",
            Box::new(|| {
                let mut publish = raw(0, S, Outcome::Acked(at(7, 1)));
                publish.origin = Origin::Keyed;
                publish.answered = 20 * S;
                with(vec![publish])
            }),
            vec!["answered_late"],
        ),
    ];
    for (name, make, want) in cases {
        assert_eq!(kinds(&make()), want, "{name}");
    }
}

#[test]
fn a_fault_reports_its_refusals_and_latency() {
    let mut publishes = vec![
        raw(0, 3 * S, Outcome::Refused("unavailable".into())),
        raw(
            0,
            4 * S + 500_000,
            Outcome::Unknown("outcome_unknown".into()),
        ),
    ];
    // Healthy topic 1 during the fault: 100 acks, one slow.
    for i in 0..100 {
        let mut publish = raw(1, 3 * S + i, Outcome::Acked(at(8, i + 1)));
        publish.answered = publish.sent + if i == 0 { 900_000 } else { 2_000 };
        publishes.push(publish);
    }
    let mut run = with(publishes);
    for subscriber in &mut run.subscribers {
        subscriber.delivered[1] = Some(at(7, 1));
    }
    run.faults
        .push(fault(FaultKind::Pause, "consumer-0", 2 * S, 4 * S));
    let report = run.verdict(&Rules::default());
    assert_eq!(report.violations, vec![]);
    let fault = &report.faults[0];
    assert_eq!((fault.kind, fault.seconds), ("pause", 2.0));
    assert_eq!((fault.refused, fault.outcome_unknown), (2, 1));
    assert_eq!(fault.refusals_beyond_s, 0.5);
    assert_eq!(fault.healthy_p99_ms, Some(2.0));
    assert_eq!(report.totals.acked, 100);
}

#[test]
fn the_fault_log_reads_back_or_names_its_bad_line() {
    let faults =
        parse_faults("# kill\n1000 start kill consumer-1\n1500 end kill consumer-1\n\n").unwrap();
    assert_eq!(
        faults,
        vec![fault(FaultKind::Kill, "consumer-1", S, 1_500_000)]
    );
    for (text, why) in [
        ("1 start nap consumer-0\n", "unknown fault kind"),
        ("1 end kill consumer-0\n", "one at a time"),
        ("1 start kill c\n2 start kill c\n", "one at a time"),
        ("x start kill c\n", "not a time"),
        ("1 start kill c\n", "never ended"),
    ] {
        let error = parse_faults(text).unwrap_err();
        assert!(error.contains(why), "{text:?}: {error}");
    }
}
