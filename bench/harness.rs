//! Load harness: pgbench directly against PostgreSQL, through PgBouncer (transaction
//! mode) and through pgwarden, in one run, plus RSS per idle client connection.
//!
//! Run with `bench/run.sh` (builds in release first). Knobs (environment):
//!   DURATION=10  CLIENTS="1 16 64"  MODES="simple extended prepared"
//!   SCRIPTS="select tpcb churn"  SCALE=10  TARGETS="direct pgbouncer pgwarden"
//!   (churn: `pgbench -C -S`, a SCRAM login per transaction, in the first mode only)
//!   (also SCRIPTS=tenant and the target pgwarden_rewrite: the tenant guard's cost)
//!   IDLE="1000 10000" (empty to skip)  IDLE_AUTH="trust scram": idle clients per
//!   login method, with the RSS they leave once they disconnect  POOL_SIZE=20
//!   PROXY_LOG=<RUST_LOG filter>: pgwarden logs to bench/results/pgwarden-<port>.log
//!   BASELINE_BIN=<pgwarden binary> for the target pgwarden_baseline, and
//!   BASELINE_PRELOAD=<shared library> to run it under LD_PRELOAD (e.g. another malloc)
//!   BULK=1 (0 to skip): a 1M-row result, a 16 MiB value and a 100 MB COPY per target,
//!   timed, and the proxy's RSS after, with the sessions that did them still idle;
//!   BULK_ROUNDS=5: rounds in which the targets take turns
//!   SOCKETS=1: the pgbench cells over Unix-domain sockets on every leg (`sockets.rs`)
//! Each proxy's CPU time per transaction (user + system, from /proc) is reported too,
//! and again in rounds that alternate the proxies (`cpu_rounds.rs`):
//!   CPU_ROUNDS=5 (0 to skip)  CPU_SECONDS=4  CPU_CLIENTS=16, for the select, tpcb and
//!   tenant scripts in the simple and extended modes of the run
//!   PROXY_SESSION=shared: the proxies in the harness's session, with pgbench (`own`:
//!   each in a session of its own, as a daemon)
//! Results: a table on stdout, bench/results/latest.md and latest.csv.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgwarden::cluster::{free_port, ClusterSpec, LocalCluster, PgBinaries};

mod bulk;
mod cache;
mod cpu;
mod cpu_rounds;
mod idle;
mod latency;
mod pgbench;
mod protection;
mod proxies;
mod report;
mod sockets;
mod targets;
mod tenant;
mod tls;

use pgbench::{run_pgbench, transactions_per_node, Measure};
use proxies::{
    http_port_of, server_pid, start_pgbouncer, start_pgwarden, wait_ready, Pgwarden, TLS_FILES,
};
use report::{render, render_bulk, render_csv};
use targets::RunningTargets;

