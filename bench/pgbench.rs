//! One pgbench cell (a script, protocol mode and client count against one port) and
//! what it measured; the transactions each node committed, for the replicas' share.

use std::path::Path;
use std::process::Command;

use pgwarden::cluster::LocalCluster;

use super::{cache, tenant, DATABASE, PASSWORD, USER};

#[derive(Debug, Default, Clone, Copy)]
pub struct Measure {
    pub tps: f64,
    pub latency_ms: f64,
    pub failed: bool,
    /// `SCRIPTS=report|hotkeys`: p99 latency from `pgbench -l`.
    pub p99_ms: Option<f64>,
}

/// `xact_commit` of the benchmark database on every node (primary first).
pub fn transactions_per_node(cluster: &LocalCluster) -> Vec<u64> {
    std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|node| {
            node.psql(
                USER,
                DATABASE,
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
        })
        .collect()
}

pub fn run_pgbench(
    pgbench: &Path,
    (host, port): (&str, u16),
    (script, work, scale): (&str, &Path, u64),
    mode: &str,
    clients: &str,
    duration: u64,
) -> Measure {
    let threads = clients.parse::<u32>().unwrap_or(1).min(2).to_string();
    let mut command = Command::new(pgbench);
    command
        .args(["-h", host, "-p", &port.to_string(), "-U", USER])
        .args([
            "-c",
            clients,
            "-j",
            &threads,
            "-T",
            &duration.to_string(),
            "-M",
            mode,
        ])
        .arg("--no-vacuum");
    if script == "select" {
        command.arg("-S");
    }
    if script == "churn" {
        // A new connection (and SCRAM login) per transaction: CPU per transaction is
        // CPU per connection.
        command.args(["-C", "-S"]);
    }
    if script == "distinct" {
        // A new statement text every time: a random literal in a simple-protocol text.
        let path = work.join("distinct.sql");
        std::fs::write(
            &path,
            "\\set n random(1, 1000000000)\nSELECT :n WHERE 1 <> :n;\n",
        )
        .expect("write the distinct script");
        command.arg("-f").arg(path);
    }
    let log_prefix = work.join(format!("lat-{port}-{script}"));
    if cache::is_cache_script(script) {
        command
            .arg("-f")
            .arg(cache::script_file(work, script))
            .args(["-D", &format!("scale={scale}")])
            .arg("-l")
            .arg(format!("--log-prefix={}", log_prefix.display()));
    }
    if tenant::is_tenant_script(script) {
        command
            .arg("-f")
            .arg(tenant::script_file(work, script))
            .args(["-D", &format!("scale={scale}")])
            .env("PGOPTIONS", tenant::PGOPTIONS);
    }
    let output = command
        .arg(DATABASE)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let find = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let failed_count = find("number of failed transactions: ");
    Measure {
        tps: find("tps = "),
        latency_ms: find("latency average = "),
        failed: !output.status.success() || failed_count > 0.0,
        p99_ms: cache::is_cache_script(script)
            .then(|| cache::p99_ms(&log_prefix))
            .flatten(),
    }
}
