//! Shared fixtures for the integration tests: a real PostgreSQL cluster per test
//! (primary plus streaming replicas, cleaned up on drop, even on panic) and pgwarden
//! started in-process in front of it.
#![allow(dead_code)]

pub mod command;
pub mod drivers;
pub mod http;
pub mod process;
pub mod proxy;
pub mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use pgwarden::cluster::{ClusterSpec, LocalCluster, PgBinaries};

/// Starts a primary and `replicas` streaming replicas with the harness's credentials.
pub fn cluster(replicas: usize) -> LocalCluster {
    cluster_with(ClusterSpec {
        replicas,
        ..ClusterSpec::default()
    })
}

/// How long one test may use its cluster: past it, the cluster's servers are shut down
/// so that a hung client call fails the test (`proxy/cluster/watchdog.rs`). The
/// slowest test takes about a minute.
pub const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(480);

/// How long one client call in a test may take before it counts as hung.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Runs one client call under [`CALL_LIMIT`]: a hang fails the test, naming `what`,
/// instead of stalling CI.
pub async fn within<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_LIMIT:?}"))
}

/// Runs `sql` (one or more statements) under [`within`]; an error fails the test,
/// naming the statement.
pub async fn execute(client: &tokio_postgres::Client, sql: &str) {
    within(sql, client.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn cluster_with(mut spec: ClusterSpec) -> LocalCluster {
    init_logging();
    spec.deadline.get_or_insert(TEST_DEADLINE);
    LocalCluster::start(spec).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"))
}

pub fn psql_path() -> PathBuf {
    PgBinaries::locate()
        .expect("PostgreSQL binaries")
        .path("psql")
}

pub fn pgbench_path() -> PathBuf {
    PgBinaries::locate()
        .expect("PostgreSQL binaries")
        .path("pgbench")
}

pub fn free_port() -> u16 {
    pgwarden::cluster::free_port()
}

/// Proxy logs go to the test's output when RUST_LOG is set (e.g. RUST_LOG=pgwarden=debug).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A self-signed certificate (for localhost and 127.0.0.1) and key for the proxy, as
/// PEM files in a temporary directory that lives as long as this value.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub cert: String,
    pub key: String,
    /// The certificate, for a client's root store.
    pub cert_der: Vec<u8>,
}

pub fn tls_files() -> TlsFiles {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    TlsFiles {
        _dir: dir,
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        cert_der: cert.cert.der().to_vec(),
    }
}
