//! Reading a cluster file and its psk, as nodes, tools and applications
//! all do: `SHARDQ_PSK` wins, else the file's `psk_file`.

use std::path::{Path, PathBuf};

use shardq_protocol::handshake::PskError;
use shardq_protocol::{ClusterConfig, ConfigError, Psk};

/// Why a cluster file or its psk could not be used. One line each.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// The cluster file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file did not parse or validate.
    #[error("cluster file {path}: {source}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// The cause (names the line for syntax errors).
        #[source]
        source: ConfigError,
    },
    /// No psk in the environment or a file.
    #[error("no psk: set SHARDQ_PSK (at least 16 bytes) or psk_file in the cluster file")]
    MissingPsk,
    /// The psk file could not be read.
    #[error("cannot read psk_file {path}: {source}")]
    ReadPsk {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The psk is too short.
    #[error("SHARDQ_PSK: {0}")]
    WeakPsk(#[from] PskError),
}

/// Reads and validates a cluster file.
pub fn load_cluster(path: &Path) -> Result<ClusterConfig, ClusterFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    ClusterConfig::parse(&text).map_err(|source| ClusterFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// The psk: `env_value` (from `SHARDQ_PSK`) if set, else the cluster file's
/// `psk_file` (relative to the cluster file; one trailing newline ignored).
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
) -> Result<Psk, ClusterFileError> {
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return Ok(Psk::new(value)?);
    }
    let Some(file) = &cluster.psk_file else {
        return Err(ClusterFileError::MissingPsk);
    };
    let path = cluster_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(file);
    let mut bytes = std::fs::read(&path).map_err(|source| ClusterFileError::ReadPsk {
        path: path.clone(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(Psk::new(bytes)?)
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

    fn cluster(psk_file: Option<&str>) -> ClusterConfig {
        let mut text = String::from("[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n");
        if let Some(file) = psk_file {
            text = format!("psk_file = \"{file}\"\n{text}");
        }
        ClusterConfig::parse(&text).unwrap()
    }

    #[test]
    fn psk_rules() {
        let none = cluster(None);
        let here = Path::new("shardq.toml");
        assert!(matches!(
            load_psk(None, &none, here),
            Err(ClusterFileError::MissingPsk)
        ));
        assert!(matches!(
            load_psk(Some(String::new()), &none, here),
            Err(ClusterFileError::MissingPsk)
        ));
        let weak = load_psk(Some("short".into()), &none, here).unwrap_err();
        assert_eq!(
            weak.to_string(),
            "SHARDQ_PSK: the psk is 5 bytes long; it must be at least 16 bytes"
        );
        assert!(load_psk(Some("0123456789abcdef".into()), &none, here).is_ok());
    }

    #[test]
    fn psk_file_is_relative_to_the_cluster_file() {
        let dir = std::env::temp_dir().join(format!("shardq-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("psk"), "0123456789abcdef0123\n").unwrap();
        let config = cluster(Some("psk"));
        let psk = load_psk(None, &config, &dir.join("shardq.toml")).unwrap();
        assert_eq!(psk.as_bytes(), b"0123456789abcdef0123");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
