//! pgjdbc through pgwarden: one Java program (`tests/jdbc/Probe.java`) runs what JDBC
//! applications do every day (metadata, server-prepared statements past
//! `prepareThreshold`, batches, fetch-size cursors, errors in and out of transactions,
//! savepoints, a plan invalidated by `ALTER TABLE`, binary values, settings, COPY, a
//! query timeout's cancel) against PostgreSQL and through the proxy, with and without
//! TLS. Every line must be the same.

use crate::support;

use std::time::Duration;

use support::drivers::run_java;
use support::proxy::{self, DATABASE, PASSWORD, USER};

const PROBE: &str = include_str!("jdbc/Probe.java");

fn probe(port: u16, user: &str, password: &str, sslmode: Option<&str>) -> Vec<String> {
    let mut args = vec![
        format!("jdbc:postgresql://127.0.0.1:{port}/{DATABASE}"),
        user.to_string(),
        password.to_string(),
    ];
    args.extend(sslmode.map(str::to_string));
    let out = run_java(PROBE, "Probe", &args, Duration::from_secs(120));
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_behaves_through_pgwarden_as_against_postgresql() {
    let cluster = support::cluster(0);
    let tls = support::tls_files();
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 2;
        c.proxy.tls_cert = Some(tls.cert.clone());
        c.proxy.tls_key = Some(tls.key.clone());
    })
    .await;
    let primary = cluster.primary().port;
    let port = proxy.port();
    let (direct, through, through_tls) = tokio::task::spawn_blocking(move || {
        let direct = probe(primary, USER, PASSWORD, None);
        let through = probe(port, USER, PASSWORD, None);
        let through_tls = probe(port, USER, PASSWORD, Some("require"));
        (direct, through, through_tls)
    })
    .await
    .unwrap();
    // The probe itself must have worked: these are what PostgreSQL answers.
    for expected in [
        "batch-insert ok 500",
        "commit ok 10",
        "rollback ok 500",
        "fetch-size-cursor ok 500/124750",
        "error-then-next ok 22012 then 42",
        "failed-transaction ok 25P02",
        "schema-change ok 6",
        "large-result ok 200000",
        "copy-in ok 2 2",
        "query-timeout-cancels ok 57014 then 5",
        "done",
    ] {
        assert!(
            direct.iter().any(|line| line == expected),
            "direct run lacks {expected:?}: {direct:#?}"
        );
    }
    assert_eq!(through, direct, "through pgwarden");
    assert_eq!(through_tls, direct, "through pgwarden with TLS");
    // The fetch-size cursor read its 500 rows in steps of 7: one call per run, as
    // pg_stat_statements counts it, not one per step.
    support::within("flush", proxy.runtime.stats.flush()).await;
    let snapshot = proxy.runtime.stats.snapshot();
    let cursor = snapshot
        .queries
        .iter()
        .find(|q| q.query == "select id from jt order by id")
        .unwrap_or_else(|| panic!("{:#?}", snapshot.queries));
    assert_eq!((cursor.calls, cursor.rows), (2, 1000), "{cursor:#?}");
}
