//! `proxy.worker_threads`: the default picks one thread (a current-thread runtime) on
//! machines with up to two cores and work stealing above; `worker_threads = 1` is one
//! thread anywhere, also for one such process per core sharing the client port with
//! `proxy.reuse_port`. The real binary runs here, as an operator would start it.

use std::time::Duration;

use pgwarden::config::SessionThreads;

use crate::support;
use support::process::ProxyProcess;

const CLIENTS: usize = 8;
const ROUNDS: usize = 10;
const STEP: Duration = Duration::from_secs(15);

/// The `Threads:` line of `/proc/PID/status`.
fn threads(process: &ProxyProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid()))
        .expect("the process's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Threads line")
}

/// Sends SIGTERM and asserts the process exits with status 0 within 15 s.
fn exits_cleanly_on_sigterm(process: &mut ProxyProcess) {
    process.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(15)));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{}",
        process.log()
    );
}

/// Server checkouts this process made (`pgwarden_pool_checkouts_total`, every pool).
async fn checkouts(process: &ProxyProcess) -> f64 {
    let (status, body) = support::within(
        "GET /metrics",
        support::http::get(process.http, "/metrics", None),
    )
    .await;
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("pgwarden_pool_checkouts_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Without `worker_threads` in the configuration, the binary runs the layout this
/// machine's cores call for (one thread with up to two cores), says so in its log,
/// serves clients on it and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_layout_follows_the_cores() {
    let cluster = support::cluster(0);
    let (expected, cores) = SessionThreads::on_this_machine(0);
    let mut process = ProxyProcess::start(&cluster, "[pool]\nsize = 2\n", &[("RUST_LOG", "info")]);
    let db = support::proxy::connect_url(&process.url())
        .await
        .expect("connect");
    let row = support::within(
        "select through the proxy",
        db.query_one("SELECT 41 + $1::int", &[&1i32]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let running = threads(&process);
    let log = process.log();
    println!("{cores} cores: {expected:?}, {running} threads");
    match expected {
        SessionThreads::One => {
            assert_eq!(running, 1, "threads with {cores} cores");
            assert!(log.contains("sessions run on one thread"), "{log}");
        }
        SessionThreads::WorkStealing(workers) => {
            // The workers plus the thread that started the runtime.
            assert!(
                running > workers as u64,
                "threads with {cores} cores: {running}"
            );
            assert!(
                log.contains("sessions run on a work-stealing runtime"),
                "{log}"
            );
        }
    }
    drop(db);
    exits_cleanly_on_sigterm(&mut process);
}

/// Two one-thread processes on one port: each runs on a single thread, the kernel
/// spreads new connections over both, and every client (a SCRAM login per round, a
/// transaction that writes and reads back its own rows, simple and extended protocol)
/// sees exactly its own writes, whichever process it reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_processes_share_a_port() {
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    support::execute(
        &direct,
        "CREATE TABLE per_client (client int NOT NULL, round int NOT NULL)",
    )
    .await;
    let toml = "[proxy]\nreuse_port = true\nworker_threads = 1\n[pool]\nsize = 4\n";
    let mut first = ProxyProcess::start(&cluster, toml, &[]);
    let mut second =
        tokio::task::block_in_place(|| ProxyProcess::start_on(&cluster, first.port, toml, &[]));
    assert_eq!(
        threads(&first),
        1,
        "threads of a worker_threads = 1 process"
    );
    assert_eq!(
        threads(&second),
        1,
        "threads of a worker_threads = 1 process"
    );

    let url = first.url();
    let mut clients = Vec::new();
    for client in 0..CLIENTS as i32 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            for round in 0..ROUNDS as i32 {
                let seen: i64 = tokio::time::timeout(STEP, async {
                    let db = support::proxy::connect_url(&url).await.expect("connect");
                    db.batch_execute("BEGIN").await.unwrap();
                    db.execute("INSERT INTO per_client VALUES ($1, $2)", &[&client, &round])
                        .await
                        .unwrap();
                    let row = db
                        .query_one(
                            "SELECT count(*) FROM per_client WHERE client = $1",
                            &[&client],
                        )
                        .await
                        .unwrap();
                    db.batch_execute("COMMIT").await.unwrap();
                    row.get(0)
                })
                .await
                .expect("a client hung");
                assert_eq!(seen, round as i64 + 1, "client {client} round {round}");
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(STEP * ROUNDS as u32, client)
            .await
            .expect("a client hung")
            .expect("a client failed");
    }

    let total: i64 = support::within(
        "count rows",
        direct.query_one("SELECT count(*) FROM per_client", &[]),
    )
    .await
    .unwrap()
    .get(0);
    let (by_first, by_second) = (checkouts(&first).await, checkouts(&second).await);
    println!(
        "two worker_threads = 1 processes on one port: {CLIENTS} clients x {ROUNDS} logins; \
         checkouts {by_first} and {by_second}; rows {total}; threads {} and {}",
        threads(&first),
        threads(&second)
    );
    assert_eq!(total, (CLIENTS * ROUNDS) as i64, "rows committed");
    // 80 connections spread by the kernel: both processes served some.
    assert!(
        by_first > 0.0 && by_second > 0.0,
        "one process served every client: {by_first} / {by_second}"
    );
    assert_eq!(threads(&first), 1, "threads after the load");
    assert_eq!(threads(&second), 1, "threads after the load");

    for process in [&mut first, &mut second] {
        exits_cleanly_on_sigterm(process);
    }
}
