//! 3. Overload: 5,000 concurrent client connections against a pool of 20 server
//!    connections, each client running queries back to back. Every query is answered
//!    or refused with 53300 (checkout timeout), no query waits longer than
//!    `pool.checkout_timeout_ms` plus one query (with slack for a loaded 2-core
//!    machine); with `proxy.max_client_connections` below 5,000 the surplus is refused
//!    with 53300 at login. Reports the proxy's peak RSS (VmHWM).
//!    `PGWARDEN_FAULTS_OVERLOAD_SECS` sets the length of the load (CI: 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::{self, sqlstate, Outcomes, STEP};
use crate::support;
use crate::support::process::ProxyProcess;

const CLIENTS: usize = 5_000;
/// A query of ~10 ms: 20 server connections serve ~2,000 a second, so 5,000 clients
/// queue for about as long as the checkout timeout and some get 53300.
const QUERY: &str = "SELECT pg_sleep(0.01)";
const POOL_SIZE: u32 = 20;
const CHECKOUT_TIMEOUT_MS: u64 = 3_000;
/// Logins in flight at once (the listen backlog is finite; SYN retries would only
/// measure the kernel).
const CONNECTING: usize = 200;

/// Raises this process's open-file limit to its hard limit (the proxy child inherits it).
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

struct Run {
    logins: Outcomes,
    queries: Outcomes,
    slowest: Duration,
    slowest_ok: Duration,
}

