//! The app dashboard (`examples/dashboard`, on `clients/js/shardq.js`) in a
//! real browser: headless Chromium driven through chromedriver (WebDriver,
//! with fantoccini) against an in-process cluster. The page counts
//! `database/create` live, whether published over WebSocket or the
//! producers' HTTP API, survives a restart of the consumer it is on without
//! a gap or a double count, and the operator dashboard of that consumer
//! lists the cluster and the page's connection. Screenshots of each step
//! land in `<target>/browser/`.
//!
//! Without `chromium` and `chromedriver` on PATH the browser test prints a
//! SKIPPED banner and passes, unless `SHARDQ_REQUIRE_BROWSER=1` (CI), where
//! it fails.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use shardq::{Publisher, PublisherConfig};
use shardq_protocol::auth::TokenKeys;
use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
use shardq_tests::{Cluster, http_get, http_request, init_logging, until};
use shardq_webapp::{PageConfig, TokenSource};
use tokio::sync::oneshot;

const SECRET: &[u8] = b"browser-test-token-secret-of-at-least-32-bytes";
/// The page's client name: its token's `sub`.
const PAGE_CLIENT: &str = "app-dashboard";

fn token(sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = TokenClaims {
        sub: sub.to_owned(),
        tenant: "default".to_owned(),
        publish: publish.iter().map(|p| (*p).to_owned()).collect(),
        subscribe: subscribe.iter().map(|p| (*p).to_owned()).collect(),
        exp: now + 600,
    };
    mint_hs256(SECRET, &claims).unwrap()
}

/// The page's tokens: subscribe and publish `database/create`.
fn page_tokens() -> TokenSource {
    Arc::new(|| {
        Ok(token(
            PAGE_CLIENT,
            &["database/create"],
            &["database/create"],
        ))
    })
}

