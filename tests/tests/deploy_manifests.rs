//! The deployment artifacts under `deploy/` agree with each other: every
//! YAML document parses, every cluster file validates as the nodes validate
//! it, the compose services and Kubernetes manifests name the same nodes on
//! the same ports as their cluster file, and every node mounts its cluster
//! file in a way that lets a changed node list reach the running node (a
//! directory, never a single file or a `subPath`).
//!
//! Needs no Docker and no Kubernetes: it only reads files. The Docker
//! end-to-end run is `tests/docker/e2e.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};
use shardq_protocol::ClusterConfig;
use shardq_protocol::config::url_port;

/// Where every compose service and pod reads the cluster file.
const CONFIG_PATH: &str = "/etc/shardq/shardq.toml";
/// The directory every compose service mounts there: the live node list,
/// `${SHARDQ_CLUSTER_DIR}` with this default.
const COMPOSE_CLUSTER_DIR: &str = "./cluster";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn cluster(relative: &str) -> ClusterConfig {
    ClusterConfig::parse(&read(relative))
        .unwrap_or_else(|error| panic!("deploy/{relative} is not a valid cluster file: {error}"))
}

/// The documents of a YAML stream, with `<<` merge keys applied. Documents
/// are split on `---` lines (the files here keep `---` out of scalars).
fn yaml_documents(relative: &str) -> Vec<Value> {
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

fn yaml(relative: &str) -> Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(documents.len(), 1, "deploy/{relative}: one document");
    documents.remove(0)
}

fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(mapping) => mapping
            .iter()
            .any(|(key, value)| key.as_str() == Some("<<") || has_merge_key(value)),
        Value::Sequence(sequence) => sequence.iter().any(has_merge_key),
        _ => false,
    }
}

fn strings(value: &Value) -> Vec<String> {
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
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    let at = argv.iter().position(|arg| arg == flag)?;
    argv.get(at + 1).map(String::as_str)
}

