//! HTTPS for the API: the operator's certificate chain and key, TLS 1.2+, ALPN for h2 and HTTP/1.1.

use crate::config::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Why the TLS configuration could not be built (start-up only).
#[derive(Debug, thiserror::Error)]
#[error("TLS ({file}): {problem}")]
pub struct TlsError {
    file: String,
    problem: String,
}

/// Build the acceptor from the configured PEM files.
pub(crate) fn acceptor(settings: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let cert_name = settings.cert_file.display().to_string();
    let key_name = settings.key_file.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError { file: cert_name.clone(), problem: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError { file: cert_name, problem: "no certificate found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| TlsError { file: key_name.clone(), problem: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { file: cert_name.clone(), problem: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError { file: key_name, problem: format!("the key does not fit the certificate: {e}") })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