/// Serves the app dashboard as `shardq-demo dashboard` does; stops when
/// the sender is dropped.
async fn serve_page(page: PageConfig) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = shardq_webapp::router(page, page_tokens());
    tokio::spawn(shardq_webapp::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_server_serves_the_page_the_client_and_fresh_tokens() {
    let page = PageConfig {
        consumers: vec!["ws://127.0.0.1:1/v1/subscribe".into()],
        producers: vec![],
        http: vec![],
        queue: "database".into(),
        event: "create".into(),
    };
    let (addr, _stop) = serve_page(page).await;
    for (path, needle) in [
        ("/", r#"id="count""#),
        ("/index.html", r#"src="/app.js""#),
        ("/app.js", r#"from "/shardq.js""#),
        ("/shardq.js", "export class Subscriber"),
        ("/connection.js", "export class Connection"),
    ] {
        let (status, body) = http_get(addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(needle), "{path} lacks {needle}");
    }
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    let (status, body) = http_get(addr, "/config.json").await;
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["consumers"][0], "ws://127.0.0.1:1/v1/subscribe");
    assert_eq!(
        (config["queue"].as_str(), config["event"].as_str()),
        (Some("database"), Some("create"))
    );
    let keys = TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap();
    let identity = keys.verify(config["token"].as_str().unwrap()).unwrap();
    assert_eq!(&*identity.name, PAGE_CLIENT);
}

/// Where a program is on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Chromium and chromedriver, or `None` after a SKIPPED banner (written
/// past the test harness's capture, so it shows). With
/// `SHARDQ_REQUIRE_BROWSER=1`, their absence fails the test.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"));
    let driver = on_path("chromedriver");
    if let (Some(chromium), Some(driver)) = (&chromium, &driver) {
        return Some((chromium.clone(), driver.clone()));
    }
    let missing: Vec<&str> = [
        ("chromium", chromium.is_none()),
        ("chromedriver", driver.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    let missing = missing.join(" and ");
    assert!(
        std::env::var("SHARDQ_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "SHARDQ_REQUIRE_BROWSER=1 but {missing} not on PATH \
         (apt-get install chromium chromium-driver)"
    );
    let line = "#".repeat(71);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{line}\n##  SKIPPED: tests/tests/browser.rs did NOT drive a browser: {missing}\n\
         ##  not on PATH (apt-get install chromium chromium-driver). The app\n\
         ##  dashboard and shardq.js are UNTESTED in a browser by this run.\n{line}\n"
    );
    None
}

/// `<target>/browser/`: `CARGO_TARGET_DIR` if set, else the workspace's `target`.
fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // an absolute dir replaces the base
        None => workspace.join("target"),
    };
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    // This run's screenshots only.
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// Numbered screenshots of the browser's page.
#[derive(Clone)]
struct Screenshots {
    dir: PathBuf,
    next: Arc<AtomicUsize>,
}

impl Screenshots {
    async fn save(&self, browser: &Client, name: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.dir.join(format!("{n:02}-{name}.png"));
        let png = browser.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// chromedriver on a free port, killed with the browsers it started (its
/// process group) when dropped, whether the test passed or not.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start(program: &Path, log: &Path) -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(program);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        // The guard first: a chromedriver that never gets ready is killed too.
        let driver = std::cell::RefCell::new(Chromedriver {
            child: command.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        until("chromedriver is ready", || async {
            let exited = driver.borrow_mut().child.try_wait();
            if let Ok(Some(status)) = exited {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("chromedriver exited ({status}): {log}");
            }
            // Listening is ready: it takes a new session from then on.
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Ok(()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
        driver.into_inner()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
async fn open_browser(driver: &Chromedriver, chromium: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1200,900",
            ],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|error| panic!("cannot start Chromium through chromedriver: {error}"))
}

/// The text of the element `#id`, or why not.
async fn text(browser: &Client, id: &str) -> Result<String, String> {
    let element = browser
        .find(Locator::Id(id))
        .await
        .map_err(|e| format!("no #{id}: {e}"))?;
    element.text().await.map_err(|e| e.to_string())
}

/// What the page shows, for failure messages.
async fn page_summary(browser: &Client) -> String {
    let mut summary = Vec::new();
    for id in ["state", "state-detail", "count", "gaps", "notices"] {
        let value = text(browser, id).await.unwrap_or_else(|e| e);
        summary.push(format!("#{id}={value:?}"));
    }
    summary.join(" ")
}

/// Polls until `#id` reads one of `expected`.
async fn wait_text(browser: &Client, id: &str, expected: &[&str]) -> String {
    until(&format!("#{id} reads {expected:?}"), || async {
        let value = text(browser, id).await?;
        if expected.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(page_summary(browser).await)
        }
    })
    .await
}

/// Publishes over the producer's HTTP API with a bearer token.
async fn publish_http(cluster: &Cluster, payload: serde_json::Value) {
    let url = cluster.config.producers[0].http.as_deref().unwrap();
    let addr = shardq_protocol::config::host_port(url)
        .unwrap()
        .parse()
        .unwrap();
    let bearer = token("http-job", &["database/create"], &[]);
    let headers = [
        ("Authorization", format!("Bearer {bearer}")),
        ("Content-Type", "application/json".to_owned()),
    ];
    let (status, body) = http_request(
        addr,
        "POST",
        "/v1/topics/database/create",
        &headers,
        &payload.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_dashboard_counts_live_and_resumes_in_a_real_browser() {
    init_logging();
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let shots = Screenshots {
        dir: screenshot_dir(),
        next: Arc::new(AtomicUsize::new(0)),
    };
    let driver = Chromedriver::start(&chromedriver, &shots.dir.join("chromedriver.log")).await;
    let browser = open_browser(&driver, &chromium).await;
    let outcome = tokio::spawn(scenario(browser.clone(), shots.clone())).await;
    if outcome.is_err() {
        let path = shots.save(&browser, "failed").await;
        eprintln!(
            "the page when it failed ({}): {}",
            path.display(),
            page_summary(&browser).await
        );
    }
    let _ = browser.close().await;
    drop(driver);
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
    eprintln!("screenshots in {}", shots.dir.display());
}

/// Publishes records `ids` over WebSocket (the Rust client, with the psk).
async fn publish_ws(publisher: &Publisher, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        let record = json!({"id": id, "name": format!("record {id}"), "via": "websocket"});
        publisher
            .publish("database", "create", &record)
            .await
            .unwrap();
    }
}

/// How many records the page's table shows.
async fn rows(browser: &Client) -> usize {
    browser
        .find_all(Locator::Css("#records tbody tr"))
        .await
        .unwrap()
        .len()
}

async fn scenario(browser: Client, shots: Screenshots) {
    let mut cluster = Cluster::builder()
        .consumers(2)
        .producers(1)
        .tokens(TokenKeys::new(&[SECRET.to_vec()], &[], true).unwrap())
        .start()
        .await;
    let publisher = Publisher::connect(PublisherConfig::from_cluster(
        &cluster.config,
        cluster.psk.clone(),
    ))
    .await
    .unwrap();
    // The page is on the consumer that does not own database/create: it is
    // an edge for it, so the topic's history survives at the owner when the
    // page's consumer restarts, and the page's count can be exact.
    let owner = cluster.owner("database/create");
    let edge = 1 - owner;
    let page_on = |index: usize| PageConfig {
        consumers: vec![cluster.consumers[index].url("/v1/subscribe")],
        ..PageConfig::from_cluster(&cluster.config, "database", "create")
    };
    let (edge_page, owner_page) = (page_on(edge), page_on(owner));
    let (site, _stop_site) = serve_page(edge_page).await;
    let app_tab = browser.window().await.unwrap();

    browser.goto(&format!("http://{site}/")).await.unwrap();
    shots.save(&browser, "opened").await;
    wait_text(&browser, "state", &["connected"]).await;
    shots.save(&browser, "connected").await;

    // Five records: three over WebSocket, two over HTTP.
    publish_ws(&publisher, 1..=3).await;
    for id in 4..=5 {
        let record = json!({"id": id, "name": format!("record {id}"), "via": "http"});
        publish_http(&cluster, record).await;
    }
    wait_text(&browser, "count", &["5"]).await;
    assert_eq!(rows(&browser).await, 5);
    shots.save(&browser, "five-records").await;

    // The page's consumer stops (its subscribers are closed with 1001) and
    // comes back without its state; two records are published meanwhile.
    cluster.stop_consumer(edge).await;
    wait_text(&browser, "state", &["disconnected", "connecting"]).await;
    shots.save(&browser, "consumer-stopped").await;
    publish_ws(&publisher, 6..=6).await;
    publish_http(
        &cluster,
        json!({"id": 7, "name": "record 7", "via": "http"}),
    )
    .await;
    cluster.restart_consumer(edge).await;
    wait_text(&browser, "state", &["connected"]).await;
    wait_text(&browser, "count", &["7"]).await;
    let summary = page_summary(&browser).await;
    assert_eq!(text(&browser, "gaps").await.unwrap(), "0", "{summary}");
    assert_eq!(rows(&browser).await, 7);
    shots.save(&browser, "resumed").await;

    // The page's own button publishes through shardq.js's Publisher.
    let button = browser.find(Locator::Id("publish")).await.unwrap();
    button.click().await.unwrap();
    wait_text(&browser, "count", &["8"]).await;
    shots.save(&browser, "published-from-the-page").await;

    // The operator dashboard in a tab of its own: the app stays connected.
    let other_tab = browser.new_window(true).await.unwrap().handle;
    browser.switch_to_window(other_tab).await.unwrap();
    operator_dashboard(&browser, &shots, &cluster, edge).await;

    // The owner restarts without its history: a page on it resumes with
    // `recovered: false` and shows one gap; the page on the edge gets the
    // edge's gap notice. Both keep counting.
    let (owner_site, _stop_owner_site) = serve_page(owner_page).await;
    browser
        .goto(&format!("http://{owner_site}/"))
        .await
        .unwrap();
    wait_text(&browser, "state", &["connected"]).await;
    publish_ws(&publisher, 9..=9).await;
    wait_text(&browser, "count", &["1"]).await;
    cluster.stop_consumer(owner).await;
    wait_text(&browser, "state", &["disconnected", "connecting"]).await;
    cluster.restart_consumer(owner).await;
    wait_text(&browser, "gaps", &["1"]).await;
    wait_text(&browser, "state", &["connected"]).await;
    publish_ws(&publisher, 10..=10).await;
    wait_text(&browser, "count", &["2"]).await;
    shots.save(&browser, "owner-restarted-gap").await;
    browser.switch_to_window(app_tab).await.unwrap();
    wait_text(&browser, "gaps", &["1"]).await;
    wait_text(&browser, "count", &["10"]).await;
    shots.save(&browser, "edge-gap-notice").await;

    cluster.shutdown().await;
}

/// The operator dashboard of the page's consumer lists every consumer and
/// the page's connection.
async fn operator_dashboard(
    browser: &Client,
    shots: &Screenshots,
    cluster: &Cluster,
    index: usize,
) {
    let admin = cluster.consumers[index].admin;
    browser
        .goto(&format!("http://{admin}/dashboard"))
        .await
        .unwrap();
    until("the operator dashboard names its node", || async {
        match text(browser, "node-id").await {
            Ok(id) if id == cluster.consumers[index].id => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    until(
        "the operator dashboard lists every consumer and the page",
        || async {
            let nodes = browser
                .find_all(Locator::Css("#nodes tr[data-name]"))
                .await
                .map_err(|e| e.to_string())?;
            let mut names = Vec::new();
            for row in nodes {
                names.push(row.attr("data-name").await.map_err(|e| e.to_string())?);
            }
            let page = browser
                .find_all(Locator::Css(&format!(
                    "#clients tr[data-name*=\"{PAGE_CLIENT}\"]"
                )))
                .await
                .map_err(|e| e.to_string())?;
            let listed = cluster
                .consumers
                .iter()
                .all(|consumer| names.contains(&Some(consumer.id.clone())));
            if listed && !page.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "nodes {names:?}, {} row(s) for {PAGE_CLIENT}",
                    page.len()
                ))
            }
        },
    )
    .await;
    shots.save(browser, "operator-dashboard").await;
}
