//! The deployment artifacts under `deploy/` agree with each other: every
//! YAML document parses, every cluster file validates as the nodes validate
//! it, the compose services and Kubernetes manifests name the same nodes on
//! the same ports as their cluster file, and every node mounts its cluster
//! file in a way that lets a changed node list reach the running node (a
//! directory, never a single file or a `subPath`).
//!
//! Needs no Docker: it only reads files. The Kubernetes manifests are
//! checked by `deploy_k8s`; the Docker end-to-end run is
//! `tests/docker/e2e.sh`.

mod deploy_common;

use deploy_common::*;
use shardq_protocol::NodeEntry;

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
    for (name, config) in [
        ("shardq.toml", &base),
        ("shardq.scale.toml", &scale),
        ("k8s/shardq.toml", &k8s),
    ] {
        // The origin clients keep working: the legacy dialect is off
        // unless the cluster file turns it on.
        if !config.legacy {
            errors.push(format!(
                "{name}: must say `legacy = true` (top level) so origin clients keep working"
            ));
        }
        // The node key comes from the environment (SHARDQ_NODE_KEY), never
        // from a file a client could also be given.
        if config.node_key_file.is_some() {
            errors.push(format!(
                "{name}: the node key comes from SHARDQ_NODE_KEY, not node_key_file"
            ));
        }
    }
    finish("cluster files", errors);
}

/// The value of the variable `name` in a compose service's `environment`,
/// mapping (`NAME: value`) or list (`- NAME=value`) syntax; `Some("")` for
/// a name without a value.
fn env_var(service: &Value, name: &str) -> Option<String> {
    let environment = &service["environment"];
    if let Some(mapping) = environment.as_mapping() {
        let value = mapping.get(name)?;
        return Some(match value {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            Value::Bool(flag) => flag.to_string(),
            Value::Number(number) => number.to_string(),
            _ => format!("{value:?}"),
        });
    }
    strings(environment)
        .into_iter()
        .find_map(|item| match item.split_once('=') {
            Some((key, value)) if key == name => Some(value.to_owned()),
            None if item == name => Some(String::new()),
            _ => None,
        })
}

/// What is wrong with a node service's environment: it must get the node
/// key, required from `.env` (`${SHARDQ_NODE_KEY:?...}`), and listen on
/// every interface of its container, both ports: by default a node binds
/// its url's host and its admin url's (or 127.0.0.1), which the
/// healthcheck (127.0.0.1) or a container with a new address after a
/// network reconnect would not reach.
fn node_env_problems(service: &Value, entry: &NodeEntry) -> Vec<String> {
    let mut problems = Vec::new();
    let node_key = env_var(service, "SHARDQ_NODE_KEY").unwrap_or_default();
    if !node_key.starts_with("${SHARDQ_NODE_KEY:?") {
        problems.push(format!(
            "SHARDQ_NODE_KEY must be required from .env as ${{SHARDQ_NODE_KEY:?...}}, not {node_key:?}"
        ));
    }
    let listens = [
        (
            "SHARDQ_LISTEN",
            url_port(&entry.url),
            entry.listen.as_deref(),
        ),
        (
            "SHARDQ_ADMIN_LISTEN",
            entry.admin.as_deref().and_then(url_port),
            None,
        ),
    ];
    for (variable, port, in_file) in listens {
        let Some(port) = port else { continue };
        let want = format!("0.0.0.0:{port}");
        let given = env_var(service, variable);
        if given.as_deref() != Some(want.as_str()) && in_file != Some(want.as_str()) {
            problems.push(format!(
                "{variable} must be {want} (listen on every interface), not {given:?}"
            ));
        }
    }
    problems
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
        let psk = env_var(service, "SHARDQ_PSK").unwrap_or_default();
        if !psk.starts_with("${SHARDQ_PSK") {
            problem(format!(
                "SHARDQ_PSK must come from ${{SHARDQ_PSK}}, not {psk:?}"
            ));
        }
        for what in node_env_problems(service, entry) {
            problem(what);
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
            // A client: the psk, never the node key.
            let psk = env_var(demo, "SHARDQ_PSK").unwrap_or_default();
            if !psk.starts_with("${SHARDQ_PSK") {
                errors.push(format!(
                    "demo: SHARDQ_PSK must come from ${{SHARDQ_PSK}}, not {psk:?}"
                ));
            }
            if env_var(demo, "SHARDQ_NODE_KEY").is_some() {
                errors.push(
                    "demo: a client must not get SHARDQ_NODE_KEY (only nodes hold the node key)"
                        .into(),
                );
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
    for secret in ["SHARDQ_PSK", "SHARDQ_NODE_KEY"] {
        if !example.lines().any(|line| {
            line.trim() == format!("{secret}=") || line.trim() == format!("{secret}=\"\"")
        }) {
            errors.push(format!(
                ".env.example: {secret} must be present and empty (no usable default key)"
            ));
        }
        if !example.contains(&format!("s/^{secret}=.*/{secret}=$(openssl rand -hex 32)/")) {
            errors.push(format!(
                ".env.example: must show how to generate {secret} (openssl rand -hex 32)"
            ));
        }
    }
    finish(".env.example", errors);
}
