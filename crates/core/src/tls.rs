//! TLS client configuration shared by the clients that speak it (Nomad's API, the broker):
//! rustls with ring, trusting the operator's CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
#[error("TLS CA file {path}: {reason}")]
pub struct TlsError {
    pub path: String,
    pub reason: String,
}

/// A client configuration trusting the certificates in `ca_file` (PEM), or none without it
/// (then only plain connections can succeed).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let err = |reason: String| TlsError { path: ca_file.map(|p| p.display().to_string()).unwrap_or_default(), reason };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            roots.add(cert.map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(err("no certificate in it".into()));
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
