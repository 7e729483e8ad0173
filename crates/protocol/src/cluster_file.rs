//! Loading a cluster file and its psk, the one way nodes, tools and
//! applications all do it: `SHARDQ_PSK` wins, else the file's `psk_file`
//! (relative to the cluster file, one trailing newline ignored).
//!
//! Sans-IO: the caller passes the function that reads a file (usually
//! `std::fs::read`), so the rules live here once and every reader of the
//! file — `shardq-net` for nodes, the `shardq` client for applications —
//! applies the same ones.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ClusterConfig, ConfigError};
use crate::handshake::{Psk, PskError};

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
        source: io::Error,
    },
    /// The cluster file is not UTF-8 text.
    #[error("cluster file {path} is not UTF-8 text")]
    NotText {
        /// The path.
        path: PathBuf,
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
        source: io::Error,
    },
    /// The psk is too short.
    #[error("SHARDQ_PSK: {0}")]
    WeakPsk(#[from] PskError),
}

/// Parses the text of the cluster file at `path` (the path names the file
/// in errors).
pub fn parse_cluster(path: &Path, bytes: Vec<u8>) -> Result<ClusterConfig, ClusterFileError> {
    let text = String::from_utf8(bytes).map_err(|_| ClusterFileError::NotText {
        path: path.to_owned(),
    })?;
    ClusterConfig::parse(&text).map_err(|source| ClusterFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Reads (with `read`) and validates the cluster file at `path`.
pub fn load_cluster(
    path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
) -> Result<ClusterConfig, ClusterFileError> {
    let bytes = read(path).map_err(|source| ClusterFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_cluster(path, bytes)
}

/// The psk: `env_value` (from `SHARDQ_PSK`) if set and not empty, else the
/// cluster file's `psk_file`, read with `read` from next to `cluster_path`.
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
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
    let mut bytes = read(&path).map_err(|source| ClusterFileError::ReadPsk {
        path: path.clone(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(Psk::new(bytes)?)
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

    fn no_file(_: &Path) -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::NotFound.into())
    }

    #[test]
    fn psk_rules() {
        let none = cluster(None);
        let here = Path::new("shardq.toml");
        assert!(matches!(
            load_psk(None, &none, here, no_file),
            Err(ClusterFileError::MissingPsk)
        ));
        assert!(matches!(
            load_psk(Some(String::new()), &none, here, no_file),
            Err(ClusterFileError::MissingPsk)
        ));
        let weak = load_psk(Some("short".into()), &none, here, no_file).unwrap_err();
        assert_eq!(
            weak.to_string(),
            "SHARDQ_PSK: the psk is 5 bytes long; it must be at least 16 bytes"
        );
        assert!(load_psk(Some("0123456789abcdef".into()), &none, here, no_file).is_ok());
    }

    #[test]
    fn psk_file_is_relative_to_the_cluster_file() {
        let config = cluster(Some("psk"));
        let mut asked = None;
        let psk = load_psk(
            None,
            &config,
            Path::new("/etc/shardq/shardq.toml"),
            |path| {
                asked = Some(path.to_owned());
                Ok(b"0123456789abcdef0123\n".to_vec())
            },
        )
        .unwrap();
        assert_eq!(psk.as_bytes(), b"0123456789abcdef0123");
        assert_eq!(asked.unwrap(), Path::new("/etc/shardq/psk"));
        let missing = load_psk(None, &config, Path::new("shardq.toml"), no_file).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read psk_file psk:"));
    }

    #[test]
    fn cluster_errors_name_the_file() {
        let path = Path::new("x/shardq.toml");
        let unread = load_cluster(path, no_file).unwrap_err();
        assert!(
            unread
                .to_string()
                .starts_with("cannot read cluster file x/shardq.toml:")
        );
        let binary = load_cluster(path, |_| Ok(vec![0xff, 0xfe])).unwrap_err();
        assert_eq!(
            binary.to_string(),
            "cluster file x/shardq.toml is not UTF-8 text"
        );
        let invalid = load_cluster(path, |_| Ok(b"[[consumers]]\n".to_vec())).unwrap_err();
        assert!(
            invalid
                .to_string()
                .starts_with("cluster file x/shardq.toml:")
        );
        let good = load_cluster(path, |_| {
            Ok(b"[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n".to_vec())
        });
        assert_eq!(good.unwrap().consumer_ids(), ["c"]);
    }
}
