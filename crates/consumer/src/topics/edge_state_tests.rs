//! Table tests of the edge machine: each scenario is a list of rows, an
//! event and exactly the effects it must produce (for a message, its fate).

use super::*;

fn at(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

/// One event of a scenario.
#[derive(Debug, Clone)]
enum Ev {
    Want(Option<&'static str>),
    Unsent(u64),
    Acked(u64, Position, Option<(bool, Position)>),
    Refused(u64),
    Msg(&'static str, Position),
    Moved(&'static str, Position),
    LinkDown(&'static str),
    LinkUp(&'static str),
    View(Option<&'static str>, bool),
    Fire(Timer),
    Idle,
}

/// What a row expects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Effects(Vec<Effect>),
    Fate(Fate),
}

fn sub(peer: &str, since: Position, id: u64) -> Effect {
    Effect::Subscribe {
        peer: peer.into(),
        since,
        id,
    }
}

fn unsub(peer: &str) -> Effect {
    Effect::Unsubscribe { peer: peer.into() }
}

fn effects(list: Vec<Effect>) -> Out {
    Out::Effects(list)
}

const LIVE: Out = Out::Fate(Fate::Keep {
    fan_out: true,
    ready: false,
});
const HISTORY: Out = Out::Fate(Fate::Keep {
    fan_out: false,
    ready: false,
});
const DROP: Out = Out::Fate(Fate::Drop);

struct Harness {
    edge: Edge,
    last: Position,
    ring: Ring,
    next_id: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            edge: Edge::default(),
            last: at(0, 0),
            ring: Ring::default(),
            next_id: 1,
        }
    }

    fn step(&mut self, event: Ev) -> Out {
        let Harness {
            edge,
            last,
            ring,
            next_id,
        } = self;
        let mut ids = || {
            let id = *next_id;
            *next_id += 1;
            id
        };
        let mut stream = Stream { last, ring };
        let mut out = Vec::new();
        match event {
            Ev::Want(owner) => edge.want(owner, &stream, &mut ids, &mut out),
            Ev::Unsent(id) => edge.unsent(id),
            Ev::Acked(id, position, resume) => {
                edge.acked(id, position, resume, &mut stream, &mut out)
            }
            Ev::Refused(id) => edge.refused(id, &mut out),
            Ev::Msg(from, position) => return Out::Fate(edge.message(from, position, &mut stream)),
            Ev::Moved(from, end) => edge.moved(from, end, &mut stream, &mut ids, &mut out),
            Ev::LinkDown(peer) => edge.link_down(peer, &mut out),
            Ev::LinkUp(peer) => edge.link_up(peer, &stream, &mut ids, &mut out),
            Ev::View(owner, wanted) => edge.view(owner, wanted, &stream, &mut ids, &mut out),
            Ev::Fire(timer) => edge.timer(timer, &stream, &mut ids, &mut out),
            Ev::Idle => edge.idle(&mut out),
        }
        Out::Effects(out)
    }

    /// Runs every row, checking each one's output.
    fn run(&mut self, name: &str, rows: Vec<(Ev, Out)>) {
        for (index, (event, expected)) in rows.into_iter().enumerate() {
            let got = self.step(event.clone());
            assert_eq!(got, expected, "{name}, row {index}: {event:?}");
        }
    }
}

/// An edge of `c1` that mirrored an empty epoch 7 and received 7:1..=7:5.
fn live_at_7_5() -> Harness {
    let mut h = Harness::new();
    h.run(
        "setup",
        vec![
            (Ev::Want(Some("c1")), effects(vec![sub("c1", at(0, 0), 1)])),
            (
                Ev::Acked(1, at(7, 0), Some((true, at(7, 0)))),
                effects(vec![Effect::Ready]),
            ),
        ],
    );
    for offset in 1..=5 {
        assert_eq!(h.step(Ev::Msg("c1", at(7, offset))), LIVE);
    }
    h
}

#[test]
fn a_new_edge_mirrors_the_owners_history_before_it_is_ready() {
    // Defect 1: a resume at a non-owner replayed nothing. The edge now keeps
    // what the owner holds, so a local `since` is served from its ring.
    let mut h = Harness::new();
    h.run(
        "mirror",
        vec![
            (Ev::Want(Some("c1")), effects(vec![sub("c1", at(0, 0), 1)])),
            // The owner holds 7:2..=7:4 of epoch 7 (7:1 was evicted).
            (
                Ev::Acked(1, at(7, 4), Some((false, at(7, 1)))),
                effects(vec![]),
            ),
            (Ev::Msg("c1", at(7, 2)), HISTORY),
            (Ev::Msg("c1", at(7, 3)), HISTORY),
            (
                Ev::Msg("c1", at(7, 4)),
                Out::Fate(Fate::Keep {
                    fan_out: false,
                    ready: true,
                }),
            ),
            (Ev::Msg("c1", at(7, 5)), LIVE),
            (Ev::Msg("c1", at(7, 5)), DROP),
            (Ev::Msg("c9", at(7, 6)), DROP),
        ],
    );
    assert!(h.edge.is_ready());
    assert_eq!(h.last, at(7, 5));
}

#[test]
fn not_ready_until_the_mirror_is_complete() {
    let mut h = Harness::new();
    h.run(
        "waiting",
        vec![
            (Ev::Want(Some("c1")), effects(vec![sub("c1", at(0, 0), 1)])),
            (
                Ev::Acked(1, at(7, 2), Some((true, at(7, 0)))),
                effects(vec![]),
            ),
            (Ev::Msg("c1", at(7, 1)), HISTORY),
        ],
    );
    assert!(!h.edge.is_ready());
    // A second want while the subscription is live asks nothing more.
    assert_eq!(h.step(Ev::Want(Some("c1"))), effects(vec![]));
}

#[test]
fn a_lost_upstream_is_stalled_then_resumed_without_a_gap() {
    // Defect 4: subscribers were left in silence.
    let mut h = live_at_7_5();
    h.run(
        "resume",
        vec![
            (
                Ev::LinkDown("c1"),
                effects(vec![Effect::Notify(Notice::Stalled { owner: "c1".into() })]),
            ),
            // Told once, however often the link fails.
            (Ev::LinkDown("c1"), effects(vec![])),
            (Ev::LinkUp("c1"), effects(vec![sub("c1", at(7, 5), 2)])),
            (
                Ev::Acked(2, at(7, 8), Some((true, at(7, 5)))),
                effects(vec![Effect::Notify(Notice::Resumed), Effect::Ready]),
            ),
            (Ev::Msg("c1", at(7, 6)), LIVE),
        ],
    );
}

#[test]
fn an_owner_that_lost_its_history_is_one_gap_on_this_topic_not_a_resync() {
    // Defect 2: every subscriber of the edge was closed with 4010.
    let mut h = live_at_7_5();
    h.run(
        "restarted owner",
        vec![
            (
                Ev::LinkDown("c1"),
                effects(vec![Effect::Notify(Notice::Stalled { owner: "c1".into() })]),
            ),
            (Ev::LinkUp("c1"), effects(vec![sub("c1", at(7, 5), 2)])),
            // The owner restarted: epoch 9, which it holds from 9:1.
            (
                Ev::Acked(2, at(9, 2), Some((false, at(9, 0)))),
                effects(vec![
                    Effect::Notify(Notice::Resumed),
                    Effect::Notify(Notice::Gap {
                        after: at(7, 5),
                        resume: at(9, 0),
                    }),
                    Effect::Ready,
                ]),
            ),
            (Ev::Msg("c1", at(9, 1)), LIVE),
            (Ev::Msg("c1", at(9, 2)), LIVE),
            // A late message of the lost epoch is not delivered after it.
            (Ev::Msg("c1", at(7, 6)), DROP),
        ],
    );
    assert!(!h.ring.is_sealed(7), "a lost epoch did not end cleanly");
}

#[test]
fn a_refused_subscribe_is_asked_again() {
    let mut h = Harness::new();
    h.run(
        "refused",
        vec![
            (Ev::Want(Some("c1")), effects(vec![sub("c1", at(0, 0), 1)])),
            (
                Ev::Refused(1),
                effects(vec![Effect::After {
                    delay: RETRY_AFTER,
                    timer: Timer::Retry,
                }]),
            ),
            // A stale refusal changes nothing.
            (Ev::Refused(1), effects(vec![])),
            (
                Ev::Fire(Timer::Retry),
                effects(vec![sub("c1", at(0, 0), 2)]),
            ),
            (
                Ev::Acked(2, at(3, 0), Some((true, at(3, 0)))),
                effects(vec![Effect::Ready]),
            ),
            // An answer to the old request is ignored.
            (Ev::Acked(1, at(3, 0), None), effects(vec![])),
        ],
    );
}

#[test]
fn a_subscribe_that_could_not_be_sent_goes_out_when_the_link_is_up() {
    let mut h = Harness::new();
    h.run(
        "unsent",
        vec![
            (Ev::Want(Some("c1")), effects(vec![sub("c1", at(0, 0), 1)])),
            (Ev::Unsent(1), effects(vec![])),
            (Ev::LinkUp("c2"), effects(vec![])),
            (Ev::LinkUp("c1"), effects(vec![sub("c1", at(0, 0), 2)])),
        ],
    );
}

#[test]
fn ownership_moves_after_the_old_owners_moved_with_no_gap() {
    let mut h = live_at_7_5();
    h.run(
        "handoff",
        vec![
            // The view names c2; c1 keeps relaying until it seals.
            (
                Ev::View(Some("c2"), true),
                effects(vec![Effect::After {
                    delay: SEAL_PATIENCE,
                    timer: Timer::SealPatience,
                }]),
            ),
            (Ev::Msg("c1", at(7, 6)), LIVE),
            (
                Ev::Moved("c1", at(7, 6)),
                effects(vec![Effect::RelayMoved, sub("c2", at(0, 0), 2)]),
            ),
            // Still ready: c1 stays until c2 acks.
            (Ev::Msg("c2", at(8, 1)), LIVE),
            (
                Ev::Acked(2, at(8, 1), Some((true, at(8, 0)))),
                effects(vec![unsub("c1"), Effect::Ready]),
            ),
            // The timer of the earlier wait finds nothing to do.
            (Ev::Fire(Timer::SealPatience), effects(vec![])),
            (Ev::Msg("c1", at(7, 7)), DROP),
        ],
    );
    assert!(h.ring.is_sealed(7));
}

#[test]
fn an_old_owner_that_never_seals_is_left_after_the_patience() {
    let mut h = live_at_7_5();
    h.run(
        "patience",
        vec![
            (
                Ev::View(Some("c2"), true),
                effects(vec![Effect::After {
                    delay: SEAL_PATIENCE,
                    timer: Timer::SealPatience,
                }]),
            ),
            (
                Ev::Fire(Timer::SealPatience),
                effects(vec![sub("c2", at(7, 5), 2)]),
            ),
            // c2 never heard of epoch 7: a gap, then its epoch.
            (
                Ev::Acked(2, at(8, 3), Some((false, at(8, 0)))),
                effects(vec![
                    unsub("c1"),
                    Effect::Notify(Notice::Gap {
                        after: at(7, 5),
                        resume: at(8, 0),
                    }),
                    Effect::Ready,
                ]),
            ),
            (Ev::Msg("c2", at(8, 1)), LIVE),
        ],
    );
}

#[test]
fn an_edge_without_subscribers_drops_its_upstreams() {
    let mut h = live_at_7_5();
    h.run(
        "idle",
        vec![
            (
                Ev::View(Some("c2"), true),
                effects(vec![Effect::After {
                    delay: SEAL_PATIENCE,
                    timer: Timer::SealPatience,
                }]),
            ),
            (
                Ev::Moved("c1", at(7, 5)),
                effects(vec![Effect::RelayMoved, sub("c2", at(0, 0), 2)]),
            ),
            (Ev::Idle, effects(vec![unsub("c2"), unsub("c1")])),
        ],
    );
    assert!(!h.edge.is_ready());
}

#[test]
fn an_unwanted_edge_does_not_subscribe_on_a_view_change() {
    let mut h = Harness::new();
    h.run(
        "unwanted",
        vec![
            (Ev::View(Some("c2"), false), effects(vec![])),
            (Ev::View(None, true), effects(vec![])),
            (
                Ev::View(Some("c2"), true),
                effects(vec![sub("c2", at(0, 0), 1)]),
            ),
        ],
    );
}

#[test]
fn a_new_owner_keeps_following_an_unsealed_acked_upstream() {
    let h = live_at_7_5();
    let mut out = Vec::new();
    assert_eq!(h.edge.clone().into_predecessor(&mut out), Some("c1".into()));
    assert!(out.is_empty());
    // A sealed one is dropped.
    let mut h = live_at_7_5();
    h.run(
        "sealed",
        vec![(Ev::Moved("c1", at(7, 5)), effects(vec![Effect::RelayMoved]))],
    );
    let mut out = Vec::new();
    assert_eq!(h.edge.into_predecessor(&mut out), None);
    assert_eq!(out, [unsub("c1")]);
}
