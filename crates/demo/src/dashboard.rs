//! `shardq-demo dashboard`: serves the app dashboard (a page counting one
//! topic's messages live, through `clients/js/shardq.js`) for a cluster
//! file, with a token signed by the file's `[tokens]` HS256 key minted for
//! the page at each `/config.json` request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use shardq_protocol::ClusterConfig;
use shardq_protocol::auth::DEFAULT_TENANT;
use shardq_protocol::auth::token::{TokenClaims, mint_hs256};
use shardq_webapp::{PageConfig, TokenSource};

/// Options of `shardq-demo dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The cluster file; its `[tokens]` hs256_secret_files[0] signs the page's tokens.
    #[arg(long, env = "SHARDQ_CONFIG")]
    pub config: PathBuf,
    /// Where to serve the page. Whoever reaches it gets a token: keep it local.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Lifetime of each token handed to the page, in seconds (the page
    /// asks for a fresh one at every reconnection).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// The page's client name (the token's `sub`, as `/v1/clients` shows it).
    #[arg(long, default_value = "dashboard")]
    pub name: String,
    /// The queue shown.
    #[arg(long, default_value = "database")]
    pub queue: String,
    /// The event shown.
    #[arg(long, default_value = "create")]
    pub event: String,
}

/// Serves the page until Ctrl-C.
pub async fn run(args: DashboardArgs) -> Result<(), String> {
    let cluster = shardq::cluster_file::load_cluster(&args.config).map_err(|e| e.to_string())?;
    let topic = format!("{}/{}", args.queue, args.event);
    cluster
        .queues
        .check_text(&topic)
        .map_err(|e| format!("{topic}: {e}"))?;
    let secret = crate::token::hs256_secret(&cluster, &args.config)?;
    check_plaintext(&cluster, &args.config)?;
    let mint = token_source(secret, args.name.clone(), topic.clone(), args.ttl);
    // Fail now, not in the browser, when the key cannot sign.
    mint()?;
    let page = PageConfig::from_cluster(&cluster, &args.queue, &args.event);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("The app dashboard of {topic} is at http://{address}/ (Ctrl-C stops it)");
    println!(
        "Its tokens are minted for {:?}: subscribe and publish {topic}, {} s each.",
        args.name, args.ttl
    );
    let router = shardq_webapp::router(page, mint);
    shardq_webapp::serve(listener, router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| format!("serving http://{address}/: {e}"))
}

/// Mints a token allowing to subscribe and publish `topic`, valid `ttl`
/// seconds from each call.
pub fn token_source(secret: Vec<u8>, name: String, topic: String, ttl: u64) -> TokenSource {
    Arc::new(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = TokenClaims {
            sub: name.clone(),
            tenant: DEFAULT_TENANT.to_owned(),
            publish: vec![topic.clone()],
            subscribe: vec![topic.clone()],
            exp: now + ttl,
        };
        mint_hs256(&secret, &claims).map_err(|e| e.to_string())
    })
}

/// Nodes refuse tokens over `ws://` unless `[tokens] allow_plaintext`:
/// the page could only fail, so say it now.
fn check_plaintext(cluster: &ClusterConfig, config: &std::path::Path) -> Result<(), String> {
    let plaintext = cluster
        .consumers
        .iter()
        .chain(&cluster.producers)
        .find(|entry| entry.url.starts_with("ws://"));
    match plaintext {
        Some(entry) if !cluster.tokens.allow_plaintext => Err(format!(
            "{}: {} is ws:// and the nodes accept tokens over TLS only: give the nodes wss:// urls, \
             or for development on a trusted network set `allow_plaintext = true` under [tokens]",
            config.display(),
            entry.id
        )),
        _ => Ok(()),
    }
}
