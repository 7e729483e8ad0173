//! TLS for `wss://` nodes (rustls, ring): the CA a client checks the
//! nodes' certificates against, and opening a connection's socket, plain
//! or TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::ConnectError;

/// The roots `wss://` nodes are checked against. Cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

/// Why a CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It holds no usable certificate.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

impl Tls {
    /// Trusts the certificates of a PEM file (the cluster's CA) only.
    pub fn from_ca_file(path: &Path) -> Result<Tls, TlsError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: shown.clone(),
            source,
        })?;
        let pem_error = |what: String| TlsError::Pem {
            path: shown.clone(),
            what,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| pem_error(e.to_string()))?;
            roots.add(cert).map_err(|e| pem_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_error("no CERTIFICATE block".into()));
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| pem_error(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_config(config: Arc<ClientConfig>) -> Tls {
        Tls(config)
    }
}

/// A connection's socket, plain or TLS.
pub(crate) type ClientStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens the socket for `url` (`ws://` or `wss://`).
pub(crate) async fn open(url: &str, tls: Option<&Tls>) -> Result<ClientStream, ConnectError> {
    let unreachable = |source: std::io::Error| ConnectError::Unreachable {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let (secure, rest) = match (url.get(..6), url.get(..5)) {
        (Some(scheme), _) if scheme.eq_ignore_ascii_case("wss://") => (true, &url[6..]),
        (_, Some(scheme)) if scheme.eq_ignore_ascii_case("ws://") => (false, &url[5..]),
        _ => {
            return Err(ConnectError::NotShardq {
                url: url.to_owned(),
                reason: "the URL must start with ws:// or wss://".into(),
            });
        }
    };
    if secure && tls.is_none() {
        return Err(ConnectError::TlsUnconfigured {
            url: url.to_owned(),
        });
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let address = match (has_port, secure) {
        (true, _) => authority.to_owned(),
        (false, true) => format!("{authority}:443"),
        (false, false) => format!("{authority}:80"),
    };
    let stream = TcpStream::connect(&address).await.map_err(unreachable)?;
    stream.set_nodelay(true).map_err(unreachable)?;
    if !secure {
        return Ok(Either::Left(stream));
    }
    let Some(Tls(config)) = tls else {
        return Err(ConnectError::TlsUnconfigured {
            url: url.to_owned(),
        });
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|error| {
        unreachable(std::io::Error::new(std::io::ErrorKind::InvalidInput, error))
    })?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .map_err(unreachable)?;
    Ok(Either::Right(stream))
}
