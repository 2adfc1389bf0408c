//! The test harness itself: a primary and two streaming replicas start, replicate,
//! survive a replica restart, and leave nothing behind.

mod support;

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
