//! Load and bookkeeping shared by the fault scenarios: pgbench runs through the proxy,
//! the TPC-B invariant, and the server connections the proxy and PostgreSQL each count.

#![allow(dead_code)]

use crate::support::command::{OutputWithin, LONG_RUN};

use std::process::{Command, Output};
use std::time::Duration;

use pgwarden::cluster::LocalCluster;
use pgwarden::RunningProxy;

use crate::support;
use crate::support::proxy::{DATABASE, PASSWORD, USER};

/// Bound on any one client call of a scenario.
pub const STEP: Duration = Duration::from_secs(20);

/// `pgbench -i -s 1` directly on the primary.
pub fn init_pgbench(cluster: &LocalCluster) {
    let init = pgbench(cluster.primary().port, &["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "{init:?}");
}

/// pgbench against `port` with `args` (the database is appended).
pub fn pgbench(port: u16, args: &[&str]) -> Output {
    Command::new(support::pgbench_path())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(args)
        .arg(DATABASE)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output_within(LONG_RUN)
}

/// A number pgbench printed after `prefix`, or 0.
pub fn pgbench_number(output: &Output, prefix: &str) -> u64 {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.split('/').next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the TPC-B tables agree with their history: nothing committed was lost or
/// applied twice. Returns the sums (accounts, tellers, branches, history).
pub async fn tpcb_sums(direct: &tokio_postgres::Client) -> [i64; 4] {
    let row = tokio::time::timeout(
        STEP,
        direct.query_one(
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)::int8,
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers)::int8,
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)::int8,
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::int8",
            &[],
        ),
    )
    .await
    .expect("sums hung")
    .expect("sums");
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

/// Server connections of the proxy's primary pools for `DATABASE` (from `SHOW POOLS`:
/// active + idle), and the client backends PostgreSQL has for the proxy's user on it
/// (from `pg_stat_activity`, without the asking connection itself and the proxy's
/// background connections, named `pgwarden <purpose>`).
pub async fn server_connections(
    proxy: &RunningProxy,
    direct: &tokio_postgres::Client,
) -> (u64, u64) {
    server_connections_at(proxy.port(), direct).await
}

/// `server_connections` for the proxy listening on `port` (in-process or a child).
pub async fn server_connections_at(port: u16, direct: &tokio_postgres::Client) -> (u64, u64) {
    (pooled_at(port).await, on_server(direct).await)
}

/// Server connections of the primary pools for `DATABASE` (`SHOW POOLS`: active + idle).
pub async fn pooled_at(port: u16) -> u64 {
    let console_url = format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/pgwarden");
    let console = support::proxy::connect_url(&console_url)
        .await
        .expect("console");
    let rows = tokio::time::timeout(STEP, console.simple_query("SHOW POOLS"))
        .await
        .expect("SHOW POOLS hung")
        .expect("SHOW POOLS");
    let mut pooled = 0;
    for message in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            if row.get("database") == Some(DATABASE) && row.get("backend") == Some("primary") {
                for column in ["sv_active", "sv_idle"] {
                    pooled += row
                        .get(column)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    pooled
}

/// Client backends PostgreSQL has for the proxy's user (without the asking connection
/// and the proxy's own background connections).
pub async fn on_server(direct: &tokio_postgres::Client) -> u64 {
    let row = tokio::time::timeout(
        STEP,
        direct.query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND usename = $2 AND backend_type = 'client backend'
                AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgwarden %'",
            &[&DATABASE, &USER],
        ),
    )
    .await
    .expect("pg_stat_activity hung")
    .expect("pg_stat_activity");
    row.get::<_, i64>(0) as u64
}

/// Polls `server_connections_at` until both counts agree (see `settled_connections`).
pub async fn settled_connections_at(port: u16, direct: &tokio_postgres::Client) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let counts = server_connections_at(port, direct).await;
        if counts.0 == counts.1 || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Errors seen by clients, counted by SQLSTATE ("ok" for successes).
#[derive(Debug, Default)]
pub struct Outcomes(pub std::collections::BTreeMap<String, u64>);

impl Outcomes {
    pub fn add(&mut self, outcome: impl Into<String>) {
        *self.0.entry(outcome.into()).or_default() += 1;
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.0.get(outcome).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// SQLSTATE of a failed call, or "ok" ("closed" when the error carries none).
pub fn sqlstate<T>(result: &Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| "closed".into()),
    }
}

/// Polls until the proxy's count of server connections equals PostgreSQL's (both
/// move while pools refill or close broken connections); returns the last pair.
pub async fn settled_connections(
    proxy: &RunningProxy,
    direct: &tokio_postgres::Client,
) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let counts = server_connections(proxy, direct).await;
        if counts.0 == counts.1 || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
