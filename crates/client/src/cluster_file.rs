//! Reading a cluster file and its psk from disk, as applications and tools
//! do: `SHARDQ_PSK` wins, else the file's `psk_file`. The rules live in
//! [`shardq_protocol::cluster_file`]; this module passes them the file
//! system.

use std::path::Path;

use shardq_protocol::cluster_file as rules;
use shardq_protocol::{ClusterConfig, Psk};

use crate::tls::{Tls, TlsError};

pub use shardq_protocol::cluster_file::ClusterFileError;

/// Reads and validates a cluster file.
pub fn load_cluster(path: &Path) -> Result<ClusterConfig, ClusterFileError> {
    rules::load_cluster(path, read)
}

/// The psk: `env_value` (from `SHARDQ_PSK`) if set and not empty, else the
/// cluster file's `psk_file` (relative to the cluster file; one trailing
/// newline ignored).
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
) -> Result<Psk, ClusterFileError> {
    rules::load_psk(env_value, cluster, cluster_path, read)
}

/// The CA of the cluster file's `[tls] ca_file` (beside the file), for
/// `wss://` nodes; `None` when it names none.
pub fn load_tls(cluster: &ClusterConfig, cluster_path: &Path) -> Result<Option<Tls>, TlsError> {
    cluster
        .tls
        .ca_file
        .as_ref()
        .map(|file| Tls::from_ca_file(&rules::beside(cluster_path, file)))
        .transpose()
}

/// Reads a file from disk (`std::fs::read` for a path of any lifetime).
fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// The cluster file at `path` and its psk (`SHARDQ_PSK`, else `psk_file`).
pub fn load(path: &Path) -> Result<(ClusterConfig, Psk), ClusterFileError> {
    let cluster = load_cluster(path)?;
    let psk = load_psk(std::env::var("SHARDQ_PSK").ok(), &cluster, path)?;
    Ok((cluster, psk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_the_file_and_its_psk_file() {
        let dir = std::env::temp_dir().join(format!("shardq-client-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("shardq.toml"),
            "psk_file = \"psk\"\n[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("psk"), "0123456789abcdef0123\n").unwrap();
        let (cluster, psk) = load(&dir.join("shardq.toml")).unwrap();
        assert_eq!(cluster.consumer_ids(), ["c"]);
        // SHARDQ_PSK wins when the environment running the tests sets it.
        let expected = std::env::var("SHARDQ_PSK")
            .ok()
            .filter(|value| !value.is_empty())
            .map_or(b"0123456789abcdef0123".to_vec(), String::into_bytes);
        assert_eq!(psk.as_bytes(), expected);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
