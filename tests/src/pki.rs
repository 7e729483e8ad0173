//! Certificates made at test time (rcgen): a CA, and a certificate it signs
//! for 127.0.0.1 and localhost that every test node serves, written to a
//! temporary directory as PEM files, as an operator's would be.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use shardq_net::tls::{NodeTls, ServerTls, client_config};

/// A CA and one server certificate it signed, as files.
pub struct TestPki {
    /// The directory holding the files (removed on drop).
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestPki {
    /// A fresh CA and a server certificate for 127.0.0.1 and localhost.
    pub fn new() -> TestPki {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shardq-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// What a node of the test cluster runs with: this certificate, and
    /// this CA's roots for its links.
    pub fn node_tls(&self) -> NodeTls {
        NodeTls {
            server: Some(ServerTls::load(self.cert.clone(), self.key.clone()).unwrap()),
            // The harness reads the admin ports over plain HTTP.
            admin: None,
            client: Some(self.client()),
        }
    }

    /// A client configuration trusting this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca).unwrap()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
