//! Read-your-writes under real replication lag (replay paused on both replicas): no
//! stale read on the writing connection, through named and unnamed statements, or
//! across connections that share a session key; sessions without writes, and
//! transactions that only read, keep reading from the replicas.

use std::time::Duration;

use super::{pause_replay, port_of, wait_replicas_healthy, with_replicas};
use crate::support::{self, proxy, within};
use pgwarden::config::RywScope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_under_lag_from_one_and_two_connections() {
    let cluster = support::cluster(2);
    let primary = i32::from(cluster.primary().port);
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(&direct, "CREATE TABLE kv (k int primary key, owner text)").await;
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let proxy = proxy::start(&cluster, |c| {
        with_replicas(&cluster)(c);
        c.ryw.scope = RywScope::SessionKey;
        // Replay stays paused for the whole test, which takes longer than the default
        // lag limit (10 s) on a busy machine; past it, every read rightly goes to the
        // primary and the bystander check below would see that instead.
        c.routing.max_lag_ms = 600_000;
    })
    .await;
    wait_replicas_healthy(&proxy).await;

    // Replication lag made real: replay paused on both replicas.
    pause_replay(&cluster).await;
    let writer = proxy::connect(&proxy).await;
    let key_url = format!(
        "{}?options=-c%20pgwarden.session_key%3Duser-7",
        proxy::url(&proxy)
    );
    let shared_writer = proxy::connect_url(&key_url).await.unwrap();
    let shared_reader = proxy::connect_url(&key_url).await.unwrap();
    let bystander = proxy::connect(&proxy).await;
    let insert = within(
        "prepare INSERT INTO kv VALUES ($1, $2)",
        writer.prepare("INSERT INTO kv VALUES ($1, $2)"),
    )
    .await
    .unwrap();
    let read = within(
        "prepare SELECT count(*), max(inet_server_port()) FROM k...",
        writer.prepare("SELECT count(*), max(inet_server_port()) FROM kv WHERE k = $1"),
    )
    .await
    .unwrap();
    let mut stale = 0;
    for i in 0..1000i32 {
        within(
            "execute &insert",
            writer.execute(&insert, &[&i, &"one-connection"]),
        )
        .await
        .unwrap();
        let row = within("query_one &read", writer.query_one(&read, &[&i]))
            .await
            .unwrap();
        if row.get::<_, i64>(0) != 1 {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads on the writing connection");

    // The same through unnamed statements (a Parse without a name before every
    // execution, as most drivers send), with an unnamed read on the primary between
    // the write and the read: the write's Bind still counts as a write.
    let unnamed_writer = proxy::connect(&proxy).await;
    for i in 3000..3200i32 {
        within(
            "query_typed INSERT INTO kv VALUES ($1, 'unnamed')",
            unnamed_writer.query_typed(
                "INSERT INTO kv VALUES ($1, 'unnamed')",
                &[(&i, tokio_postgres::types::Type::INT4)],
            ),
        )
        .await
        .unwrap();
        within(
            "query_typed /* pgwarden:primary */ SELECT 1",
            unnamed_writer.query_typed("/* pgwarden:primary */ SELECT 1", &[]),
        )
        .await
        .unwrap();
        let n: i64 = within(
            "query_typed_one SELECT count(*) FROM kv WHERE k = $1",
            unnamed_writer.query_typed_one(
                "SELECT count(*) FROM kv WHERE k = $1",
                &[(&i, tokio_postgres::types::Type::INT4)],
            ),
        )
        .await
        .unwrap()
        .get(0);
        if n != 1 {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads through unnamed statements");

    let shared_read = within(
        "prepare SELECT count(*) FROM kv WHERE k = $1",
        shared_reader.prepare("SELECT count(*) FROM kv WHERE k = $1"),
    )
    .await
    .unwrap();
    for i in 1000..2000i32 {
        within(
            "execute INSERT INTO kv VALUES ($1, 'shared')",
            shared_writer.execute("INSERT INTO kv VALUES ($1, 'shared')", &[&i]),
        )
        .await
        .unwrap();
        let n: i64 = within(
            "query_one &shared_read",
            shared_reader.query_one(&shared_read, &[&i]),
        )
        .await
        .unwrap()
        .get(0);
        if n != 1 {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "stale reads across connections sharing a session key"
    );

    // A write inside an explicit transaction (and a savepoint) is still a write: the
    // COMMIT that follows does not hide it.
    for (i, script) in [
        (4000, "BEGIN; INSERT INTO kv VALUES (4000, 'txn'); COMMIT"),
        (
            4001,
            "BEGIN; SAVEPOINT a; INSERT INTO kv VALUES (4001, 'txn'); RELEASE a; COMMIT",
        ),
    ] {
        for statement in script.split("; ") {
            support::execute(&writer, statement).await;
        }
        let row = within("query_one &read", writer.query_one(&read, &[&i]))
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "stale read after: {script}");
    }

    // Transactions on the primary that only read leave no read-your-writes position:
    // BEGIN, COMMIT, SAVEPOINT, RELEASE and ROLLBACK write nothing, nor do SET, RESET
    // and DISCARD. Were they counted
    // as writes, the next read would wait for the paused replicas, then go to the
    // primary.
    let mut reads_in_transactions = proxy::connect(&proxy).await;
    for statement in [
        "BEGIN",
        "SELECT count(*) FROM kv",
        "SAVEPOINT s",
        "SELECT 1",
        "RELEASE SAVEPOINT s",
        "COMMIT",
        "BEGIN",
        "SELECT 1",
        "ROLLBACK",
        "SET work_mem = '8MB'",
        "RESET work_mem",
        "DISCARD SEQUENCES",
    ] {
        within(
            "batch_execute statement",
            reads_in_transactions.batch_execute(statement),
        )
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    within(
        "batch_execute BEGIN; SELECT count(*) FROM kv; SAVEPOINT s; SE...",
        reads_in_transactions
            .batch_execute("BEGIN; SELECT count(*) FROM kv; SAVEPOINT s; SELECT 1; COMMIT"),
    )
    .await
    .unwrap();
    let mut transaction = within("transaction", reads_in_transactions.transaction())
        .await
        .unwrap();
    // A savepoint (tokio-postgres sends it as a simple query), and reads in the
    // extended protocol, named and unnamed.
    let nested = within("transaction", transaction.transaction())
        .await
        .unwrap();
    within(
        "query SELECT count(*) FROM kv",
        nested.query("SELECT count(*) FROM kv", &[]),
    )
    .await
    .unwrap();
    within("commit", nested.commit()).await.unwrap();
    within(
        "query_typed SELECT count(*) FROM kv",
        transaction.query_typed("SELECT count(*) FROM kv", &[]),
    )
    .await
    .unwrap();
    within("commit", transaction.commit()).await.unwrap();
    // The same through named prepared statements (as drivers that prepare BEGIN and
    // COMMIT after a few uses send them).
    let begin = within("prepare BEGIN", reads_in_transactions.prepare("BEGIN"))
        .await
        .unwrap();
    let commit = within("prepare COMMIT", reads_in_transactions.prepare("COMMIT"))
        .await
        .unwrap();
    for _ in 0..3 {
        within("execute &begin", reads_in_transactions.execute(&begin, &[]))
            .await
            .unwrap();
        within(
            "query SELECT count(*) FROM kv",
            reads_in_transactions.query("SELECT count(*) FROM kv", &[]),
        )
        .await
        .unwrap();
        within(
            "execute &commit",
            reads_in_transactions.execute(&commit, &[]),
        )
        .await
        .unwrap();
    }
    for _ in 0..5 {
        let port = port_of(&reads_in_transactions, "SELECT inet_server_port()").await;
        assert_ne!(port, primary, "a read-only transaction counted as a write");
    }

    // Sessions without writes still read from the (lagging) replicas.
    for _ in 0..10 {
        let port = port_of(&bystander, "SELECT inet_server_port()").await;
        assert_ne!(port, primary, "a session without writes must use replicas");
    }
    let lagging: i64 = within(
        "query_one SELECT count(*) FROM kv",
        bystander.query_one("SELECT count(*) FROM kv", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert!(
        lagging < 2000,
        "the bystander sees the replicas' (paused) state"
    );
}
