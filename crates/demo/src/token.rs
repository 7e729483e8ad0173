//! `shardq-demo token`: mints a signed client token (JWT) from the keys of a
//! cluster file's `[tokens]` section (HS256) or from an Ed25519 private key
//! (EdDSA), for browsers and short-lived jobs.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use shardq_protocol::auth::token::{TokenClaims, mint_eddsa, mint_hs256};

/// Options of `shardq-demo token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The cluster file; its `[tokens]` hs256_secret_files[0] signs (HS256).
    #[arg(long, env = "SHARDQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sign with this Ed25519 private key (PKCS#8 PEM) instead (EdDSA).
    #[arg(long)]
    pub ed25519_key: Option<PathBuf>,
    /// The client's name (`sub`).
    #[arg(long)]
    pub name: String,
    /// The tenant.
    #[arg(long, default_value = shardq_protocol::auth::DEFAULT_TENANT)]
    pub tenant: String,
    /// A topic pattern it may publish to (`queue/event`, `queue/*`, `*`); repeat.
    #[arg(long)]
    pub publish: Vec<String>,
    /// A topic pattern it may subscribe to; repeat.
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

/// Prints the token on stdout.
pub fn run(args: TokenArgs) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = TokenClaims {
        sub: args.name,
        tenant: args.tenant,
        publish: args.publish,
        subscribe: args.subscribe,
        exp: now + args.ttl,
    };
    let token = match (&args.ed25519_key, &args.config) {
        (Some(key), _) => {
            let pem =
                std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            mint_eddsa(&pem, &claims)
        }
        (None, Some(config)) => {
            let cluster = shardq::cluster_file::load_cluster(config).map_err(|e| e.to_string())?;
            mint_hs256(&hs256_secret(&cluster, config)?, &claims)
        }
        (None, None) => {
            return Err("give --config FILE (HS256) or --ed25519-key FILE (EdDSA)".into());
        }
    }
    .map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

/// The HS256 secret tokens are signed with: the first of the cluster
/// file's `[tokens] hs256_secret_files`, or what to add when there is none.
pub fn hs256_secret(
    cluster: &shardq_protocol::ClusterConfig,
    config: &std::path::Path,
) -> Result<Vec<u8>, String> {
    let file = cluster.tokens.hs256_secret_files.first().ok_or_else(|| {
        format!(
            "{}: [tokens] names no hs256_secret_files, so nothing can sign tokens: add \
             `[tokens] hs256_secret_files = [\"token.key\"]` with a file token.key beside it \
             holding at least 32 random bytes (openssl rand -hex 32 > token.key), and restart the nodes",
            config.display()
        )
    })?;
    shardq_protocol::cluster_file::read_secret(file, "hs256_secret_files", config, |path| {
        std::fs::read(path)
    })
    .map_err(|e| e.to_string())
}
