//! The fault suite (issue 14): real PostgreSQL under real load (pgbench,
//! tokio-postgres, psql) while a server crashes, restarts or hangs (here), the proxy
//! is reloaded in a storm (`faults/reload_storm.rs`), overloaded
//! (`faults/overload.rs`), or its clients misbehave (`faults/client_faults.rs`,
//! `faults/half_open.rs`). Each scenario prints the faults it injected, what it ran,
//! the errors clients saw by SQLSTATE, and the server connections the proxy and
//! PostgreSQL count, which must agree. Graceful shutdown is in `tests/shutdown.rs`.

#[path = "faults/client_faults.rs"]
mod client_faults;
#[path = "faults/half_open.rs"]
mod half_open;
use crate::load;
#[path = "faults/overload.rs"]
mod overload;
#[path = "faults/reload_storm.rs"]
mod reload_storm;
use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgwarden::config::Config;
use pgwarden::RunningProxy;
use support::proxy;

use load::STEP;

fn with_replicas(urls: Vec<String>) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        let db = c.databases.get_mut(proxy::DATABASE).unwrap();
        db.replicas = urls;
        c.routing.lag_poll_ms = 50;
    }
}

async fn replica_healthy(proxy: &RunningProxy, i: usize) -> bool {
    let topology = proxy.runtime.routing().topology(proxy::DATABASE).unwrap();
    topology.replicas()[i]
        .healthy
        .load(std::sync::atomic::Ordering::Relaxed)
}

