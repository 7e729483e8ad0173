//! `clients/js/test/shardq.test.js` — shardq.js against a scripted node (a
//! fake WebSocket): the handshake, resume without duplicates, gaps,
//! `queue/*` resubscription, publishes across dropped connections — run
//! with Node's test runner under `cargo test`. Without `node` on PATH it
//! prints a SKIPPED banner and passes, unless `SHARDQ_REQUIRE_BROWSER=1`
//! (CI), where it fails. tests/tests/browser.rs runs shardq.js in Chromium
//! against real nodes.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

#[test]
fn shardq_js_passes_its_unit_tests_under_node() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(node) = std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
    else {
        assert!(
            std::env::var("SHARDQ_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "SHARDQ_REQUIRE_BROWSER=1 but node is not on PATH (apt-get install nodejs)"
        );
        let line = "#".repeat(71);
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{line}\n##  SKIPPED: clients/js/test/shardq.test.js did NOT run: node is not\n\
             ##  on PATH (apt-get install nodejs).\n{line}\n"
        );
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let output = Command::new(node)
        .args(["--test", "test/shardq.test.js"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
