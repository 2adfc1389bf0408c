//! The result cache against real PostgreSQL: exact bytes on a hit, invalidation by
//! table on commit (same connection, another connection, another instance, writes that
//! bypass pgwarden with `wal_invalidation`), keys that never cross tenants, roles or
//! `search_path`, functions that are never cached, TTL, the memory bound, single flight,
//! and a randomized consistency check with two instances and a replica. The invalidation
//! tests live in `cache/invalidation.rs` and `cache/keyed_writes.rs`, the single-flight
//! ones in `cache/flights.rs`, the randomized consistency check in
//! `cache/read_your_writes.rs`.

use crate::support;

#[path = "cache/invalidation.rs"]
mod invalidation;

#[path = "cache/keyed_writes.rs"]
mod keyed_writes;

#[path = "cache/flights.rs"]
mod flights;

#[path = "cache/read_your_writes.rs"]
mod read_your_writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::cluster::{ClusterSpec, LocalCluster};
use pgwarden::config::{AuthMethod, Config};
use pgwarden::RunningProxy;
use support::proxy::{self, DATABASE, USER};
use support::wire::{first_value, Wire};
use support::within;

const SOCKETS: &str = "/tmp";

fn cluster(replicas: usize, extra: &[&str]) -> LocalCluster {
    let mut extra_conf = vec![format!("unix_socket_directories = '{SOCKETS}'")];
    extra_conf.extend(extra.iter().map(|s| s.to_string()));
    support::cluster_with(ClusterSpec {
        replicas,
        extra_conf,
        ..ClusterSpec::default()
    })
}

/// Routes the test database's reads to `cluster`'s replicas, with a short lag poll.
fn route_to_replicas(c: &mut Config, cluster: &LocalCluster) {
    if let Some(db) = c.databases.get_mut(DATABASE) {
        db.replicas = cluster.replica_urls();
    }
    c.routing.lag_poll_ms = 20;
}

async fn start(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> RunningProxy {
    let proxy = proxy::start(cluster, |c| {
        c.auth.method = AuthMethod::Trust;
        tweak(c);
    })
    .await;
    proxy::wait_for_cache_listen(&proxy).await;
    proxy
}

async fn wire(proxy: &RunningProxy) -> Wire {
    within("login", Wire::tcp(proxy.port(), USER, DATABASE, &[])).await
}

async fn direct(cluster: &LocalCluster) -> Wire {
    within(
        "direct login",
        Wire::unix(SOCKETS, cluster.primary().port, USER, DATABASE),
    )
    .await
}

fn hits(proxy: &RunningProxy) -> u64 {
    proxy.runtime.cache.totals().hits
}

/// Why each fingerprint is or is not cached (`SHOW CACHE`'s last column).
fn cache_reasons(proxy: &RunningProxy) -> Vec<String> {
    proxy
        .runtime
        .cache
        .fingerprint_rows()
        .into_iter()
        .map(|(row, _, _)| row.why)
        .collect()
}

async fn simple_value(w: &mut Wire, sql: &str) -> Option<String> {
    let frames = within(sql, w.simple(sql)).await;
    assert!(
        frames.iter().all(|f| f[0] != b'E'),
        "{sql}: {:?}",
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f))
            .collect::<Vec<_>>()
    );
    first_value(&frames)
}

