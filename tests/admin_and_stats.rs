//! Query statistics checked against pg_stat_statements, the admin console through
//! psql, and the HTTP API and Prometheus metrics.

use crate::support;
use crate::support::command::{OutputWithin, SHORT_RUN};

use std::process::Command;
use std::time::Duration;

use pgwarden::cluster::ClusterSpec;
use pgwarden::config::PoolMode;
use support::proxy::{self, DATABASE, PASSWORD, USER};

fn psql_admin(port: u16, user: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new(support::psql_path())
        .args(["-X", "-A", "-F", "|", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=pgwarden"
        ))
        .env("PGPASSWORD", password)
        .output_within(SHORT_RUN)
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_match_pg_stat_statements() {
    let cluster = support::cluster_with(ClusterSpec {
        extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
        ..ClusterSpec::default()
    });
    let direct = proxy::connect_direct(&cluster).await;
    direct
        .batch_execute(
            "CREATE EXTENSION pg_stat_statements;
             CREATE TABLE items (id int primary key, price int);
             INSERT INTO items SELECT g, g % 100 FROM generate_series(1, 1000) g;
             SELECT pg_stat_statements_reset();",
        )
        .await
        .unwrap();
    let proxy = proxy::start(&cluster, |c| c.pool.size = 3).await;
    let client = proxy::connect(&proxy).await;
    let by_id = client
        .prepare("SELECT * FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=30 {
        client.query(&by_id, &[&id]).await.unwrap();
    }
    for price in 0..20 {
        client
            .simple_query(&format!("SELECT count(*) FROM items WHERE price > {price}"))
            .await
            .unwrap();
    }
    let bump = client
        .prepare("UPDATE items SET price = price + 1 WHERE id <= $1")
        .await
        .unwrap();
    for n in 1..=10 {
        client.execute(&bump, &[&n]).await.unwrap();
    }
    for _ in 0..4 {
        assert!(client.simple_query("SELECT 1/0").await.is_err());
    }
    proxy.runtime.stats.flush().await;
    let snapshot = proxy.runtime.stats.snapshot();
    let ours = |query: &str| {
        snapshot
            .queries
            .iter()
            .find(|q| q.query == query)
            .unwrap_or_else(|| {
                panic!(
                    "no stats for {query:?}: {:#?}",
                    snapshot
                        .queries
                        .iter()
                        .map(|q| &q.query)
                        .collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let direct = &direct;
    let theirs = |pattern: &'static str| async move {
        let row = direct
            .query_one(
                "SELECT sum(calls)::bigint, sum(rows)::bigint FROM pg_stat_statements WHERE query ILIKE $1",
                &[&pattern],
            )
            .await
            .unwrap();
        (
            row.get::<_, Option<i64>>(0).unwrap_or(0) as u64,
            row.get::<_, Option<i64>>(1).unwrap_or(0) as u64,
        )
    };
    let select = ours("select * from items where id = ?");
    assert_eq!(
        (select.calls, select.rows),
        theirs("SELECT * FROM items WHERE id = $1").await
    );
    assert_eq!(select.calls, 30);
    let count = ours("select count(*) from items where price > ?");
    assert_eq!(
        count.calls,
        theirs("SELECT count(*) FROM items WHERE price > $1")
            .await
            .0
    );
    assert_eq!(count.calls, 20);
    let update = ours("update items set price = price + ? where id <= ?");
    assert_eq!(
        (update.calls, update.rows),
        theirs("UPDATE items SET price = price + % WHERE id <= %").await
    );
    assert_eq!(update.rows, 55);
    let failing = ours("select ? / ?");
    assert_eq!((failing.calls, failing.errors), (4, 4));
    assert!(
        select.p50_ms > 0.0 && select.p99_ms >= select.p50_ms && select.max_ms >= select.p99_ms
    );
    assert_eq!(select.primary_calls, 30);
    assert!(
        select.sample.is_none(),
        "parameters are redacted by default"
    );
}

/// A cluster whose primary ran `setup`, and a proxy in `mode` (a pool of 2) before it.
async fn counting_proxy(
    mode: PoolMode,
    setup: &str,
) -> (pgwarden::cluster::LocalCluster, pgwarden::RunningProxy) {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(&direct, setup).await;
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 2;
        c.pool.mode = mode;
    })
    .await;
    (cluster, proxy)
}

/// The calls counted under `fingerprint`.
fn calls_of(snapshot: &pgwarden::stats::Snapshot, fingerprint: &str) -> u64 {
    snapshot
        .queries
        .iter()
        .filter(|q| q.query == fingerprint)
        .map(|q| q.calls)
        .sum()
}

/// Drivers that run every statement unnamed (psycopg, asyncpg, node-postgres) parse a
/// few texts in turn. Each statement is counted under the text it ran, whether its
/// shape came from the session's memory of recent texts or from a new scan, and
/// whether the text fits in a statistics event or is shared (longer than 118 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_in_turn_are_counted_under_their_own_texts() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        unnamed_statements_in_turn_counted_in(mode).await;
    }
}

