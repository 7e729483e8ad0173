//! Table tests of the SSE stream state: frames in, events and ids out.

use shardq_net::codec::encode;
use shardq_protocol::{Ack, Frame, Position, Topic, TopicPosition};

use super::{EventStream, event};

const LIMIT: usize = 1 << 20;

fn topic(name: &str) -> Topic {
    Topic::parse(name).expect("a valid topic")
}

fn at(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

fn message(name: &str, epoch: u64, offset: u64, payload: &str) -> String {
    format!(
        r#"{{"type":"message","topic":"{name}","epoch":{epoch},"offset":{offset},"payload":{payload}}}"#
    )
}

fn ack(index: u64, name: &str, start: Position, resume: Option<(bool, Position)>) -> String {
    Frame::Ack(Ack::subscribed(
        index,
        vec![TopicPosition {
            topic: topic(name),
            epoch: start.epoch,
            offset: start.offset,
        }],
        resume,
    ))
    .encode()
}

/// Runs `frames` (texts) through a stream and returns its output.
fn run(stream: &mut EventStream, frames: &[String]) -> String {
    let mut out = Vec::new();
    for text in frames {
        stream.frames(&encode::text_frame(text.as_bytes()), LIMIT, &mut out);
    }
    String::from_utf8(out).expect("SSE output is UTF-8")
}

#[test]
fn one_topic_stream_ids_are_epoch_offset() {
    let topics = [topic("database/create")];
    let mut stream = EventStream::new(&topics, false, &[None]);
    let out = run(
        &mut stream,
        &[
            ack(0, "database/create", at(7, 3), None),
            message("database/create", 7, 4, r#"{"id":1}"#),
        ],
    );
    let expected = format!(
        "id: 7:3\nevent: subscribed\ndata: {}\n\nid: 7:4\nevent: message\ndata: {}\n\n",
        ack(0, "database/create", at(7, 3), None),
        message("database/create", 7, 4, r#"{"id":1}"#)
    );
    assert_eq!(out, expected);
    assert_eq!(stream.id().as_deref(), Some("7:4"));
}

#[test]
fn wildcard_ids_carry_every_topic() {
    let topics = [topic("db/create"), topic("db/delete")];
    let mut stream = EventStream::new(&topics, true, &[None, None]);
    let first = run(
        &mut stream,
        &[
            ack(0, "db/create", at(5, 0), None),
            message("db/create", 5, 1, "0"),
        ],
    );
    assert!(
        !first.contains("id:"),
        "no id until every topic has a position: {first}"
    );
    run(&mut stream, &[ack(1, "db/delete", at(9, 2), None)]);
    assert_eq!(stream.id().as_deref(), Some("create=5:1,delete=9:2"));
    run(&mut stream, &[message("db/delete", 9, 3, "1")]);
    assert_eq!(stream.id().as_deref(), Some("create=5:1,delete=9:3"));
}

#[test]
fn unrecovered_resume_is_an_explicit_gap() {
    let topics = [topic("a/b")];
    let mut stream = EventStream::new(&topics, false, &[Some(at(4, 10))]);
    let out = run(
        &mut stream,
        &[ack(0, "a/b", at(6, 2), Some((false, at(6, 0))))],
    );
    assert!(out.contains("event: subscribed\n"), "{out}");
    let gap =
        r#"{"type":"gap","topic":"a/b","after":{"epoch":4,"offset":10},"epoch":6,"offset":0}"#;
    assert!(
        out.ends_with(&format!("id: 6:0\nevent: gap\ndata: {gap}\n\n")),
        "{out}"
    );
}

#[test]
fn recovered_resume_has_no_gap() {
    let topics = [topic("a/b")];
    let mut stream = EventStream::new(&topics, false, &[Some(at(4, 10))]);
    let out = run(
        &mut stream,
        &[ack(0, "a/b", at(4, 12), Some((true, at(4, 10))))],
    );
    assert!(!out.contains("event: gap"), "{out}");
    assert_eq!(stream.id().as_deref(), Some("4:10"));
}

#[test]
fn frames_of_each_kind() {
    let cases: [(&str, &str, Option<&str>); 4] = [
        (
            r#"{"type":"gap","topic":"a/b","after":{"epoch":1,"offset":2},"epoch":3,"offset":0}"#,
            "gap",
            Some("3:0"),
        ),
        (
            r#"{"type":"stalled","topic":"a/b","owner":"consumer-1"}"#,
            "stalled",
            None,
        ),
        (r#"{"type":"resumed","topic":"a/b"}"#, "resumed", None),
        (
            r#"{"type":"error","id":0,"code":"unavailable","message":"no"}"#,
            "refused",
            None,
        ),
    ];
    for (text, name, id) in cases {
        let mut stream = EventStream::new(&[topic("a/b")], false, &[None]);
        let out = run(&mut stream, &[text.to_owned()]);
        let mut expected = Vec::new();
        event(&mut expected, name, id, text);
        assert_eq!(out.as_bytes(), expected, "{text}");
    }
}

#[test]
fn payload_line_breaks_become_data_lines() {
    let mut stream = EventStream::new(&[topic("a/b")], false, &[None]);
    let out = run(&mut stream, &[message("a/b", 1, 1, "{\n  \"x\": 1\r\n}")]);
    assert!(
        out.ends_with("data: {\"type\":\"message\",\"topic\":\"a/b\",\"epoch\":1,\"offset\":1,\"payload\":{\ndata:   \"x\": 1\ndata: }}\n\n"),
        "{out}"
    );
}

#[test]
fn concatenated_frames_and_foreign_topics() {
    let mut bytes = encode::text_frame(message("a/b", 1, 1, "1").as_bytes()).to_vec();
    bytes.extend_from_slice(&encode::text_frame(message("x/y", 1, 1, "2").as_bytes()));
    bytes.extend_from_slice(&encode::text_frame(message("a/b", 1, 2, "3").as_bytes()));
    let mut stream = EventStream::new(&[topic("a/b")], false, &[None]);
    let mut out = Vec::new();
    stream.frames(&bytes, LIMIT, &mut out);
    let out = String::from_utf8(out).expect("UTF-8");
    assert_eq!(out.matches("event: message").count(), 2, "{out}");
    assert_eq!(stream.id().as_deref(), Some("1:2"));
}

#[test]
fn last_event_ids() {
    let one = [topic("db/create")];
    let two = [topic("db/create"), topic("db/delete")];
    assert_eq!(
        EventStream::resume_from("7:42", &one, false),
        Ok(vec![Some(at(7, 42))])
    );
    assert_eq!(
        EventStream::resume_from("delete=3:1", &two, true),
        Ok(vec![None, Some(at(3, 1))])
    );
    assert_eq!(
        EventStream::resume_from("create=1:2,delete=3:4", &two, true),
        Ok(vec![Some(at(1, 2)), Some(at(3, 4))])
    );
    for (id, topics, wildcard) in [
        ("7", &one[..], false),
        ("a:b", &one[..], false),
        ("7:-1", &one[..], false),
        ("create:1:2", &two[..], true),
        ("update=1:2", &two[..], true),
        ("+7:1", &one[..], false),
        ("7: 1", &one[..], false),
        ("create=1:2,", &two[..], true),
        ("create=1:2,create=3:4", &two[..], true),
    ] {
        assert!(
            EventStream::resume_from(id, topics, wildcard).is_err(),
            "{id} should be refused"
        );
    }
}

#[test]
fn message_heads_are_read_without_decoding() {
    use super::message_head;
    let plain = message("db/create", 7, 42, r#"{"a":[1,2]}"#);
    assert_eq!(message_head(&plain), Some(("db/create", None, at(7, 42))));
    let tenant = r#"{"type":"message","topic":"db/create","tenant":"acme","epoch":1,"offset":2,"payload":3}"#;
    assert_eq!(
        message_head(tenant),
        Some(("db/create", Some("acme"), at(1, 2)))
    );
    for other in [
        r#"{"type":"gap","topic":"a/b","after":{"epoch":1,"offset":2},"epoch":3,"offset":0}"#,
        r#"{"type":"message","topic":"a/b","epoch":x,"offset":2,"payload":3}"#,
        r#"{"type":"message","topic":"a/b","offset":2,"epoch":1,"payload":3}"#,
        r#"{"type":"message","topic":"a/b"#,
    ] {
        assert_eq!(message_head(other), None, "{other}");
    }
    // A tenant's stream matches only its tenant's messages.
    let topics = [Topic::from_wire("db/create", Some("acme")).expect("a topic")];
    let mut stream = EventStream::new(&topics, false, &[None]);
    let out = run(&mut stream, &[plain, tenant.to_owned()]);
    assert_eq!(out.matches("event: message").count(), 1, "{out}");
    assert_eq!(stream.id().as_deref(), Some("1:2"));
}

#[test]
fn empty_lines_survive_and_line_breaks_become_newlines() {
    let mut out = Vec::new();
    event(&mut out, "message", None, "[1,\n\n2,\r\r3,\r\n4]");
    assert_eq!(
        String::from_utf8(out).expect("UTF-8"),
        "event: message\ndata: [1,\ndata: \ndata: 2,\ndata: \ndata: 3,\ndata: 4]\n\n"
    );
}

#[test]
fn a_resume_from_beyond_the_latest_position_is_no_gap() {
    let topics = [topic("a/b")];
    let mut stream = EventStream::new(&topics, false, &[Some(at(7, 50))]);
    let out = run(
        &mut stream,
        &[ack(0, "a/b", at(7, 41), Some((false, at(7, 41))))],
    );
    assert!(!out.contains("event: gap"), "{out}");
    assert_eq!(stream.id().as_deref(), Some("7:41"));
}
