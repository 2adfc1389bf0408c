//! Starting pgwarden in-process in front of a test cluster, and connecting to it.

use pgwarden::cluster::LocalCluster;
use pgwarden::config::{load_from_str, Config};
use pgwarden::RunningProxy;

/// User, password and database the harness's clusters are made with.
pub const USER: &str = "pgwarden";
pub const PASSWORD: &str = "pgwarden-secret";
pub const DATABASE: &str = "app";

/// Configuration for a proxy in front of `cluster` on a free port; `tweak` adjusts it.
pub fn config_for(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> Config {
    let vars = vec![
        ("PGWARDEN_PRIMARY_URL".to_string(), cluster.primary_url()),
        ("PGWARDEN_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "PGWARDEN_HTTP_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    let mut config = load_from_str("", "test", vars).expect("test configuration");
    tweak(&mut config);
    config.validate().expect("tweaked test configuration");
    config
}

pub async fn start(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> RunningProxy {
    RunningProxy::start(config_for(cluster, tweak))
        .await
        .expect("start proxy")
}

/// libpq-style URL of the proxy.
pub fn url(proxy: &RunningProxy) -> String {
    format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    )
}

/// A tokio-postgres client through the proxy (connection task spawned).
pub async fn connect(proxy: &RunningProxy) -> tokio_postgres::Client {
    connect_url(&url(proxy))
        .await
        .expect("connect through proxy")
}

/// Connects with tokio-postgres; a login that does not finish within 20 s fails the
/// test instead of stalling it.
pub async fn connect_url(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(std::time::Duration::from_secs(20), connecting)
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} hung for 20 s"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A tokio-postgres client straight to the primary, bypassing the proxy.
pub async fn connect_direct(cluster: &LocalCluster) -> tokio_postgres::Client {
    connect_url(&cluster.primary_url())
        .await
        .expect("connect to primary")
}

/// Connects expecting a refusal; returns the error.
pub async fn connect_err(url: &str) -> tokio_postgres::Error {
    match connect_url(url).await {
        Ok(_) => panic!("connection to {url} should have been refused"),
        Err(e) => e,
    }
}

/// Waits (up to 10 s) until the result cache's LISTEN connection is up, so fills and
/// invalidations are in effect.
pub async fn wait_for_cache_listen(proxy: &RunningProxy) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !proxy.runtime.cache.is_listening(DATABASE) {
        assert!(
            std::time::Instant::now() < deadline,
            "cache LISTEN connection up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
