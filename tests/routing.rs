//! Read/write routing against a primary and two streaming replicas: where each kind of
//! statement runs, hints, read-your-writes positions shared between instances and
//! across roles. Read-your-writes under paused replay is in `routing/read_your_writes.rs`,
//! a replica stopped under load in `routing/replica_faults.rs`, reads a hot standby
//! refuses (a role serializable by `ALTER ROLE`, an unlogged table) in
//! `routing/replica_refusals.rs`, a session's replica pools after the pools are rebuilt
//! in `routing/replica_pools.rs`, `SET pgwarden.route` inside transactions and
//! pipelines in `routing/proxy_settings.rs`.

use crate::support;
use support::within;

#[path = "routing/proxy_settings.rs"]
mod proxy_settings;
#[path = "routing/read_your_writes.rs"]
mod read_your_writes;
#[path = "routing/replica_faults.rs"]
mod replica_faults;
#[path = "routing/replica_pools.rs"]
mod replica_pools;
#[path = "routing/replica_refusals.rs"]
mod replica_refusals;

use std::time::{Duration, Instant};

use pgwarden::cluster::LocalCluster;
use pgwarden::config::{Config, RywScope};
use pgwarden::RunningProxy;
use support::proxy::{self, DATABASE, USER};

fn with_replicas(cluster: &LocalCluster) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        let db = c.databases.get_mut(DATABASE).unwrap();
        db.replicas = cluster.replica_urls();
        c.routing.lag_poll_ms = 20;
    }
}

