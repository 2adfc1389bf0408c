//! 2. Reload storm: SIGHUP every 100 ms to the real binary under a pgbench TPC-B load,
//!    the configuration file rewritten with the next of four pool sizes before each, so
//!    pools are rebuilt while transactions run on them (prepared statements, so they
//!    are prepared again on every new pool's connections). No transaction may fail, the
//!    TPC-B sums must agree, and afterwards the proxy's server connections and
//!    PostgreSQL's must agree. `PGWARDEN_FAULTS_STORM_SECS` sets the length (CI: 10).

use std::time::{Duration, Instant};

use crate::load;
use crate::support;
use crate::support::process::ProxyProcess;

fn config(pool_size: u32) -> String {
    format!("[pool]\nsize = {pool_size}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_under_load_fails_no_transaction() {
    let secs: u64 = std::env::var("PGWARDEN_FAULTS_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cluster = support::cluster(0);
    load::init_pgbench(&cluster);
    let process = ProxyProcess::start(&cluster, &config(8), &[]);
    let direct = support::proxy::connect_direct(&cluster).await;
    let before = load::settled_connections_at(process.port, &direct).await;
    let port = process.port;
    let duration = secs.to_string();
    let bench = std::thread::spawn(move || {
        load::pgbench(
            port,
            &[
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                &duration,
                "--no-vacuum",
                "-M",
                "prepared",
            ],
        )
    });
    let storm_started = Instant::now();
    let mut reloads = 0u64;
    let mut peak_on_server = 0;
    let sizes = [8u32, 3, 12, 5];
    while storm_started.elapsed() < Duration::from_secs(secs) {
        process.write_config(&config(sizes[reloads as usize % sizes.len()]));
        process.signal(libc::SIGHUP);
        reloads += 1;
        if reloads.is_multiple_of(10) {
            peak_on_server = peak_on_server.max(load::on_server(&direct).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::task::block_in_place(|| bench.join().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let log = process.log();
    let reloaded = log.matches("configuration reloaded").count();
    let failed_reloads = log.matches("reload failed").count();
    let sums = load::tpcb_sums(&direct).await;
    let after = load::settled_connections_at(process.port, &direct).await;
    let client_errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    println!(
        "reload storm ({secs} s): faults injected: {reloads} SIGHUPs every 100 ms, pool size cycling {sizes:?} ({reloaded} reloads logged, {failed_reloads} failed); \
         queries run: pgbench {} transactions, {} failed, exit {:?}; client errors {client_errors:?}; sums (accounts, tellers, branches, history) {sums:?}; \
         server connections before: proxy {} pg_stat_activity {}; peak during the storm: pg_stat_activity {peak_on_server}; after: proxy {} pg_stat_activity {}",
        load::pgbench_number(&output, "number of transactions actually processed: "),
        load::pgbench_number(&output, "number of failed transactions: "),
        output.status.code(),
        before.0,
        before.1,
        after.0,
        after.1,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    assert!(client_errors.is_empty(), "client errors: {stderr}");
    assert_eq!(failed_reloads, 0, "{log}");
    assert!(
        reloaded as u64 >= reloads / 2,
        "SIGHUPs were not acted on: {reloaded} of {reloads}"
    );
    assert!(
        sums[0] == sums[3] && sums[1] == sums[3] && sums[2] == sums[3],
        "TPC-B tables disagree with their history: {sums:?}"
    );
    assert_eq!(after.0, after.1, "server connections disagree");
}
