//! TLS for test servers: a fresh CA and a server certificate for 127.0.0.1
//! and localhost, as PEM, and a private folder holding them for server
//! processes (removed on drop).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::source::FixtureError;

/// The file names, in the folder of a process or in a container's
/// `/offstate-tls`.
pub(crate) const CA: &str = "ca.pem";
pub(crate) const CERT: &str = "server.pem";
pub(crate) const KEY: &str = "server.key";

/// Where the files are put in a container.
pub(crate) const CONTAINER_DIR: &str = "/offstate-tls";

/// A CA and a server certificate signed by it, with the files written.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The CA certificate (what clients trust).
    pub(crate) ca: Vec<u8>,
    /// The server certificate.
    pub(crate) cert: Vec<u8>,
    /// The server's private key.
    pub(crate) key: Vec<u8>,
    /// The folder holding the three files.
    dir: PathBuf,
}

impl Tls {
    /// Generates the certificates and writes them to a private folder.
    pub(crate) fn generate() -> Result<Self, FixtureError> {
        let failed = |e: rcgen::Error| FixtureError::store("TLS certificates", "rcgen", e);
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "offstate test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(failed)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(failed)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(failed)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).map_err(failed)?;
        let tls = Self {
            ca: ca.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
            dir: private_dir(),
        };
        let write = |name: &str, text: &[u8]| {
            std::fs::create_dir_all(&tls.dir)
                .and_then(|()| std::fs::write(tls.dir.join(name), text))
                .map_err(|e| {
                    FixtureError::store("TLS certificates", tls.dir.display().to_string(), e)
                })
        };
        write(CA, &tls.ca)?;
        write(CERT, &tls.cert)?;
        write(KEY, &tls.key)?;
        Ok(tls)
    }

    /// The folder holding the files, for a server process.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files as `(name, contents)`.
    pub(crate) fn files(&self) -> [(&'static str, &[u8]); 3] {
        [(CA, &self.ca), (CERT, &self.cert), (KEY, &self.key)]
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("offstate-tls-{}-{n}", std::process::id()))
}
