//! The crate arrows of docs/ARCHITECTURE.md, read from `cargo metadata`:
//! protocol ← net ← {consumer, producer}; client ← protocol; webapp ←
//! protocol; demo and tests may use anything. A change that adds a forbidden arrow fails here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the workspace crates it may depend on (in any
/// section: normal, dev or build). `None`: anything.
const RULES: [(&str, Option<&[&str]>); 8] = [
    ("shardq-protocol", Some(&[])),
    ("shardq-net", Some(&["shardq-protocol"])),
    ("shardq-consumer", Some(&["shardq-protocol", "shardq-net"])),
    ("shardq-producer", Some(&["shardq-protocol", "shardq-net"])),
    ("shardq", Some(&["shardq-protocol"])),
    ("shardq-webapp", Some(&["shardq-protocol"])),
    ("shardq-demo", None),
    ("shardq-tests", None),
];

/// Crates that run on the nodes: they use the nodes' own WebSocket codec.
const NODE_CRATES: [&str; 3] = ["shardq-net", "shardq-consumer", "shardq-producer"];

struct Package {
    name: String,
    dir: PathBuf,
    /// (dependency name, kind: "normal", "dev" or "build").
    dependencies: Vec<(String, String)>,
}

fn workspace() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| Package {
            name: package["name"].as_str().unwrap().to_owned(),
            dir: Path::new(package["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap()
                .to_owned(),
            dependencies: package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|dependency| {
                    let kind = dependency["kind"].as_str().unwrap_or("normal");
                    (
                        dependency["name"].as_str().unwrap().to_owned(),
                        kind.to_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// The `.rs` files under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn crates_depend_only_along_the_arrows() {
    let packages = workspace();
    let members: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let ruled: BTreeSet<&str> = RULES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        members, ruled,
        "every workspace crate needs a rule here and in docs/ARCHITECTURE.md"
    );
    let mut broken = Vec::new();
    for package in &packages {
        let Some((_, Some(allowed))) = RULES.iter().find(|(name, _)| *name == package.name) else {
            continue;
        };
        for (dependency, kind) in &package.dependencies {
            if members.contains(dependency.as_str()) && !allowed.contains(&dependency.as_str()) {
                broken.push(format!("{} → {dependency} ({kind})", package.name));
            }
        }
    }
    assert!(broken.is_empty(), "forbidden crate arrows: {broken:?}");
}

#[test]
fn node_crates_do_not_use_tungstenite() {
    let packages = workspace();
    let mut users = Vec::new();
    for package in packages
        .iter()
        .filter(|p| NODE_CRATES.contains(&p.name.as_str()))
    {
        if package
            .dependencies
            .iter()
            .any(|(name, _)| name.contains("tungstenite"))
        {
            users.push(format!("{}/Cargo.toml", package.name));
        }
        for file in sources(&package.dir) {
            let text = std::fs::read_to_string(&file).unwrap();
            if text.contains("tungstenite") {
                users.push(file.display().to_string());
            }
        }
    }
    assert!(
        users.is_empty(),
        "node-side code using tungstenite: {users:?}"
    );
}

/// The code of a source file that is not test code: everything before its
/// `#[cfg(test)]` module (by the house convention, tests come last), and
/// nothing of a file that is a test module itself.
fn non_test_code(file: &Path) -> String {
    if file.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[test]
fn dependencies_only_tests_use_are_dev_dependencies() {
    let mut unused = Vec::new();
    for package in workspace() {
        let code: String = sources(&package.dir.join("src"))
            .iter()
            .map(|file| non_test_code(file))
            .collect();
        for (dependency, kind) in &package.dependencies {
            if kind != "normal" {
                continue;
            }
            let path = dependency.replace('-', "_");
            if !code.contains(&format!("{path}::")) && !code.contains(&format!("{path} ")) {
                unused.push(format!("{} → {dependency}", package.name));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "normal dependencies no library or binary code uses (make them dev-dependencies, or drop them): {unused:?}"
    );
}
