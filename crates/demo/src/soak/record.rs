//! What a soak run records: every publish with its answer, every message,
//! notice and closed connection each subscriber saw, and the faults the
//! test injected, read from the fault log. Plain data, so the verdict is a
//! pure function of it.

use shardq_protocol::Position;

/// Microseconds since the Unix epoch (the fault log's clock, the host's).
pub type Micros = u64;

/// The wall clock now, in [`Micros`].
pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Who sent a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A raw connection to producer `producer` (its index): no key, no
    /// retry, so every answer is the cluster's own.
    Raw {
        /// The producer's index in the cluster file.
        producer: usize,
    },
    /// The client library's `Publisher`: a key, retried until its deadline.
    Keyed,
}

/// What became of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet.
    Pending,
    /// Acked at this position.
    Acked(Position),
    /// Certainly not sequenced: the error code (`unavailable`,
    /// `shutting_down`, ...), or `closed_1001` for a raw publish still
    /// unanswered when its producer closed with 1001 (never read, §5.1).
    Refused(String),
    /// May or may not have been sequenced: `outcome_unknown`, or for the
    /// library a timeout or a broken connection.
    Unknown(String),
    /// A raw connection ended without 1001 before the answer: a publish
    /// the cluster never answered.
    Lost(String),
}

/// One publish. Its payload is `{"n":N}` with N its index in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Index into the run's topics.
    pub topic: usize,
    /// Who sent it.
    pub origin: Origin,
    /// When it was sent.
    pub sent: Micros,
    /// When the answer came (0 while pending).
    pub answered: Micros,
    /// The answer.
    pub outcome: Outcome,
}

/// Something a subscriber was told about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `gap`: after `after`, up to `resume`, nothing will be delivered.
    Gap {
        /// Last position delivered before it.
        after: Position,
        /// Where the stream goes on (messages up to it are lost).
        resume: Position,
    },
    /// A resume answered `recovered: false`: messages after `since` up to
    /// `replay` are lost.
    NotRecovered {
        /// The position the resume asked from.
        since: Position,
        /// Where the replay starts.
        replay: Position,
    },
    /// `stalled`.
    Stalled,
    /// `resumed`.
    Resumed,
}

/// What one subscriber (one connection at a time, always to the same
/// consumer) saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberLog {
    /// The consumer it connects to.
    pub consumer: String,
    /// For each publish index N, where it was delivered (if it was), and
    /// how many more times it was delivered at another position.
    pub delivered: Vec<Option<Position>>,
    /// Messages of publish N delivered again at another position.
    pub duplicates: Vec<u64>,
    /// Messages whose position was not after the last one of their topic.
    pub repeats: u64,
    /// Notices per topic, with when they came.
    pub notices: Vec<(Micros, usize, Notice)>,
    /// Connections that ended, with when and why.
    pub closes: Vec<(Micros, String)>,
}

/// A connection of a raw publisher that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherClose {
    /// When.
    pub at: Micros,
    /// The producer's index.
    pub producer: usize,
    /// Why (the close code, or the error).
    pub why: String,
}

/// A fault the test injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// SIGKILL, then started again: its in-memory state is lost.
    Kill,
    /// `docker pause`, then `unpause`: alive but silent.
    Pause,
    /// Disconnected from the network, then connected again.
    Partition,
    /// SIGTERM, then started again (a graceful restart).
    Restart,
}

impl FaultKind {
    /// The fault log's name for it.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Restart => "restart",
        }
    }
}

/// One fault: a node unavailable from `start` until `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What was done.
    pub kind: FaultKind,
    /// To which service (a node id: `consumer-1`, `producer-0`).
    pub service: String,
    /// When it began.
    pub start: Micros,
    /// When the node was back (running, connected or thawed).
    pub end: Micros,
}

/// Parses a fault log: lines `<unix ms> start|end <kind> <service>`, each
/// `start` followed by its `end`; `#` comments and blank lines ignored.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    let mut open: Option<(FaultKind, String, Micros)> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("fault log line {}: {why}: {line:?}", number + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [at, edge, kind, service] = fields[..] else {
            return Err(bad("expected `<unix ms> start|end <kind> <service>`"));
        };
        let at: u64 = at.parse().map_err(|_| bad("not a time in ms"))?;
        let kind = match kind {
            "kill" => FaultKind::Kill,
            "pause" => FaultKind::Pause,
            "partition" => FaultKind::Partition,
            "restart" => FaultKind::Restart,
            _ => return Err(bad("unknown fault kind")),
        };
        match (edge, open.take()) {
            ("start", None) => open = Some((kind, service.to_owned(), at * 1000)),
            ("end", Some((open_kind, open_service, start)))
                if open_kind == kind && open_service == service =>
            {
                faults.push(Fault {
                    kind,
                    service: open_service,
                    start,
                    end: (at * 1000).max(start),
                });
            }
            _ => return Err(bad("faults must be `start` then its `end`, one at a time")),
        }
    }
    if let Some((kind, service, _)) = open {
        return Err(format!("fault log: {} {service} never ended", kind.name()));
    }
    Ok(faults)
}
