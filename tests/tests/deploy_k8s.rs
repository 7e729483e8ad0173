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
