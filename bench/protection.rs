//! Issue 15's bench pieces, kept out of `harness.rs`:
//!
//! - `pgwarden_nofair`: the same pgwarden with `pool.fairness = "off"` (and no
//!   `max_waiting`), which bypasses the fair gate entirely, so `pgwarden` vs
//!   `pgwarden_nofair` in one run is the cost of fairness when nothing is saturated.
//! - `SCRIPTS=fairness`: the noisy-neighbour scenario. A pgwarden with `pool.size = 4`
//!   per fairness mode; tenant 1 runs `select pg_sleep(0.01)` on 32 pgbench clients,
//!   tenant 2 runs `select 1` on one client at the same time; tenant 2's mean and p99
//!   latency (from pgbench's per-transaction log) for `off` and `tenant`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgwarden::cluster::{free_port, LocalCluster};

use super::{DATABASE, PASSWORD, USER};

/// Starts the pgwarden binary next to the harness with `extra` environment.
pub fn start(cluster: &LocalCluster, port: u16, pool_size: u64, extra: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("pgwarden");
    assert!(bin.exists(), "build pgwarden first: cargo build --release");
    let mut command = Command::new(bin);
    command
        .env("PGWARDEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGWARDEN_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("PGWARDEN_PRIMARY_URL", cluster.primary_url())
        .env("PGWARDEN_REPLICA_URLS", cluster.replica_urls().join(","))
        .env("PGWARDEN_POOL_SIZE", pool_size.to_string())
        .env("PGWARDEN_AUTH_METHOD", "scram-sha-256")
        .env("PGWARDEN_PROXY_MAX_CLIENT_CONNECTIONS", "20000")
        .env("PGWARDEN_POOL_CHECKOUT_TIMEOUT_MS", "30000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().expect("start pgwarden")
}

/// `pgwarden_nofair`.
pub fn start_nofair(cluster: &LocalCluster, port: u16, pool_size: u64) -> Child {
    start(
        cluster,
        port,
        pool_size,
        &[("PGWARDEN_POOL_FAIRNESS", "off")],
    )
}

fn pgbench(
    pgbench: &Path,
    port: u16,
    tenant: &str,
    clients: u32,
    seconds: u64,
    script: &Path,
    log_prefix: Option<&Path>,
) -> Command {
    let mut command = Command::new(pgbench);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string(), "-n", "-f"])
        .arg(script)
        .env("PGPASSWORD", PASSWORD)
        .env("PGOPTIONS", format!("-c pgwarden.tenant_id={tenant}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(prefix) = log_prefix {
        command.arg("-l").arg("--log-prefix").arg(prefix);
    }
    command.arg(DATABASE);
    command
}

/// Latencies (ms) from pgbench's per-transaction logs `<prefix>.<pid>[.<thread>]`.
fn logged_latencies(dir: &Path, prefix: &str) -> Vec<f64> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            // client_id transaction_no time(µs) script_no time_epoch time_us
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
            {
                latencies.push(us / 1000.0);
            }
        }
    }
    latencies
}

/// Runs the scenario and returns its markdown table.
pub fn fairness_report(
    pgbench_bin: &Path,
    cluster: &LocalCluster,
    work: &Path,
    duration: u64,
) -> String {
    let flood = work.join("flood.sql");
    let one = work.join("one.sql");
    std::fs::write(&flood, "select pg_sleep(0.01);\n").unwrap();
    std::fs::write(&one, "select 1;\n").unwrap();
    let mut report = String::from(
        "\n| fairness | tenant 2 statements | tenant 2 mean ms | tenant 2 p99 ms | tenant 1 (flood) TPS |\n|---|---|---|---|---|\n",
    );
    for fairness in ["off", "tenant"] {
        let port = free_port();
        let mut proxy = start(cluster, port, 4, &[("PGWARDEN_POOL_FAIRNESS", fairness)]);
        std::thread::sleep(Duration::from_millis(500));
        let flood_run = pgbench(pgbench_bin, port, "1", 32, duration + 2, &flood, None)
            .stdout(Stdio::piped())
            .spawn()
            .expect("pgbench flood");
        // Let the flood saturate the pool before tenant 2 starts.
        std::thread::sleep(Duration::from_secs(1));
        let prefix = format!("fair-{fairness}");
        let status = pgbench(
            pgbench_bin,
            port,
            "2",
            1,
            duration,
            &one,
            Some(&work.join(&prefix)),
        )
        .current_dir(work)
        .status()
        .expect("pgbench tenant 2");
        let flood_out = flood_run.wait_with_output().expect("flood finished");
        let flood_tps = String::from_utf8_lossy(&flood_out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let _ = proxy.kill();
        let _ = proxy.wait();
        let mut latencies = logged_latencies(work, &prefix);
        latencies.sort_by(|a, b| a.total_cmp(b));
        let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        let p99 = latencies
            .get((latencies.len() as f64 * 0.99) as usize)
            .copied()
            .unwrap_or(f64::NAN);
        eprintln!(
            "fairness {fairness}: tenant 2 {} statements, mean {mean:.2} ms, p99 {p99:.2} ms (pgbench ok: {}), flood {flood_tps} tps",
            latencies.len(),
            status.success()
        );
        let _ = writeln!(
            report,
            "| {fairness} | {} | {mean:.2} | {p99:.2} | {flood_tps} |",
            latencies.len()
        );
    }
    report
}
