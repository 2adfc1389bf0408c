//! Shared fixtures for the integration tests: a real PostgreSQL cluster per test
//! (primary plus streaming replicas, cleaned up on drop, even on panic) and pgwarden
//! started in-process in front of it.
#![allow(dead_code)]

pub mod drivers;
pub mod http;
pub mod proxy;

use std::path::PathBuf;

use pgwarden::cluster::{ClusterSpec, LocalCluster, PgBinaries};

/// Starts a primary and `replicas` streaming replicas with the harness's credentials.
pub fn cluster(replicas: usize) -> LocalCluster {
    cluster_with(ClusterSpec {
        replicas,
        ..ClusterSpec::default()
    })
}

pub fn cluster_with(spec: ClusterSpec) -> LocalCluster {
    init_logging();
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
