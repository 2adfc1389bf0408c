//! TLS for the bulk phase (`BULK_TLS=1`, the default): a self-signed certificate that
//! PostgreSQL (`ssl = on`) and every pgwarden under test serve, and the rustls client
//! that trusts it. pgbench and psql are kept on plain TCP (`PGSSLMODE=disable`), so the
//! pgbench cells measure what they always did.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

/// The certificate's files; their dir is removed when the run ends.
pub struct BenchTls {
    pub cert: String,
    pub key: String,
    cert_der: Vec<u8>,
    dir: PathBuf,
}

impl Drop for BenchTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `server.crt` and `server.key` into `dir`, readable by the `postgres` user
/// only (PostgreSQL refuses a key others can read).
pub fn files(dir: &Path) -> BenchTls {
    std::fs::create_dir_all(dir).expect("TLS dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write server.crt");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write server.key");
    for path in [dir, &cert_path, &key_path] {
        let _ = std::process::Command::new("chown")
            .arg("postgres")
            .arg(path)
            .status();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    BenchTls {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        cert_der: cert.cert.der().to_vec(),
        dir: dir.to_path_buf(),
    }
}

impl BenchTls {
    /// `postgresql.conf` lines that turn TLS on with these files.
    pub fn server_conf(&self) -> Vec<String> {
        vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", self.cert),
            format!("ssl_key_file = '{}'", self.key),
        ]
    }

    /// A tokio-postgres TLS connector that trusts this certificate.
    pub fn connector(&self) -> MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.cert_der.clone(),
            ))
            .expect("trust the bench certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        MakeRustlsConnect::new(config)
    }
}