const USER: &str = "pgwarden";
const PASSWORD: &str = "pgwarden-secret";
const DATABASE: &str = "app";

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let duration = env_num("DURATION", 10);
    let clients = env_list("CLIENTS", "1 16 64");
    let modes = env_list("MODES", "simple extended prepared");
    let mut scripts = env_list("SCRIPTS", "select tpcb churn");
    // SCRIPTS=fairness: the noisy-neighbour scenario (bench/protection.rs), not a pgbench script.
    let fairness_run = scripts.iter().any(|s| s == "fairness");
    scripts.retain(|s| s != "fairness");
    let targets = env_list("TARGETS", "direct pgbouncer pgwarden");
    let idle_counts = env_list("IDLE", "1000 10000");
    let scale = env_num("SCALE", 10);
    let pool_size = env_num("POOL_SIZE", 20);
    let replicas = env_num("REPLICAS", 0) as usize;

    let binaries = PgBinaries::locate().expect("PostgreSQL binaries");
    let pgbench = binaries.path("pgbench");
    // Bulk transfers are also measured over TLS: PostgreSQL and pgwarden serve one
    // certificate. pgbench and psql stay on plain TCP, as before.
    std::env::set_var("PGSSLMODE", "disable");
    let bench_tls = (env_num("BULK", 1) == 1 && env_num("BULK_TLS", 1) == 1).then(|| {
        let dir = std::env::temp_dir().join(format!("pgw-bench-tls-{}", std::process::id()));
        tls::files(&dir)
    });
    if let Some(tls) = &bench_tls {
        *TLS_FILES.lock().unwrap() = Some((tls.cert.clone(), tls.key.clone()));
    }
    let mut extra_conf = vec![
        "max_connections = 300".into(),
        "shared_buffers = 256MB".into(),
    ];
    extra_conf.extend(bench_tls.iter().flat_map(|t| t.server_conf()));
    println!("starting PostgreSQL ...");
    let cluster = LocalCluster::start(ClusterSpec {
        replicas,
        extra_conf,
        ..ClusterSpec::default()
    })
    .expect("start PostgreSQL");
    let pg_port = cluster.primary().port;
    let init = Command::new(&pgbench)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            USER,
            "-i",
            "-q",
        ])
        .args(["-s", &scale.to_string(), DATABASE])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "pgbench -i failed: {init:?}");
    if scripts.iter().any(|s| tenant::is_tenant_script(s)) {
        cluster
            .primary()
            .psql(USER, DATABASE, tenant::SETUP_SQL)
            .expect("create tenant_accounts");
    }
    cluster
        .wait_for_replication(Duration::from_secs(60))
        .expect("replicas caught up");

    let work = tempfile::Builder::new()
        .prefix("pgw-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    if let Some(sockets) = sockets::init(cluster.socket_dir(), work.path()) {
        println!(
            "SOCKETS=1: every leg over Unix-domain sockets (proxies in {})",
            sockets.proxy_dir.display()
        );
    }
    // The proxies among TARGETS, stopped when `running` drops at the end of main.
    let running = RunningTargets::start(&targets, &cluster, work.path(), pool_size);

    let mut cpu_rows: Vec<String> = Vec::new();
    let mut rss_rows: Vec<String> = Vec::new();
    for target in &targets {
        if let Some(pid) = running.pid(target) {
            let rss = idle::status_kib(pid, "VmRSS:");
            eprintln!("{target} RSS at start: {} KiB", rss);
            rss_rows.push(format!(
                "| start | {target} | {:.1} | {:.1} |",
                mib(rss),
                mib(rss)
            ));
        }
    }

    let mut rows: Vec<(String, String, String, Vec<Measure>)> = Vec::new();
    let mut replica_shares = Vec::new();
    let mut cache_rows = Vec::new();
    for script in &scripts {
        for mode in &modes {
            // Connection churn is login cost: one protocol mode tells it.
            if script == "churn" && *mode != modes[0] {
                continue;
            }
            for n in &clients {
                // The targets take turns going first, one more per cell: a run leaves
                // PostgreSQL busier (checkpoints, autovacuum, cold caches after a
                // write-heavy turn), and no target should always follow the same one.
                let first = rows.len() % targets.len();
                let mut measures: Vec<Option<Measure>> = targets.iter().map(|_| None).collect();
                let mut cpu_of: Vec<Option<(f64, f64)>> = targets.iter().map(|_| None).collect();
                let mut rss_of: Vec<Option<String>> = targets.iter().map(|_| None).collect();
                for index in (first..targets.len()).chain(0..first) {
                    let target = &targets[index];
                    let before = transactions_per_node(&cluster);
                    let cpu_pids = running.cpu_pids(target);
                    let cpu_before = cpu::cpu_seconds_of(&cpu_pids);
                    let http = http_port_of(running.port(target));
                    let cache_before = http.and_then(cache::hits_and_misses);
                    let m = run_pgbench(
                        &pgbench,
                        (&sockets::host_for(target), running.port(target)),
                        (script, work.path(), scale),
                        mode,
                        n,
                        duration,
                    );
                    if cache::is_cache_script(script) {
                        let after = http.and_then(cache::hits_and_misses);
                        let ratio = match (cache_before, after) {
                            (Some((h0, m0)), Some((h1, m1))) if h1 + m1 > h0 + m0 => format!(
                                "{:.3} ({} hits, {} misses)",
                                (h1 - h0) as f64 / ((h1 + m1) - (h0 + m0)) as f64,
                                h1 - h0,
                                m1 - m0
                            ),
                            _ => "n/a".into(),
                        };
                        eprintln!("    p99 {:?} ms, cache hit ratio {ratio}", m.p99_ms);
                        cache_rows.push(format!(
                            "| {script} | {mode} | {n} | {target} | {:.0} | {:.3} | {} | {ratio} |",
                            m.tps,
                            m.latency_ms,
                            m.p99_ms.map_or("n/a".into(), |p| format!("{p:.3}"))
                        ));
                    }
                    if target == "pgwarden" && replicas > 0 {
                        let after = transactions_per_node(&cluster);
                        let delta: Vec<u64> =
                            after.iter().zip(&before).map(|(a, b)| a - b).collect();
                        let total: u64 = delta.iter().sum();
                        let on_replicas: u64 = delta[1..].iter().sum();
                        let share = on_replicas as f64 / total.max(1) as f64;
                        eprintln!(
                            "    transactions per node {delta:?}: {:.1}% on replicas",
                            share * 100.0
                        );
                        replica_shares.push(format!(
                            "| {script} | {mode} | {n} | {delta:?} | {:.1}% |",
                            share * 100.0
                        ));
                    }
                    eprintln!(
                        "{script:>6} {mode:>8} c={n:>3} {target:>9}: {:>9.0} tps {:>7.3} ms{}",
                        m.tps,
                        m.latency_ms,
                        if m.failed { "  (errors)" } else { "" }
                    );
                    if !cpu_pids.is_empty() {
                        let spent = cpu::cpu_seconds_of(&cpu_pids) - cpu_before;
                        let transactions = m.tps * duration as f64;
                        let per_txn_us = spent * 1e6 / transactions.max(1.0);
                        eprintln!("    {target} CPU {spent:.2} s, {per_txn_us:.1} us/txn");
                        cpu_of[index] = Some((spent, per_txn_us));
                    }
                    if let Some(pid) = running.pid(target) {
                        let rss = idle::status_kib(pid, "VmRSS:");
                        let peak = idle::status_kib(pid, "VmHWM:");
                        eprintln!(
                            "    {target} RSS {:.1} MiB, peak {:.1} MiB",
                            mib(rss),
                            mib(peak)
                        );
                        rss_of[index] = Some(format!(
                            "| {script} {mode} c={n} | {target} | {:.1} | {:.1} |",
                            mib(rss),
                            mib(peak)
                        ));
                    }
                    measures[index] = Some(m);
                }
                let measures: Vec<Measure> = measures.into_iter().flatten().collect();
                // Mean latency added to direct's, measured in the same cell.
                let direct = targets
                    .iter()
                    .zip(&measures)
                    .find(|(t, _)| *t == "direct")
                    .map(|(_, d)| d.latency_ms);
                for ((target, m), cpu) in targets.iter().zip(&measures).zip(&cpu_of) {
                    let Some((spent, per_txn_us)) = cpu else {
                        continue;
                    };
                    let added_us = direct.map_or("n/a".to_string(), |d| {
                        format!("{:.0}", (m.latency_ms - d) * 1000.0)
                    });
                    cpu_rows.push(format!(
                        "| {script} | {mode} | {n} | {target} | {spent:.2} | {per_txn_us:.1} | {added_us} |"
                    ));
                }
                rss_rows.extend(rss_of.into_iter().flatten());
                rows.push((script.clone(), mode.clone(), n.clone(), measures));
            }
        }
    }

    // Added latency at one client in alternating rounds (`latency.rs`): the main
    // table's one run per target cannot tell a few µs on this machine.
    let latency_rounds = env_num("LATENCY_ROUNDS", 7) as u32;
    let latency_seconds = env_num("LATENCY_SECONDS", 3);
    let latency_table = (latency_rounds > 0
        && scripts.iter().any(|s| s == "select")
        && targets.iter().any(|t| t == "direct")
        && targets.len() > 1)
        .then(|| {
            let results = latency::measure(
                &pgbench,
                work.path(),
                scale,
                &modes,
                &targets,
                |target| running.port(target),
                (latency_rounds, latency_seconds),
            );
            latency::report(&results, latency_rounds, latency_seconds)
        });

    // CPU per transaction in rounds that alternate the proxies (`cpu_rounds.rs`): the
    // main table's one run per proxy and cell drifts more than the ratios it reports.
    let cpu_rounds_table = cpu_rounds::run_configured(
        &pgbench,
        (work.path(), scale),
        (&scripts, &modes, &targets),
        |target| running.port(target),
        |target| running.cpu_pids(target),
    );

    let mut bulk_rows = Vec::new();
    let mut bulk_rounds = 0;
    if env_num("BULK", 1) == 1 {
        let connector = bench_tls.as_ref().map(|t| t.connector());
        let mut passes = vec![(None, "")];
        if let Some(connector) = &connector {
            passes.push((Some(connector), " (TLS)"));
        }
        // BULK_ROUNDS: rounds in which every target runs every transfer once.
        let rounds = env_num("BULK_ROUNDS", 5).max(1) as usize;
        for (tls, label) in passes {
            let bulk_targets: Vec<bulk::BulkTarget> = targets
                .iter()
                // PgBouncer is not configured for TLS.
                .filter(|target| tls.is_none() || target.as_str() != "pgbouncer")
                .map(|target| bulk::BulkTarget {
                    name: format!("{target}{label}"),
                    url: format!(
                        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
                        running.port(target)
                    ),
                    pids: running.cpu_pids(target),
                })
                .collect();
            for (name, result) in bulk::measure(&bulk_targets, tls, rounds) {
                eprintln!("bulk {name}: {result:?}");
                bulk_rows.push((name, result));
            }
        }
        bulk_rounds = rounds;
    }

    let mut idle_rows = Vec::new();
    // IDLE_AUTH: the login methods the idle clients use ("trust scram" by default).
    let idle_auths = env_list("IDLE_AUTH", "trust scram");
    if !idle_counts.is_empty() {
        for target in ["pgwarden", "pgbouncer"] {
            if !targets.iter().any(|t| t == target) {
                continue;
            }
            for auth in &idle_auths {
                let (method, password) = match auth.as_str() {
                    "trust" => ("trust", None),
                    "scram" => ("scram-sha-256", Some(PASSWORD)),
                    other => panic!("IDLE_AUTH: trust or scram, not {other}"),
                };
                for count in &idle_counts {
                    let count: usize = count.parse().expect("IDLE counts are numbers");
                    // A fresh process per measurement.
                    let port = free_port();
                    let process = if target == "pgwarden" {
                        start_pgwarden(
                            &cluster,
                            &Pgwarden {
                                auth: method,
                                ..Pgwarden::scram(port, pool_size)
                            },
                        )
                    } else {
                        start_pgbouncer(
                            &work.path().join(format!("idle{count}{auth}")),
                            pg_port,
                            port,
                            pool_size,
                            method,
                        )
                    };
                    wait_ready(port, target);
                    let result = idle::measure(
                        server_pid(process.0.id()),
                        port,
                        USER,
                        DATABASE,
                        count,
                        password,
                    );
                    eprintln!("idle {target} {auth} x{count}: {result:?}");
                    idle_rows.push((target, auth.as_str(), count, result));
                    drop(process);
                }
            }
        }
    }

    let mut report = render(&targets, &rows, &idle_rows, duration, scale, pool_size);
    if !bulk_rows.is_empty() {
        report.push_str(&render_bulk(&bulk_rows, bulk_rounds));
    }
    if !cpu_rows.is_empty() {
        let _ = write!(
            report,
            "\n| script | mode | clients | proxy | proxy CPU (s) | proxy CPU per transaction (us) | added latency vs direct (us) |\n|---|---|---|---|---|---|---|\n{}\n",
            cpu_rows.join("\n")
        );
    }
    if let Some(table) = &latency_table {
        report.push_str(table);
    }
    if let Some(table) = &cpu_rounds_table {
        report.push_str(table);
    }
    if fairness_run {
        report.push_str(&protection::fairness_report(
            &pgbench,
            &cluster,
            work.path(),
            duration,
        ));
    }
    if !rss_rows.is_empty() {
        let _ = write!(
            report,
            "\n| after phase | proxy | RSS (MiB) | peak RSS, VmHWM (MiB) |\n|---|---|---|---|\n{}\n",
            rss_rows.join("\n")
        );
    }
    if !cache_rows.is_empty() {
        let _ = write!(
            report,
            "\n| script | mode | clients | target | TPS | avg ms | p99 ms | cache hit ratio |\n|---|---|---|---|---|---|---|---|\n{}\n",
            cache_rows.join("\n")
        );
    }
    if replicas > 0 {
        report = format!(
            "pgwarden routes reads to {replicas} streaming replica(s); direct and PgBouncer use the primary only.\n\n{report}\n| script | mode | clients | transactions per node (primary, replicas...) | on replicas |\n|---|---|---|---|---|\n{}\n",
            replica_shares.join("\n")
        );
    }
    println!("\n{report}");
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("latest.md"), &report).unwrap();
    std::fs::write(results.join("latest.csv"), render_csv(&targets, &rows)).unwrap();
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