/// The host of `scheme://host:port`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// `${VAR-default}`, `${VAR:-default}` or a literal, as compose resolves it
/// with VAR unset.
fn default_of(text: &str) -> String {
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
struct PortSpec {
    host_ip: Option<String>,
    host_port: String,
    container: u16,
}

fn parse_port(spec: &str) -> Option<PortSpec> {
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
fn yaml_files() -> Vec<String> {
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

fn finish(what: &str, errors: Vec<String>) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

#[test]
fn every_yaml_document_parses() {
    let files = yaml_files();
    for expected in [
        "compose.yaml",
        "compose.scale.yaml",
        "k8s/kustomization.yaml",
        "k8s/consumers.yaml",
        "k8s/producers.yaml",
        "k8s/secret.example.yaml",
    ] {
        assert!(
            files.iter().any(|file| file == expected),
            "deploy/{expected} is missing (found {files:?})"
        );
    }
    let mut errors = Vec::new();
    for file in &files {
        let documents = yaml_documents(file);
        if documents.is_empty() {
            errors.push(format!("{file}: no YAML document"));
        }
        for (index, document) in documents.iter().enumerate() {
            if document.as_mapping().is_none() {
                errors.push(format!("{file} document {index}: not a mapping"));
            }
            if has_merge_key(document) {
                errors.push(format!("{file} document {index}: unresolved `<<` merge"));
            }
            if file.starts_with("k8s/") && file != "k8s/kustomization.yaml" {
                for key in ["apiVersion", "kind", "metadata"] {
                    if document[key].is_null() {
                        errors.push(format!("{file} document {index}: no {key}"));
                    }
                }
            }
        }
    }
    finish("YAML under deploy/", errors);
}

#[test]
fn cluster_files_validate_and_agree() {
    let base = cluster("shardq.toml");
    let scale = cluster("shardq.scale.toml");
    let k8s = cluster("k8s/shardq.toml");
    let mut errors = Vec::new();

    let ids = |config: &ClusterConfig| config.consumer_ids();
    if ids(&base) != ["consumer-0", "consumer-1", "consumer-2"] {
        errors.push(format!("shardq.toml consumers: {:?}", ids(&base)));
    }
    let producer_ids: Vec<&str> = base.producers.iter().map(|p| p.id.as_str()).collect();
    if producer_ids != ["producer-0", "producer-1"] {
        errors.push(format!("shardq.toml producers: {producer_ids:?}"));
    }
    // shardq.scale.toml is shardq.toml plus consumer-3, nothing else.
    if scale.consumers.len() != base.consumers.len() + 1
        || scale.consumers[..base.consumers.len()] != base.consumers[..]
    {
        errors.push("shardq.scale.toml: consumers must be shardq.toml's, then consumer-3".into());
    }
    match scale.consumers.last() {
        Some(entry)
            if entry.id == "consumer-3"
                && entry.url == "ws://consumer-3:7100"
                && entry.admin.as_deref() == Some("http://consumer-3:9100") => {}
        other => errors.push(format!("shardq.scale.toml: last consumer {other:?}")),
    }
    if scale.producers != base.producers {
        errors.push("shardq.scale.toml: producers differ from shardq.toml".into());
    }
    for (name, other) in [("shardq.scale.toml", &scale), ("k8s/shardq.toml", &k8s)] {
        if other.queues != base.queues {
            errors.push(format!(
                "{name}: [queues]/open_topics differ from shardq.toml"
            ));
        }
        if other.limits != base.limits {
            errors.push(format!("{name}: [limits] differ from shardq.toml"));
        }
        if other.psk_file.is_some() {
            errors.push(format!(
                "{name}: the psk comes from SHARDQ_PSK, not psk_file"
            ));
        }
    }
    if base.psk_file.is_some() {
        errors.push("shardq.toml: the psk comes from SHARDQ_PSK, not psk_file".into());
    }
    finish("cluster files", errors);
}

/// Compose's merge of an override file into a base file, for the keys used
/// here: `volumes` merge by container path, `depends_on` and `environment`
/// by key, anything else replaces.
fn merge_compose(base: &Value, over: &Value) -> Mapping {
    let mut services = base["services"].as_mapping().cloned().unwrap_or_default();
    let Some(overrides) = over["services"].as_mapping() else {
        return services;
    };
    for (name, service) in overrides {
        let Some(service) = service.as_mapping() else {
            continue;
        };
        let merged = services
            .entry(name.clone())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        let Some(merged) = merged.as_mapping_mut() else {
            continue;
        };
        for (key, value) in service {
            match (key.as_str(), merged.get_mut(key)) {
                (Some("volumes"), Some(Value::Sequence(volumes))) => {
                    let target = |volume: &Value| match volume.as_str() {
                        Some(text) => text.split(':').nth(1).map(str::to_owned),
                        None => volume["target"].as_str().map(str::to_owned),
                    };
                    for volume in value.as_sequence().into_iter().flatten() {
                        volumes.retain(|existing| target(existing) != target(volume));
                        volumes.push(volume.clone());
                    }
                }
                (Some("depends_on" | "environment"), Some(Value::Mapping(existing))) => {
                    for (k, v) in value.as_mapping().into_iter().flatten() {
                        existing.insert(k.clone(), v.clone());
                    }
                }
                _ => {
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
    }
    services
}

/// Where consumers keep their topics' state across a graceful restart.
const DATA_DIR: &str = "/var/lib/shardq";

/// What is wrong with a consumer service's data directory: it must pass
/// `--data-dir /var/lib/shardq` and mount a named volume of its own there
/// (writable), or a rolling restart loses every topic's history.
fn data_dir_problems(argv: &[String], volumes: &Value, id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if flag_value(argv, "--data-dir") != Some(DATA_DIR) {
        problems.push(format!("command {argv:?} must pass --data-dir {DATA_DIR}"));
    }
    let volume = volumes
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|volume| volume["target"].as_str() == Some(DATA_DIR));
    match volume {
        None => problems.push(format!("must mount a volume at {DATA_DIR}")),
        Some(volume) => {
            if volume["type"].as_str() != Some("volume") {
                problems.push(format!("{DATA_DIR} must be a named volume"));
            }
            if volume["source"].as_str() != Some(&format!("{id}-data")) {
                problems.push(format!("{DATA_DIR} must be the volume {id}-data"));
            }
            if volume["read_only"].as_bool() == Some(true) {
                problems.push(format!("{DATA_DIR} must be writable"));
            }
        }
    }
    problems
}

/// What is wrong with a service's `volumes` for following the live node
/// list: it must bind the directory `${SHARDQ_CLUSTER_DIR:-./cluster}`
/// read-only at the cluster file's directory (long syntax, so a missing
/// directory is an error rather than an empty one), and must not bind the
/// cluster file itself: a single-file bind mount pins the file's inode, so a
/// list replaced by rename would never reach the container.
fn cluster_dir_mount_problems(volumes: &Value) -> Vec<String> {
    let config_dir = Path::new(CONFIG_PATH)
        .parent()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let volumes = volumes.as_sequence().cloned().unwrap_or_default();
    let target_of = |volume: &Value| match volume.as_str() {
        Some(text) => text.split(':').nth(1).unwrap_or("").to_owned(),
        None => volume["target"].as_str().unwrap_or("").to_owned(),
    };
    if volumes
        .iter()
        .any(|volume| target_of(volume) == CONFIG_PATH)
    {
        problems.push(format!(
            "binds the single file {CONFIG_PATH}: mount its directory instead (a file replaced by rename would never be seen)"
        ));
    }
    let dir_mounts: Vec<&Value> = volumes
        .iter()
        .filter(|volume| target_of(volume) == config_dir)
        .collect();
    match dir_mounts.as_slice() {
        [mount] => {
            let source = mount["source"].as_str().unwrap_or("");
            if mount["type"].as_str() != Some("bind") {
                problems.push(format!(
                    "{config_dir}: must be a long-syntax `type: bind` mount"
                ));
            }
            if !source.starts_with("${SHARDQ_CLUSTER_DIR")
                || default_of(source) != COMPOSE_CLUSTER_DIR
            {
                problems.push(format!(
                    "{config_dir}: source {source:?} must be ${{SHARDQ_CLUSTER_DIR:-{COMPOSE_CLUSTER_DIR}}}"
                ));
            }
            if mount["read_only"].as_bool() != Some(true) {
                problems.push(format!("{config_dir}: must be read_only: true"));
            }
        }
        [] => problems.push(format!(
            "must mount ${{SHARDQ_CLUSTER_DIR:-{COMPOSE_CLUSTER_DIR}}} at {config_dir}"
        )),
        _ => problems.push(format!("mounts {config_dir} more than once")),
    }
    problems
}

/// Checks a compose project's services against the cluster file of its
/// layout (`toml`, relative to deploy/; the nodes follow a copy of it in the
/// live node-list directory).
fn check_compose(services: &Mapping, config: &ClusterConfig, toml: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut host_ports: BTreeMap<String, String> = BTreeMap::new();
    let nodes = config
        .consumers
        .iter()
        .map(|entry| (entry, "/shardq-consumer", "/healthz"))
        .chain(
            config
                .producers
                .iter()
                .map(|entry| (entry, "/shardq-producer", "/readyz")),
        );
    let mut node_names = BTreeSet::new();
    for (entry, binary, health_path) in nodes {
        let id = entry.id.as_str();
        node_names.insert(id.to_owned());
        let Some(service) = services.get(id) else {
            errors.push(format!("{id}: no compose service of that name"));
            continue;
        };
        let mut problem = |what: String| errors.push(format!("service {id}: {what}"));
        if url_host(&entry.url) != id {
            problem(format!(
                "url {} must use the service name as host",
                entry.url
            ));
        }
        let ws_port = url_port(&entry.url);
        let admin_port = entry.admin.as_deref().and_then(url_port);
        if let Some(admin) = &entry.admin {
            if url_host(admin) != id {
                problem(format!("admin {admin} must use the service name as host"));
            }
        } else {
            problem("the cluster file gives no admin url".into());
        }
        let argv = strings(&service["command"]);
        if argv.first().map(String::as_str) != Some(binary) {
            problem(format!("command {argv:?} must start with {binary}"));
        }
        if flag_value(&argv, "--id") != Some(id) {
            problem(format!("command {argv:?} must pass --id {id}"));
        }
        if flag_value(&argv, "--config") != Some(CONFIG_PATH) {
            problem(format!("command {argv:?} must pass --config {CONFIG_PATH}"));
        }
        for what in cluster_dir_mount_problems(&service["volumes"]) {
            problem(what);
        }
        if binary == "/shardq-consumer" {
            for what in data_dir_problems(&argv, &service["volumes"], id) {
                problem(what);
            }
        }
        let mut container_ports = BTreeSet::new();
        for spec in strings(&service["ports"]) {
            match parse_port(&spec) {
                Some(port) => {
                    if port.host_ip.as_deref() != Some("127.0.0.1") {
                        problem(format!("port {spec:?} must be published on 127.0.0.1 only"));
                    }
                    if let Some(other) = host_ports.insert(port.host_port.clone(), id.to_owned()) {
                        problem(format!("host port {} also used by {other}", port.host_port));
                    }
                    container_ports.insert(port.container);
                }
                None => problem(format!("cannot parse port {spec:?}")),
            }
        }
        let expected: BTreeSet<u16> = ws_port.into_iter().chain(admin_port).collect();
        if container_ports != expected {
            problem(format!(
                "container ports {container_ports:?} != the cluster file's url/admin ports {expected:?}"
            ));
        }
        if let Some(admin_port) = admin_port {
            let test = strings(&service["healthcheck"]["test"]);
            let url = format!("http://127.0.0.1:{admin_port}{health_path}");
            if test != ["CMD", "/shardq-demo", "health", url.as_str()] {
                problem(format!(
                    "healthcheck {test:?} must be /shardq-demo health {url}"
                ));
            }
        }
        if service["restart"].as_str() != Some("unless-stopped") {
            problem("restart must be unless-stopped".into());
        }
        let psk = service["environment"]["SHARDQ_PSK"].as_str().unwrap_or("");
        if !psk.starts_with("${SHARDQ_PSK") {
            problem(format!(
                "SHARDQ_PSK must come from ${{SHARDQ_PSK}}, not {psk:?}"
            ));
        }
        if !strings(&service["networks"]).iter().any(|n| n == "shardq") {
            problem("must be on the shardq network".into());
        }
    }

    for (name, service) in services {
        let name = name.as_str().unwrap_or("?");
        if !service["container_name"].is_null() {
            errors.push(format!(
                "service {name}: container_name would break `-p`; remove it"
            ));
        }
        if name == "demo" || node_names.contains(name) {
            continue;
        }
        errors.push(format!("service {name}: not a node of {toml}"));
    }

    match services.get("demo") {
        None => errors.push("no demo service".into()),
        Some(demo) => {
            let argv = strings(&demo["command"]);
            let expected = ["/shardq-demo", "e2e", "--config", CONFIG_PATH];
            if argv != expected {
                errors.push(format!("demo: command {argv:?} != {expected:?}"));
            }
            for what in cluster_dir_mount_problems(&demo["volumes"]) {
                errors.push(format!("demo: {what}"));
            }
            if !strings(&demo["profiles"]).iter().any(|p| p == "demo")
                && demo["restart"].as_str() != Some("no")
            {
                errors.push("demo: needs a profile or restart: \"no\"".into());
            }
            for node in &node_names {
                if demo["depends_on"][node.as_str()]["condition"].as_str()
                    != Some("service_healthy")
                {
                    errors.push(format!("demo: must depend on {node} being healthy"));
                }
            }
        }
    }
    errors
}

#[test]
fn compose_services_match_the_cluster_file() {
    let compose = yaml("compose.yaml");
    if !compose["version"].is_null() {
        panic!("compose.yaml: no `version:` key (Compose Specification)");
    }
    let services = compose["services"]
        .as_mapping()
        .cloned()
        .expect("compose.yaml: services");
    finish(
        "compose.yaml vs shardq.toml",
        check_compose(&services, &cluster("shardq.toml"), "shardq.toml"),
    );
}

#[test]
fn compose_scale_override_matches_the_scale_cluster_file() {
    let services = merge_compose(&yaml("compose.yaml"), &yaml("compose.scale.yaml"));
    finish(
        "compose.yaml + compose.scale.yaml vs shardq.scale.toml",
        check_compose(
            &services,
            &cluster("shardq.scale.toml"),
            "shardq.scale.toml",
        ),
    );
}

/// The scale-out procedure starts consumer-3 with `up -d --no-deps
/// consumer-3` and changes the other nodes' list through the file they
/// follow: the override must not change another node's service, or a later
/// `up` with both files would recreate (restart) it and drop its
/// subscribers and history.
#[test]
fn compose_scale_override_only_adds_consumer_3() {
    let base = yaml("compose.yaml");
    let over = yaml("compose.scale.yaml");
    let mut errors = Vec::new();
    for (name, service) in over["services"].as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or("?");
        let keys: Vec<&str> = service
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(key, _)| key.as_str())
            .collect();
        match name {
            "consumer-3" => {
                if !base["services"][name].is_null() {
                    errors.push("consumer-3 must not be in compose.yaml".into());
                }
            }
            // Only the one-off demo may change, and only what it waits for.
            "demo" if keys == ["depends_on"] => {}
            _ => errors.push(format!(
                "compose.scale.yaml changes service {name} ({keys:?}): it may only add consumer-3 and the demo's depends_on"
            )),
        }
    }
    if over["services"]["consumer-3"].is_null() {
        errors.push("compose.scale.yaml must define consumer-3".into());
    }
    finish("compose.scale.yaml", errors);
}

#[test]
fn env_example_covers_every_compose_variable() {
    let example = read(".env.example");
    let mut errors = Vec::new();
    for file in ["compose.yaml", "compose.scale.yaml"] {
        let text = read(file);
        for piece in text.split("${").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !example.contains(&name) {
                errors.push(format!(
                    "{file}: ${{{name}}} is not described in .env.example"
                ));
            }
        }
    }
    if !example
        .lines()
        .any(|line| line.trim() == "SHARDQ_PSK=" || line.trim() == "SHARDQ_PSK=\"\"")
    {
        errors.push(
            ".env.example: SHARDQ_PSK must be present and empty (no usable default key)".into(),
        );
    }
    finish(".env.example", errors);
}

/// Kubernetes objects by `Kind/name`.
fn k8s_objects(files: &[String]) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for file in files {
        for document in yaml_documents(&format!("k8s/{file}")) {
            let kind = document["kind"].as_str().unwrap_or("?").to_owned();
            let name = document["metadata"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            objects.insert(format!("{kind}/{name}"), document);
        }
    }
    objects
}

/// A pod's only container.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

/// The container port a probe or Service targets: a number or a port name.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    let name = port.as_str()?;
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
}

fn named_port(container: &Value, name: &str) -> Option<u64> {
    resolve_port(container, &Value::String(name.to_owned()))
}

/// The checks every shardq pod template shares.
fn check_pod(
    label: &str,
    workload: &Value,
    admin_port: Option<u16>,
    ready_path: &str,
    secret: (&str, &str),
    config_map: &str,
    errors: &mut Vec<String>,
) {
    let pod = &workload["spec"]["template"]["spec"];
    let container = container(workload);
    let mut problem = |what: String| errors.push(format!("{label}: {what}"));
    let argv: Vec<String> = strings(&container["command"])
        .into_iter()
        .chain(strings(&container["args"]))
        .collect();
    let config_path = flag_value(&argv, "--config").unwrap_or("");
    if config_path != CONFIG_PATH {
        problem(format!("argv {argv:?} must pass --config {CONFIG_PATH}"));
    }
    let config_dir = Path::new(config_path)
        .parent()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|mount| {
            mount["mountPath"].as_str() == Some(config_dir.as_str())
                && pod["volumes"].as_sequence().into_iter().flatten().any(|v| {
                    v["name"] == mount["name"]
                        && v["configMap"]["name"].as_str() == Some(config_map)
                })
        });
    match mount {
        None => problem(format!("must mount ConfigMap {config_map} at {config_dir}")),
        // The kubelet updates a ConfigMap volume by swapping a symlink; a
        // subPath mount is a bind of one file and never sees an update, so
        // the nodes would never learn a new node list.
        Some(mount) if !mount["subPath"].is_null() || !mount["subPathExpr"].is_null() => {
            problem(format!(
                "ConfigMap {config_map} must be mounted as a directory, without subPath: a subPath mount never sees an update"
            ));
        }
        Some(_) => {}
    }
    let psk = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|env| env["name"].as_str() == Some("SHARDQ_PSK"));
    let reference = psk.map(|env| &env["valueFrom"]["secretKeyRef"]);
    if reference.map(|r| (r["name"].as_str(), r["key"].as_str()))
        != Some((Some(secret.0), Some(secret.1)))
    {
        problem(format!(
            "SHARDQ_PSK must come from Secret {} key {}",
            secret.0, secret.1
        ));
    }
    for (kind, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        if container["resources"][kind][resource].is_null() {
            problem(format!("no resources.{kind}.{resource}"));
        }
    }
    if pod["securityContext"]["runAsNonRoot"].as_bool() != Some(true) {
        problem("securityContext.runAsNonRoot must be true".into());
    }
    let Some(admin_port) = admin_port else {
        return;
    };
    if named_port(container, "admin") != Some(u64::from(admin_port)) {
        problem(format!("container port `admin` must be {admin_port}"));
    }
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", ready_path),
    ] {
        let get = &container[probe]["httpGet"];
        if get["path"].as_str() != Some(path) {
            problem(format!("{probe} must GET {path}"));
        }
        if resolve_port(container, &get["port"]) != Some(u64::from(admin_port)) {
            problem(format!(
                "{probe} port {:?} must be the admin port {admin_port}",
                get["port"]
            ));
        }
    }
}

