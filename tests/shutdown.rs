//! Graceful shutdown (issue 14) of the real binary: on SIGTERM `/readyz` answers 503
//! at once, new connections are refused, idle clients get 57P01, a transaction in
//! flight finishes and commits, the process exits 0; a transaction that outlives
//! `proxy.shutdown_timeout_ms` gets 57P01 and is rolled back.

use crate::load;
use crate::support;

use std::time::{Duration, Instant};

use load::{sqlstate, Outcomes, STEP};
use support::process::ProxyProcess;

/// A client whose connection task's result is kept: an error the server sends while
/// the client is idle (FATAL 57P01) ends that task, not a call.
async fn connect_watched(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) =
        tokio::time::timeout(STEP, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .expect("connect hung")
            .expect("connect through pgwarden");
    (client, tokio::spawn(connection))
}

/// What ended a watched connection: its SQLSTATE, or "closed".
async fn ending(connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) -> String {
    let result = tokio::time::timeout(STEP, connection)
        .await
        .expect("the connection was never closed")
        .expect("connection task");
    sqlstate(&result)
}

/// Polls `/readyz` until it answers `status`; how long that took.
async fn readyz_becomes(process: &ProxyProcess, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (got, _) = support::http::get(process.http, "/readyz", None).await;
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/readyz stayed {got}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until nothing listens on the proxy port any more; how long that took.
async fn refuses_connections(port: u16) -> Duration {
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until PostgreSQL has no client backend of the proxy's user left.
async fn server_side_gone(direct: &tokio_postgres::Client, within: Duration) -> u64 {
    let started = Instant::now();
    loop {
        let left = load::on_server(direct).await;
        if left == 0 || started.elapsed() > within {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the primary runs `pg_sleep` for the proxy's user.
async fn sleeping_on_server(direct: &tokio_postgres::Client) {
    let started = Instant::now();
    loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(started.elapsed() < STEP, "pg_sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows(direct: &tokio_postgres::Client, tag: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM shutdown_marks WHERE tag = $1",
            &[&tag],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_and_tells_idle_clients_57p01() {
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE shutdown_marks (tag text)")
        .await
        .unwrap();
    let mut process = ProxyProcess::start(&cluster, "[proxy]\nshutdown_timeout_ms = 15000\n", &[]);
    readyz_becomes(&process, 200).await;
    let (idle, idle_connection) = connect_watched(&process.url()).await;
    tokio::time::timeout(STEP, idle.simple_query("SELECT 1"))
        .await
        .unwrap()
        .unwrap();
    let (busy, busy_connection) = connect_watched(&process.url()).await;
    tokio::time::timeout(
        STEP,
        busy.batch_execute("BEGIN; INSERT INTO shutdown_marks VALUES ('committed')"),
    )
    .await
    .unwrap()
    .unwrap();
    let before = load::settled_connections_at(process.port, &direct).await;

    let in_flight = tokio::spawn(async move {
        let slept = tokio::time::timeout(STEP, busy.simple_query("SELECT pg_sleep(2)"))
            .await
            .expect("pg_sleep hung");
        let committed = tokio::time::timeout(STEP, busy.simple_query("COMMIT"))
            .await
            .expect("COMMIT hung");
        (sqlstate(&slept), sqlstate(&committed))
    });
    sleeping_on_server(&direct).await;
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    let not_ready_after = readyz_becomes(&process, 503).await;
    let (_, readyz_body) = support::http::get(process.http, "/readyz", None).await;
    let refused_after = refuses_connections(process.port).await;
    let refused = tokio::time::timeout(
        STEP,
        tokio_postgres::connect(&process.url(), tokio_postgres::NoTls),
    )
    .await
    .expect("a refused connect hung");
    let idle_ended = ending(idle_connection).await;
    let (slept, committed) = tokio::time::timeout(STEP, in_flight)
        .await
        .unwrap()
        .unwrap();
    let busy_ended = ending(busy_connection).await;
    let status = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(20)));
    let exited_after = signalled.elapsed();
    let committed_rows = rows(&direct, "committed").await;
    let left = server_side_gone(&direct, Duration::from_secs(10)).await;

    let mut outcomes = Outcomes::default();
    for o in [&slept, &committed, &idle_ended, &busy_ended] {
        outcomes.add(o.as_str());
    }
    println!(
        "graceful shutdown: faults injected: SIGTERM with 1 idle client and 1 transaction in pg_sleep(2); \
         queries run: 6; client outcomes by SQLSTATE {:?} (pg_sleep {slept}, COMMIT {committed}, idle client ended {idle_ended}, busy client ended {busy_ended}); \
         /readyz 503 ({readyz_body:?}) {not_ready_after:?} after the signal, connections refused after {refused_after:?} more; \
         exit {status:?} {exited_after:?} after the signal; committed rows {committed_rows}; \
         server connections before: proxy {} pg_stat_activity {}; after: proxy exited, pg_stat_activity {left}",
        outcomes.0, before.0, before.1,
    );
    assert_eq!(
        before.0, before.1,
        "server connections disagree before the signal"
    );
    assert!(refused.is_err(), "a new client was served during shutdown");
    assert_eq!(readyz_body.trim(), "shutting down");
    assert_eq!(idle_ended, "57P01", "the idle client's end");
    assert_eq!(
        (slept.as_str(), committed.as_str()),
        ("ok", "ok"),
        "the transaction in flight"
    );
    assert_eq!(busy_ended, "57P01", "the busy client after its transaction");
    assert_eq!(
        committed_rows, 1,
        "the transaction in flight did not commit"
    );
    let status = status.unwrap_or_else(|| panic!("pgwarden did not exit:\n{}", process.log()));
    assert!(status.success(), "exit status {status}:\n{}", process.log());
    assert_eq!(left, 0, "server connections left on PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_the_shutdown_timeout_gets_57p01_and_is_rolled_back() {
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE shutdown_marks (tag text)")
        .await
        .unwrap();
    let timeout_ms = 1_500u64;
    let mut process = ProxyProcess::start(
        &cluster,
        &format!("[proxy]\nshutdown_timeout_ms = {timeout_ms}\n"),
        &[],
    );
    let (late, late_connection) = connect_watched(&process.url()).await;
    tokio::time::timeout(
        STEP,
        late.batch_execute("BEGIN; INSERT INTO shutdown_marks VALUES ('half')"),
    )
    .await
    .unwrap()
    .unwrap();
    let before = load::settled_connections_at(process.port, &direct).await;
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let slept = tokio::time::timeout(STEP, late.simple_query("SELECT pg_sleep(4)"))
            .await
            .expect("pg_sleep hung");
        (sqlstate(&slept), started.elapsed())
    });
    sleeping_on_server(&direct).await;
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    let (slept, answered_after) = tokio::time::timeout(STEP, in_flight)
        .await
        .unwrap()
        .unwrap();
    let ended = ending(late_connection).await;
    let status = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(20)));
    let exited_after = signalled.elapsed();
    // PostgreSQL notices the closed connection when pg_sleep ends, and rolls back.
    let left = server_side_gone(&direct, Duration::from_secs(15)).await;
    let half_rows = rows(&direct, "half").await;
    let mut outcomes = Outcomes::default();
    outcomes.add(slept.as_str());
    outcomes.add(ended.as_str());
    println!(
        "shutdown timeout: faults injected: SIGTERM with 1 transaction in pg_sleep(4), shutdown_timeout_ms {timeout_ms}; \
         queries run: 3; client outcomes by SQLSTATE {:?} (the statement answered {slept} after {answered_after:?}); \
         exit {status:?} {exited_after:?} after the signal; rows of the unfinished transaction {half_rows}; \
         server connections before: proxy {} pg_stat_activity {}; after: proxy exited, pg_stat_activity {left}",
        outcomes.0, before.0, before.1,
    );
    assert_eq!(
        before.0, before.1,
        "server connections disagree before the signal"
    );
    assert_eq!(slept, "57P01", "the transaction past the timeout");
    assert!(
        answered_after < Duration::from_millis(timeout_ms) + Duration::from_secs(3),
        "57P01 came {answered_after:?} after the statement started"
    );
    let status = status.unwrap_or_else(|| panic!("pgwarden did not exit:\n{}", process.log()));
    assert!(status.success(), "exit status {status}:\n{}", process.log());
    assert_eq!(left, 0, "server connections left on PostgreSQL");
    assert_eq!(
        half_rows, 0,
        "a transaction cut off at shutdown was half-committed"
    );
}

/// Stretch: with `proxy.reuse_port` a new pgwarden starts on the same port before the
/// old one drains; new clients connect throughout the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_a_new_process_take_over_the_port() {
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    // Trust: logins are cheap, so many clients connect during the handover.
    let toml =
        "[proxy]\nreuse_port = true\nshutdown_timeout_ms = 5000\n[auth]\nmethod = \"trust\"\n";
    let mut old = ProxyProcess::start(&cluster, toml, &[]);
    let url = old.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut outcomes = Outcomes::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let result = tokio::time::timeout(STEP, async {
                    let client = support::proxy::connect_url(&url).await?;
                    client.simple_query("SELECT 1").await
                })
                .await
                .expect("a client hung");
                outcomes.add(sqlstate(&result));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = tokio::task::block_in_place(|| ProxyProcess::start_on(&cluster, old.port, toml, &[]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    let mut after_exit = Outcomes::default();
    for _ in 0..10 {
        let result = tokio::time::timeout(STEP, async {
            let client = support::proxy::connect_url(&new.url()).await?;
            client.simple_query("SELECT 1").await
        })
        .await
        .expect("a client hung");
        after_exit.add(sqlstate(&result));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = tokio::time::timeout(STEP, clients).await.unwrap().unwrap();
    let after = load::settled_connections_at(new.port, &direct).await;
    println!(
        "reuse_port handover: faults injected: a second pgwarden on the same port, then SIGTERM to the first; \
         queries run: {} by outcome {:?} during the handover, {:?} after the old process exited; old process exit {status:?}; server connections after: proxy {} pg_stat_activity {}",
        outcomes.total(),
        outcomes.0,
        after_exit.0,
        after.0,
        after.1,
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "old process: {status:?}"
    );
    assert!(
        outcomes.total() > 20,
        "too few clients ran: {:?}",
        outcomes.0
    );
    // A connection the kernel queued on the old listener in the instant it closes is
    // reset (a known SO_REUSEPORT limit); any more would mean the handover failed.
    assert!(
        outcomes.count("ok") + 1 >= outcomes.total(),
        "clients failed during the handover: {:?}",
        outcomes.0
    );
    assert_eq!(after.0, after.1, "server connections disagree");
}

/// SQLSTATE of an `ErrorResponse` read with `Wire::read_frame`.
fn frame_code(tag: u8, body: &[u8]) -> String {
    if tag != b'E' {
        return format!("not an error: {:?}", tag as char);
    }
    let mut whole = vec![tag, 0, 0, 0, 0];
    whole.extend_from_slice(body);
    support::wire::error_code(&[whole]).unwrap_or_default()
}

/// A COPY FROM STDIN and an extended-protocol batch (no `Sync` yet) open at SIGTERM
/// both finish and commit; each client then gets 57P01; an idle one gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_copy_and_batch_finish() {
    use support::proxy::{DATABASE, USER};
    use support::wire::{frame, unnamed_statement, Wire};
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE shutdown_marks (tag text)")
        .await
        .unwrap();
    let mut process = ProxyProcess::start(
        &cluster,
        "[proxy]\nshutdown_timeout_ms = 15000\n[auth]\nmethod = \"trust\"\n",
        &[],
    );
    let mut idle = Wire::tcp(process.port, USER, DATABASE, &[]).await;
    idle.simple("SELECT 1").await;
    let mut copy = Wire::tcp(process.port, USER, DATABASE, &[]).await;
    copy.send_query("COPY shutdown_marks FROM STDIN").await;
    assert_eq!(copy.read_frame().await.0, b'G', "CopyInResponse");
    for _ in 0..50 {
        copy.send(&frame(b'd', b"copied\n")).await;
    }
    let mut batch = Wire::tcp(process.port, USER, DATABASE, &[]).await;
    let mut out = unnamed_statement("INSERT INTO shutdown_marks VALUES ('batched')");
    out.extend(frame(b'H', &[]));
    batch.send(&out).await;
    for expected in [b'1', b'2', b'C'] {
        assert_eq!(
            batch.read_frame().await.0,
            expected,
            "batch answers before Sync"
        );
    }
    let before = load::settled_connections_at(process.port, &direct).await;

    process.signal(libc::SIGTERM);
    readyz_becomes(&process, 503).await;
    refuses_connections(process.port).await;
    let (tag, body) = idle.read_frame().await;
    let idle_told = frame_code(tag, &body);

    for _ in 0..50 {
        copy.send(&frame(b'd', b"copied\n")).await;
    }
    copy.send(&frame(b'c', &[])).await;
    let copy_answers: Vec<u8> = [copy.read_frame().await, copy.read_frame().await]
        .iter()
        .map(|(tag, _)| *tag)
        .collect();
    let (tag, body) = copy.read_frame().await;
    let copy_told = frame_code(tag, &body);

    batch.send(&frame(b'S', &[])).await;
    let batch_answer = batch.read_frame().await.0;
    let (tag, body) = batch.read_frame().await;
    let batch_told = frame_code(tag, &body);

    let status = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(20)));
    let copied: i64 = direct
        .query_one(
            "SELECT count(*) FROM shutdown_marks WHERE tag = 'copied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let batched = rows(&direct, "batched").await;
    let left = server_side_gone(&direct, Duration::from_secs(10)).await;
    let mut outcomes = Outcomes::default();
    for o in [&idle_told, &copy_told, &batch_told] {
        outcomes.add(o.as_str());
    }
    println!(
        "shutdown with COPY and batch open: faults injected: SIGTERM with an idle client, a COPY FROM STDIN half sent and a batch without Sync; \
         queries run: 3; told by SQLSTATE {:?}; COPY answered {:?} then {copy_told}, batch answered {:?} then {batch_told}; rows copied {copied}, batched {batched}; \
         exit {status:?}; server connections before: proxy {} pg_stat_activity {}; after: proxy exited, pg_stat_activity {left}",
        outcomes.0,
        String::from_utf8_lossy(&copy_answers),
        batch_answer as char,
        before.0,
        before.1,
    );
    assert_eq!(idle_told, "57P01");
    assert_eq!(copy_answers, b"CZ", "COPY finished");
    assert_eq!(copy_told, "57P01");
    assert_eq!(batch_answer, b'Z', "the batch's Sync answered");
    assert_eq!(batch_told, "57P01");
    assert_eq!(
        (copied, batched),
        (100, 1),
        "the COPY and the batch committed"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{}",
        process.log()
    );
    assert_eq!(left, 0);
}

/// `proxy.shutdown_readyz_delay_ms`: after SIGTERM `/readyz` is 503 at once but new
/// clients are still served for the delay, then refused; a second SIGTERM exits at
/// once (status 1) without waiting for a client idle in its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readyz_delay_keeps_accepting_and_a_second_sigterm_exits_at_once() {
    let cluster = support::cluster(0);
    let direct = support::proxy::connect_direct(&cluster).await;
    let delay = Duration::from_millis(2_500);
    let mut process = ProxyProcess::start(
        &cluster,
        &format!(
            "[proxy]\nshutdown_readyz_delay_ms = {}\nshutdown_timeout_ms = 60000\n",
            delay.as_millis()
        ),
        &[],
    );
    let (holder, _holder_connection) = connect_watched(&process.url()).await;
    tokio::time::timeout(STEP, holder.batch_execute("BEGIN; SELECT 1"))
        .await
        .unwrap()
        .unwrap();
    let before = load::settled_connections_at(process.port, &direct).await;
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    readyz_becomes(&process, 503).await;
    let during_delay = tokio::time::timeout(STEP, async {
        let client = support::proxy::connect_url(&process.url()).await?;
        client.simple_query("SELECT 1").await
    })
    .await
    .expect("a client during the delay hung");
    let served_after = signalled.elapsed();
    let refused_after = refuses_connections(process.port).await + served_after;
    let second = Instant::now();
    process.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(10)));
    let exited_after = second.elapsed();
    let left = server_side_gone(&direct, Duration::from_secs(10)).await;
    println!(
        "readyz delay: faults injected: SIGTERM with a client idle in a transaction, shutdown_readyz_delay_ms {}, then a second SIGTERM; \
         queries run: 3; a new client {:?} after {served_after:?}, connections refused from {refused_after:?}; \
         second SIGTERM: exit {status:?} after {exited_after:?}; server connections before: proxy {} pg_stat_activity {}; after: proxy exited, pg_stat_activity {left}",
        delay.as_millis(),
        sqlstate(&during_delay),
        before.0,
        before.1,
    );
    assert_eq!(sqlstate(&during_delay), "ok", "a client during the delay");
    assert!(
        served_after < delay,
        "the client was served only after {served_after:?}"
    );
    assert!(
        refused_after >= delay,
        "refused after {refused_after:?}, before the delay"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "second SIGTERM: {status:?}"
    );
    assert_eq!(left, 0, "server connections left on PostgreSQL");
}
