//! A role whose transactions are serializable by `ALTER ROLE ... SET
//! default_transaction_isolation` (invisible in the protocol): a hot standby refuses
//! its reads (SQLSTATE 0A000, "cannot use serializable mode in a hot standby"). The
//! proxy retries such a read on the primary before the client sees anything, learns
//! the role, and sends its later sessions' reads to the primary; the replica stays in
//! rotation for everybody else.

use std::time::Duration;

use super::{port_of, wait_replicas_healthy, with_replicas};
use crate::support;
use support::proxy::{self, DATABASE};
use support::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_serializable_by_alter_role_reads_from_the_primary() {
    let cluster = support::cluster(1);
    let primary = i32::from(cluster.primary().port);
    let replica = i32::from(cluster.replicas()[0].port);
    let direct = proxy::connect_direct(&cluster).await;
    within(
        "create the role",
        direct.batch_execute(
            "CREATE ROLE careful LOGIN PASSWORD 'careful-secret';
             ALTER ROLE careful SET default_transaction_isolation = 'serializable';
             CREATE ROLE eager LOGIN PASSWORD 'eager-secret';
             ALTER ROLE eager SET default_transaction_isolation = 'serializable';
             CREATE ROLE early LOGIN PASSWORD 'early-secret';
             ALTER ROLE early SET default_transaction_isolation = 'serializable';
             CREATE TABLE ledger(id int PRIMARY KEY, amount int);
             INSERT INTO ledger VALUES (1, 10), (2, 20);
             GRANT SELECT ON ledger TO careful, eager, early",
        ),
    )
    .await
    .unwrap();
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .expect("the replica replays the role");
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
    let routed = || {
        replica_state
            .routed
            .load(std::sync::atomic::Ordering::Relaxed)
    };

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
    assert!(replica_state
        .healthy
        .load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(
        replica_state
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a refusal counted as a replica error"
    );
    assert_eq!(
        within(
            "another role's read",
            port_of(&other, "SELECT inet_server_port()")
        )
        .await,
        replica
    );
}