async fn unnamed_statements_in_turn_counted_in(mode: PoolMode) {
    use tokio_postgres::types::Type;
    let (_cluster, proxy) = counting_proxy(
        mode,
        "CREATE TABLE parts (id int primary key, name text);
         INSERT INTO parts SELECT g, 'part ' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let client = proxy::connect(&proxy).await;
    let long_filter = (0..12)
        .map(|n| format!("name <> 'excluded part number {n}'"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let texts = [
        "SELECT name FROM parts WHERE id = $1".to_string(),
        "SELECT count(*) FROM parts WHERE id < $1".to_string(),
        format!("SELECT id FROM parts WHERE id > $1 AND {long_filter}"),
    ];
    assert!(
        texts[2].len() > 118,
        "one text longer than an event holds inline"
    );
    // Uneven counts, so that a statement counted under a neighbour's text shows.
    let runs = [7, 5, 3];
    for round in 0..7 {
        for (text, runs) in texts.iter().zip(runs) {
            if round < runs {
                support::within(
                    text,
                    client.query_typed(text, &[(&(round + 1), Type::INT4)]),
                )
                .await
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            }
        }
    }
    support::within("flush", proxy.runtime.stats.flush()).await;
    let snapshot = proxy.runtime.stats.snapshot();
    let calls = |fingerprint: &str| calls_of(&snapshot, fingerprint);
    assert_eq!(calls("select name from parts where id = ?"), 7, "{mode:?}");
    assert_eq!(
        calls("select count(*) from parts where id < ?"),
        5,
        "{mode:?}"
    );
    let long = snapshot
        .queries
        .iter()
        .find(|q| q.query.starts_with("select id from parts where id > ?"))
        .unwrap_or_else(|| panic!("no stats for the long text: {:#?}", snapshot.queries));
    assert_eq!(long.calls, 3, "{mode:?}");
    assert!(long.query.ends_with("name <> ?"), "{}", long.query);
}

/// Drivers that prepare named statements (JDBC, asyncpg, tokio-postgres): each execution
/// is counted under its statement's text in either pool mode, also after another
/// statement was closed and when a named portal is read in steps between other
/// statements, and none as an unknown portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_are_counted_under_their_texts() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        named_statements_counted_in(mode).await;
    }
}

async fn named_statements_counted_in(mode: PoolMode) {
    let (_cluster, proxy) = counting_proxy(
        mode,
        "CREATE TABLE gears (id int primary key, teeth int);
         INSERT INTO gears SELECT g, g * 3 FROM generate_series(1, 50) g;",
    )
    .await;
    let mut client = proxy::connect(&proxy).await;
    async fn prepare(client: &tokio_postgres::Client, text: &str) -> tokio_postgres::Statement {
        support::within(text, client.prepare(text))
            .await
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }
    let by_id = prepare(&client, "SELECT teeth FROM gears WHERE id = $1").await;
    let below = prepare(&client, "SELECT count(*) FROM gears WHERE teeth < $1").await;
    for n in 0..4 {
        support::within("below", client.query(&below, &[&(n * 10)]))
            .await
            .expect("below");
    }
    // Dropping the statement closes it on the connection.
    drop(below);
    let above = prepare(&client, "SELECT max(id) FROM gears WHERE teeth > $1").await;
    for n in 0..6 {
        support::within("by id", client.query(&by_id, &[&(n + 1)]))
            .await
            .expect("by id");
        if n < 2 {
            support::within("above", client.query(&above, &[&(n * 10)]))
                .await
                .expect("above");
        }
    }
    // A result read in steps through a named portal (JDBC's fetch size), with other
    // statements run between its steps: the steps are one call of the portal's text,
    // as pg_stat_statements counts it, with the rows they returned (a suspended
    // step's answer has no command tag), counted once the portal is closed.
    let window = prepare(&client, "SELECT id FROM gears WHERE id <= $1 ORDER BY id").await;
    let transaction = support::within("begin", client.transaction())
        .await
        .expect("begin");
    let portal = support::within("bind", transaction.bind(&window, &[&9]))
        .await
        .expect("bind");
    for step in 0..3 {
        let rows = support::within("fetch", transaction.query_portal(&portal, 3))
            .await
            .expect("fetch");
        assert_eq!(rows.len(), 3, "step {step}");
        support::within("between", transaction.query(&by_id, &[&(step + 1)]))
            .await
            .expect("between");
    }
    drop(portal);
    support::within("commit", transaction.commit())
        .await
        .expect("commit");
    // One portal read to its end in steps (the last step completes it), and one left
    // open by its transaction's end: one call each, with the rows of all their steps.
    let upto = prepare(&client, "SELECT id FROM gears WHERE id < $1").await;
    let transaction = support::within("begin", client.transaction())
        .await
        .expect("begin");
    let whole = support::within("bind", transaction.bind(&upto, &[&6]))
        .await
        .expect("bind");
    for expected in [2, 2, 1] {
        let rows = support::within("fetch", transaction.query_portal(&whole, 2))
            .await
            .expect("fetch");
        assert_eq!(rows.len(), expected);
    }
    let left_open = support::within("bind", transaction.bind(&upto, &[&20]))
        .await
        .expect("bind");
    let rows = support::within("fetch", transaction.query_portal(&left_open, 4))
        .await
        .expect("fetch");
    assert_eq!(rows.len(), 4);
    support::within("commit", transaction.commit())
        .await
        .expect("commit");
    drop((whole, left_open));
    support::within("flush", proxy.runtime.stats.flush()).await;
    let snapshot = proxy.runtime.stats.snapshot();
    let calls = |fingerprint: &str| calls_of(&snapshot, fingerprint);
    let counted = format!("{mode:?}: {:#?}", snapshot.queries);
    assert_eq!(
        calls("select teeth from gears where id = ?"),
        9,
        "{counted}"
    );
    let window = snapshot
        .queries
        .iter()
        .find(|q| q.query == "select id from gears where id <= ? order by id")
        .unwrap_or_else(|| panic!("{counted}"));
    assert_eq!((window.calls, window.rows), (1, 9), "{counted}");
    let upto = snapshot
        .queries
        .iter()
        .find(|q| q.query == "select id from gears where id < ?")
        .unwrap_or_else(|| panic!("{counted}"));
    assert_eq!((upto.calls, upto.rows), (2, 9), "{counted}");
    assert_eq!(
        calls("select count(*) from gears where teeth < ?"),
        4,
        "{counted}"
    );
    assert_eq!(
        calls("select max(id) from gears where teeth > ?"),
        2,
        "{counted}"
    );
    assert!(
        !snapshot
            .queries
            .iter()
            .any(|q| q.query.contains("unknown portal")),
        "{counted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_through_psql() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let client = proxy::connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .unwrap();
    client.query("SELECT count(*) FROM t", &[]).await.unwrap();
    let port = proxy.port();

    let pools = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "SHOW POOLS"));
    let text = stdout(&pools);
    assert!(
        text.starts_with("database|user|backend|server|pool_mode|size|sv_active|sv_idle|cl_active"),
        "{text}"
    );
    assert!(text.contains(&format!("app|{USER}|primary|")), "{text}");

    let clients = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "SHOW CLIENTS"));
    assert!(
        stdout(&clients).contains(&format!("|{USER}|app|")),
        "{}",
        stdout(&clients)
    );

    let queries = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "SHOW QUERIES"));
    assert!(
        stdout(&queries).contains("select count(*) from t"),
        "{}",
        stdout(&queries)
    );

    let config = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "SHOW CONFIG"));
    let config = stdout(&config);
    assert!(config.contains("pool.size|2"), "{config}");
    assert!(
        !config.contains(PASSWORD),
        "SHOW CONFIG must not reveal passwords"
    );

    for command in [
        "SHOW DATABASES",
        "SHOW SERVERS",
        "SHOW VERSION",
        "SHOW BACKENDS",
        "RELOAD",
    ] {
        let out = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, command));
        assert!(out.status.success(), "{command}: {out:?}");
    }
    let bad = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "DROP EVERYTHING"));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown admin command"),
        "{bad:?}"
    );
    let wrong = tokio::task::block_in_place(|| psql_admin(port, USER, "nope", "SHOW POOLS"));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    // PAUSE holds new transactions until RESUME.
    let out = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "PAUSE"));
    assert!(out.status.success());
    let waiting = tokio::spawn(async move {
        client
            .query_one("SELECT 42", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "query must wait while paused");
    let out = tokio::task::block_in_place(|| psql_admin(port, USER, PASSWORD, "RESUME"));
    assert!(out.status.success());
    let value = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(value, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_metrics_and_probes() {
    let cluster = support::cluster(1);
    let proxy = proxy::start(&cluster, |c| {
        c.databases.get_mut(DATABASE).unwrap().replicas = cluster.replica_urls();
        c.admin.http_token = Some("s3cret".into());
    })
    .await;
    let client = proxy::connect(&proxy).await;
    for i in 0..25 {
        client.query("SELECT $1::int + 1", &[&i]).await.unwrap();
    }
    proxy.runtime.stats.flush().await;
    let http = proxy.http_address;
    assert_eq!(support::http::get(http, "/healthz", None).await.0, 200);
    assert_eq!(support::http::get(http, "/readyz", None).await.0, 200);
    assert_eq!(
        support::http::get(http, "/metrics", None).await.0,
        401,
        "token required"
    );
    let (status, body) = support::http::get(http, "/metrics", Some("s3cret")).await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value("pgwarden_queries_total") >= 25.0, "{body}");
    assert_eq!(value("pgwarden_clients"), 1.0);
    assert!(value("pgwarden_pool_size") >= 20.0);
    // The latency histogram counts every statement (its +Inf bucket, summed over the
    // routes).
    let timed: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "pgwarden_query_duration_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum();
    assert!(timed >= 25.0, "latency histogram: {body}");

    let (status, body) = support::http::get(http, "/api/queries", Some("s3cret")).await;
    assert_eq!(status, 200);
    let queries: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = queries
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["query"] == "select ?::int + ?")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(entry["calls"], 25);
    for path in [
        "/api/pools",
        "/api/backends",
        "/api/timeline",
        "/api/clients",
        "/",
    ] {
        let (status, body) = support::http::get(http, path, Some("s3cret")).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (_, backends) = support::http::get(http, "/api/backends", Some("s3cret")).await;
    assert!(backends.contains("replica1"), "{backends}");
    drop(cluster);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while support::http::get(http, "/readyz", None).await.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz must fail when the primary is gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
