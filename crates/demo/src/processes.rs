//! Node processes for the benchmarks: a cluster file with free ports, each
//! node started as its own process (optionally pinned to CPUs), stopped on
//! drop; and pinning this process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardq_protocol::{ClusterConfig, Limits, NodeEntry, Psk, QueueConfig};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn entry(id: String) -> Result<NodeEntry, String> {
    let (port, admin) = (free_port()?, free_port()?);
    Ok(NodeEntry {
        id,
        url: format!("ws://127.0.0.1:{port}"),
        admin: Some(format!("http://127.0.0.1:{admin}")),
        listen: Some(format!("127.0.0.1:{port}")),
        http: None,
    })
}

/// A cluster file on 127.0.0.1 with free ports, open topics, and a ping
/// interval longer than any benchmark (the lean client answers no pings).
pub fn plan(consumers: usize, producers: usize) -> Result<ClusterConfig, String> {
    let mut queues = QueueConfig::new();
    queues.set_open_topics(true);
    Ok(ClusterConfig::new(
        (0..consumers)
            .map(|i| entry(format!("consumer-{i}")))
            .collect::<Result<_, _>>()?,
        (0..producers)
            .map(|i| entry(format!("producer-{i}")))
            .collect::<Result<_, _>>()?,
        queues,
        Limits {
            ping_interval_ms: 3_600_000,
            // Every benchmark client comes from 127.0.0.1.
            max_connections_per_address: 1_000_000,
            max_unauthenticated_connections: 1_000_000,
            max_unauthenticated_per_address: 1_000_000,
            max_connections: 1_000_000,
            ..Limits::default()
        },
    ))
}

/// The nodes of a benchmark, each its own process.
pub struct NodeProcesses {
    /// The cluster file they run with.
    pub config: ClusterConfig,
    /// Their psk.
    pub psk: Psk,
    /// Their node key (SHARDQ_NODE_KEY).
    pub node_key: Psk,
    children: Vec<(String, Child)>,
    _dir: TempDir,
}

impl Drop for NodeProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the node binaries are: next to this one unless given.
pub fn binary(dir: &Option<PathBuf>, name: &str) -> Result<PathBuf, String> {
    let path = match dir {
        Some(dir) => dir.join(name),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(name),
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p {name}) or pass --bin-dir",
            path.display()
        ))
    }
}

impl NodeProcesses {
    /// Starts every node of `config`; `cpus(id)` pins a node (`taskset -c`),
    /// each node runs one tokio worker.
    pub fn start(
        config: ClusterConfig,
        bin_dir: &Option<PathBuf>,
        cpus: impl Fn(&str) -> Option<String>,
        fd_limit: u64,
    ) -> Result<NodeProcesses, String> {
        let dir =
            TempDir(std::env::temp_dir().join(format!("shardq-bench-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
        let path = dir.0.join("shardq.toml");
        std::fs::write(&path, config.to_toml()).map_err(|e| e.to_string())?;
        let psk = Psk::generate();
        let node_key = Psk::generate();
        let mut nodes = NodeProcesses {
            config,
            psk,
            node_key: node_key.clone(),
            children: Vec::new(),
            _dir: dir,
        };
        let kinds = [
            ("shardq-consumer", &nodes.config.consumers),
            ("shardq-producer", &nodes.config.producers),
        ];
        // Every binary needed is found before any node starts.
        let bins = kinds
            .iter()
            .map(|(name, entries)| match entries.is_empty() {
                true => Ok(PathBuf::new()),
                false => binary(bin_dir, name),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Started nodes go to `nodes` at once, so an error below stops them.
        for ((_, entries), bin) in kinds.into_iter().zip(bins) {
            for entry in entries.iter() {
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={fd_limit}:{fd_limit}"));
                if let Some(cpus) = cpus(&entry.id) {
                    command.args(["taskset", "-c", &cpus]);
                }
                command
                    .arg(&bin)
                    .arg("--config")
                    .arg(&path)
                    .args(["--id", &entry.id])
                    .env(
                        "SHARDQ_PSK",
                        String::from_utf8_lossy(nodes.psk.as_bytes()).as_ref(),
                    )
                    .env(
                        "SHARDQ_NODE_KEY",
                        String::from_utf8_lossy(node_key.as_bytes()).as_ref(),
                    )
                    .env("TOKIO_WORKER_THREADS", "1")
                    .env(
                        "RUST_LOG",
                        std::env::var("SHARDQ_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdin(Stdio::null())
                    // The nodes log to stdout; keep this tool's stdout for its report.
                    .stdout(std::io::stderr());
                let child = command.spawn().map_err(|e| {
                    format!(
                        "cannot start {} (needs prlimit and taskset): {e}",
                        bin.display()
                    )
                })?;
                nodes.children.push((entry.id.clone(), child));
                let addr = entry.url.trim_start_matches("ws://").to_owned();
                wait_listening(&addr, &entry.id)?;
            }
        }
        Ok(nodes)
    }

    /// The process id of node `id`.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(node, _)| node == id)
            .map(|(_, child)| child.id())
    }
}

fn wait_listening(addr: &str, id: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{id} did not start listening on {addr} within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Raises this process's open-files limit and pins it to `cpus`.
pub fn prepare_self(cpus: Option<&str>, fd_limit: u64) -> Result<(), String> {
    let pid = std::process::id().to_string();
    let raised = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={fd_limit}:{fd_limit}")])
        .status();
    if !raised.is_ok_and(|status| status.success()) {
        return Err(format!(
            "cannot raise the open-files limit to {fd_limit} (prlimit)"
        ));
    }
    if let Some(cpus) = cpus {
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid])
            .stdout(Stdio::null())
            .status();
        if !pinned.is_ok_and(|status| status.success()) {
            return Err(format!(
                "cannot pin the load generator to CPU {cpus} (taskset)"
            ));
        }
    }
    Ok(())
}

/// The hard open-files limit (`ulimit -Hn`).
pub fn hard_fd_limit() -> u64 {
    Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4096)
}
