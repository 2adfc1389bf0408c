//! 4. Client faults: a client that vanishes mid-transaction, mid-COPY FROM STDIN or
//!    mid-extended-batch (no `Sync`) leaves no server connection in a bad state; a
//!    client that stops reading a large result holds the proxy's memory bounded
//!    (backpressure); accepted and server sockets carry TCP keepalive.

use crate::support::command::{OutputWithin, SHORT_RUN};
use std::time::{Duration, Instant};

use pgwarden::config::{AuthMethod, PoolMode};

use crate::load::{self, Outcomes, STEP};
use crate::support;
use crate::support::process::ProxyProcess;
use crate::support::proxy::{self, DATABASE, USER};
use crate::support::wire::{cstring, frame, Wire};

/// Polls until no backend of the proxy's user is inside a transaction or running
/// something; returns the states seen last.
async fn servers_settled(direct: &tokio_postgres::Client) -> Vec<String> {
    let started = Instant::now();
    loop {
        let rows = tokio::time::timeout(
            STEP,
            direct.query(
                "SELECT coalesce(state, '') FROM pg_stat_activity
                  WHERE usename = $1 AND backend_type = 'client backend'
                    AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgwarden %'",
                &[&USER],
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let states: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if states.iter().all(|s| s == "idle") || started.elapsed() > Duration::from_secs(10) {
            return states;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the next client (pool size 1: the same server connection, if it was kept)
/// sees: (rows left in the table, prepared statements, open portals, transaction
/// status after a query).
async fn next_client_sees(port: u16, errors: &mut Outcomes) -> (String, String, String, u8) {
    let mut wire = tokio::time::timeout(STEP, Wire::tcp(port, USER, DATABASE, &[]))
        .await
        .expect("the next client could not log in: the only server connection is stuck");
    let mut value = |answer: Vec<Vec<u8>>| {
        errors.add(support::wire::error_code(&answer).unwrap_or_else(|| "ok".into()));
        support::wire::first_value(&answer).unwrap_or_default()
    };
    let rows = value(wire.simple("SELECT count(*) FROM client_faults").await);
    let prepared = value(
        wire.simple("SELECT count(*) FROM pg_prepared_statements")
            .await,
    );
    let portals = value(wire.simple("SELECT count(*) FROM pg_cursors").await);
    let last = wire.simple("SELECT 1").await;
    let status = last.last().map(|z| z[5]).unwrap_or(0);
    value(last);
    (rows, prepared, portals, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_request_leaves_clean_servers() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE client_faults (n int)")
        .await
        .unwrap();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        vanish_mid_request(&cluster, &direct, mode).await;
    }
}

async fn vanish_mid_request(
    cluster: &pgwarden::cluster::LocalCluster,
    direct: &tokio_postgres::Client,
    mode: PoolMode,
) {
    let proxy = proxy::start(cluster, |c| {
        c.pool.size = 1;
        c.pool.mode = mode;
        c.auth.method = AuthMethod::Trust;
    })
    .await;
    let before = load::settled_connections(&proxy, direct).await;
    let mut outcomes = Outcomes::default();
    let mut errors = Outcomes::default();
    let mut queries = 0;
    for fault in [
        "mid-transaction",
        "mid-COPY FROM STDIN",
        "mid-extended-batch",
        "mid-result",
    ] {
        let mut wire = Wire::tcp(proxy.port(), USER, DATABASE, &[]).await;
        match fault {
            "mid-transaction" => {
                wire.simple("BEGIN").await;
                wire.simple("INSERT INTO client_faults VALUES (1)").await;
                queries += 2;
            }
            "mid-COPY FROM STDIN" => {
                wire.send_query("COPY client_faults FROM STDIN").await;
                let (tag, _) = wire.read_frame().await;
                assert_eq!(tag, b'G', "CopyInResponse");
                for n in 0..100 {
                    wire.send(&frame(b'd', format!("{n}\n").as_bytes())).await;
                }
                queries += 1;
            }
            "mid-result" => {
                // ~100 MB owed; the client reads a few rows and leaves.
                wire.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 100000)")
                    .await;
                for _ in 0..10 {
                    assert_ne!(wire.read_frame().await.0, b'E', "the query failed");
                }
                queries += 1;
            }
            _ => {
                let mut out = Vec::new();
                let mut parse = Vec::new();
                cstring(&mut parse, "leftover");
                cstring(&mut parse, "SELECT generate_series(1, 1000)");
                parse.extend_from_slice(&0i16.to_be_bytes());
                out.extend(frame(b'P', &parse));
                let mut bind = Vec::new();
                cstring(&mut bind, "portal");
                cstring(&mut bind, "leftover");
                bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                out.extend(frame(b'B', &bind));
                let mut execute = Vec::new();
                cstring(&mut execute, "portal");
                execute.extend_from_slice(&10i32.to_be_bytes());
                out.extend(frame(b'E', &execute));
                out.extend(frame(b'H', &[])); // Flush: the rows come, no Sync
                wire.send(&out).await;
                // ParseComplete, BindComplete, 10 DataRows, PortalSuspended.
                let mut seen = 0;
                while seen < 13 {
                    let (tag, _) = wire.read_frame().await;
                    assert_ne!(tag, b'E', "the batch failed");
                    seen += 1;
                }
                queries += 1;
            }
        }
        drop(wire); // the TCP socket closes under the request
        let states = servers_settled(direct).await;
        let (rows, prepared, portals, status) = next_client_sees(proxy.port(), &mut errors).await;
        queries += 4;
        println!(
            "client fault {fault} ({mode:?} pooling): server states afterwards {states:?}; the next client sees {rows} rows, {prepared} prepared statements, {portals} portals, transaction status {:?}",
            status as char
        );
        for (what, ok) in [
            ("server states", states.iter().all(|s| s == "idle")),
            ("rows", rows == "0"),
            ("prepared", prepared == "0"),
            ("portals", portals == "0"),
            ("status", status == b'I'),
        ] {
            outcomes.add(if ok {
                "ok".to_string()
            } else {
                format!("dirty {what}")
            });
        }
    }
    let after = load::settled_connections(&proxy, direct).await;
    println!(
        "client faults ({mode:?} pooling): faults injected: 4 disconnects (mid-transaction, mid-COPY, mid-batch, mid-result); queries run: {queries}; the next clients' answers by SQLSTATE {:?}; checks {:?}; server connections before: proxy {} pg_stat_activity {}; after: proxy {} pg_stat_activity {}",
        errors.0,
        outcomes.0, before.0, before.1, after.0, after.1
    );
    assert_eq!(outcomes.count("ok"), outcomes.total(), "{:?}", outcomes.0);
    assert_eq!(errors.count("ok"), errors.total(), "{:?}", errors.0);
    assert_eq!(after.0, after.1, "server connections disagree");
}

/// Keepalive timers of TCP sockets matching an `ss` filter, and what `ss` printed.
fn keepalive_timers(filter: &str) -> (Vec<String>, String) {
    let output = std::process::Command::new("ss")
        .args(["-tnoi", "state", "established", filter])
        .output_within(SHORT_RUN);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let timers = printed
        .split_whitespace()
        .filter(|w| w.starts_with("timer:(keepalive"))
        .map(str::to_string)
        .collect();
    (timers, printed)
}

/// The keepalive timers of sockets matching `filter`, asked until one shows or
/// [`STEP`] has passed. The kernel reports one timer per socket: while sent data
/// waits for its ACK the retransmission or loss-probe timer (`timer:(on,..)`) is
/// the one shown, so a socket that has just answered may show keepalive a moment
/// later.
async fn keepalive_timers_settled(filter: &str) -> (Vec<String>, String) {
    let deadline = Instant::now() + STEP;
    loop {
        let (timers, printed) = keepalive_timers(filter);
        if !timers.is_empty() || Instant::now() >= deadline {
            return (timers, printed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_and_server_sockets_have_tcp_keepalive() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.proxy.tcp_keepalive_idle_secs = 45;
        c.proxy.tcp_keepalive_interval_secs = 5;
        c.proxy.tcp_keepalive_count = 3;
    })
    .await;
    let client = proxy::connect(&proxy).await;
    let direct = proxy::connect_direct(&cluster).await;
    tokio::time::timeout(STEP, client.batch_execute("BEGIN; SELECT 1"))
        .await
        .unwrap()
        .unwrap();
    let server_port: i32 = tokio::time::timeout(
        STEP,
        direct.query_one(
            "SELECT client_port FROM pg_stat_activity WHERE usename = $1 AND state = 'idle in transaction'",
            &[&USER],
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .get(0);
    let (accepted, accepted_ss) =
        keepalive_timers_settled(&format!("( sport = :{} )", proxy.port())).await;
    let (server, server_ss) =
        keepalive_timers_settled(&format!("( sport = :{server_port} )")).await;
    println!("keepalive: accepted client sockets {accepted:?}; server socket {server:?}");
    assert!(
        !accepted.is_empty(),
        "no keepalive timer on the accepted socket; ss printed:\n{accepted_ss}"
    );
    assert!(
        !server.is_empty(),
        "no keepalive timer on the server socket; ss printed:\n{server_ss}"
    );
    // ss shows the time left to the first probe: at most the idle time set.
    for timer in accepted.iter().chain(&server) {
        let secs: u64 = timer
            .trim_start_matches("timer:(keepalive,")
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(secs <= 45, "{timer}: not proxy.tcp_keepalive_idle_secs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_result_holds_bounded_memory() {
    let cluster = support::cluster(0);
    let process = ProxyProcess::start(&cluster, "[auth]\nmethod = \"trust\"\n", &[]);
    let direct = proxy::connect_direct(&cluster).await;
    let before = load::settled_connections_at(process.port, &direct).await;
    let mut wire = Wire::tcp(process.port, USER, DATABASE, &[]).await;
    wire.simple("SELECT 1").await;
    let baseline = process.memory_kib("VmRSS");
    // ~100 MB of DataRows.
    wire.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 100000)")
        .await;
    let mut peak = baseline;
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        peak = peak.max(process.memory_kib("VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let (rows, error, status) = wire.count_rows().await;
    let read_in = started.elapsed();
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    let after = load::settled_connections_at(process.port, &direct).await;
    println!(
        "slow reader: faults injected: a client not reading a ~100 MB result for 4 s; queries run: 2; errors {error:?}; proxy VmRSS {} MiB before, peak {} MiB while the client did not read (+{grew_mib} MiB); then read {rows} rows in {read_in:?}, status {:?}; \
         server connections before: proxy {} pg_stat_activity {}; after: proxy {} pg_stat_activity {}",
        baseline / 1024,
        peak / 1024,
        status as char,
        before.0,
        before.1,
        after.0,
        after.1,
    );
    assert_eq!(error, None);
    assert_eq!(rows, 100_000);
    assert_eq!(after.0, after.1, "server connections disagree");
    assert!(
        grew_mib < 40,
        "the proxy buffered the result: +{grew_mib} MiB"
    );
}