/// `CLIENTS` clients log in (at most `CONNECTING` at a time) and, once all have tried,
/// run `QUERY` back to back for `secs`.
async fn overload(url: &str, secs: u64) -> Run {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let all_in = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (url, gate, all_in) = (url.to_string(), gate.clone(), all_in.clone());
        tasks.push(tokio::spawn(async move {
            let login = {
                let _permit = gate.acquire().await.unwrap();
                tokio::time::timeout(STEP, support::proxy::connect_url(&url)).await
            };
            let login = match login {
                Ok(result) => result,
                Err(_) => panic!("a login hung"),
            };
            let login_outcome = sqlstate(&login);
            all_in.wait().await;
            let mut queries = Outcomes::default();
            let (mut slowest, mut slowest_ok) = (Duration::ZERO, Duration::ZERO);
            if let Ok(client) = login {
                let until = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < until {
                    let started = Instant::now();
                    let result = tokio::time::timeout(STEP, client.simple_query(QUERY))
                        .await
                        .expect("a query hung");
                    let took = started.elapsed();
                    slowest = slowest.max(took);
                    let outcome = sqlstate(&result);
                    if outcome == "ok" {
                        slowest_ok = slowest_ok.max(took);
                    }
                    queries.add(outcome);
                }
            }
            (login_outcome, queries, slowest, slowest_ok)
        }));
    }
    all_in.wait().await;
    let mut run = Run {
        logins: Outcomes::default(),
        queries: Outcomes::default(),
        slowest: Duration::ZERO,
        slowest_ok: Duration::ZERO,
    };
    for task in tasks {
        let (login, queries, slowest, slowest_ok) =
            tokio::time::timeout(Duration::from_secs(secs) + STEP * 2, task)
                .await
                .expect("a client never finished")
                .expect("client task");
        run.logins.add(login);
        for (outcome, n) in queries.0 {
            *run.queries.0.entry(outcome).or_default() += n;
        }
        run.slowest = run.slowest.max(slowest);
        run.slowest_ok = run.slowest_ok.max(slowest_ok);
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_clients_on_a_pool_of_twenty() {
    let secs: u64 = std::env::var("PGWARDEN_FAULTS_OVERLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let nofile = raise_nofile();
    assert!(
        nofile as usize > 2 * CLIENTS + 500,
        "RLIMIT_NOFILE {nofile} is too low for {CLIENTS} clients"
    );
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    let bound = Duration::from_millis(CHECKOUT_TIMEOUT_MS) + Duration::from_secs(3);
    for (variant, max_clients, load_secs) in [
        ("all admitted", 10_000usize, secs),
        ("max_client_connections 4000", 4_000, secs.min(5)),
    ] {
        let process = ProxyProcess::start(
            &cluster,
            &format!(
                "[proxy]\nmax_client_connections = {max_clients}\n[auth]\nmethod = \"trust\"\n[pool]\nsize = {POOL_SIZE}\ncheckout_timeout_ms = {CHECKOUT_TIMEOUT_MS}\n"
            ),
            &[("RUST_LOG", "warn")],
        );
        let before = load::settled_connections_at(process.port, &direct).await;
        let started = Instant::now();
        let run = overload(&process.url(), load_secs).await;
        let elapsed = started.elapsed();
        let peak_on_server = load::on_server(&direct).await;
        let after = load::settled_connections_at(process.port, &direct).await;
        let hwm_mib = process.memory_kib("VmHWM") / 1024;
        let rss_mib = process.memory_kib("VmRSS") / 1024;
        println!(
            "overload ({variant}, {load_secs} s of load): faults injected: {CLIENTS} clients on a pool of {POOL_SIZE}, checkout_timeout_ms {CHECKOUT_TIMEOUT_MS}; \
             logins by SQLSTATE {:?}; queries run: {} by SQLSTATE {:?} ({:.0}/s); slowest query {:?} (slowest answered {:?}, bound {bound:?}); \
             proxy peak RSS (VmHWM) {hwm_mib} MiB, RSS at the end {rss_mib} MiB; \
             server connections before: proxy {} pg_stat_activity {}; after the load: pg_stat_activity {peak_on_server}; settled: proxy {} pg_stat_activity {}",
            run.logins.0,
            run.queries.total(),
            run.queries.0,
            run.queries.total() as f64 / elapsed.as_secs_f64(),
            run.slowest,
            run.slowest_ok,
            before.0,
            before.1,
            after.0,
            after.1,
        );
        let expected_refused = CLIENTS.saturating_sub(max_clients) as u64;
        assert_eq!(
            run.logins.count("53300"),
            expected_refused,
            "{variant}: logins {:?}",
            run.logins.0
        );
        assert_eq!(
            run.logins.count("ok") + expected_refused,
            CLIENTS as u64,
            "{variant}: logins {:?}",
            run.logins.0
        );
        assert_eq!(
            run.queries.count("ok") + run.queries.count("53300"),
            run.queries.total(),
            "{variant}: queries {:?}",
            run.queries.0
        );
        assert!(run.queries.count("ok") > 0, "{variant}: nothing answered");
        assert!(
            run.slowest <= bound,
            "{variant}: a query waited {:?} (bound {bound:?})",
            run.slowest
        );
        assert!(
            peak_on_server <= u64::from(POOL_SIZE),
            "{variant}: {peak_on_server} server connections"
        );
        assert_eq!(after.0, after.1, "{variant}: server connections disagree");
    }
}

/// A gauge or counter without labels from `/metrics`.
async fn metric(process: &ProxyProcess, name: &str) -> f64 {
    let (_, body) = support::http::get(process.http, "/metrics", None).await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Connection churn: pgbench `-C` (a new connection, SCRAM login included, for every
/// transaction) from 32 clients. Every login and transaction succeeds, and afterwards
/// no client slot, server connection or memory is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaves_nothing_behind() {
    let cluster = support::cluster(0);
    load::init_pgbench(&cluster);
    let process = ProxyProcess::start(&cluster, "[pool]\nsize = 10\n", &[("RUST_LOG", "warn")]);
    let direct = support::proxy::connect_direct(&cluster).await;
    let before = load::settled_connections_at(process.port, &direct).await;
    let rss_before = process.memory_kib("VmRSS");
    let port = process.port;
    let output = tokio::task::block_in_place(|| {
        load::pgbench(
            port,
            &["-C", "-S", "-c", "32", "-j", "2", "-T", "5", "--no-vacuum"],
        )
    });
    let started = Instant::now();
    let mut clients = metric(&process, "pgwarden_clients").await;
    while clients != 0.0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        clients = metric(&process, "pgwarden_clients").await;
    }
    let rss_after = process.memory_kib("VmRSS");
    let after = load::settled_connections_at(process.port, &direct).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!(
        "connection churn: faults injected: pgbench -C (a login per transaction), 32 clients, 5 s; queries run: {} transactions, {} failed; client errors {:?}; \
         clients afterwards {clients}; proxy VmRSS {} -> {} MiB; server connections before: proxy {} pg_stat_activity {}; after: proxy {} pg_stat_activity {}",
        load::pgbench_number(&output, "number of transactions actually processed: "),
        load::pgbench_number(&output, "number of failed transactions: "),
        stderr.lines().filter(|l| l.contains("error")).collect::<Vec<_>>(),
        rss_before / 1024,
        rss_after / 1024,
        before.0,
        before.1,
        after.0,
        after.1,
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    assert_eq!(clients, 0.0, "client slots left behind");
    assert_eq!(after.0, after.1, "server connections disagree");
}
