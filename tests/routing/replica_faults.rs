//! A replica that stops while reads flow: under pgbench load no client sees an error,
//! and a read that was running on it when it stopped runs again elsewhere.

use crate::support::command::{OutputWithin, LONG_RUN, SHORT_RUN};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{wait_replicas_healthy, with_replicas};
use crate::support::proxy::{DATABASE, PASSWORD, USER};
use crate::support::{self, proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_load_costs_no_client_errors() {
    let mut cluster = support::cluster(2);
    let init = Command::new(support::pgbench_path())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.primary().port.to_string(),
            "-U",
            USER,
        ])
        .args(["-i", "-s", "1", "-q", DATABASE])
        .env("PGPASSWORD", PASSWORD)
        .output_within(SHORT_RUN);
    assert!(init.status.success(), "{init:?}");
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let proxy = proxy::start(&cluster, with_replicas(&cluster)).await;
    wait_replicas_healthy(&proxy).await;
    let topology = proxy.runtime.routing().topology(DATABASE).unwrap();
    let port = proxy.port();
    let bench = std::thread::spawn(move || {
        Command::new(support::pgbench_path())
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
            .args([
                "-S",
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "8",
                "--no-vacuum",
                DATABASE,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output_within(LONG_RUN)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| cluster.stop_replica(0).unwrap());
    let replica = &topology.replicas()[0];
    while replica.healthy.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            stopped_at.elapsed() < Duration::from_secs(2),
            "not taken out within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.start_replica(0).unwrap());
    let restarted = Instant::now();
    while !replica.healthy.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "never put back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = tokio::task::block_in_place(|| bench.join().unwrap());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    assert!(!stderr.contains("error"), "client errors: {stderr}");
    let routed: u64 = topology
        .replicas()
        .iter()
        .map(|r| r.routed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(routed > 100, "reads went to replicas: {routed}");
}

/// A replica stopped while it runs a read has already buffered the `RowDescription`
/// when it sends its FATAL: both arrive together, nothing has reached the client, and
/// the read must still be run elsewhere instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_in_the_middle_of_a_read_runs_it_elsewhere() {
    const READ: &str = "SELECT count(*) FROM generate_series(1, 15000000)";
    let mut cluster = support::cluster(1);
    let proxy = proxy::start(&cluster, with_replicas(&cluster)).await;
    wait_replicas_healthy(&proxy).await;
    let replica = tokio::time::timeout(
        Duration::from_secs(10),
        proxy::connect_url(&cluster.url_for(&cluster.replicas()[0])),
    )
    .await
    .expect("replica connect timed out")
    .expect("replica connect");
    let client = proxy::connect(&proxy).await;
    let read = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(60), client.simple_query(READ)).await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = tokio::time::timeout(
            Duration::from_secs(5),
            replica.query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%generate_series(1, 15000000)%' \
                 AND pid <> pg_backend_pid()",
                &[],
            ),
        )
        .await
        .expect("pg_stat_activity timed out")
        .expect("pg_stat_activity");
        if running.get::<_, i64>(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read never ran on the replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| cluster.stop_replica(0).unwrap());
    let answer = read
        .await
        .unwrap()
        .expect("the read hung")
        .expect("the read failed instead of running elsewhere");
    let count = answer.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("15000000"));
}