async fn wait_replica(proxy: &RunningProxy, i: usize, healthy: bool, within: Duration) {
    let started = Instant::now();
    while replica_healthy(proxy, i).await != healthy {
        assert!(
            started.elapsed() < within,
            "replica {i} not {} within {within:?}",
            if healthy {
                "back in rotation"
            } else {
                "taken out"
            }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1. A replica killed with SIGKILL (postmaster and backends) under read load, then
///    restarted: autocommit reads see no error, the replica leaves the rotation and
///    comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_read_load_costs_no_errors() {
    let mut cluster = support::cluster(2);
    load::init_pgbench(&cluster);
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let proxy = proxy::start(&cluster, with_replicas(cluster.replica_urls())).await;
    wait_replica(&proxy, 0, true, Duration::from_secs(10)).await;
    wait_replica(&proxy, 1, true, Duration::from_secs(10)).await;
    let port = proxy.port();
    let bench = std::thread::spawn(move || {
        load::pgbench(
            port,
            &["-S", "-c", "8", "-j", "2", "-T", "8", "--no-vacuum"],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.kill_replica(0).unwrap());
    wait_replica(&proxy, 0, false, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| cluster.start_replica(0).unwrap());
    wait_replica(&proxy, 0, true, Duration::from_secs(20)).await;
    let output = tokio::task::block_in_place(|| bench.join().unwrap());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let direct = proxy::connect_direct(&cluster).await;
    let (pooled, on_server) = load::settled_connections(&proxy, &direct).await;
    println!(
        "replica SIGKILL: {} transactions, {} failed, client errors: {:?}; primary server connections: proxy {pooled}, pg_stat_activity {on_server}",
        load::pgbench_number(&output, "number of transactions actually processed: "),
        load::pgbench_number(&output, "number of failed transactions: "),
        stderr.lines().filter(|l| l.contains("error")).collect::<Vec<_>>(),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    assert!(!stderr.contains("error"), "client errors: {stderr}");
    assert_eq!(
        pooled, on_server,
        "the proxy and PostgreSQL disagree on server connections"
    );
}

/// SQLSTATE of a failed call, or "ok".
fn outcome<T>(result: &Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {e}")),
    }
}

/// 2. The primary restarts (fast, then immediate) under a TPC-B load. A client idle
///    over the restart gets no error; a client inside a transaction gets one clean
///    connection-class error and goes on with the same connection; nothing committed
///    is lost or doubled; no broken server connection is handed out afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restart_loses_nothing_and_strands_no_client() {
    let mut cluster = support::cluster(0);
    load::init_pgbench(&cluster);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 6;
    })
    .await;
    {
        let direct = proxy::connect_direct(&cluster).await;
        direct
            .batch_execute("CREATE TABLE fault_marks (n int)")
            .await
            .unwrap();
    }
    for mode in ["fast", "immediate"] {
        let idle = proxy::connect(&proxy).await;
        let in_transaction = proxy::connect(&proxy).await;
        tokio::time::timeout(STEP, idle.simple_query("SELECT 1"))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(
            STEP,
            in_transaction.batch_execute("BEGIN; INSERT INTO fault_marks VALUES (1)"),
        )
        .await
        .unwrap()
        .unwrap();
        let port = proxy.port();
        let bench = std::thread::spawn(move || {
            load::pgbench(port, &["-c", "4", "-j", "2", "-T", "6", "--no-vacuum"])
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| cluster.restart_primary(mode).unwrap());
        let output = tokio::task::block_in_place(|| bench.join().unwrap());

        let mut errors: BTreeMap<String, u32> = BTreeMap::new();
        let idle_after = tokio::time::timeout(STEP, idle.simple_query("SELECT 1"))
            .await
            .expect("idle client hung");
        let first = tokio::time::timeout(
            STEP,
            in_transaction.simple_query("INSERT INTO fault_marks VALUES (2)"),
        )
        .await
        .expect("client in a transaction hung");
        let again = tokio::time::timeout(STEP, in_transaction.simple_query("SELECT 1"))
            .await
            .expect("client in a transaction hung after its error");
        for result in [outcome(&idle_after), outcome(&first), outcome(&again)] {
            *errors.entry(result).or_default() += 1;
        }
        let direct = proxy::connect_direct(&cluster).await;
        let sums = load::tpcb_sums(&direct).await;
        let (pooled, on_server) = load::settled_connections(&proxy, &direct).await;
        println!(
            "primary restart ({mode}): pgbench {} transactions, {} failed, exit {:?}; idle/in-transaction/after outcomes {errors:?}; sums (accounts, tellers, branches, history) {sums:?}; server connections: proxy {pooled}, pg_stat_activity {on_server}",
            load::pgbench_number(&output, "number of transactions actually processed: "),
            load::pgbench_number(&output, "number of failed transactions: "),
            output.status.code(),
        );
        assert_eq!(
            outcome(&idle_after),
            "ok",
            "{mode}: the idle client got an error"
        );
        let code = outcome(&first);
        assert!(
            code.starts_with("08") || code.starts_with("57P"),
            "{mode}: the interrupted transaction's error: {code}"
        );
        assert_eq!(outcome(&again), "ok", "{mode}: the client could not go on");
        assert!(
            sums[0] == sums[3] && sums[1] == sums[3] && sums[2] == sums[3],
            "{mode}: TPC-B tables disagree with their history: {sums:?}"
        );
        assert_eq!(pooled, on_server, "{mode}: server connections disagree");
    }
}

/// 3. A hung backend (its process stopped with SIGSTOP) under `pool.query_timeout_ms`:
///    its client gets a clean 57014 within the timeout and goes on with another server
///    connection; other clients keep working; once the process resumes, the proxy's
///    server connections and PostgreSQL's agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_is_taken_out_and_its_client_goes_on() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 4;
        c.pool.query_timeout_ms = 1_000;
    })
    .await;
    let hung = proxy::connect(&proxy).await;
    let other = proxy::connect(&proxy).await;
    tokio::time::timeout(STEP, hung.batch_execute("BEGIN"))
        .await
        .unwrap()
        .unwrap();
    let pid: i32 = tokio::time::timeout(STEP, hung.query_one("SELECT pg_backend_pid()", &[]))
        .await
        .unwrap()
        .unwrap()
        .get(0);
    // SAFETY: kill(2) of the backend process serving this test's own client.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let stalled = tokio::time::timeout(STEP, hung.simple_query("SELECT 1"))
        .await
        .expect("the hung client was never answered");
    let waited = started.elapsed();
    let others: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let result = tokio::time::timeout(STEP, other.simple_query("SELECT 1"))
                .await
                .expect("another client hung");
            seen.push(outcome(&result));
        }
        seen
    };
    let after = tokio::time::timeout(STEP, hung.simple_query("SELECT 1"))
        .await
        .expect("the client hung after its error");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let direct = proxy::connect_direct(&cluster).await;
    let (pooled, on_server) = load::settled_connections(&proxy, &direct).await;
    println!(
        "hung backend: the stalled query ended with {} after {waited:?}; other client {others:?}; then {}; server connections: proxy {pooled}, pg_stat_activity {on_server}",
        outcome(&stalled),
        outcome(&after),
    );
    assert_eq!(outcome(&stalled), "57014");
    assert!(others.iter().all(|o| o == "ok"), "{others:?}");
    assert_eq!(outcome(&after), "ok");
    assert_eq!(pooled, on_server, "server connections disagree");
}
