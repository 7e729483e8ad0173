//! TLS with rustls (ring): the stream halves every connection is read and
//! written through (plain TCP or TLS, statically dispatched), a node's
//! server certificate (read from PEM files, reloaded on SIGHUP), and the
//! client configuration links and tools dial `wss://` with (the roots of
//! the cluster's CA file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::either::Either;

/// A TLS connection, either side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;
/// The read half of a connection, plain or TLS.
pub type ReadHalf = Either<OwnedReadHalf, tokio::io::ReadHalf<TlsStream>>;
/// The write half of a connection, plain or TLS.
pub type WriteHalf = Either<OwnedWriteHalf, tokio::io::WriteHalf<TlsStream>>;

/// The halves of a plain TCP connection.
pub fn split_plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (Either::Left(read), Either::Left(write))
}

/// The halves of a TLS connection.
pub fn split_tls(stream: TlsStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = tokio::io::split(stream);
    (Either::Right(read), Either::Right(write))
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key of the kind needed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Certificates of a PEM file, in order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            what: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A server configuration from a certificate chain and its private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::Pem {
        path: key.to_owned(),
        what: error.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the certificates of `ca` only.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects TLS over `stream` to `host` (checked against the certificate).
pub async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> std::io::Result<TlsStream> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let stream = TlsConnector::from(config.clone())
        .connect(name, stream)
        .await?;
    Ok(tokio_rustls::TlsStream::Client(stream))
}

/// A node's TLS: the certificate it serves (when its url is `wss://`)
/// and the roots it checks `wss://` peers against.
#[derive(Clone, Default)]
pub struct NodeTls {
    /// Served on the node's WebSocket port.
    pub server: Option<Arc<ServerTls>>,
    /// Served on its admin port (`[tls] admin = true`).
    pub admin: Option<Arc<ServerTls>>,
    /// For its links to `wss://` consumers.
    pub client: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("server", &self.server.is_some())
            .field("admin", &self.admin.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// A node's server certificate: the files it came from, and the acceptor
/// built from them, replaced by [`ServerTls::reload`].
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ServerTls {
    /// Reads the certificate chain and key.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<ServerTls>, TlsError> {
        let config = server_config(&cert, &key)?;
        Ok(Arc::new(ServerTls {
            cert,
            key,
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(config)),
        }))
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        self.acceptor.store(Arc::new(TlsAcceptor::from(config)));
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Accepts TLS on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream> {
        let stream = self.acceptor().accept(stream).await?;
        Ok(tokio_rustls::TlsStream::Server(stream))
    }

    /// Reloads on every SIGHUP until the process ends (the certificate
    /// files may be replaced in place, e.g. by a renewal job).
    pub fn reload_on_hangup(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                return;
            };
            let tls = Arc::downgrade(self);
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let Some(tls) = tls.upgrade() else { return };
                    match tls.reload() {
                        Ok(()) => {
                            tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded")
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot reload the TLS certificate; keeping the current one")
                        }
                    }
                }
            });
        }
    }
}
