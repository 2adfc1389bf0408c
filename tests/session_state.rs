//! Session state under pooling: `SET`/`RESET` follow a client across server
//! connections and never leak to other clients; session pooling keeps one server per
//! client (LISTEN/NOTIFY works) and cleans it with `DISCARD ALL` on release.

use crate::support;

use std::time::Duration;

use pgwarden::config::PoolMode;
use support::proxy;

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    let rows = client.simple_query(&format!("SHOW {name}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_and_do_not_leak() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let a = proxy::connect(&proxy).await;
    let b = proxy::connect(&proxy).await;
    let default_timeout = show(&b, "statement_timeout").await;

    a.batch_execute("SET statement_timeout = '4321ms'")
        .await
        .unwrap();
    a.batch_execute("SET application_name = 'client-a'")
        .await
        .unwrap();
    // Many transactions from both clients so each lands on both server connections.
    for _ in 0..20 {
        assert_eq!(show(&a, "statement_timeout").await, "4321ms");
        assert_eq!(show(&b, "statement_timeout").await, default_timeout);
        let backends: Vec<i32> = futures_util::future::join_all((0..4).map(|_| async {
            a.query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0)
        }))
        .await;
        assert!(!backends.is_empty());
    }
    assert_eq!(show(&a, "application_name").await, "client-a");
    assert_ne!(show(&b, "application_name").await, "client-a");

    // SET inside a rolled-back transaction does not stick; a committed one does.
    a.batch_execute("BEGIN; SET statement_timeout = '1s'; ROLLBACK;")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "4321ms");
    a.batch_execute("BEGIN; SET statement_timeout = '2s'; COMMIT;")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "2s");
    // A failed SET changes nothing.
    assert!(a
        .batch_execute("SET statement_timeout = 'banana'")
        .await
        .is_err());
    assert_eq!(show(&a, "statement_timeout").await, "2s");

    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, default_timeout);
    for _ in 0..5 {
        assert_eq!(show(&b, "statement_timeout").await, default_timeout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_are_session_settings() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let url = format!(
        "{}?options=-c%20statement_timeout%3D7777&application_name=opt-test",
        proxy::url(&proxy)
    );
    let with_options = proxy::connect_url(&url).await.unwrap();
    let plain = proxy::connect(&proxy).await;
    for _ in 0..3 {
        assert_eq!(show(&with_options, "statement_timeout").await, "7777ms");
        assert_eq!(show(&with_options, "application_name").await, "opt-test");
        assert_ne!(show(&plain, "statement_timeout").await, "7777ms");
    }
    // RESET returns to the startup values, as in PostgreSQL, not to the server's.
    with_options
        .batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&with_options, "statement_timeout").await, "1234ms");
    for reset in ["RESET ALL", "RESET statement_timeout", "DISCARD ALL"] {
        with_options.batch_execute(reset).await.unwrap();
        assert_ne!(show(&plain, "statement_timeout").await, "7777ms");
        assert_eq!(
            show(&with_options, "statement_timeout").await,
            "7777ms",
            "after {reset}"
        );
        assert_eq!(show(&with_options, "application_name").await, "opt-test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_listen_notify_and_discard_all() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.mode = PoolMode::Session;
        c.pool.size = 1;
    })
    .await;

    let (listener, mut connection) =
        tokio_postgres::connect(&proxy::url(&proxy), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    listener
        .batch_execute("SET work_mem = '7MB'; PREPARE p AS SELECT 1")
        .await
        .unwrap();
    // The pool has one server and the listener holds it: notify straight on the primary.
    let direct = proxy::connect_direct(&cluster).await;
    direct.batch_execute("NOTIFY jobs, 'job-1'").await.unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification within 5 s")
        .unwrap();
    assert_eq!(payload, "job-1");
    drop(listener);

    // The next client gets the same server connection, cleaned.
    let next = proxy::connect(&proxy).await;
    assert_ne!(show(&next, "work_mem").await, "7MB");
    let err = next.batch_execute("EXECUTE p").await.unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "26000",
        "prepared statement gone"
    );
    let listening: i64 = next
        .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_does_not_leak_it() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let direct = proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .unwrap();
    {
        let client = proxy::connect(&proxy).await;
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (1);")
            .await
            .unwrap();
    } // dropped without COMMIT
    let next = proxy::connect(&proxy).await;
    let fresh: bool = next
        .query_one("SELECT pg_current_xact_id_if_assigned() IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        fresh,
        "the next client must not inherit an open transaction"
    );
    let n: i64 = next
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_session_authorization_do_not_leak_to_the_next_client() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let admin = proxy::connect(&proxy).await;
    admin
        .batch_execute("CREATE ROLE visitor NOLOGIN; GRANT visitor TO pgwarden")
        .await
        .unwrap();
    for set in ["SET ROLE visitor", "SET SESSION AUTHORIZATION visitor"] {
        let a = proxy::connect(&proxy).await;
        a.simple_query(set).await.unwrap();
        let who = a.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(who.get::<_, String>(0), "visitor", "{set}");
        // Another client, on the same (only) server connection, is itself again.
        let b = proxy::connect(&proxy).await;
        let who = b
            .query_one("SELECT current_user::text, session_user::text", &[])
            .await
            .unwrap();
        assert_eq!(
            (who.get::<_, String>(0), who.get::<_, String>(1)),
            ("pgwarden".into(), "pgwarden".into()),
            "{set}"
        );
        // And the first keeps its role on its next transaction.
        let who = a.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(who.get::<_, String>(0), "visitor", "{set}");
    }
}

