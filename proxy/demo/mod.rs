//! `pgwarden demo`: a throwaway primary and streaming replica from the local
//! PostgreSQL binaries, pgwarden in front of them, a small mixed workload through it,
//! a summary of where each statement ran, a tenant trying to reach other tenants'
//! rows, the top statements, and the advisories pgwarden found (a missing index, an N+1
//! loop). Everything is removed afterwards, unless `--keep` asks to keep it running.
//!
//! This room only orchestrates; it uses `cluster` for PostgreSQL and the public proxy
//! API like any embedding application would.

mod advice;
mod tenants;
mod workload;

use std::time::Duration;

use thiserror::Error;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster, PgBinaries};
use crate::config::load_from_str;
use crate::RunningProxy;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("proxy: {0}")]
    Proxy(#[from] std::io::Error),
    #[error("workload: {0}")]
    Workload(#[from] tokio_postgres::Error),
}

/// Runs the demo and prints its report to stdout. With `keep`, the cluster and proxy
/// stay up (the dashboard URL is printed) until Ctrl-C.
pub async fn run(keep: bool) -> Result<(), DemoError> {
    let binaries = PgBinaries::locate()?;
    println!("pgwarden demo");
    println!("  PostgreSQL binaries: {}", binaries.bindir.display());
    println!("  starting a primary and one streaming replica in a temp dir ...");
    let cluster = tokio::task::spawn_blocking(|| {
        LocalCluster::start(ClusterSpec {
            replicas: 1,
            ..ClusterSpec::default()
        })
    })
    .await
    .map_err(|e| DemoError::Proxy(std::io::Error::other(e)))??;
    println!(
        "  primary  127.0.0.1:{}\n  replica  127.0.0.1:{}",
        cluster.primary().port,
        cluster.replicas()[0].port
    );

    let mut vars = vec![
        ("PGWARDEN_PRIMARY_URL".to_string(), cluster.primary_url()),
        ("PGWARDEN_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "PGWARDEN_HTTP_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        ("PGWARDEN_POOL_SIZE".to_string(), "4".to_string()),
        // Advisor rounds every half second, so the demo shows advice right away.
        ("PGWARDEN_ADVISE_INTERVAL_MS".to_string(), "500".to_string()),
    ];
    vars.push((
        "PGWARDEN_REPLICA_URLS".to_string(),
        cluster.replica_urls().join(","),
    ));
    let mut config = load_from_str("", "demo", vars)?;
    // The tenant guard rewrites tenant sessions; the demo's own role plays the
    // migrations and is not guarded.
    config.tenancy.mode = crate::config::TenancyMode::Rewrite;
    config.tenancy.bypass_roles = vec![cluster.spec().user.clone()];
    config.auth.users.push(crate::config::UserConfig {
        name: tenants::ROLE.into(),
        password: Some(tenants::PASSWORD.into()),
        server_password: None,
    });
    config.validate()?;
    let proxy = RunningProxy::start(config).await?;
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}",
        cluster.spec().user,
        cluster.spec().password,
        proxy.port(),
        cluster.spec().database
    );
    println!(
        "  pgwarden 127.0.0.1:{}  (DATABASE_URL={url})\n",
        proxy.port()
    );

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let hypopg = advice::install_hypopg(&admin).await;
    let report = workload::run(&url, &cluster).await?;
    report.print();

    let tenant_url = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}?options=-c%20pgwarden.tenant_id%3D1",
        tenants::ROLE,
        tenants::PASSWORD,
        proxy.port(),
        cluster.spec().database
    );
    tenants::run(&admin, &tenant_url, &cluster).await?;

    // What the statistics saw: the same workload by fingerprint.
    proxy.runtime.stats.flush().await;
    println!("\ntop statements by total time (SHOW QUERIES on the admin console):");
    println!("   calls   mean ms  replica  fingerprint");
    for q in proxy.runtime.stats.snapshot().queries.iter().take(6) {
        let text: String = q.query.chars().take(90).collect();
        println!(
            "  {:>6} {:>9.3} {:>7.0}%  {}",
            q.calls,
            q.mean_ms,
            100.0 * q.replica_calls as f64 / q.calls.max(1) as f64,
            text
        );
    }

    advice::workload(&admin).await?;
    if !hypopg {
        println!("\n(hypopg is not installed here: index advice is unconfirmed)");
    }
    advice::print(&proxy).await;

    if keep {
        println!(
            "\nkept running: dashboard http://{}/  proxy {url}\npress Ctrl-C to stop and clean up",
            proxy.http_address
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(cluster);
    println!("\ncleaned up: proxy stopped, PostgreSQL stopped, temp dirs removed");
    Ok(())
}
