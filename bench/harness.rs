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
//!   timed, and the proxy's RSS after, with the sessions that did them still idle
//! Each proxy's CPU time per transaction (user + system, from /proc) is reported too.
//! Results: a table on stdout, bench/results/latest.md and latest.csv.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::cluster::{free_port, ClusterSpec, LocalCluster, PgBinaries};

mod bulk;
mod cache;
mod cpu;
mod idle;
mod protection;
mod tenant;
mod tls;

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

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // pgbouncer runs as a child of runuser when we are root: stop it too.
        let pid = self.0.id();
        let worker = server_pid(pid);
        if worker != pid {
            unsafe {
                libc::kill(worker as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Measure {
    tps: f64,
    latency_ms: f64,
    failed: bool,
    /// `SCRIPTS=report|hotkeys`: p99 latency from `pgbench -l`.
    p99_ms: Option<f64>,
}

/// (proxy port, HTTP port) of every pgwarden started, for `/api/cache`.
static HTTP_PORTS: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());

/// (certificate, key) every pgwarden serves TLS with, when the bulk phase uses TLS.
static TLS_FILES: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

fn http_port_of(port: u16) -> Option<u16> {
    HTTP_PORTS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, h)| *h)
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
    let bouncer_port = free_port();
    let _bouncer = targets.iter().any(|t| t == "pgbouncer").then(|| {
        start_pgbouncer(
            work.path(),
            pg_port,
            bouncer_port,
            pool_size,
            "scram-sha-256",
        )
    });
    let warden_port = free_port();
    let _warden = targets.iter().any(|t| t == "pgwarden").then(|| {
        start_pgwarden(
            &cluster,
            warden_port,
            pool_size,
            "scram-sha-256",
            true,
            "off",
        )
    });
    // The same proxy with query statistics off, to measure what they cost.
    let nostats_port = free_port();
    let _nostats = targets.iter().any(|t| t == "pgwarden_nostats").then(|| {
        start_pgwarden(
            &cluster,
            nostats_port,
            pool_size,
            "scram-sha-256",
            false,
            "off",
        )
    });
    // The same proxy with the result cache off.
    let nocache_port = free_port();
    let _nocache = targets.iter().any(|t| t == "pgwarden_nocache").then(|| {
        start_pgwarden(
            &cluster,
            nocache_port,
            pool_size,
            "scram-sha-256",
            true,
            "off:nocache",
        )
    });
    // The same proxy with the tenant guard rewriting every statement.
    let rewrite_port = free_port();
    let _rewrite = targets.iter().any(|t| t == "pgwarden_rewrite").then(|| {
        start_pgwarden(
            &cluster,
            rewrite_port,
            pool_size,
            "scram-sha-256",
            true,
            "rewrite",
        )
    });

    // The same proxy with fairness off (no fair gate at all): the cost of fairness.
    let nofair_port = free_port();
    let _nofair = targets
        .iter()
        .any(|t| t == "pgwarden_nofair")
        .then(|| Guard(protection::start_nofair(&cluster, nofair_port, pool_size)));

    // Another pgwarden build (BASELINE_BIN, e.g. main before a change) in the same run.
    let baseline_port = free_port();
    let _baseline = targets.iter().any(|t| t == "pgwarden_baseline").then(|| {
        let bin = std::env::var("BASELINE_BIN")
            .expect("the pgwarden_baseline target needs BASELINE_BIN=/path/to/pgwarden");
        let mut command = pgwarden_command(PathBuf::from(bin));
        if let Ok(preload) = std::env::var("BASELINE_PRELOAD") {
            command.env("LD_PRELOAD", preload);
        }
        start_pgwarden_binary(
            command,
            &cluster,
            baseline_port,
            pool_size,
            "scram-sha-256",
            true,
            "off",
        )
    });

    let port_of = |target: &str| match target {
        "direct" => pg_port,
        "pgbouncer" => bouncer_port,
        "pgwarden_baseline" => baseline_port,
        "pgwarden_nostats" => nostats_port,
        "pgwarden_rewrite" => rewrite_port,
        "pgwarden_nofair" => nofair_port,
        "pgwarden_nocache" => nocache_port,
        _ => warden_port,
    };
    for target in &targets {
        wait_ready(port_of(target), target);
    }
    // pgwarden processes by target, for RSS after every phase.
    let pid_of = |target: &str| -> Option<u32> {
        let guard = match target {
            "pgwarden" => _warden.as_ref(),
            "pgwarden_nostats" => _nostats.as_ref(),
            "pgwarden_rewrite" => _rewrite.as_ref(),
            "pgwarden_nocache" => _nocache.as_ref(),
            "pgwarden_baseline" => _baseline.as_ref(),
            "pgwarden_nofair" => _nofair.as_ref(),
            _ => None,
        };
        guard.map(|g| g.0.id())
    };
    // The process whose CPU time a target costs: the proxy (pgbouncer's worker under runuser).
    let cpu_pid_of = |target: &str| -> Option<u32> {
        match target {
            "pgbouncer" => _bouncer.as_ref().map(|g| server_pid(g.0.id())),
            _ => pid_of(target),
        }
    };
    let mut cpu_rows: Vec<String> = Vec::new();
    let mut rss_rows: Vec<String> = Vec::new();
    for target in &targets {
        if let Some(pid) = pid_of(target) {
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
                let mut measures: Vec<Measure> = Vec::new();
                for target in &targets {
                    let before = transactions_per_node(&cluster);
                    let cpu_before = cpu_pid_of(target).map(cpu::cpu_seconds);
                    let http = http_port_of(port_of(target));
                    let cache_before = http.and_then(cache::hits_and_misses);
                    let m = run_pgbench(
                        &pgbench,
                        port_of(target),
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
                    if let (Some(pid), Some(cpu_before)) = (cpu_pid_of(target), cpu_before) {
                        let spent = cpu::cpu_seconds(pid) - cpu_before;
                        let transactions = m.tps * duration as f64;
                        let per_txn_us = spent * 1e6 / transactions.max(1.0);
                        // Mean latency added to direct's, measured just before in this row.
                        let added_us = targets
                            .iter()
                            .zip(&measures)
                            .find(|(t, _)| *t == "direct")
                            .map_or("n/a".to_string(), |(_, d)| {
                                format!("{:.0}", (m.latency_ms - d.latency_ms) * 1000.0)
                            });
                        eprintln!(
                            "    {target} CPU {spent:.2} s, {per_txn_us:.1} us/txn, {added_us} us added latency"
                        );
                        cpu_rows.push(format!(
                            "| {script} | {mode} | {n} | {target} | {spent:.2} | {per_txn_us:.1} | {added_us} |"
                        ));
                    }
                    if let Some(pid) = pid_of(target) {
                        let rss = idle::status_kib(pid, "VmRSS:");
                        let peak = idle::status_kib(pid, "VmHWM:");
                        eprintln!(
                            "    {target} RSS {:.1} MiB, peak {:.1} MiB",
                            mib(rss),
                            mib(peak)
                        );
                        rss_rows.push(format!(
                            "| {script} {mode} c={n} | {target} | {:.1} | {:.1} |",
                            mib(rss),
                            mib(peak)
                        ));
                    }
                    measures.push(m);
                }
                rows.push((script.clone(), mode.clone(), n.clone(), measures));
            }
        }
    }

    let mut bulk_rows = Vec::new();
    if env_num("BULK", 1) == 1 {
        let connector = bench_tls.as_ref().map(|t| t.connector());
        let mut passes = vec![(None, "")];
        if let Some(connector) = &connector {
            passes.push((Some(connector), " (TLS)"));
        }
        for (tls, label) in passes {
            for target in &targets {
                if tls.is_some() && target == "pgbouncer" {
                    continue; // not configured for TLS
                }
                let url = format!(
                    "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
                    port_of(target)
                );
                let result = bulk::measure(&url, cpu_pid_of(target), tls);
                eprintln!("bulk {target}{label}: {result:?}");
                bulk_rows.push((format!("{target}{label}"), result));
            }
        }
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
                        start_pgwarden(&cluster, port, pool_size, method, true, "off")
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
        // Against the mean of every direct measurement (TARGETS may list it twice).
        // A TLS row is compared with direct over TLS.
        let direct_mean = |tls: bool, f: fn(&bulk::BulkResult) -> f64| {
            let directs: Vec<f64> = bulk_rows
                .iter()
                .filter(|(t, _)| t.starts_with("direct") && t.ends_with("(TLS)") == tls)
                .map(|(_, r)| f(r))
                .collect();
            (!directs.is_empty()).then(|| directs.iter().sum::<f64>() / directs.len() as f64)
        };
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 => format!("{:.2}", a / b),
            _ => "n/a".to_string(),
        };
        let _ = write!(
            report,
            "\n{} sessions each fetch the 1M-row result (median time); then the median of 7 fetches of one 16 MiB value and of 3 100 MB COPY FROM STDIN. CPU: the proxy's user+system ms per transfer. RSS: the proxy's, with those sessions still connected and idle.\n\n| target | 1M rows (s) | vs direct | CPU ms | 16 MiB value (s) | vs direct | CPU ms | COPY 100 MB (s) | vs direct | CPU ms | RSS idle after (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            bulk::SESSIONS
        );
        for (target, r) in &bulk_rows {
            let tls = target.ends_with("(TLS)");
            let direct_rows = direct_mean(tls, |r| r.million_rows_s);
            let direct_value = direct_mean(tls, |r| r.value_16mib_s);
            let direct_copy = direct_mean(tls, |r| r.copy_in_100mb_s);
            let _ = writeln!(
                report,
                "| {target} | {:.3} | {} | {:.0} | {:.4} | {} | {:.1} | {:.3} | {} | {:.0} | {:.1} | {:.1} |",
                r.million_rows_s,
                ratio(r.million_rows_s, direct_rows),
                r.million_rows_cpu_s * 1000.0,
                r.value_16mib_s,
                ratio(r.value_16mib_s, direct_value),
                r.value_16mib_cpu_s * 1000.0,
                r.copy_in_100mb_s,
                ratio(r.copy_in_100mb_s, direct_copy),
                r.copy_in_100mb_cpu_s * 1000.0,
                mib(r.rss_idle_kib),
                mib(r.rss_peak_kib),
            );
        }
    }
    if !cpu_rows.is_empty() {
        let _ = write!(
            report,
            "\n| script | mode | clients | proxy | proxy CPU (s) | proxy CPU per transaction (us) | added latency vs direct (us) |\n|---|---|---|---|---|---|---|\n{}\n",
            cpu_rows.join("\n")
        );
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

/// `xact_commit` of the benchmark database on every node (primary first).
fn transactions_per_node(cluster: &LocalCluster) -> Vec<u64> {
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

fn run_pgbench(
    pgbench: &Path,
    port: u16,
    (script, work, scale): (&str, &Path, u64),
    mode: &str,
    clients: &str,
    duration: u64,
) -> Measure {
    let threads = clients.parse::<u32>().unwrap_or(1).min(2).to_string();
    let mut command = Command::new(pgbench);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
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

fn start_pgbouncer(dir: &Path, pg_port: u16, port: u16, pool_size: u64, auth: &str) -> Guard {
    std::fs::create_dir_all(dir).unwrap();
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    std::fs::write(&users, format!("\"{USER}\" \"{PASSWORD}\"\n")).unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = {auth}\nauth_file = {}\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\n\
             max_client_conn = 20000\nmax_db_connections = 0\nlogfile = {}\n\
             server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n",
            users.display(),
            dir.join("pgbouncer.log").display()
        ),
    )
    .unwrap();
    for path in [dir.to_path_buf(), ini.clone(), users.clone()] {
        let _ = Command::new("chown").arg("postgres").arg(&path).status();
    }
    let bin = PathBuf::from("/usr/sbin/pgbouncer");
    let root = unsafe { libc::geteuid() } == 0;
    // runuser's login session resets the open-files limit to 1024: raise it again.
    let launch = format!(
        "ulimit -n $(ulimit -Hn); exec {} {}",
        bin.display(),
        ini.display()
    );
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &launch]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &launch]);
        c
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer (apt-get install -y pgbouncer)");
    Guard(child)
}