/// A statement with a 10 s bound: its SQLSTATE on error, its first value otherwise.
async fn outcome(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let answer = tokio::time::timeout(Duration::from_secs(10), client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"));
    match answer {
        Ok(messages) => Ok(messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    }
}

/// The same, in the extended protocol (tokio-postgres prepares, binds, executes).
async fn outcome_extended(client: &tokio_postgres::Client, sql: &str) -> Result<i64, String> {
    let answer = tokio::time::timeout(Duration::from_secs(10), client.query_one(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"));
    answer
        .map(|row| row.get::<_, i64>(0))
        .map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default())
}

/// `nextval` (named, or called by a `serial` column's default) leaves `currval` and
/// `lastval` in the server session. Another client on the same server connection must
/// get PostgreSQL's `55000` for them, as it would directly, not the first client's
/// values; the first client keeps its own values while it stays where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_state_does_not_reach_the_next_client() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let direct_url = cluster.primary_url();
    let connect_direct = || async {
        tokio::time::timeout(Duration::from_secs(20), proxy::connect_url(&direct_url))
            .await
            .expect("direct connect timed out")
            .expect("direct connect")
    };
    let setup = connect_direct().await;
    outcome(
        &setup,
        "CREATE SEQUENCE s; CREATE TABLE items(id serial PRIMARY KEY, v text)",
    )
    .await
    .unwrap();
    // What PostgreSQL says to a session that has not called nextval.
    let fresh = connect_direct().await;
    let not_yet = Err("55000".to_string());
    let not_yet_extended: Result<i64, String> = Err("55000".to_string());
    assert_eq!(outcome(&fresh, "SELECT currval('s')").await, not_yet);
    assert_eq!(outcome(&fresh, "SELECT lastval()").await, not_yet);

    let a = proxy::connect(&proxy).await;
    let b = proxy::connect(&proxy).await;
    // Named nextval, simple protocol.
    assert_eq!(outcome(&a, "SELECT nextval('s')").await, Ok("1".into()));
    assert_eq!(outcome(&a, "SELECT currval('s')").await, Ok("1".into()));
    assert_eq!(outcome(&b, "SELECT currval('s')").await, not_yet);
    assert_eq!(outcome(&b, "SELECT lastval()").await, not_yet);
    // The sequence itself goes on; only the session's memory of it was cleared.
    assert_eq!(outcome(&a, "SELECT nextval('s')").await, Ok("2".into()));
    // nextval called by a column default.
    assert_eq!(
        outcome(&a, "INSERT INTO items(v) VALUES ('x') RETURNING id").await,
        Ok("1".into())
    );
    assert_eq!(outcome(&a, "SELECT lastval()").await, Ok("1".into()));
    assert_eq!(outcome(&b, "SELECT lastval()").await, not_yet);
    assert_eq!(outcome(&b, "SELECT currval('items_id_seq')").await, not_yet);
    // Extended protocol, both ways.
    assert_eq!(outcome_extended(&a, "SELECT nextval('s')").await, Ok(3));
    assert_eq!(
        outcome_extended(&b, "SELECT lastval()").await,
        not_yet_extended
    );
    assert_eq!(
        outcome_extended(&b, "SELECT currval('s')").await,
        not_yet_extended
    );
    // b's own state is b's, and then a's turn comes again clean.
    assert_eq!(outcome_extended(&b, "SELECT nextval('s')").await, Ok(4));
    assert_eq!(outcome_extended(&b, "SELECT currval('s')").await, Ok(4));
    assert_eq!(outcome(&a, "SELECT currval('s')").await, not_yet);
    // Within one transaction nothing is discarded, whoever waits.
    assert_eq!(outcome(&a, "BEGIN").await, Ok(String::new()));
    assert_eq!(
        outcome(&a, "INSERT INTO items(v) VALUES ('y') RETURNING id").await,
        Ok("2".into())
    );
    assert_eq!(
        outcome(&a, "SELECT currval('items_id_seq')").await,
        Ok("2".into())
    );
    assert_eq!(outcome(&a, "COMMIT").await, Ok(String::new()));
    assert_eq!(outcome(&b, "SELECT lastval()").await, not_yet);
}

/// `random()` after `setseed(0.5)`, on a fresh direct session: what a client would read
/// if another client's seed reached it.
async fn seeded_sequence(direct_url: &str, seed: &str) -> (String, String) {
    let client = tokio::time::timeout(Duration::from_secs(20), proxy::connect_url(direct_url))
        .await
        .expect("direct connect timed out")
        .expect("direct connect");
    outcome(&client, &format!("SELECT setseed({seed})"))
        .await
        .unwrap();
    let first = outcome(&client, "SELECT random()").await.unwrap();
    let second = outcome(&client, "SELECT random()").await.unwrap();
    (first, second)
}

/// `setseed` and `SET seed` make a session's `random()` predictable, and `DISCARD ALL`
/// keeps that. Another client on the same server connection must not continue that
/// sequence (a fresh PostgreSQL session never does); the seeding client keeps it while
/// it stays there. Transaction pooling (simple and extended protocol) and session
/// pooling, one server connection each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_seed_does_not_reach_the_next_client() {
    let cluster = support::cluster(0);
    let direct_url = cluster.primary_url();
    let (first, second) = seeded_sequence(&direct_url, "0.5").await;

    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let a = proxy::connect(&proxy).await;
    let b = proxy::connect(&proxy).await;
    // Simple protocol: a's own sequence goes on, b's is not a's.
    outcome(&a, "SELECT setseed(0.5)").await.unwrap();
    assert_eq!(outcome(&a, "SELECT random()").await, Ok(first.clone()));
    let of_b = outcome(&b, "SELECT random()").await.unwrap();
    assert_ne!(of_b, second, "b continued a's seeded sequence");
    // The setting: b's numbers are its own, and `seed` reads as on a fresh session.
    let fresh = tokio::time::timeout(Duration::from_secs(20), proxy::connect_url(&direct_url))
        .await
        .expect("direct connect timed out")
        .expect("direct connect");
    let fresh_seed = outcome(&fresh, "SHOW seed").await;
    outcome(&a, "SET seed = 0.5").await.unwrap();
    assert_ne!(outcome(&b, "SELECT random()").await, Ok(first.clone()));
    assert_eq!(outcome(&b, "SHOW seed").await, fresh_seed);
    // a comes back: the replay of its `seed` seeds the connection again, for a alone.
    assert_eq!(outcome(&a, "SELECT 1").await, Ok("1".into()));
    assert_ne!(outcome(&b, "SELECT random()").await, Ok(first.clone()));
    // b seeding itself gets exactly its own sequence.
    outcome(&b, "SET seed = 0.5").await.unwrap();
    assert_eq!(outcome(&b, "SELECT random()").await, Ok(first.clone()));
    outcome(&b, "RESET seed").await.unwrap();
    // Extended protocol (a named statement with a parameter).
    let seeded = tokio::time::timeout(
        Duration::from_secs(10),
        a.query_one("SELECT setseed($1)::text", &[&0.5f64]),
    )
    .await
    .expect("setseed timed out");
    seeded.unwrap();
    let of_b = tokio::time::timeout(
        Duration::from_secs(10),
        b.query_one("SELECT random()::text", &[]),
    )
    .await
    .expect("random timed out")
    .unwrap()
    .get::<_, String>(0);
    assert_ne!(of_b, first, "b continued a's seeded sequence (extended)");

    // Session pooling: the next session gets a fresh sequence.
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 1;
        c.pool.mode = PoolMode::Session;
    })
    .await;
    let a = proxy::connect(&proxy).await;
    outcome(&a, "SELECT setseed(0.5)").await.unwrap();
    drop(a);
    let b = tokio::time::timeout(Duration::from_secs(20), proxy::connect(&proxy))
        .await
        .expect("connect timed out");
    assert_ne!(outcome(&b, "SELECT random()").await, Ok(first));
}

