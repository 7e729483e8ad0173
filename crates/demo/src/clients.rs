//! `shardq-demo clients --config FILE`: every node's connected clients
//! (`GET /v1/clients` on each admin port, all at once) merged into one
//! table, or JSON.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shardq_protocol::status::{ClientInfo, ClientsReport};

/// Options of `shardq-demo clients`.
#[derive(Debug, clap::Args)]
pub struct ClientsArgs {
    /// The cluster file; every node with an `admin` URL is asked.
    #[arg(long, env = "SHARDQ_CONFIG")]
    pub config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Time each node has to answer, in seconds.
    #[arg(long, default_value_t = 2)]
    pub timeout: u64,
}

/// One node's answer.
#[derive(Debug, Serialize)]
struct NodeClients {
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    clients: Vec<ClientInfo>,
}

/// Asks every node, prints what they answered; `Err` when one did not.
pub async fn run(args: ClientsArgs) -> Result<(), String> {
    let config = shardq::cluster_file::load_cluster(&args.config).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(args.timeout);
    let asks: Vec<_> = config
        .consumers
        .iter()
        .chain(&config.producers)
        .filter_map(|entry| entry.admin.clone().map(|admin| (entry.id.clone(), admin)))
        .map(|(id, admin)| tokio::spawn(async move { ask(id, &admin, timeout).await }))
        .collect();
    if asks.is_empty() {
        return Err(format!(
            "no node in {} has an admin URL",
            args.config.display()
        ));
    }
    let mut nodes = Vec::new();
    for ask in asks {
        nodes.push(ask.await.map_err(|e| e.to_string())?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&nodes).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&nodes));
    }
    let failed: Vec<_> = nodes
        .iter()
        .filter(|n| n.error.is_some())
        .map(|n| n.node.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("no answer from {}", failed.join(", ")))
    }
}

async fn ask(node: String, admin: &str, timeout: Duration) -> NodeClients {
    let url = format!("{}/v1/clients", admin.trim_end_matches('/'));
    let answer = async {
        let (addr, path) = crate::health::split_url(&url)?;
        match tokio::time::timeout(timeout, crate::health::get(&addr, &path)).await {
            Err(_) => Err(format!("GET {url}: no answer within {timeout:?}")),
            Ok(Err(error)) => Err(format!("GET {url}: {error}")),
            Ok(Ok((200, body))) => serde_json::from_str::<ClientsReport>(&body)
                .map_err(|error| format!("GET {url}: not a clients report: {error}")),
            Ok(Ok((status, _))) => Err(format!("GET {url}: HTTP {status}")),
        }
    };
    match answer.await {
        Ok(report) => NodeClients {
            node,
            error: None,
            clients: report.clients,
        },
        Err(error) => NodeClients {
            node,
            error: Some(error),
            clients: Vec::new(),
        },
    }
}

fn render(nodes: &[NodeClients]) -> String {
    let mut rows = vec![
        [
            "NODE",
            "ROLE",
            "NAME",
            "TENANT",
            "REMOTE",
            "SUBSCRIPTIONS",
            "FRAMES",
            "BYTES",
            "PENDING",
        ]
        .map(str::to_owned),
    ];
    for node in nodes {
        if let Some(error) = &node.error {
            rows.push([
                node.node.clone(),
                format!("unreachable: {error}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for client in &node.clients {
            let role = serde_json::to_value(client.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let role = if client.legacy {
                format!("{role} (legacy)")
            } else {
                role
            };
            rows.push([
                node.node.clone(),
                role,
                client.name.clone(),
                client.tenant.clone(),
                client.remote.clone(),
                client.subscriptions.join(","),
                client.frames_sent.to_string(),
                client.bytes_sent.to_string(),
                client.bytes_pending.to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let total: usize = nodes.iter().map(|n| n.clients.len()).sum();
    out.push_str(&format!(
        "{total} connection(s) on {} node(s)\n",
        nodes.len()
    ));
    out
}