fn start_pgwarden(
    cluster: &LocalCluster,
    port: u16,
    pool_size: u64,
    auth: &str,
    stats: bool,
    tenancy: &str,
) -> Guard {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("pgwarden");
    start_pgwarden_binary(
        pgwarden_command(bin),
        cluster,
        port,
        pool_size,
        auth,
        stats,
        tenancy,
    )
}

/// The command that runs the pgwarden binary `bin`.
fn pgwarden_command(bin: PathBuf) -> Command {
    assert!(
        bin.exists(),
        "build pgwarden first: cargo build --release ({})",
        bin.display()
    );
    Command::new(bin)
}

fn start_pgwarden_binary(
    mut command: Command,
    cluster: &LocalCluster,
    port: u16,
    pool_size: u64,
    auth: &str,
    stats: bool,
    tenancy: &str,
) -> Guard {
    // `tenancy` may carry ":nocache": the same proxy with the result cache off.
    let (tenancy, cache_mode) = match tenancy.split_once(':') {
        Some((t, "nocache")) => (t, "off"),
        _ => (tenancy, "hinted"),
    };
    let http_port = free_port();
    HTTP_PORTS.lock().unwrap().push((port, http_port));
    let child = command
        .env("PGWARDEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGWARDEN_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("PGWARDEN_CACHE_MODE", cache_mode)
        .env("PGWARDEN_PRIMARY_URL", cluster.primary_url())
        .env("PGWARDEN_REPLICA_URLS", cluster.replica_urls().join(","))
        .env("PGWARDEN_POOL_SIZE", pool_size.to_string())
        .env("PGWARDEN_AUTH_METHOD", auth)
        .env("PGWARDEN_STATS_ENABLED", stats.to_string())
        .env("PGWARDEN_TENANCY_MODE", tenancy)
        .env("PGWARDEN_PROXY_MAX_CLIENT_CONNECTIONS", "20000")
        .envs(TLS_FILES.lock().unwrap().iter().flat_map(|(cert, key)| {
            [
                ("PGWARDEN_PROXY_TLS_CERT", cert.clone()),
                ("PGWARDEN_PROXY_TLS_KEY", key.clone()),
            ]
        }))
        .env(
            "RUST_LOG",
            std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(proxy_log(port))
        .spawn()
        .expect("start pgwarden");
    Guard(child)
}

/// With `PROXY_LOG` set (a `RUST_LOG` filter), each pgwarden logs to
/// `bench/results/pgwarden-<port>.log`.
fn proxy_log(port: u16) -> Stdio {
    if std::env::var_os("PROXY_LOG").is_none() {
        return Stdio::null();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::File::create(dir.join(format!("pgwarden-{port}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// The process doing the work: pgbouncer runs under `runuser` when we are root.
fn server_pid(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(pid)
}

fn wait_ready(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn render(
    targets: &[String],
    rows: &[(String, String, String, Vec<Measure>)],
    idle: &[(&str, &str, usize, idle::IdleResult)],
    duration: u64,
    scale: u64,
    pool: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pgbench {duration}s per cell, scale {scale}, pool size {pool}, 2 pgbench threads; PgBouncer transaction mode\n"
    );
    let idx = |name: &str| targets.iter().position(|t| t == name);
    let mut header = "| script | mode | clients |".to_string();
    for t in targets {
        let _ = write!(header, " {t} TPS |");
    }
    for t in targets {
        let _ = write!(header, " {t} ms |");
    }
    let ratios = [
        ("pgwarden", "direct"),
        ("pgwarden", "pgbouncer"),
        ("pgwarden", "pgwarden_nostats"),
        ("pgwarden_rewrite", "pgwarden"),
        ("pgwarden", "pgwarden_baseline"),
    ];
    for (a, b) in ratios {
        if idx(a).is_some() && idx(b).is_some() {
            let _ = write!(header, " {a}/{b} |");
        }
    }
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "{}",
        header
            .chars()
            .map(|c| if c == '|' { '|' } else { '-' })
            .collect::<String>()
    );
    for (script, mode, clients, m) in rows {
        let mut line = format!("| {script} | {mode} | {clients} |");
        for x in m {
            if x.failed {
                let _ = write!(line, " {:.0} (errors) |", x.tps);
            } else {
                let _ = write!(line, " {:.0} |", x.tps);
            }
        }
        for x in m {
            let _ = write!(line, " {:.3} |", x.latency_ms);
        }
        for (a, b) in ratios {
            if let (Some(i), Some(j)) = (idx(a), idx(b)) {
                if m[j].failed || m[j].tps == 0.0 {
                    let _ = write!(line, " n/a |");
                } else {
                    let _ = write!(line, " {:.2} |", m[i].tps / m[j].tps);
                }
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if !idle.is_empty() {
        let _ = writeln!(out, "\n| idle clients | proxy | login | logged in | RSS before (KiB) | RSS with clients (KiB) | KiB per client | RSS after they left (KiB) | KiB left per client |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for (target, auth, count, r) in idle {
            let per = |kib: u64| (kib as f64 - r.rss_before_kib as f64) / r.connected.max(1) as f64;
            let _ = writeln!(
                out,
                "| {count} | {target} | {auth} | {} | {} | {} | {:.2} | {} | {:.2} |",
                r.connected,
                r.rss_before_kib,
                r.rss_after_kib,
                per(r.rss_after_kib),
                r.rss_gone_kib,
                per(r.rss_gone_kib)
            );
        }
    }
    out
}

fn render_csv(targets: &[String], rows: &[(String, String, String, Vec<Measure>)]) -> String {
    let mut out = String::from("script,mode,clients,target,tps,latency_ms,errors\n");
    for (script, mode, clients, m) in rows {
        for (t, x) in targets.iter().zip(m) {
            let _ = writeln!(
                out,
                "{script},{mode},{clients},{t},{:.1},{:.3},{}",
                x.tps, x.latency_ms, x.failed
            );
        }
    }
    out
}