/// A driver that parses a few unnamed texts in turn (pgbench, most ORMs): a text
/// parsed again after others keeps its effects. Had the proxy taken the last `SET` for
/// nothing, it would believe the setting reset while the shared server connection
/// (pool of one) kept it, and the next client would run under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_texts_parsed_in_turn_keep_their_effects() {
    use support::proxy::{DATABASE, USER};
    use support::wire::{error_code, first_value, Wire};
    let step = Duration::from_secs(20);
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 1;
        c.auth.method = pgwarden::config::AuthMethod::Trust;
    })
    .await;
    let mut wire = tokio::time::timeout(step, Wire::tcp(proxy.port(), USER, DATABASE, &[]))
        .await
        .expect("connect");
    let set = "SET statement_timeout = '4321ms'";
    for sql in [set, "SELECT 1", "RESET statement_timeout", "SELECT 2", set] {
        let answer = tokio::time::timeout(step, wire.extended("", Some(sql), &[], false, 0))
            .await
            .expect(sql);
        assert_eq!(error_code(&answer), None, "{sql}");
    }
    let other = tokio::time::timeout(step, proxy::connect(&proxy))
        .await
        .expect("connect");
    let theirs = tokio::time::timeout(step, show(&other, "statement_timeout"))
        .await
        .expect("SHOW");
    assert_eq!(
        theirs, "0",
        "the first client's setting reached the next client"
    );
    let own = tokio::time::timeout(step, wire.simple("SHOW statement_timeout"))
        .await
        .expect("SHOW");
    assert_eq!(first_value(&own).as_deref(), Some("4321ms"));
}
