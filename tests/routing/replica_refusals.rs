//! Reads a hot standby refuses while the primary runs them (SQLSTATE 0A000): the proxy
//! retries them on the primary before the client sees anything, learns why, and sends
//! the next such reads to the primary first; the replica stays in rotation for
//! everybody else.
//! - A role whose transactions are serializable by `ALTER ROLE ... SET
//!   default_transaction_isolation` (invisible in the protocol): "cannot use
//!   serializable mode in a hot standby". Learned by role.
//! - An unlogged table: "cannot access temporary or unlogged relations during
//!   recovery". Learned by statement shape.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgwarden::cluster::LocalCluster;
use pgwarden::route::BackendState;

use super::{port_of, wait_replicas_healthy, with_replicas};
use crate::support;
use support::proxy::{self, DATABASE};
use support::wire::{error_code, first_value, Wire};
use support::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_serializable_by_alter_role_reads_from_the_primary() {
    let cluster = replicated_cluster(
        "CREATE ROLE careful LOGIN PASSWORD 'careful-secret';
         ALTER ROLE careful SET default_transaction_isolation = 'serializable';
         CREATE ROLE eager LOGIN PASSWORD 'eager-secret';
         ALTER ROLE eager SET default_transaction_isolation = 'serializable';
         CREATE ROLE early LOGIN PASSWORD 'early-secret';
         ALTER ROLE early SET default_transaction_isolation = 'serializable';
         CREATE TABLE ledger(id int PRIMARY KEY, amount int);
         INSERT INTO ledger VALUES (1, 10), (2, 20);
         GRANT SELECT ON ledger TO careful, eager, early",
    )
    .await;
    let primary = i32::from(cluster.primary().port);
    let replica = i32::from(cluster.replicas()[0].port);
    let proxy = proxy::start(&cluster, |c| {
        with_replicas(&cluster)(c);
        for name in ["careful", "eager", "early"] {
            c.auth.users.push(pgwarden::config::UserConfig {
                name: name.into(),
                password: Some(format!("{name}-secret")),
                server_password: None,
            });
        }
    })
    .await;
    wait_replicas_healthy(&proxy).await;
    let url = format!(
        "postgres://careful:careful-secret@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );

    let topology = proxy.runtime.routing().topology(DATABASE).unwrap();
    let replica_state = &topology.replicas()[0];
    let routed = || replica_state.routed.load(Ordering::Relaxed);

    // The very first read through a replica makes the proxy ask it a question of its
    // own (the database's session-safe functions): as `early`, the replica refuses
    // that question, and the role is learned from it.
    let early_url = format!(
        "postgres://early:early-secret@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );
    let early = within("connect", proxy::connect_url(&early_url))
        .await
        .unwrap();
    assert_eq!(
        within("early read", port_of(&early, "SELECT inet_server_port()")).await,
        primary
    );
    assert!(
        topology.serializable_roles.contains("early"),
        "the refusal of the proxy's own question was not learned"
    );
    // Another role's read loads that question's answer through the replica.
    let other = proxy::connect(&proxy).await;
    assert_eq!(
        within(
            "another role's read",
            port_of(&other, "SELECT inet_server_port()")
        )
        .await,
        replica
    );

    // The first read meets the replica's refusal; the client sees only the answer.
    let first = within("connect", proxy::connect_url(&url)).await.unwrap();
    let routed_before = routed();
    assert_eq!(
        within("first read", port_of(&first, "SELECT inet_server_port()")).await,
        primary
    );
    assert_eq!(
        routed(),
        routed_before + 1,
        "the first read went to the replica"
    );
    let sum: i64 = within(
        "extended read",
        first.query_one(
            "SELECT sum(amount) FROM ledger WHERE id = ANY($1)",
            &[&vec![1i32, 2]],
        ),
    )
    .await
    .expect("extended read")
    .get(0);
    assert_eq!(sum, 30);
    let isolation = within(
        "isolation",
        first.query_one("SHOW transaction_isolation", &[]),
    )
    .await
    .unwrap()
    .get::<_, String>(0);
    assert_eq!(
        isolation, "serializable",
        "the role's default still applies"
    );
    assert_eq!(
        routed(),
        routed_before + 1,
        "a read of the learned session went to the replica"
    );

    // The same when the first read is in the extended protocol (a prepared statement:
    // the replica refuses its `Parse`).
    let eager_url = format!(
        "postgres://eager:eager-secret@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );
    let eager = within("connect", proxy::connect_url(&eager_url))
        .await
        .unwrap();
    let row = within(
        "first extended read",
        eager.query_one(
            "SELECT sum(amount), inet_server_port() FROM ledger WHERE id = ANY($1)",
            &[&vec![1i32, 2]],
        ),
    )
    .await
    .expect("first extended read");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (30, primary));

    // A later session of the role starts on the primary, in both protocols and in a
    // read-only transaction: the role was learned, no read of it is sent to the
    // replica again.
    let routed_before = routed();
    let second = within("connect", proxy::connect_url(&url)).await.unwrap();
    for _ in 0..3 {
        let port: i32 = within(
            "extended read",
            second.query_one("SELECT inet_server_port()", &[]),
        )
        .await
        .unwrap()
        .get(0);
        assert_eq!(port, primary);
    }
    within("begin", second.batch_execute("BEGIN READ ONLY"))
        .await
        .unwrap();
    assert_eq!(
        within(
            "read in a transaction",
            port_of(&second, "SELECT inet_server_port()")
        )
        .await,
        primary
    );
    within("commit", second.batch_execute("COMMIT"))
        .await
        .unwrap();
    assert_eq!(
        routed(),
        routed_before,
        "a read of the learned role went to the replica"
    );

    // Once the session sets its own isolation, its reads may use the replica again.
    within(
        "set",
        second.batch_execute("SET default_transaction_isolation = 'read committed'"),
    )
    .await
    .unwrap();
    assert_eq!(
        within(
            "read after SET",
            port_of(&second, "SELECT inet_server_port()")
        )
        .await,
        replica
    );

    // The refusal was no fault of the replica: it stays healthy, and serves others.
    assert_unharmed(replica_state);
    assert_eq!(
        within(
            "another role's read",
            port_of(&other, "SELECT inet_server_port()")
        )
        .await,
        replica
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlogged_table_is_read_from_the_primary() {
    let cluster = replicated_cluster(
        "CREATE UNLOGGED TABLE sessions(id int PRIMARY KEY, data text);
         INSERT INTO sessions SELECT i, 'session ' || i FROM generate_series(1, 5) i;
         CREATE TABLE accounts(id int PRIMARY KEY);
         INSERT INTO accounts VALUES (1), (2)",
    )
    .await;
    let primary = i32::from(cluster.primary().port);
    let replica = i32::from(cluster.replicas()[0].port);
    let proxy = proxy::start(&cluster, |c| {
        with_replicas(&cluster)(c);
        c.auth.method = pgwarden::config::AuthMethod::Trust; // for the raw wire client
    })
    .await;
    wait_replicas_healthy(&proxy).await;
    let topology = proxy.runtime.routing().topology(DATABASE).unwrap();
    let replica_state = &topology.replicas()[0];
    let routed = || replica_state.routed.load(Ordering::Relaxed);
    let refusals_at_start = unlogged_refusals(&proxy).await;
    let client = proxy::connect(&proxy).await;
    // A read of another table loads the proxy's own first question on the replica.
    assert_eq!(
        within(
            "a logged table",
            port_of(&client, "SELECT inet_server_port() FROM accounts LIMIT 1")
        )
        .await,
        replica
    );

    // Simple protocol: the replica refuses, the primary answers, the client sees the
    // rows only.
    let before = routed();
    let rows = within(
        "simple read",
        client.simple_query("SELECT data, inet_server_port() FROM sessions WHERE id = 3"),
    )
    .await
    .expect("simple read of an unlogged table");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(
        (row.get(0), row.get(1)),
        (Some("session 3"), Some(primary.to_string().as_str()))
    );
    assert_eq!(
        routed(),
        before + 1,
        "the first read was tried on the replica"
    );
    // The same shape with another literal goes to the primary first.
    let before = routed();
    let rows = within(
        "learned shape",
        client.simple_query("SELECT data, inet_server_port() FROM sessions WHERE id = 4"),
    )
    .await
    .unwrap();
    let port = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
        _ => None,
    });
    assert_eq!(port, Some(primary.to_string()));
    assert_eq!(routed(), before, "a learned shape went to the replica");

    // Extended protocol, a prepared statement: refused when it is planned, after the
    // replica's `ParseComplete`; then learned by its text.
    let statement = within(
        "prepare",
        client.prepare("SELECT data, inet_server_port() FROM sessions WHERE id = $1"),
    )
    .await
    .unwrap();
    for id in 1..=3i32 {
        let row = within("extended read", client.query_one(&statement, &[&id]))
            .await
            .unwrap_or_else(|e| panic!("extended read {id}: {e}"));
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, i32>(1)),
            (format!("session {id}"), primary)
        );
    }
    let after_learning = routed();
    for id in 4..=5i32 {
        let row = within("extended read", client.query_one(&statement, &[&id]))
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(1), primary);
    }
    assert_eq!(
        routed(),
        after_learning,
        "a learned shape went to the replica"
    );

    // Extended protocol, the unnamed statement, as most drivers send it (`Parse`,
    // `Bind`, `Describe`, `Execute`, `Sync` in one write): the replica answers
    // `ParseComplete`, then refuses at `Bind`.
    let mut wire = within(
        "raw login",
        Wire::tcp(proxy.port(), support::proxy::USER, DATABASE, &[]),
    )
    .await;
    let before = routed();
    let answer = within(
        "unnamed extended read",
        wire.extended(
            "",
            Some("SELECT inet_server_port(), data FROM sessions WHERE id > $1 ORDER BY id LIMIT 1"),
            &[Some(b"1")],
            false,
            0,
        ),
    )
    .await;
    assert_eq!(error_code(&answer), None, "{answer:?}");
    let tags: Vec<u8> = answer.iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"12TDCZ", "the client saw one answer, the primary's");
    assert_eq!(first_value(&answer), Some(primary.to_string()));
    assert_eq!(
        routed(),
        before + 1,
        "the unnamed read was tried on the replica"
    );

    // Another 0A000 is no standby refusal: not retried, the client gets it as sent.
    let error = within(
        "refused everywhere",
        client.simple_query("SELECT * FROM accounts a FULL JOIN accounts b ON a.id > b.id"),
    )
    .await
    .expect_err("FULL JOIN on a non-equality condition");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{error}"
    );
    assert_eq!(
        within(
            "a logged table",
            port_of(&client, "SELECT inet_server_port() FROM accounts LIMIT 1")
        )
        .await,
        replica
    );

    // Operators see the refusals: the simple, the prepared and the unnamed read, not
    // the FULL JOIN. (The counter is the process's, but no other test reads an
    // unlogged table.)
    let refusals = unlogged_refusals(&proxy).await - refusals_at_start;
    assert_eq!(refusals, 3, "refusals counted");

    // No refusal counted as a fault of the replica.
    assert_unharmed(replica_state);
}

/// `pgwarden_replica_refusals_total{cause="unlogged"}` from `/metrics` (0 before the
/// first).
async fn unlogged_refusals(proxy: &pgwarden::RunningProxy) -> u64 {
    let (_, metrics) = within(
        "metrics",
        support::http::get(proxy.http_address, "/metrics", None),
    )
    .await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgwarden_replica_refusals_total{cause=\"unlogged\"} "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// A primary and one replica that has replayed `setup` (run on the primary).
async fn replicated_cluster(setup: &str) -> LocalCluster {
    let cluster = support::cluster(1);
    let direct = proxy::connect_direct(&cluster).await;
    within("setup", direct.batch_execute(setup)).await.unwrap();
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .expect("the replica replays the setup");
    cluster
}

/// A refusal is no fault of the replica: it stays healthy, with no error counted.
fn assert_unharmed(replica: &BackendState) {
    assert!(replica.healthy.load(Ordering::Relaxed));
    assert_eq!(
        replica.errors.load(Ordering::Relaxed),
        0,
        "a refusal counted as a replica error"
    );
}