/// The Service `name`'s port named `port_name`, and the container port it
/// targets in `container`.
fn service_port(service: &Value, port_name: &str, container: &Value) -> Option<(u64, u64)> {
    let port = service["spec"]["ports"]
        .as_sequence()?
        .iter()
        .find(|port| port["name"].as_str() == Some(port_name))?;
    let target = if port["targetPort"].is_null() {
        port["port"].as_u64()
    } else {
        resolve_port(container, &port["targetPort"])
    };
    Some((port["port"].as_u64()?, target?))
}

#[test]
fn kubernetes_manifests_match_their_cluster_file() {
    let kustomization = yaml("k8s/kustomization.yaml");
    let resources = strings(&kustomization["resources"]);
    for file in &resources {
        assert!(
            deploy_dir().join("k8s").join(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
    assert!(
        !resources.iter().any(|file| file.contains("secret")),
        "kustomization.yaml must not apply the example Secret"
    );
    let mut errors = Vec::new();

    // The ConfigMap comes from configMapGenerator: `files: [shardq.toml]`
    // (or `key=path`), read by the same parser the nodes use.
    let generator = kustomization["configMapGenerator"]
        .as_sequence()
        .and_then(|generators| generators.first())
        .expect("kustomization.yaml: a configMapGenerator");
    let config_map = generator["name"]
        .as_str()
        .expect("configMapGenerator name")
        .to_owned();
    let files = strings(&generator["files"]);
    let toml_file = files
        .iter()
        .find_map(|file| match file.split_once('=') {
            Some(("shardq.toml", path)) => Some(path.to_owned()),
            None if file.ends_with("shardq.toml") => Some(file.clone()),
            _ => None,
        })
        .expect("configMapGenerator: a shardq.toml file");
    let config = cluster(&format!("k8s/{toml_file}"));
    if kustomization["generatorOptions"]["disableNameSuffixHash"].as_bool() != Some(true) {
        errors.push("generatorOptions.disableNameSuffixHash must be true (e2e-job.yaml names the ConfigMap)".into());
    }

    let secret = yaml("k8s/secret.example.yaml");
    let secret_name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let secret_key = secret["stringData"]
        .as_mapping()
        .and_then(|data| data.keys().next())
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let placeholder = secret["stringData"][secret_key.as_str()]
        .as_str()
        .unwrap_or("");
    if placeholder.len() >= 16 {
        errors.push(format!(
            "secret.example.yaml: the placeholder {placeholder:?} must stay shorter than 16 bytes so nodes refuse it"
        ));
    }
    let psk = (secret_name.as_str(), secret_key.as_str());

    let objects = k8s_objects(&resources);
    let get = |key: &str| {
        objects
            .get(key)
            .unwrap_or_else(|| panic!("{key} not found in {:?}", objects.keys()))
    };

    // Consumers: StatefulSet pods consumer-0..N-1, reached as
    // consumer-N.<headless service>, ids equal to pod names.
    let statefulset = get("StatefulSet/consumer");
    let replicas = statefulset["spec"]["replicas"]
        .as_u64()
        .expect("StatefulSet replicas");
    let service_name = statefulset["spec"]["serviceName"]
        .as_str()
        .expect("StatefulSet serviceName");
    let headless = get(&format!("Service/{service_name}"));
    if headless["spec"]["clusterIP"].as_str() != Some("None") {
        errors.push(format!(
            "Service/{service_name} must be headless (clusterIP: None)"
        ));
    }
    let consumer = container(statefulset);
    let ws_port = named_port(consumer, "ws");
    let admin_port = named_port(consumer, "admin");
    let expected_ids: Vec<String> = (0..replicas).map(|i| format!("consumer-{i}")).collect();
    if config.consumer_ids() != expected_ids {
        errors.push(format!(
            "k8s/{toml_file} consumers {:?} != the StatefulSet's {replicas} pods {expected_ids:?}",
            config.consumer_ids()
        ));
    }
    for entry in &config.consumers {
        let host = format!("{}.{service_name}", entry.id);
        let url = format!("ws://{host}:{}", ws_port.unwrap_or(0));
        let admin = format!("http://{host}:{}", admin_port.unwrap_or(0));
        if entry.url != url {
            errors.push(format!("{}: url {} != {url}", entry.id, entry.url));
        }
        if entry.admin.as_deref() != Some(admin.as_str()) {
            errors.push(format!("{}: admin {:?} != {admin}", entry.id, entry.admin));
        }
    }
    for name in ["ws", "admin"] {
        match service_port(headless, name, consumer) {
            Some((port, target)) if Some(port) == named_port(consumer, name) && port == target => {}
            other => errors.push(format!(
                "Service/{service_name} port {name}: {other:?} must match the container port"
            )),
        }
    }
    let id_from_pod_name = consumer["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|env| {
            env["name"].as_str() == Some("SHARDQ_ID")
                && env["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("metadata.name")
        });
    if !id_from_pod_name {
        errors.push("StatefulSet/consumer: SHARDQ_ID must come from metadata.name".into());
    }
    let consumer_admin = config
        .consumers
        .first()
        .and_then(|entry| entry.admin.as_deref())
        .and_then(url_port);
    check_pod(
        "StatefulSet/consumer",
        statefulset,
        consumer_admin,
        "/healthz",
        psk,
        &config_map,
        &mut errors,
    );
    // Each consumer keeps its topics' state on a volume of its own.
    let consumer = container(statefulset);
    let argv: Vec<String> = strings(&consumer["command"])
        .into_iter()
        .chain(strings(&consumer["args"]))
        .collect();
    if flag_value(&argv, "--data-dir") != Some(DATA_DIR) {
        errors.push(format!(
            "StatefulSet/consumer: argv {argv:?} must pass --data-dir {DATA_DIR}"
        ));
    }
    let data_mount = consumer["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|mount| mount["mountPath"].as_str() == Some(DATA_DIR));
    let claimed = data_mount.is_some_and(|mount| {
        statefulset["spec"]["volumeClaimTemplates"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|claim| claim["metadata"]["name"] == mount["name"])
    });
    if !claimed {
        errors.push(format!(
            "StatefulSet/consumer: {DATA_DIR} must be a volume from volumeClaimTemplates"
        ));
    }
    if ws_port
        != config
            .consumers
            .first()
            .and_then(|e| url_port(&e.url))
            .map(u64::from)
    {
        errors
            .push("StatefulSet/consumer: container port ws != the cluster file's url port".into());
    }

    // Producers: Deployment replicas behind the Service that their
    // [[producers]] entry's url names.
    let deployment = get("Deployment/producer");
    let producer = container(deployment);
    let argv: Vec<String> = strings(&producer["command"])
        .into_iter()
        .chain(strings(&producer["args"]))
        .collect();
    if argv.first().map(String::as_str) != Some("/shardq-producer") {
        errors.push(format!(
            "Deployment/producer: argv {argv:?} must run /shardq-producer"
        ));
    }
    let producer_id = flag_value(&argv, "--id").unwrap_or("");
    match config.producer(producer_id) {
        None => errors.push(format!(
            "Deployment/producer: --id {producer_id:?} is not a [[producers]] entry"
        )),
        Some(entry) => {
            let service_name = url_host(&entry.url);
            let admin_port = entry.admin.as_deref().and_then(url_port);
            match objects.get(&format!("Service/{service_name}")) {
                None => errors.push(format!(
                    "producer url {}: no Service {service_name}",
                    entry.url
                )),
                Some(service) => {
                    let expected = [("ws", url_port(&entry.url)), ("admin", admin_port)];
                    for (name, port) in expected {
                        let port = port.map(u64::from);
                        match service_port(service, name, producer) {
                            Some((service_port, target))
                                if Some(service_port) == port && Some(target) == port => {}
                            other => errors.push(format!(
                                "Service/{service_name} port {name}: {other:?} must be {port:?} (the cluster file's)"
                            )),
                        }
                    }
                }
            }
            if named_port(producer, "ws") != url_port(&entry.url).map(u64::from) {
                errors.push("Deployment/producer: container port ws != url port".into());
            }
            check_pod(
                "Deployment/producer",
                deployment,
                admin_port,
                "/readyz",
                psk,
                &config_map,
                &mut errors,
            );
        }
    }

    // The optional e2e Job uses the same ConfigMap and Secret.
    if deploy_dir().join("k8s/e2e-job.yaml").is_file() {
        let job = yaml("k8s/e2e-job.yaml");
        check_pod("Job e2e", &job, None, "", psk, &config_map, &mut errors);
    }
    finish("deploy/k8s", errors);
}
