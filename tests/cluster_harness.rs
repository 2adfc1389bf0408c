//! The test harness itself: a primary and two streaming replicas start, replicate,
//! survive a replica restart, and leave nothing behind.

use crate::support;

use std::time::Duration;

#[test]
fn primary_and_replicas_replicate_and_clean_up() {
    let mut cluster = support::cluster(2);
    let (user, db) = (cluster.spec().user.clone(), cluster.spec().database.clone());
    let primary = cluster.primary();
    assert_eq!(
        primary
            .psql(&user, &db, "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    primary
        .psql(
            &user,
            &db,
            "CREATE TABLE h (v text); INSERT INTO h VALUES ('replicated')",
        )
        .unwrap();
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    for replica in cluster.replicas() {
        assert_eq!(
            replica
                .psql(&user, &db, "SELECT pg_is_in_recovery()")
                .unwrap(),
            "t"
        );
        assert_eq!(
            replica.psql(&user, &db, "SELECT v FROM h").unwrap(),
            "replicated"
        );
    }

    cluster.stop_replica(0).unwrap();
    assert!(cluster.replicas()[0].psql(&user, &db, "SELECT 1").is_err());
    cluster
        .primary()
        .psql(&user, &db, "INSERT INTO h VALUES ('while down')")
        .unwrap();
    cluster.start_replica(0).unwrap();
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        cluster.replicas()[0]
            .psql(&user, &db, "SELECT count(*) FROM h")
            .unwrap(),
        "2"
    );

    let data_dir = cluster.primary().data_dir.clone();
    let port = cluster.primary().port;
    drop(cluster);
    assert!(!data_dir.exists(), "temp dir removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
}

/// A test that outlives its deadline has its servers shut down, so a client call
/// waiting on one fails instead of hanging the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_past_its_deadline_ends_calls_waiting_on_it() {
    let cluster = support::cluster_with(pgwarden::cluster::ClusterSpec {
        deadline: Some(Duration::from_secs(2)),
        ..Default::default()
    });
    let client = support::proxy::connect_direct(&cluster).await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        client.simple_query("SELECT pg_sleep(60)"),
    )
    .await
    .expect("the call ended when the deadline shut the server down");
    assert!(answer.is_err(), "pg_sleep(60) cannot have finished");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The postmaster exits once its children are gone.
    let port = cluster.primary().port;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "server stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that outlives its limit is killed and fails its test, showing what
/// it printed: psql, pgbench and the driver scripts all run this way.
#[test]
fn a_child_process_past_its_limit_is_killed_and_fails_the_test() {
    use crate::support::command::OutputWithin;
    let started = std::time::Instant::now();
    let hung = std::panic::catch_unwind(|| {
        std::process::Command::new("sh")
            .args(["-c", "echo started; exec sleep 60"])
            .output_within(Duration::from_millis(300))
    });
    let message = hung.expect_err("a hung child must fail the test");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("hung: killed after"), "{message}");
    assert!(message.contains("started"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "not killed");
    let done = std::process::Command::new("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .output_within(Duration::from_secs(30));
    assert_eq!(done.status.code(), Some(3));
    assert_eq!(
        (&done.stdout[..], &done.stderr[..]),
        (&b"out\n"[..], &b"err\n"[..])
    );
}
