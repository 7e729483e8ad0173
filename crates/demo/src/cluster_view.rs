//! `shardq-demo cluster`: every node's own view of the cluster (its
//! `GET {admin}/v1/status`) side by side with the cluster file's, and a
//! warning for each place they disagree.
//!
//! The probes run concurrently, each under its own timeout; the analysis
//! ([`analyze`]) is a pure function of the file and the answers.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use shardq_protocol::ClusterConfig;
use shardq_protocol::status::{LinkState, NodeStatus};

use crate::cluster::ClusterArgs;

/// How many hex digits of a node list hash the table shows.
const SHORT_HASH: usize = 8;

/// Options of `cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterViewArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How long each node has to answer: seconds (`2`, `0.5`, `2s`) or
    /// milliseconds (`500ms`).
    #[arg(long, default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A duration given as seconds (`2`, `0.5`, `2s`) or milliseconds (`500ms`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let (number, seconds_per_unit) = if let Some(ms) = trimmed.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = trimmed.strip_suffix('s') {
        (s, 1.0)
    } else {
        (trimmed, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("{text:?} is not a duration: use seconds (2, 0.5, 2s) or milliseconds (500ms)")
    })?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text:?}: the timeout must be greater than 0"));
    }
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|e| format!("{text:?}: {e}"))
}

/// What asking one node gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The file gives it no `admin` URL.
    NoAdmin,
    /// No usable answer: why, naming the URL.
    Failed(String),
    /// Its answer.
    Answered(NodeStatus),
}

/// One node of the file and what it answered.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its id in the file.
    pub id: String,
    /// `consumer` or `producer`, per the file.
    pub kind: &'static str,
    /// Its admin URL, if the file has one.
    pub admin: Option<String>,
    /// Whether it answered; `null` when it has no admin URL.
    pub reachable: Option<bool>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its answer, as it gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<NodeStatus>,
}

/// Something the operator should look at.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// `unreachable`, `no_admin`, `wrong_node`, `node_list`,
    /// `nodes_disagree` or `link_down`.
    pub kind: &'static str,
    /// The nodes it is about.
    pub nodes: Vec<String>,
    /// Whether it makes the command exit 1.
    pub fails: bool,
    /// One line saying what is wrong.
    pub message: String,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No warning that fails: every checked node answered, as itself, with
    /// the file's node list.
    pub ok: bool,
    /// The cluster file.
    pub file: String,
    /// The file's node list hash (the reference).
    pub node_list_hash: String,
    /// The file's consumer ids.
    pub node_list: Vec<String>,
    /// Every node of the file, consumers first.
    pub nodes: Vec<NodeView>,
    /// What disagrees or could not be checked.
    pub warnings: Vec<Warning>,
}