/// Waits until the lag monitor has seen every replica.
async fn wait_replicas_healthy(proxy: &RunningProxy) {
    let topology = proxy
        .runtime
        .routing()
        .topology(DATABASE)
        .expect("routing on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topology
        .replicas()
        .iter()
        .all(|r| r.healthy.load(std::sync::atomic::Ordering::Relaxed))
    {
        assert!(Instant::now() < deadline, "replicas never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn port_of(client: &tokio_postgres::Client, sql: &str) -> i32 {
    let rows = within("simple_query sql", client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_kind_lands_where_it_must() {
    let cluster = support::cluster(2);
    let primary = i32::from(cluster.primary().port);
    let replicas: Vec<i32> = cluster
        .replicas()
        .iter()
        .map(|r| i32::from(r.port))
        .collect();
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(
        &direct,
        "CREATE TABLE t (id int primary key, v int);
             INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
             CREATE SEQUENCE s;",
    )
    .await;
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let proxy = proxy::start(&cluster, with_replicas(&cluster)).await;
    wait_replicas_healthy(&proxy).await;
    let client = proxy::connect(&proxy).await;

    #[derive(Debug, PartialEq)]
    enum Lands {
        Primary,
        Replica,
    }
    use Lands::*;
    // Each statement's first column is inet_server_port() of the server that ran it.
    let cases: &[(&str, Lands)] = &[
        ("SELECT inet_server_port()", Replica),
        ("SELECT inet_server_port() FROM t WHERE id = 3", Replica),
        ("SELECT inet_server_port() FROM t JOIN t u ON u.id = t.id LIMIT 1", Replica),
        ("WITH x AS (SELECT 1) SELECT inet_server_port() FROM x", Replica),
        ("SELECT inet_server_port() UNION ALL SELECT 1 LIMIT 1", Replica),
        ("SELECT inet_server_port(), count(*), max(v) FROM t", Replica),
        ("SELECT inet_server_port() FROM t FOR UPDATE LIMIT 1", Primary),
        ("SELECT inet_server_port() FROM t FOR SHARE LIMIT 1", Primary),
        ("SELECT inet_server_port() FROM t FOR NO KEY UPDATE LIMIT 1", Primary),
        ("SELECT inet_server_port(), nextval('s')", Primary),
        ("SELECT inet_server_port(), setval('s', 5)", Primary),
        ("SELECT inet_server_port(), pg_advisory_xact_lock(7)", Primary),
        ("SELECT inet_server_port(), md5(random()::text), upper('x')", Replica),
        ("SELECT inet_server_port(), my_unknown_function()", Primary),
        ("WITH d AS (DELETE FROM t WHERE id = 10 RETURNING id) SELECT inet_server_port() FROM (SELECT 1) x", Primary),
        ("WITH u AS (UPDATE t SET v = v WHERE id = 1 RETURNING id) SELECT inet_server_port()", Primary),
        ("INSERT INTO t SELECT max(id) + 1, 1 FROM t RETURNING inet_server_port()", Primary),
        ("UPDATE t SET v = 2 WHERE id = 2 RETURNING inet_server_port()", Primary),
        ("/* pgwarden:primary */ SELECT inet_server_port()", Primary),
        ("SELECT inet_server_port() -- pgwarden:primary", Primary),
    ];
    support::execute(
        &direct,
        "CREATE FUNCTION my_unknown_function() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    .await;
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    // Reads are checked on a connection that never writes: after a write, a
    // connection's reads stay on the primary until a replica has replayed it.
    let reader = proxy::connect(&proxy).await;
    for (sql, expected) in cases {
        let session = if *expected == Replica {
            &reader
        } else {
            &client
        };
        for _ in 0..3 {
            let port = port_of(session, sql).await;
            let landed = if port == primary {
                Primary
            } else {
                assert!(replicas.contains(&port), "{sql}: unknown port {port}");
                Replica
            };
            assert_eq!(&landed, expected, "{sql}");
        }
    }

    // SELECT INTO and multi-statement strings with a write must not fail on a replica.
    support::execute(&client, "SELECT * INTO TEMP copied FROM t").await;
    support::execute(&client, "SELECT 1; INSERT INTO t VALUES (200, 1)").await;

    // Transactions: plain BEGIN on the primary, READ ONLY on a replica.
    support::execute(&client, "BEGIN").await;
    assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
    support::execute(&client, "COMMIT").await;
    support::execute(&reader, "BEGIN READ ONLY").await;
    assert!(replicas.contains(&port_of(&reader, "SELECT inet_server_port()").await));
    support::execute(&reader, "COMMIT").await;
    // The same transaction sent as one string.
    assert!(replicas.contains(
        &port_of(
            &reader,
            "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT"
        )
        .await
    ));
    // A prepared `BEGIN READ ONLY`: executed again, it is a `Bind` of a named
    // statement without its text, and still starts the transaction on a replica.
    let begin_read_only = within("prepare BEGIN READ ONLY", reader.prepare("BEGIN READ ONLY"))
        .await
        .unwrap();
    for run in 0..3 {
        within(
            "execute &begin_read_only",
            reader.execute(&begin_read_only, &[]),
        )
        .await
        .unwrap();
        let port = port_of(&reader, "SELECT inet_server_port()").await;
        assert!(
            replicas.contains(&port),
            "prepared BEGIN READ ONLY, run {run}: on port {port}"
        );
        support::execute(&reader, "COMMIT").await;
    }

    // Serializable transactions stay on the primary: a hot standby refuses them
    // ("cannot use serializable mode in a hot standby"), so on a replica the read
    // below would fail.
    support::execute(&reader, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY").await;
    assert_eq!(port_of(&reader, "SELECT inet_server_port()").await, primary);
    support::execute(&reader, "COMMIT").await;
    for set in [
        "SET default_transaction_isolation = serializable",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        support::execute(&reader, set).await;
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            primary,
            "{set}"
        );
        let port: i32 = within(
            "query_one SELECT inet_server_port()",
            reader.query_one("SELECT inet_server_port()", &[]),
        )
        .await
        .unwrap_or_else(|e| panic!("{set}, extended: {e}"))
        .get(0);
        assert_eq!(port, primary, "{set}, extended");
        support::execute(&reader, "BEGIN READ ONLY").await;
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            primary,
            "{set}"
        );
        support::execute(&reader, "COMMIT").await;
        within(
            "execute &begin_read_only",
            reader.execute(&begin_read_only, &[]),
        )
        .await
        .unwrap();
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            primary,
            "{set}, prepared BEGIN READ ONLY"
        );
        support::execute(&reader, "COMMIT").await;
        support::execute(&reader, "RESET default_transaction_isolation").await;
        assert!(replicas.contains(&port_of(&reader, "SELECT inet_server_port()").await));
    }
    let serializable_url = format!(
        "{}?options=-c%20default_transaction_isolation%3Dserializable",
        proxy::url(&proxy)
    );
    let serializable = proxy::connect_url(&serializable_url).await.unwrap();
    assert_eq!(
        port_of(&serializable, "SELECT inet_server_port()").await,
        primary,
        "serializable by a startup option"
    );

    // SET pgwarden.route pins a session.
    support::execute(&reader, "SET pgwarden.route = primary").await;
    assert_eq!(port_of(&reader, "SELECT inet_server_port()").await, primary);
    support::execute(&reader, "SET pgwarden.route = auto").await;
    assert!(replicas.contains(&port_of(&reader, "SELECT inet_server_port()").await));
    let err = within(
        "batch_execute SET pgwarden.route = sideways",
        reader.batch_execute("SET pgwarden.route = sideways"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");

    // Extended protocol: prepared reads on replicas, prepared writes on the primary.
    let read = within(
        "prepare SELECT inet_server_port()",
        reader.prepare("SELECT inet_server_port()"),
    )
    .await
    .unwrap();
    let write = within(
        "prepare INSERT INTO t VALUES ($1, 0) RETURNING inet_ser...",
        client.prepare("INSERT INTO t VALUES ($1, 0) RETURNING inet_server_port()"),
    )
    .await
    .unwrap();
    for i in 0..5 {
        let port: i32 = within("query_one &read", reader.query_one(&read, &[]))
            .await
            .unwrap()
            .get(0);
        assert!(replicas.contains(&port));
        let port: i32 = within("query_one &write", client.query_one(&write, &[&(1000 + i)]))
            .await
            .unwrap()
            .get(0);
        assert_eq!(port, primary);
    }
    // Unnamed statements (`query_typed`: a Parse without a name before every
    // execution, as most drivers send): texts of different classes alternating on one
    // connection each land by their own text, whatever the one before was.
    for (sql, expected) in [
        ("SELECT inet_server_port()", Replica),
        ("SELECT inet_server_port()", Replica),
        ("/* pgwarden:primary */ SELECT inet_server_port()", Primary),
        ("/* pgwarden:primary */ SELECT inet_server_port()", Primary),
        ("SELECT inet_server_port()", Replica),
        ("SELECT inet_server_port() -- pgwarden:primary", Primary),
        ("SELECT inet_server_port()", Replica),
    ] {
        let port: i32 = within(sql, reader.query_typed_one(sql, &[]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        let landed = if port == primary { Primary } else { Replica };
        assert_eq!(landed, expected, "unnamed: {sql}");
    }
    // Both replicas take reads (least outstanding requests, ties rotate).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(port_of(&reader, "SELECT inet_server_port()").await);
    }
    assert_eq!(seen.len(), 2, "reads spread over both replicas: {seen:?}");
}

async fn pause_replay(cluster: &LocalCluster) {
    for replica in cluster.replicas() {
        replica
            .psql(USER, DATABASE, "SELECT pg_wal_replay_pause()")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lag_reads_after_writes_return_to_replicas() {
    let cluster = support::cluster(1);
    let primary = i32::from(cluster.primary().port);
    let proxy = proxy::start(&cluster, with_replicas(&cluster)).await;
    wait_replicas_healthy(&proxy).await;
    let client = proxy::connect(&proxy).await;
    support::execute(
        &client,
        "CREATE TABLE events (id serial primary key, note text)",
    )
    .await;
    let mut on_replica = 0;
    for round in 0..20 {
        within(
            "execute INSERT INTO events (note) VALUES ($1)",
            client.execute(
                "INSERT INTO events (note) VALUES ($1)",
                &[&format!("round {round}")],
            ),
        )
        .await
        .unwrap();
        // Poll (bounded) until the read is served by the replica, which happens as soon
        // as it has replayed the write; every read must see the write.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let row = within(
                "query_one SELECT count(*), inet_server_port() FROM events...",
                client.query_one(
                    "SELECT count(*), inet_server_port() FROM events WHERE note = $1",
                    &[&format!("round {round}")],
                ),
            )
            .await
            .unwrap();
            assert_eq!(row.get::<_, i64>(0), 1, "read saw its own write");
            if row.get::<_, i32>(1) != primary {
                on_replica += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reads never returned to the replica"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(on_replica, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_key_positions_travel_between_instances() {
    let cluster = support::cluster(1);
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(&direct, "CREATE TABLE notes (id int primary key)").await;
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let configure = |c: &mut Config| {
        with_replicas(&cluster)(c);
        c.ryw.scope = RywScope::SessionKey;
    };
    let a = proxy::start(&cluster, configure).await;
    let b = proxy::start(&cluster, configure).await;
    wait_replicas_healthy(&a).await;
    wait_replicas_healthy(&b).await;
    pause_replay(&cluster).await;

    let key = "options=-c%20pgwarden.session_key%3Dshared-9";
    let writer = proxy::connect_url(&format!("{}?{key}", proxy::url(&a)))
        .await
        .unwrap();
    let reader = proxy::connect_url(&format!("{}?{key}", proxy::url(&b)))
        .await
        .unwrap();
    let positions = b.runtime.routing().positions.clone();
    let mut longest = Duration::ZERO;
    for i in 0..50i32 {
        within(
            "execute INSERT INTO notes VALUES ($1)",
            writer.execute("INSERT INTO notes VALUES ($1)", &[&i]),
        )
        .await
        .unwrap();
        // Instance B learns the write position through NOTIFY, asynchronously: wait
        // (bounded) until it has, then its reads must see the write.
        let known = a
            .runtime
            .routing()
            .positions
            .get(DATABASE, "shared-9")
            .unwrap();
        let started = Instant::now();
        while positions
            .get(DATABASE, "shared-9")
            .is_none_or(|lsn| lsn < known)
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "position never reached instance B"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        longest = longest.max(started.elapsed());
        let n: i64 = within(
            "query_one SELECT count(*) FROM notes WHERE id = $1",
            reader.query_one("SELECT count(*) FROM notes WHERE id = $1", &[&i]),
        )
        .await
        .unwrap()
        .get(0);
        assert_eq!(n, 1, "instance B read a stale replica");
    }
    eprintln!("longest NOTIFY propagation between instances: {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_replica_does_not_know_yet_reads_from_the_primary() {
    let cluster = support::cluster(1);
    let primary = i32::from(cluster.primary().port);
    let replica = i32::from(cluster.replicas()[0].port);
    pause_replay(&cluster).await;
    // Created while the replica does not replay: it cannot log this role in.
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(
        &direct,
        "CREATE ROLE newcomer LOGIN PASSWORD 'newcomer-secret'",
    )
    .await;
    let proxy = proxy::start(&cluster, |c| {
        with_replicas(&cluster)(c);
        c.auth.users.push(pgwarden::config::UserConfig {
            name: "newcomer".into(),
            password: Some("newcomer-secret".into()),
            server_password: None,
        });
    })
    .await;
    wait_replicas_healthy(&proxy).await;
    let url = format!(
        "postgres://newcomer:newcomer-secret@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );
    let newcomer = proxy::connect_url(&url).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            port_of(&newcomer, "SELECT inet_server_port()").await,
            primary
        );
    }
    // The replica stays in rotation for everybody else.
    let topology = proxy.runtime.routing().topology(DATABASE).unwrap();
    assert!(topology.replicas()[0]
        .healthy
        .load(std::sync::atomic::Ordering::Relaxed));
    let other = proxy::connect(&proxy).await;
    assert_eq!(port_of(&other, "SELECT inet_server_port()").await, replica);
}
