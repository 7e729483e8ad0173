//! The Kubernetes manifests under `deploy/k8s/` agree with their cluster
//! file and with the compose deployment: the same nodes, ports, probes and
//! mounts (the live node list as a directory, never a `subPath`), a data
//! claim for every consumer, and objects that reference each other by the
//! right names. Needs no Kubernetes: it only reads files.

mod deploy_common;

use deploy_common::*;

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

/// A container's `env` entry `name`.
fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|env| env["name"].as_str() == Some(name))
}

/// The Secret name and key an `env` entry reads (`valueFrom.secretKeyRef`).
fn secret_ref(env: Option<&Value>) -> Option<(&str, &str)> {
    let reference = &env?["valueFrom"]["secretKeyRef"];
    Some((reference["name"].as_str()?, reference["key"].as_str()?))
}

/// Who runs in a pod: a node (consumer, producer), which holds the node key
/// and listens on every interface, or a client (the e2e Job), which holds
/// the psk alone.
enum Role {
    Node,
    Client,
}

/// What is wrong with a node container's environment: the node key must
/// come from `node_key` (Secret, key), and both ports must listen on every
/// interface. A node binds its url's host by default: a producer's is the
/// Service's ClusterIP, which no pod can bind, and the probes come to the
/// pod IP.
fn node_env_problems(container: &Value, node_key: (&str, &str)) -> Vec<String> {
    let mut problems = Vec::new();
    if secret_ref(env_entry(container, "SHARDQ_NODE_KEY")) != Some(node_key) {
        problems.push(format!(
            "SHARDQ_NODE_KEY must come from Secret {} key {}",
            node_key.0, node_key.1
        ));
    }
    for (variable, port_name) in [("SHARDQ_LISTEN", "ws"), ("SHARDQ_ADMIN_LISTEN", "admin")] {
        let want = named_port(container, port_name).map(|port| format!("0.0.0.0:{port}"));
        let given = env_entry(container, variable).and_then(|env| env["value"].as_str());
        if want.is_none() || given != want.as_deref() {
            problems.push(format!(
                "{variable} must be {want:?} (the `{port_name}` port, every interface), not {given:?}"
            ));
        }
    }
    problems
}

/// What is wrong with a client container's environment: it must not get the
/// node key, under any name.
fn client_env_problems(container: &Value, node_key: (&str, &str)) -> Vec<String> {
    let reads_node_key = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|env| secret_ref(Some(env)) == Some(node_key));
    if env_entry(container, "SHARDQ_NODE_KEY").is_some() || reads_node_key {
        vec![format!(
            "a client must not get the node key (Secret {} key {}): only nodes hold it",
            node_key.0, node_key.1
        )]
    } else {
        Vec::new()
    }
}

/// The checks every shardq pod template shares (one argument per fact the
/// manifest must agree on).
#[allow(clippy::too_many_arguments)]
fn check_pod(
    label: &str,
    workload: &Value,
    admin_port: Option<u16>,
    ready_path: &str,
    secret: (&str, &str),
    node_key: (&str, &str),
    role: Role,
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
    if secret_ref(env_entry(container, "SHARDQ_PSK")) != Some(secret) {
        problem(format!(
            "SHARDQ_PSK must come from Secret {} key {}",
            secret.0, secret.1
        ));
    }
    // `envFrom` a Secret would hand the container every key of it, the node
    // key included: name each variable instead.
    if !container["envFrom"].is_null() {
        problem("no envFrom: name each variable (it would hand over every key of a Secret)".into());
    }
    let role_problems = match role {
        Role::Node => node_env_problems(container, node_key),
        Role::Client => client_env_problems(container, node_key),
    };
    for what in role_problems {
        problem(what);
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
    if !config.legacy {
        errors.push(format!(
            "k8s/{toml_file}: must say `legacy = true` (top level) so origin clients keep working"
        ));
    }
    if kustomization["generatorOptions"]["disableNameSuffixHash"].as_bool() != Some(true) {
        errors.push("generatorOptions.disableNameSuffixHash must be true (e2e-job.yaml names the ConfigMap)".into());
    }

    let secret = yaml("k8s/secret.example.yaml");
    let secret_name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let secret_keys: Vec<String> = secret["stringData"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(key, _)| key.as_str().map(str::to_owned))
        .collect();
    for key in ["psk", "node-key"] {
        if !secret_keys.iter().any(|k| k == key) {
            errors.push(format!(
                "secret.example.yaml: stringData must have the key {key:?} (found {secret_keys:?})"
            ));
        }
    }
    for key in &secret_keys {
        let placeholder = secret["stringData"][key.as_str()].as_str().unwrap_or("");
        if placeholder.len() >= 16 {
            errors.push(format!(
                "secret.example.yaml: the placeholder {key}: {placeholder:?} must stay shorter than 16 bytes so nodes refuse it"
            ));
        }
    }
    let psk = (secret_name.as_str(), "psk");
    let node_key = (secret_name.as_str(), "node-key");

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
        node_key,
        Role::Node,
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
                node_key,
                Role::Node,
                &config_map,
                &mut errors,
            );
        }
    }

    // The optional e2e Job uses the same ConfigMap and Secret.
    if deploy_dir().join("k8s/e2e-job.yaml").is_file() {
        let job = yaml("k8s/e2e-job.yaml");
        check_pod(
            "Job e2e",
            &job,
            None,
            "",
            psk,
            node_key,
            Role::Client,
            &config_map,
            &mut errors,
        );
    }
    finish("deploy/k8s", errors);
}
