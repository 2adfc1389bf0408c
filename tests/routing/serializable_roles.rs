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
             CREATE TABLE ledger(id int PRIMARY KEY, amount int);
             INSERT INTO ledger VALUES (1, 10), (2, 20);
             GRANT SELECT ON ledger TO careful",
        ),
    )
    .await
    .unwrap();
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .expect("the replica replays the role");
    let proxy = proxy::start(&cluster, |c| {
        with_replicas(&cluster)(c);
        c.auth.users.push(pgwarden::config::UserConfig {
            name: "careful".into(),
            password: Some("careful-secret".into()),
            server_password: None,
        });
    })
    .await;
    wait_replicas_healthy(&proxy).await;
    let url = format!(
        "postgres://careful:careful-secret@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );

    // The first read meets the replica's refusal; the client sees only the answer.
    let first = within("connect", proxy::connect_url(&url)).await.unwrap();
    assert_eq!(
        within("first read", port_of(&first, "SELECT inet_server_port()")).await,
        primary
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

    // A later session of the role starts on the primary, in both protocols and in a
    // read-only transaction: the role was learned, no read of it is sent to the
    // replica again.
    let topology = proxy.runtime.routing().topology(DATABASE).unwrap();
    let replica_state = &topology.replicas()[0];
    let routed = || {
        replica_state
            .routed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
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
    let other = proxy::connect(&proxy).await;
    assert_eq!(
        within(
            "another role's read",
            port_of(&other, "SELECT inet_server_port()")
        )
        .await,
        replica
    );
}
