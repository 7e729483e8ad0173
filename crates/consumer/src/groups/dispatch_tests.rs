//! Table tests of a group's dispatch: scripts of events, each with the
//! effects it must produce.

use std::time::{Duration, Instant};

use super::{AckError, DeadReason, Discipline, Dispatch, Effect, GroupLimits, Overflow, Refused};

/// One event of a script, at a time in seconds from the start.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A message: seq, priority, bytes.
    Offer(u64, u8, usize),
    Join(u64),
    Leave(u64),
    /// Member, seq.
    Ack(u64, u64),
    /// Seconds since the start.
    At(u64),
}

use Effect::{DeadLetter, Deliver, Dropped};
use Step::{Ack, At, Join, Leave, Offer};

fn deliver(member: u64, seq: u64, delivery: u32) -> Effect {
    Deliver {
        member,
        seq,
        delivery,
    }
}

/// A named script: the limits, the steps, each step's effects.
type Script = (&'static str, GroupLimits, Vec<Step>, Vec<Vec<Effect>>);

fn limits() -> GroupLimits {
    GroupLimits {
        ack_timeout: Duration::from_secs(10),
        max_deliveries: 3,
        max_unacked_per_member: 2,
        backlog_messages: 4,
        backlog_bytes: 1000,
        ..GroupLimits::default()
    }
}

/// Runs `script` and returns each step's effects (or a refusal's text).
fn run(limits: GroupLimits, script: &[Step]) -> Vec<Result<Vec<Effect>, String>> {
    let start = Instant::now();
    let mut now = start;
    let mut dispatch = Dispatch::new(limits);
    script
        .iter()
        .map(|step| match *step {
            Offer(seq, priority, bytes) => dispatch
                .offer(seq, priority, bytes, now)
                .map_err(|e| e.to_string()),
            Join(member) => Ok(dispatch.join(member, now)),
            Leave(member) => Ok(dispatch.leave(member, now)),
            Ack(member, seq) => dispatch.ack(member, seq, now).map_err(|e| e.to_string()),
            At(seconds) => {
                now = start + Duration::from_secs(seconds);
                Ok(dispatch.expire(now))
            }
        })
        .collect()
}

#[test]
fn scripts() {
    let cases: Vec<Script> = vec![
        (
            "one member takes up to its cap, then one per ack",
            limits(),
            vec![
                Join(1),
                Offer(1, 0, 10),
                Offer(2, 0, 10),
                Offer(3, 0, 10),
                Ack(1, 1),
                Ack(1, 2),
            ],
            vec![
                vec![],
                vec![deliver(1, 1, 1)],
                vec![deliver(1, 2, 1)],
                vec![],
                vec![deliver(1, 3, 1)],
                vec![],
            ],
        ),
        (
            "the member with the fewest unacked gets the next message",
            limits(),
            vec![
                Join(1),
                Join(2),
                Offer(1, 0, 1),
                Offer(2, 0, 1),
                Offer(3, 0, 1),
                Ack(2, 2),
                Offer(4, 0, 1),
            ],
            vec![
                vec![],
                vec![],
                vec![deliver(1, 1, 1)],
                vec![deliver(2, 2, 1)],
                vec![deliver(1, 3, 1)],
                vec![],
                vec![deliver(2, 4, 1)],
            ],
        ),
        (
            "a backlog built with no member is handed out FIFO when one joins",
            limits(),
            vec![Offer(1, 0, 1), Offer(2, 0, 1), Offer(3, 0, 1), Join(7)],
            vec![
                vec![],
                vec![],
                vec![],
                vec![deliver(7, 1, 1), deliver(7, 2, 1)],
            ],
        ),
        (
            "LIFO hands out the newest waiting message first",
            GroupLimits {
                discipline: Discipline::Lifo,
                ..limits()
            },
            vec![Offer(1, 0, 1), Offer(2, 0, 1), Offer(3, 0, 1), Join(7)],
            vec![
                vec![],
                vec![],
                vec![],
                vec![deliver(7, 3, 1), deliver(7, 2, 1)],
            ],
        ),
        (
            "priority: higher first, FIFO within a priority",
            GroupLimits {
                discipline: Discipline::Priority,
                max_unacked_per_member: 4,
                ..limits()
            },
            vec![
                Offer(1, 1, 1),
                Offer(2, 9, 1),
                Offer(3, 1, 1),
                Offer(4, 5, 1),
                Join(7),
            ],
            vec![
                vec![],
                vec![],
                vec![],
                vec![],
                vec![
                    deliver(7, 2, 1),
                    deliver(7, 4, 1),
                    deliver(7, 1, 1),
                    deliver(7, 3, 1),
                ],
            ],
        ),
        (
            "a member leaving hands its unacked messages to another, counted",
            limits(),
            vec![Join(1), Join(2), Offer(1, 0, 1), Offer(2, 0, 1), Leave(1)],
            vec![
                vec![],
                vec![],
                vec![deliver(1, 1, 1)],
                vec![deliver(2, 2, 1)],
                vec![deliver(2, 1, 2)],
            ],
        ),
        (
            "an ack timeout redelivers, and max_deliveries dead-letters",
            limits(),
            vec![Join(1), Offer(1, 0, 1), At(10), At(20), At(30)],
            vec![
                vec![],
                vec![deliver(1, 1, 1)],
                vec![deliver(1, 1, 2)],
                vec![deliver(1, 1, 3)],
                vec![DeadLetter {
                    seq: 1,
                    deliveries: 3,
                    reason: DeadReason::AckTimeout,
                }],
            ],
        ),
        (
            "nothing expires before its deadline",
            limits(),
            vec![Join(1), Offer(1, 0, 1), At(9)],
            vec![vec![], vec![deliver(1, 1, 1)], vec![]],
        ),
        (
            "the last member leaving on the last delivery dead-letters",
            GroupLimits {
                max_deliveries: 1,
                ..limits()
            },
            vec![Join(1), Offer(1, 0, 1), Leave(1)],
            vec![
                vec![],
                vec![deliver(1, 1, 1)],
                vec![DeadLetter {
                    seq: 1,
                    deliveries: 1,
                    reason: DeadReason::MemberLeft,
                }],
            ],
        ),
        (
            "drop-oldest makes room by dropping the oldest waiting message",
            GroupLimits {
                overflow: Overflow::DropOldest,
                ..limits()
            },
            vec![
                Offer(1, 0, 1),
                Offer(2, 0, 1),
                Offer(3, 0, 1),
                Offer(4, 0, 1),
                Offer(5, 0, 1),
                Join(1),
            ],
            vec![
                vec![],
                vec![],
                vec![],
                vec![],
                vec![Dropped { seq: 1 }],
                vec![deliver(1, 2, 1), deliver(1, 3, 1)],
            ],
        ),
    ];
    for (name, limits, script, expected) in cases {
        let got = run(limits, &script);
        let expected: Vec<Result<Vec<Effect>, String>> = expected.into_iter().map(Ok).collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn a_full_backlog_refuses_by_count_and_by_bytes() {
    // (A member is there: a group without any drops its oldest instead.)
    let got = run(
        limits(),
        &[
            Join(1),
            Offer(1, 0, 1),
            Offer(2, 0, 1),
            Offer(3, 0, 1),
            Offer(4, 0, 1),
            Offer(5, 0, 1),
        ],
    );
    assert_eq!(
        got[5],
        Err(Refused::Full {
            messages: 4,
            bytes: 4
        }
        .to_string())
    );
    let got = run(
        limits(),
        &[
            Join(1),
            Offer(1, 0, 600),
            Offer(2, 0, 600),
            Offer(3, 0, 2000),
        ],
    );
    assert_eq!(
        got[2],
        Err(Refused::Full {
            messages: 1,
            bytes: 600
        }
        .to_string())
    );
    assert_eq!(
        got[3],
        Err(Refused::TooLarge {
            bytes: 2000,
            limit: 1000
        }
        .to_string())
    );
    // In flight counts too, and acks make room.
    let got = run(
        GroupLimits {
            backlog_messages: 1,
            ..limits()
        },
        &[
            Join(1),
            Offer(1, 0, 1),
            Offer(2, 0, 1),
            Ack(1, 1),
            Offer(3, 0, 1),
        ],
    );
    assert!(got[2].is_err());
    assert_eq!(got[4], Ok(vec![deliver(1, 3, 1)]));
}

#[test]
fn stale_and_foreign_acks_are_refused() {
    let mut dispatch = Dispatch::new(limits());
    let now = Instant::now();
    dispatch.join(1, now);
    dispatch.join(2, now);
    dispatch.offer(1, 0, 1, now).expect("admitted");
    assert_eq!(
        dispatch.ack(2, 1, now),
        Err(AckError::NotInFlight { seq: 1 })
    );
    assert!(dispatch.ack(1, 1, now).is_ok());
    assert_eq!(
        dispatch.ack(1, 1, now),
        Err(AckError::NotInFlight { seq: 1 })
    );
    assert_eq!(dispatch.counts(), (0, 0, 0));
}

#[test]
fn every_message_is_handed_out_once_until_acked() {
    // Many members, many messages, acks in a scrambled order: every
    // message is delivered exactly once and the books balance.
    let mut dispatch = Dispatch::new(GroupLimits {
        backlog_messages: 1000,
        backlog_bytes: 1 << 20,
        ..limits()
    });
    let now = Instant::now();
    let mut delivered = std::collections::HashMap::new();
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut record = |effects: Vec<Effect>, pending: &mut Vec<(u64, u64)>| {
        for effect in effects {
            let Deliver {
                member,
                seq,
                delivery,
            } = effect
            else {
                panic!("unexpected {effect:?}")
            };
            assert_eq!(delivery, 1);
            assert!(
                delivered.insert(seq, member).is_none(),
                "{seq} delivered twice"
            );
            pending.push((member, seq));
        }
    };
    for member in 0..5 {
        record(dispatch.join(member, now), &mut pending);
    }
    for seq in 1..=500 {
        record(dispatch.offer(seq, 0, 10, now).expect("room"), &mut pending);
        if seq % 3 == 0
            && let Some((member, acked)) = pending.pop()
        {
            record(
                dispatch.ack(member, acked, now).expect("in flight"),
                &mut pending,
            );
        }
    }
    while let Some((member, seq)) = pending.pop() {
        record(
            dispatch.ack(member, seq, now).expect("in flight"),
            &mut pending,
        );
    }
    assert_eq!(delivered.len(), 500);
    assert_eq!(dispatch.counts(), (0, 0, 0));
}

#[test]
fn room_answers_what_offer_would() {
    let now = Instant::now();
    let mut refuse = Dispatch::new(GroupLimits {
        max_unacked_per_member: 1,
        ..limits()
    });
    refuse.join(1, now);
    let mut drop = Dispatch::new(GroupLimits {
        overflow: Overflow::DropOldest,
        ..limits()
    });
    drop.join(1, now);
    for seq in 1..=3 {
        refuse.offer(seq, 0, 10, now).expect("room");
        drop.offer(seq, 0, 10, now).expect("room");
    }
    assert!(refuse.room(1, 10).is_ok());
    assert!(refuse.room(2, 10).is_err(), "4 messages at most");
    assert!(refuse.room(1, 991).is_err(), "1000 bytes at most");
    // Two of three are in flight to member 1: one waiting can be dropped.
    assert!(drop.room(2, 10).is_ok());
    assert!(drop.room(3, 10).is_err());
}

#[test]
fn a_group_without_members_drops_its_oldest_rather_than_refuse() {
    let got = run(
        limits(),
        &[
            Offer(1, 0, 1),
            Offer(2, 0, 1),
            Offer(3, 0, 1),
            Offer(4, 0, 1),
            Offer(5, 0, 1),
            Join(1),
        ],
    );
    assert_eq!(got[4], Ok(vec![Dropped { seq: 1 }]));
    assert_eq!(got[5], Ok(vec![deliver(1, 2, 1), deliver(1, 3, 1)]));
}
