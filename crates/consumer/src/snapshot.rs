//! The state a consumer keeps across a graceful restart: each topic it owns
//! with its epoch, position, history, sealed epoch ends and idempotency
//! keys, written to `<data_dir>/topics.json` when it stops (SIGTERM) and
//! read back (then removed) when it starts. A crash writes nothing, so a
//! restart after one starts new epochs: a snapshot is never reused.
//!
//! The format is versioned JSON, documented in `docs/OPERATIONS.md`:
//!
//! ```json
//! {"format":"shardq-topics","version":1,"node":"consumer-0","topics":[
//!   {"topic":"database/create","epoch":4503599627370497,"offset":42,
//!    "sealed":[{"epoch":7,"offset":9}],
//!    "keys":[{"key":"k1","epoch":4503599627370497,"offset":41,"age_ms":1200}],
//!    "messages":[{"epoch":4503599627370497,"offset":41,"payload":{"id":1}}]}]}
//! ```
//!
//! Messages are kept as their payloads and framed again on load (framing
//! is deterministic, so the frames are byte-identical).

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardq_protocol::{Position, RawValue, Topic};

/// The `format` field.
pub const FORMAT: &str = "shardq-topics";
/// The version this node writes and reads.
pub const VERSION: u32 = 1;
/// The file's name in the data directory.
pub const FILE: &str = "topics.json";

/// One snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for what this node writes.
    pub version: u32,
    /// The node that wrote it.
    pub node: String,
    /// Its owned topics.
    pub topics: Vec<TopicSnapshot>,
}

/// One owned topic.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopicSnapshot {
    /// The topic.
    pub topic: Topic,
    /// Its current epoch.
    pub epoch: u64,
    /// The last offset sequenced in it.
    pub offset: u64,
    /// Ends of earlier epochs the history holds.
    #[serde(default)]
    pub sealed: Vec<Position>,
    /// Idempotency keys remembered.
    #[serde(default)]
    pub keys: Vec<KeySnapshot>,
    /// The history, oldest first.
    #[serde(default)]
    pub messages: Vec<MessageSnapshot>,
}

/// One remembered idempotency key.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// The key.
    pub key: String,
    /// Its publish's epoch.
    pub epoch: u64,
    /// Its publish's offset.
    pub offset: u64,
    /// How long ago it was remembered, in milliseconds.
    pub age_ms: u64,
}

/// One message of a topic's history.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageSnapshot {
    /// Its epoch.
    pub epoch: u64,
    /// Its offset.
    pub offset: u64,
    /// Its payload, byte for byte.
    pub payload: Box<RawValue>,
}

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a snapshot this node reads.
    #[error("{path}: not a shardq topics snapshot of version {VERSION}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Writes `snapshot` to `<dir>/topics.json`, atomically: a temporary file,
/// synced, then renamed over the old one.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(FILE);
    let temporary = dir.join(format!("{FILE}.tmp"));
    let io = |source| SnapshotError::Io {
        path: temporary.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::File::create(&temporary).map_err(io)?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer(&mut writer, snapshot).map_err(|error| io(error.into()))?;
    writer.flush().map_err(io)?;
    writer
        .into_inner()
        .map_err(|error| io(error.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(|source| SnapshotError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Reads `<dir>/topics.json` and removes it (a snapshot is used once);
/// `None` when there is none.
pub fn take(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    let snapshot = parse(&path, &bytes)?;
    std::fs::remove_file(&path).map_err(|source| SnapshotError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(snapshot))
}

/// Parses a snapshot's bytes (`path` names it in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let invalid = |why: String| SnapshotError::Invalid {
        path: path.to_owned(),
        why,
    };
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if snapshot.format != FORMAT || snapshot.version != VERSION {
        return Err(invalid(format!(
            "it says {} version {}",
            snapshot.format, snapshot.version
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            node: "consumer-0".into(),
            topics: vec![TopicSnapshot {
                // A tenant's topic: its key survives the file.
                topic: Topic::parse("a/b").unwrap().in_tenant(Some("acme")),
                epoch: 9,
                offset: 2,
                sealed: vec![Position {
                    epoch: 7,
                    offset: 5,
                }],
                keys: vec![KeySnapshot {
                    key: "k".into(),
                    epoch: 9,
                    offset: 2,
                    age_ms: 10,
                }],
                messages: vec![MessageSnapshot {
                    epoch: 9,
                    offset: 2,
                    payload: RawValue::from_string("{\"x\" :\n [1, 2]}".into()).unwrap(),
                }],
            }],
        }
    }

    #[test]
    fn written_then_taken_once() {
        let dir = std::env::temp_dir().join(format!("shardq-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(take(&dir).unwrap().is_none());
        write(&dir, &sample()).unwrap();
        let back = take(&dir).unwrap().unwrap();
        assert_eq!(
            back.topics[0].messages[0].payload.get(),
            "{\"x\" :\n [1, 2]}"
        );
        assert_eq!(back.topics[0].keys[0].key, "k");
        assert_eq!(back.topics[0].topic.as_str(), "acme~a/b");
        // Used once: gone after it was read.
        assert!(take(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_format_or_version_is_refused() {
        let path = Path::new("topics.json");
        let text = serde_json::to_string(&sample()).unwrap();
        let other = text.replace("\"version\":1", "\"version\":2");
        assert!(
            parse(path, other.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        assert!(parse(path, b"{}").is_err());
        assert!(parse(path, text.as_bytes()).is_ok());
    }
}
