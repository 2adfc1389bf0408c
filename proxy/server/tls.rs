//! TLS for client connections: a rustls acceptor built from PEM files.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// Builds the acceptor for `proxy.tls_cert` / `proxy.tls_key`.
pub fn acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, ConfigError> {
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))
    };
    let cert_pem = read("proxy.tls_cert", cert_path)?;
    let key_pem = read("proxy.tls_key", key_path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::invalid("proxy.tls_cert", e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            "proxy.tls_cert",
            "no certificate found in PEM file",
        ));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ConfigError::invalid("proxy.tls_key", e.to_string()))?
        .ok_or_else(|| ConfigError::invalid("proxy.tls_key", "no private key in PEM file"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("proxy.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::invalid("proxy.tls_key", e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