/// `shardq-demo cluster`: prints the report; `Err` when a node is
/// unreachable or disagrees.
pub async fn run(args: ClusterViewArgs) -> Result<(), String> {
    let path = &args.cluster.config;
    let config = shardq::cluster_file::load_cluster(path).map_err(|e| e.to_string())?;
    let file = path.display().to_string();
    let nodes = config
        .consumers
        .iter()
        .map(|entry| (entry, "consumer"))
        .chain(config.producers.iter().map(|entry| (entry, "producer")));
    if nodes.clone().all(|(entry, _)| entry.admin.is_none()) {
        return Err(format!(
            "nothing to check: no node in {file} has an admin URL (e.g. admin = \"http://consumer-0:9100\")"
        ));
    }
    let probes: Vec<_> = nodes
        .map(|(entry, _)| {
            let admin = entry.admin.clone();
            let timeout = args.timeout;
            tokio::spawn(async move {
                match admin {
                    Some(admin) => probe(&admin, timeout).await,
                    None => Probe::NoAdmin,
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(probes.len());
    for probe in probes {
        answers.push(
            probe
                .await
                .unwrap_or_else(|e| Probe::Failed(format!("the probe failed: {e}"))),
        );
    }
    let report = analyze(&config, file, answers);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&report));
    }
    verdict(&report)
}

/// `GET {admin}/v1/status` within `timeout`.
async fn probe(admin: &str, timeout: Duration) -> Probe {
    let url = format!("{}/v1/status", admin.trim_end_matches('/'));
    let failed = |why: String| Probe::Failed(format!("GET {url}: {why}"));
    let (addr, path) = match crate::health::split_url(&url) {
        Ok(parts) => parts,
        Err(error) => return Probe::Failed(error),
    };
    match tokio::time::timeout(timeout, crate::health::get(&addr, &path)).await {
        Err(_) => failed(format!("no answer within {timeout:?}")),
        Ok(Err(error)) => failed(error.to_string()),
        Ok(Ok((200, body))) => match serde_json::from_str(&body) {
            Ok(status) => Probe::Answered(status),
            Err(error) => failed(format!(
                "not a cluster status ({error}): {}",
                excerpt(&body)
            )),
        },
        Ok(Ok((status, body))) => failed(format!("HTTP {status}: {}", excerpt(&body))),
    }
}

/// The start of `body` on one line, for error messages.
fn excerpt(body: &str) -> String {
    let line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None if line.is_empty() => "(empty body)".to_owned(),
        None => line,
    }
}

fn short(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

/// `a, b and c`.
fn names(items: &[String]) -> String {
    match items {
        [] => "none".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// How `list` differs from the file's `reference` ids.
fn difference(reference: &[String], list: &[String]) -> String {
    let file: BTreeSet<&String> = reference.iter().collect();
    let node: BTreeSet<&String> = list.iter().collect();
    let missing: Vec<String> = file.difference(&node).map(|id| (*id).clone()).collect();
    let extra: Vec<String> = node.difference(&file).map(|id| (*id).clone()).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", names(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("extra {}", names(&extra)));
    }
    if parts.is_empty() {
        "same ids as the file, different URLs (the hash covers ids and URLs)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Compares every answer with the file and with each other. `probes` are in
/// the file's order: consumers, then producers.
pub fn analyze(config: &ClusterConfig, file: String, probes: Vec<Probe>) -> Report {
    let reference = config.node_list_hash();
    let reference_list = config.consumer_ids();
    let entries = config
        .consumers
        .iter()
        .map(|entry| (entry, "consumer"))
        .chain(config.producers.iter().map(|entry| (entry, "producer")));
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let warn = |kind, nodes: Vec<String>, fails, message| Warning {
        kind,
        nodes,
        fails,
        message,
    };
    // Distinct node lists among the answers, in order of first sight:
    // (hash, ids, nodes running it).
    let mut lists: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for ((entry, kind), probe) in entries.zip(probes) {
        let mut view = NodeView {
            id: entry.id.clone(),
            kind,
            admin: entry.admin.clone(),
            reachable: None,
            error: None,
            answer: None,
        };
        match probe {
            Probe::NoAdmin => warnings.push(warn(
                "no_admin",
                vec![entry.id.clone()],
                false,
                format!(
                    "{} has no admin URL in the cluster file; its view cannot be checked",
                    entry.id
                ),
            )),
            Probe::Failed(error) => {
                warnings.push(warn(
                    "unreachable",
                    vec![entry.id.clone()],
                    true,
                    format!("{} is unreachable: {error}", entry.id),
                ));
                view.reachable = Some(false);
                view.error = Some(error);
            }
            Probe::Answered(status) => {
                view.reachable = Some(true);
                if status.node != entry.id || status.kind.as_str() != kind {
                    warnings.push(warn(
                        "wrong_node",
                        vec![entry.id.clone()],
                        true,
                        format!(
                            "{}'s admin URL {} answers as {} {}, not as {kind} {}",
                            entry.id,
                            entry.admin.as_deref().unwrap_or_default(),
                            status.kind.as_str(),
                            status.node,
                            entry.id
                        ),
                    ));
                }
                match lists
                    .iter_mut()
                    .find(|(hash, _, _)| *hash == status.node_list_hash)
                {
                    Some((_, _, holders)) => holders.push(entry.id.clone()),
                    None => lists.push((
                        status.node_list_hash.clone(),
                        status.node_list.clone(),
                        vec![entry.id.clone()],
                    )),
                }
                for link in status
                    .links
                    .iter()
                    .filter(|link| link.state != LinkState::Up)
                {
                    let why = link
                        .last_error
                        .as_deref()
                        .map(|error| format!(": {error}"))
                        .unwrap_or_default();
                    warnings.push(warn(
                        "link_down",
                        vec![entry.id.clone()],
                        false,
                        format!(
                            "{}'s link to {} ({}) is down{why}",
                            entry.id, link.id, link.url
                        ),
                    ));
                }
                view.answer = Some(status);
            }
        }
        nodes.push(view);
    }
    for (hash, list, holders) in lists.iter().filter(|(hash, _, _)| *hash != reference) {
        let verb = if holders.len() == 1 { "runs" } else { "run" };
        warnings.push(warn(
            "node_list",
            holders.clone(),
            true,
            format!(
                "{} {verb} node list {} [{}], not the file's {} [{}]: {}",
                names(holders),
                short(hash),
                list.join(", "),
                short(&reference),
                reference_list.join(", "),
                difference(&reference_list, list)
            ),
        ));
    }
    if lists.len() > 1 {
        let groups: Vec<String> = lists
            .iter()
            .map(|(hash, _, holders)| format!("{} on {}", short(hash), names(holders)))
            .collect();
        warnings.push(warn(
            "nodes_disagree",
            lists
                .iter()
                .flat_map(|(_, _, holders)| holders.clone())
                .collect(),
            true,
            format!(
                "the nodes route with {} different node lists: {}",
                lists.len(),
                groups.join("; ")
            ),
        ));
    } else if let [(hash, _, _)] = lists.as_slice()
        && *hash != reference
    {
        warnings.push(warn(
                "node_list",
                Vec::new(),
                true,
                format!(
                    "every node that answered runs node list {}, not this file's {}: is {file} the file the nodes run with?",
                    short(hash),
                    short(&reference)
                ),
            ));
    }
    Report {
        ok: warnings.iter().all(|warning| !warning.fails),
        file,
        node_list_hash: reference,
        node_list: reference_list,
        nodes,
        warnings,
    }
}

/// The report as a table and a list of warnings.
pub fn render(report: &Report) -> String {
    let header = [
        "node",
        "kind",
        "reachable",
        "hash",
        "node list",
        "links",
        "owned",
        "edges",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.map(str::to_owned).to_vec()];
    let mut differs = false;
    for node in &report.nodes {
        let reachable = match node.reachable {
            None => "no admin URL",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        let mut row = [node.id.clone(), node.kind.to_owned(), reachable.to_owned()]
            .into_iter()
            .chain(std::iter::repeat_n("-".to_owned(), 5))
            .collect::<Vec<_>>();
        if let Some(status) = &node.answer {
            let mark = if status.node_list_hash == report.node_list_hash {
                ""
            } else {
                differs = true;
                " *"
            };
            let count = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
            row[3] = format!("{}{mark}", short(&status.node_list_hash));
            row[4] = status.node_list.join(",");
            row[5] = format!("{}/{}", status.links_up(), status.links.len());
            row[6] = count(status.owned_topics);
            row[7] = count(status.edge_topics);
        }
        rows.push(row);
    }
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "cluster file {}: node list hash {} [{}]\n\n",
        report.file,
        report.node_list_hash,
        report.node_list.join(", ")
    );
    for row in &rows {
        let mut line = String::new();
        for (cell, &width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if differs {
        out.push_str("* not the file's node list\n");
    }
    if !report.warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for warning in &report.warnings {
            let _ = writeln!(out, "  - {}", warning.message);
        }
    }
    let answered = report
        .nodes
        .iter()
        .filter(|node| node.reachable == Some(true))
        .count();
    if report.ok {
        let _ = writeln!(
            out,
            "\n{answered} of {} nodes answered; all run the file's node list",
            report.nodes.len()
        );
    }
    out
}

/// `Ok` when nothing fails; else one line counting what does.
fn verdict(report: &Report) -> Result<(), String> {
    if report.ok {
        return Ok(());
    }
    let count = |kind: &str| {
        report
            .warnings
            .iter()
            .filter(|warning| warning.kind == kind)
            .map(|warning| warning.nodes.len())
            .sum::<usize>()
    };
    let mut parts = Vec::new();
    let unreachable = count("unreachable");
    if unreachable > 0 {
        parts.push(format!("{unreachable} unreachable"));
    }
    let other_list: usize = report
        .nodes
        .iter()
        .filter_map(|node| node.answer.as_ref())
        .filter(|status| status.node_list_hash != report.node_list_hash)
        .count();
    if other_list > 0 {
        parts.push(format!("{other_list} on another node list"));
    }
    let wrong = count("wrong_node");
    if wrong > 0 {
        parts.push(format!("{wrong} answering as another node"));
    }
    Err(format!(
        "the cluster is not consistent: {} of {} nodes ({})",
        unreachable + other_list + wrong,
        report.nodes.len(),
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardq_protocol::status::{LinkStatus, NodeKind};

    fn config() -> ClusterConfig {
        ClusterConfig::parse(
            "[[consumers]]\nid = \"c0\"\nurl = \"ws://c0:1\"\nadmin = \"http://c0:9\"\n\
             [[consumers]]\nid = \"c1\"\nurl = \"ws://c1:1\"\nadmin = \"http://c1:9\"\n\
             [[producers]]\nid = \"p0\"\nurl = \"ws://p0:1\"\nadmin = \"http://p0:9\"\n",
        )
        .unwrap()
    }

    fn answer(node: &str, kind: &str, cluster: &ClusterConfig) -> Probe {
        let kind = match kind {
            "consumer" => NodeKind::Consumer,
            _ => NodeKind::Producer,
        };
        Probe::Answered(NodeStatus {
            node: node.into(),
            kind,
            node_list: cluster.consumer_ids(),
            node_list_hash: cluster.node_list_hash(),
            links: vec![LinkStatus {
                down_for_ms: None,
                id: "c1".into(),
                url: "ws://c1:1".into(),
                state: LinkState::Up,
                in_flight: 0,
                last_error: None,
                reconnects: 0,
            }],
            owned_topics: Some(3),
            edge_topics: Some(0),
            stalled_topics: Some(0),
            unavailable_share: None,
        })
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(
            parse_timeout("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn agreeing_nodes_are_ok() {
        let mut config = config();
        config.producers[0].admin = None;
        let report = analyze(
            &config,
            "f".into(),
            vec![
                answer("c0", "consumer", &config),
                answer("c1", "consumer", &config),
                Probe::NoAdmin,
            ],
        );
        assert!(report.ok, "{report:?}");
        assert_eq!(report.warnings.len(), 1);
        assert_eq!(
            report.warnings[0].message,
            "p0 has no admin URL in the cluster file; its view cannot be checked"
        );
        assert!(verdict(&report).is_ok());
        let text = render(&report);
        assert!(text.contains("2 of 3 nodes answered"), "{text}");
        assert!(text.contains("no admin URL"), "{text}");
    }

    #[test]
    fn a_node_on_another_list_is_named_with_the_difference() {
        let config = config();
        let mut grown = config.clone();
        grown.consumers.push(shardq_protocol::NodeEntry {
            id: "c2".into(),
            url: "ws://c2:1".into(),
            admin: None,
            listen: None,
            http: None,
        });
        let mut moved = config.clone();
        moved.consumers[1].url = "ws://elsewhere:1".into();
        let report = analyze(
            &config,
            "f".into(),
            vec![
                answer("c0", "consumer", &config),
                answer("c1", "consumer", &grown),
                answer("p0", "producer", &moved),
            ],
        );
        assert!(!report.ok);
        let messages: Vec<&str> = report.warnings.iter().map(|w| w.message.as_str()).collect();
        let short_file = short(&report.node_list_hash).to_owned();
        assert!(
            messages.contains(
                &format!(
                    "c1 runs node list {} [c0, c1, c2], not the file's {short_file} [c0, c1]: extra c2",
                    short(&grown.node_list_hash())
                )
                .as_str()
            ),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("p0 runs")
                && m.ends_with("different URLs (the hash covers ids and URLs)")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("the nodes route with 3 different node lists")),
            "{messages:?}"
        );
        assert_eq!(
            verdict(&report).unwrap_err(),
            "the cluster is not consistent: 2 of 3 nodes (2 on another node list)"
        );
        assert!(render(&report).contains("* not the file's node list"));
    }

    #[test]
    fn unreachable_down_and_misnamed_nodes() {
        let config = config();
        let mut down = answer("c0", "consumer", &config);
        if let Probe::Answered(status) = &mut down {
            status.links[0].state = LinkState::Down;
            status.links[0].last_error = Some("connection refused".into());
        }
        let report = analyze(
            &config,
            "f".into(),
            vec![
                down,
                Probe::Failed("GET http://c1:9/v1/cluster: no answer within 2s".into()),
                answer("c1", "consumer", &config),
            ],
        );
        let messages: Vec<&str> = report.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "c0's link to c1 (ws://c1:1) is down: connection refused",
                "c1 is unreachable: GET http://c1:9/v1/cluster: no answer within 2s",
                "p0's admin URL http://p0:9 answers as consumer c1, not as producer p0",
            ]
        );
        assert_eq!(
            verdict(&report).unwrap_err(),
            "the cluster is not consistent: 2 of 3 nodes (1 unreachable, 1 answering as another node)"
        );
    }

    #[test]
    fn every_node_agreeing_on_another_list_questions_the_file() {
        let config = config();
        let mut other = config.clone();
        other.consumers.pop();
        let report = analyze(
            &config,
            "shardq.toml".into(),
            vec![
                answer("c0", "consumer", &other),
                answer("c1", "consumer", &other),
                Probe::NoAdmin,
            ],
        );
        let last = &report.warnings.last().unwrap().message;
        assert!(
            last.ends_with("is shardq.toml the file the nodes run with?"),
            "{last}"
        );
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(""), "(empty body)");
        assert_eq!(excerpt("not\n found "), "not found");
        assert_eq!(excerpt(&"x".repeat(500)).chars().count(), 121);
    }
}
