//! Reusing server connections through the warm stack in front of bb8
//! (`proxy/pool/warm_stack.rs`): a returned connection is parked for the next
//! checkout, yet no client ever waits in bb8 for a connection parked in front of it,
//! and the pool's limits (lifetime, idle reaping) still apply to parked connections.

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgwarden::config::Fairness;
use support::proxy::{self, USER};

const STEP: Duration = Duration::from_secs(5);

/// One server connection shared by eight busy clients: every return must reach the
/// next waiting checkout, whether it waits in the fair gate or inside bb8. A connection
/// parked while a checkout waits in bb8 (fairness off: no gate in front of bb8) would leave that client waiting until its
/// checkout timeout (here 3 s, so the test's 20 s budget fails first with errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_eight_busy_clients_without_stalls() {
    let cluster = support::cluster(0);
    for fairness in [Fairness::Tenant, Fairness::Off] {
        let proxy = proxy::start(&cluster, |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 3_000;
            c.pool.fairness = fairness;
        })
        .await;
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(proxy::connect(&proxy).await);
        }
        let started = Instant::now();
        let work = clients.iter().enumerate().map(|(i, client)| async move {
            for n in 0..200i32 {
                let row = client
                    .query_one("SELECT $1::int + 1", &[&(n + i as i32)])
                    .await
                    .map_err(|e| format!("client {i}, query {n}: {e}"))?;
                if row.get::<_, i32>(0) != n + i as i32 + 1 {
                    return Err(format!("client {i}, query {n}: wrong answer"));
                }
            }
            Ok::<(), String>(())
        });
        let results = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::future::join_all(work),
        )
        .await
        .expect("1,600 queries on one server connection within 20 s");
        for result in results {
            result.unwrap();
        }
        println!(
            "fairness {fairness:?}: 8 clients x 200 queries on one connection in {:?}",
            started.elapsed()
        );
        let direct = proxy::connect_direct(&cluster).await;
        let backends: i64 = tokio::time::timeout(
            STEP,
            direct.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                 AND application_name NOT LIKE 'pgwarden %'",
                &[&USER],
            ),
        )
        .await
        .expect("count backends within 5 s")
        .unwrap()
        .get(0);
        assert!(
            backends <= 1,
            "{backends} server connections for a pool of 1"
        );
    }
}

/// A connection kept busy (so it is always parked warm) is still retired after
/// `pool.max_lifetime_ms` (at least 1 s): the backend pid changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_still_retire_at_their_lifetime() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 1;
        c.pool.max_lifetime_ms = 1_000;
    })
    .await;
    let client = proxy::connect(&proxy).await;
    let mut pids = HashSet::new();
    let until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < until {
        let pid: i32 = tokio::time::timeout(STEP, client.query_one("SELECT pg_backend_pid()", &[]))
            .await
            .expect("SELECT within 5 s")
            .unwrap()
            .get(0);
        pids.insert(pid);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        pids.len() >= 3,
        "3.5 s of queries with a 1 s lifetime used only {} server connection(s)",
        pids.len()
    );
}

/// A backend terminated while its connection is parked warm is not handed to the
/// next client: that client's query runs on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_killed_behind_the_proxy_is_not_reused() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let client = proxy::connect(&proxy).await;
    let first: i32 = tokio::time::timeout(STEP, client.query_one("SELECT pg_backend_pid()", &[]))
        .await
        .expect("SELECT within 5 s")
        .unwrap()
        .get(0);
    let direct = proxy::connect_direct(&cluster).await;
    let killed: bool = tokio::time::timeout(
        STEP,
        direct.query_one("SELECT pg_terminate_backend($1, 5000)", &[&first]),
    )
    .await
    .expect("pg_terminate_backend within 5 s")
    .unwrap()
    .get(0);
    assert!(killed);
    // Straight away, well inside the warm stack's one-second limit.
    let second = tokio::time::timeout(STEP, client.query_one("SELECT pg_backend_pid()", &[]))
        .await
        .expect("SELECT within 5 s")
        .map(|row| row.get::<_, i32>(0));
    match second {
        Ok(pid) => assert_ne!(pid, first, "the terminated backend was reused"),
        Err(e) => panic!("the next query failed instead of using a fresh connection: {e}"),
    }
}