async fn setup(cluster: &LocalCluster, sql: &str) {
    let mut d = direct(cluster).await;
    let frames = within("setup", d.simple(sql)).await;
    assert!(
        frames.iter().all(|f| f[0] != b'E'),
        "setup failed: {:?}",
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_returns_the_bytes_of_a_direct_query() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE items (id int primary key, name text, price numeric, tags text[], at timestamptz);
         INSERT INTO items SELECT g, 'item ' || g, g * 1.5, ARRAY['a', 'b'], '2026-01-01'::timestamptz + g * interval '1 hour'
           FROM generate_series(1, 200) g;",
    )
    .await;
    let proxy = start(&cluster, |_| {}).await;
    let mut d = direct(&cluster).await;
    let mut p = wire(&proxy).await;

    let simple = "/* pgwarden:cache */ SELECT * FROM items WHERE id <= 50 ORDER BY id";
    let expected = within("direct", d.simple(simple)).await;
    let miss = within("miss", p.simple(simple)).await;
    let before = hits(&proxy);
    let hit = within("hit", p.simple(simple)).await;
    assert_eq!(hits(&proxy), before + 1, "second run is a hit");
    assert_eq!(miss, expected, "a miss relays the server's frames");
    assert_eq!(hit, expected, "a hit replays them frame by frame");

    let multi = "/* pgwarden:cache */ SELECT count(*) FROM items; SELECT max(name) FROM items";
    let expected = within("direct", d.simple(multi)).await;
    within("miss", p.simple(multi)).await;
    assert_eq!(within("hit", p.simple(multi)).await, expected);

    let sql = "/* pgwarden:cache */ SELECT id, name, price, tags, at FROM items WHERE id > $1 ORDER BY id LIMIT 20";
    for (name, format, binary_params, param) in [
        ("", 0i16, false, b"10".to_vec()),
        ("", 1, false, b"10".to_vec()),
        ("", 1, true, 10i32.to_be_bytes().to_vec()),
        ("named_items", 1, false, b"30".to_vec()),
        ("named_text", 0, true, 40i32.to_be_bytes().to_vec()),
    ] {
        let mut d = direct(&cluster).await;
        let expected = within(
            "direct extended",
            d.extended(name, Some(sql), &[Some(&param)], binary_params, format),
        )
        .await;
        assert_eq!(expected[0][0], b'1', "ParseComplete first");
        let mut p = wire(&proxy).await;
        let miss = within(
            "miss",
            p.extended(name, Some(sql), &[Some(&param)], binary_params, format),
        )
        .await;
        let mut p2 = wire(&proxy).await;
        let before = hits(&proxy);
        let hit = within(
            "hit",
            p2.extended(name, Some(sql), &[Some(&param)], binary_params, format),
        )
        .await;
        assert_eq!(miss, expected, "{name} format {format}: miss");
        assert_eq!(hit, expected, "{name} format {format}: hit");
        assert_eq!(hits(&proxy), before + 1, "{name} format {format} hit");
        if !name.is_empty() {
            // The client believes the statement is prepared: Bind alone works, hit or not.
            let expected = within(
                "direct bind",
                d.extended(name, None, &[Some(&param)], binary_params, format),
            )
            .await;
            let again = within(
                "bind only",
                p2.extended(name, None, &[Some(&param)], binary_params, format),
            )
            .await;
            assert_eq!(again, expected, "Bind of {name} without Parse");
        }
    }
    let (_, body) = support::http::get(proxy.http_address, "/api/cache", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["hits"].as_u64().unwrap() >= 7, "{json}");
    assert!(json["entries"].as_u64().unwrap() >= 6, "{json}");
    assert!(
        json["fingerprints"].as_array().unwrap().len() >= 2,
        "{json}"
    );
    let metrics = support::http::get(proxy.http_address, "/metrics", None)
        .await
        .1;
    for name in [
        "pgwarden_cache_hits_total",
        "pgwarden_cache_misses_total",
        "pgwarden_cache_invalidations_total",
        "pgwarden_cache_bytes",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert!(metrics.contains("part=\"result_cache\""));

    // The statistics count each hit under its statement, as its misses are.
    within("stats flush", proxy.runtime.stats.flush()).await;
    let snapshot = proxy.runtime.stats.snapshot();
    let queries = &snapshot.queries;
    let summary = |text: &str| {
        let found: Vec<_> = queries.iter().filter(|q| q.query.contains(text)).collect();
        assert_eq!(found.len(), 1, "{text}: {queries:#?}");
        (found[0].calls, found[0].cache_hits)
    };
    assert_eq!(summary("from items where id <= ?"), (2, 1));
    assert_eq!(summary("from items where id > ?"), (12, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_refresh_and_auto_mode() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE ro (id int primary key, v int); INSERT INTO ro VALUES (1, 10), (2, 20);
         CREATE TABLE busy (id int primary key, v int); INSERT INTO busy VALUES (1, 1);",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.cache.mode = pgwarden::config::CacheMode::Auto;
        c.cache.auto_min_calls = 3;
    })
    .await;
    let mut c = wire(&proxy).await;
    let read = "/* pgwarden:cache */ SELECT v FROM ro WHERE id = 1";
    simple_value(&mut c, read).await;

    // A READ ONLY transaction at READ COMMITTED is answered from the cache, with the
    // transaction's status in ReadyForQuery.
    simple_value(&mut c, "BEGIN READ ONLY").await;
    let before = hits(&proxy);
    let frames = within("read in transaction", c.simple(read)).await;
    assert_eq!(first_value(&frames).as_deref(), Some("10"));
    assert_eq!(
        frames.last().map(|f| f[5]),
        Some(b'T'),
        "status stays in transaction"
    );
    assert_eq!(hits(&proxy), before + 1, "hit inside READ ONLY");
    // SET LOCAL ends it: the settings are no longer the key's.
    simple_value(&mut c, "SET LOCAL search_path = pg_catalog, public").await;
    simple_value(&mut c, read).await;
    assert_eq!(hits(&proxy), before + 1, "no hit after SET LOCAL");
    simple_value(&mut c, "COMMIT").await;
    // Neither writable transactions nor REPEATABLE READ ones are answered.
    for begin in ["BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"] {
        simple_value(&mut c, begin).await;
        simple_value(&mut c, read).await;
        simple_value(&mut c, "COMMIT").await;
        assert_eq!(hits(&proxy), before + 1, "{begin}: not from the cache");
    }

    // A hot entry near its TTL is refreshed by one hit, so it does not expire.
    let short = "/* pgwarden:cache ttl=2s */ SELECT v FROM ro WHERE id = 2";
    simple_value(&mut c, short).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let misses = proxy.runtime.cache.totals().misses;
    simple_value(&mut c, short).await;
    assert_eq!(
        proxy.runtime.cache.totals().misses,
        misses + 1,
        "the hit past 80% of the TTL refreshed it"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hits_before = hits(&proxy);
    assert_eq!(simple_value(&mut c, short).await.as_deref(), Some("20"));
    assert_eq!(
        hits(&proxy),
        hits_before + 1,
        "still cached past the first TTL"
    );

    // auto mode: a hot read of a read-mostly table is cached without a hint; one whose
    // table is written as often as it is read is not.
    let quiet = "SELECT v FROM ro WHERE id = 2 AND v > 0";
    for _ in 0..6 {
        simple_value(&mut c, quiet).await;
    }
    let row = |text: &str| {
        proxy
            .runtime
            .cache
            .fingerprint_rows()
            .into_iter()
            .find(|(r, _, _)| r.text.contains(text))
            .map(|(r, _, _)| r)
    };
    assert!(
        row("from ro where id = ? and v >").is_some_and(|r| r.cached && r.hits > 0),
        "{:?}",
        row("from ro where id = ? and v >")
    );
    let busy = "SELECT v FROM busy WHERE id = 1 AND v > 0";
    for _ in 0..10 {
        simple_value(&mut c, busy).await;
        simple_value(&mut c, "UPDATE busy SET v = v + 1 WHERE id > 0").await;
    }
    let busy_row = row("from busy").expect("busy fingerprint seen");
    assert!(
        !busy_row.cached && busy_row.why.contains("read-mostly"),
        "{busy_row:?}"
    );
    assert_eq!(simple_value(&mut c, busy).await.as_deref(), Some("11"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_shared_across_tenants_or_roles() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE docs (id int, tenant_id int, body text);
         INSERT INTO docs VALUES (1, 1, 'one'), (2, 2, 'two');
         CREATE ROLE reader LOGIN PASSWORD 'reader-secret';
         GRANT SELECT ON docs TO reader;",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.tenancy.mode = pgwarden::config::TenancyMode::Rewrite;
        c.auth.users.push(pgwarden::config::UserConfig {
            name: "reader".into(),
            password: Some("reader-secret".into()),
            server_password: None,
        });
    })
    .await;
    let sql = "/* pgwarden:cache */ SELECT body FROM docs ORDER BY id LIMIT 1";
    let mut t1 = within(
        "tenant 1",
        Wire::tcp(
            proxy.port(),
            USER,
            DATABASE,
            &[("options", "-c pgwarden.tenant_id=1")],
        ),
    )
    .await;
    let mut t2 = within(
        "tenant 2",
        Wire::tcp(
            proxy.port(),
            USER,
            DATABASE,
            &[("options", "-c pgwarden.tenant_id=2")],
        ),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(simple_value(&mut t1, sql).await.as_deref(), Some("one"));
        assert_eq!(simple_value(&mut t2, sql).await.as_deref(), Some("two"));
    }
    assert!(hits(&proxy) >= 2);
    let mut reader = within(
        "reader",
        Wire::tcp(
            proxy.port(),
            "reader",
            DATABASE,
            &[("options", "-c pgwarden.tenant_id=1")],
        ),
    )
    .await;
    let before = hits(&proxy);
    assert_eq!(simple_value(&mut reader, sql).await.as_deref(), Some("one"));
    assert_eq!(hits(&proxy), before, "another role never gets the entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_are_not_immutable_are_never_cached() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);
         CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
         CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';
         CREATE VIEW clock AS SELECT id, now() AS at FROM t;
         CREATE SEQUENCE counter;",
    )
    .await;
    let proxy = start(&cluster, |_| {}).await;
    let mut c = wire(&proxy).await;
    for sql in [
        "/* pgwarden:cache */ SELECT now()",
        "/* pgwarden:cache */ SELECT random()",
        "/* pgwarden:cache */ SELECT current_user",
        "/* pgwarden:cache */ SELECT current_timestamp",
        "/* pgwarden:cache */ SELECT bump() FROM t",
        "/* pgwarden:cache */ SELECT * FROM t, bump() AS b",
        "/* pgwarden:cache */ SELECT * FROM clock",
        "/* pgwarden:cache */ SELECT * FROM pg_class LIMIT 1",
        "/* pgwarden:cache */ SELECT * FROM t FOR UPDATE",
        // Literals PostgreSQL reads as the current time, a sequence (nextval moves it
        // without a write), a random sample.
        "/* pgwarden:cache */ SELECT 'now'::timestamptz",
        "/* pgwarden:cache */ SELECT count(*) FROM t WHERE date 'today' > '2000-01-01'",
        "/* pgwarden:cache */ SELECT last_value FROM counter",
        "/* pgwarden:cache */ SELECT count(*) FROM t TABLESAMPLE BERNOULLI (50)",
    ] {
        let before = hits(&proxy);
        simple_value(&mut c, sql).await;
        simple_value(&mut c, sql).await;
        assert_eq!(hits(&proxy), before, "{sql} was cached");
    }
    let before = hits(&proxy);
    simple_value(&mut c, "/* pgwarden:cache */ SELECT twice(id) FROM t").await;
    simple_value(&mut c, "/* pgwarden:cache */ SELECT twice(id) FROM t").await;
    assert_eq!(hits(&proxy), before + 1, "an IMMUTABLE function is cached");
    // A function in FROM is a call too, judged by its volatility.
    simple_value(&mut c, "/* pgwarden:cache */ SELECT * FROM twice(21)").await;
    simple_value(&mut c, "/* pgwarden:cache */ SELECT * FROM twice(21)").await;
    assert_eq!(
        hits(&proxy),
        before + 2,
        "an IMMUTABLE function in FROM is cached"
    );
    // A text parameter read as the current time: that result is not stored, while
    // another value of the same statement is.
    let at = "/* pgwarden:cache */ SELECT $1::timestamptz::text";
    for (value, cached) in [("now", false), ("2020-01-01 00:00:00+00", true)] {
        let before = hits(&proxy);
        for _ in 0..2 {
            let frames = within(
                "bound time",
                c.extended("", Some(at), &[Some(value.as_bytes())], false, 0),
            )
            .await;
            assert!(frames.iter().all(|f| f[0] != b'E'), "{value}");
        }
        assert_eq!(hits(&proxy) > before, cached, "{value}");
    }
    let reasons = cache_reasons(&proxy);
    assert!(
        reasons.iter().any(|r| r.contains("non-IMMUTABLE now")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("view calls non-IMMUTABLE")),
        "{reasons:?}"
    );
    for reason in [
        "sequence pg_class",
        "sequence counter",
        "current time",
        "TABLESAMPLE",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{reason}: {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_and_memory_bound() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 1);",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.cache.max_bytes = 512 * 1024;
        c.cache.max_entry_bytes = 64 * 1024;
    })
    .await;
    let mut c = wire(&proxy).await;
    let sql = "/* pgwarden:cache ttl=1s */ SELECT v FROM t WHERE id = 1";
    assert_eq!(simple_value(&mut c, sql).await.as_deref(), Some("1"));
    // A write that bypasses pgwarden: only the TTL ends the entry (no wal_invalidation).
    setup(&cluster, "UPDATE t SET v = 2").await;
    assert_eq!(
        simple_value(&mut c, sql).await.as_deref(),
        Some("1"),
        "cached"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if simple_value(&mut c, sql).await.as_deref() == Some("2") {
            break;
        }
        assert!(Instant::now() < deadline, "entry outlived its TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    for i in 0..10_000 {
        simple_value(
            &mut c,
            &format!("/* pgwarden:cache */ SELECT v, {i} AS k, repeat('x', 100) FROM t"),
        )
        .await;
    }
    let totals = proxy.runtime.cache.totals();
    assert!(totals.bytes <= 512 * 1024, "{totals:?}");
    assert!(totals.entries > 100, "{totals:?}");
    eprintln!(
        "10,000 distinct keys in {:?}: {totals:?}",
        started.elapsed()
    );
}
