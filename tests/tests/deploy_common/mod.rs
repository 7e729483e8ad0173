//! Helpers shared by the deploy/ manifest tests (`deploy_manifests`,
//! `deploy_k8s`): reading files under deploy/, YAML documents with merge
//! keys applied, compose port and default syntax, and a failure that lists
//! every problem at once. Each test binary uses part of them.

#![allow(dead_code, unused_imports)]

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::path::{Path, PathBuf};

pub use serde_norway::{Mapping, Value};
pub use shardq_protocol::ClusterConfig;
pub use shardq_protocol::config::url_port;

/// Where every compose service and pod reads the cluster file.
pub const CONFIG_PATH: &str = "/etc/shardq/shardq.toml";
/// The directory every compose service mounts there: the live node list,
/// `${SHARDQ_CLUSTER_DIR}` with this default.
pub const COMPOSE_CLUSTER_DIR: &str = "./cluster";

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

pub fn cluster(relative: &str) -> ClusterConfig {
    ClusterConfig::parse(&read(relative))
        .unwrap_or_else(|error| panic!("deploy/{relative} is not a valid cluster file: {error}"))
}

/// The documents of a YAML stream, with `<<` merge keys applied. Documents
/// are split on `---` lines (the files here keep `---` out of scalars).
pub fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let mut value: Value = serde_norway::from_str(&current)
                .unwrap_or_else(|error| panic!("deploy/{relative}: {error}"));
            // One pass resolves one level of nested merges
            // (`<<: *consumer` where `consumer` itself has `<<: *node`).
            for _ in 0..8 {
                value
                    .apply_merge()
                    .unwrap_or_else(|error| panic!("deploy/{relative}: bad merge key: {error}"));
            }
            if !value.is_null() {
                documents.push(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
}

pub fn yaml(relative: &str) -> Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(documents.len(), 1, "deploy/{relative}: one document");
    documents.remove(0)
}

pub fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(mapping) => mapping
            .iter()
            .any(|(key, value)| key.as_str() == Some("<<") || has_merge_key(value)),
        Value::Sequence(sequence) => sequence.iter().any(has_merge_key),
        _ => false,
    }
}

pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The argument after `flag` in an argv.
pub fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    let at = argv.iter().position(|arg| arg == flag)?;
    argv.get(at + 1).map(String::as_str)
}

/// The host of `scheme://host:port`.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// `${VAR-default}`, `${VAR:-default}` or a literal, as compose resolves it
/// with VAR unset.
pub fn default_of(text: &str) -> String {
    let Some(inner) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
        return text.to_owned();
    };
    match inner.split_once(":-").or_else(|| inner.split_once('-')) {
        Some((_, default)) => default.to_owned(),
        None => String::new(),
    }
}

/// A compose short-syntax port, `[ip:][host:]container[/proto]`.
#[derive(Debug)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    pub host_port: String,
    pub container: u16,
}

pub fn parse_port(spec: &str) -> Option<PortSpec> {
    let spec = spec.split('/').next()?;
    let parts: Vec<&str> = spec.split(':').collect();
    let container = parts.last()?.parse().ok()?;
    let (host_ip, host_port) = match parts.len() {
        1 => (None, String::new()),
        2 => (None, default_of(parts[0])),
        3 => (Some(parts[0].to_owned()), default_of(parts[1])),
        _ => return None,
    };
    Some(PortSpec {
        host_ip,
        host_port,
        container,
    })
}

/// Every YAML file under deploy/, relative to it.
pub fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') {
                    walk(&path, base, out);
                }
            } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
                && let Ok(relative) = path.strip_prefix(base)
            {
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let base = deploy_dir();
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

pub fn finish(what: &str, errors: Vec<String>) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

/// Where consumers keep their topics' state across a graceful restart.
pub const DATA_DIR: &str = "/var/lib/shardq";
