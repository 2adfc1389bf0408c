//! What a client is told and what it can do, exactly as PostgreSQL does it (issue 10,
//! items 3-6 and 10): normalized `ParameterStatus` values, an empty `application_name`,
//! the real backend pid under session pooling and a known pid on the client's own
//! notifications, one error (the server's) when the server ends the connection, and
//! `DROP/ALTER DATABASE` through the proxy. Each driver script runs against PostgreSQL
//! directly and through pgwarden; the answers must match.

use crate::support;

use crate::driver_common as common;

use common::{connect, execute, node, python, setup, STEP};
use pgwarden::config::{DatabaseConfig, PoolMode};
use serde_json::Value;
use support::proxy;

async fn run_both(
    script_runner: impl Fn(
        Vec<(&'static str, String)>,
    ) -> futures_util::future::BoxFuture<'static, Value>,
    mode: PoolMode,
) -> (Value, Value) {
    let (cluster, proxy) = setup(|c| c.pool.mode = mode).await;
    let env = |target: String, mode: &str| {
        vec![
            ("TARGET_URL", target),
            ("DIRECT_URL", cluster.primary_url()),
            ("MODE", mode.to_string()),
        ]
    };
    let direct = script_runner(env(cluster.primary_url(), "direct")).await;
    let through = script_runner(env(proxy::url(&proxy), &format!("{mode:?}"))).await;
    (direct, through)
}

fn told_script(
    env: Vec<(&'static str, String)>,
) -> futures_util::future::BoxFuture<'static, Value> {
    Box::pin(python(
        include_str!("session_fidelity/what_the_client_is_told.py"),
        env,
    ))
}

fn fatal_script(
    env: Vec<(&'static str, String)>,
) -> futures_util::future::BoxFuture<'static, Value> {
    Box::pin(node(include_str!("session_fidelity/fatal_once.js"), env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_tells_what_postgresql_tells() {
    let (direct, through) = run_both(told_script, PoolMode::Session).await;
    assert_eq!(direct["told"]["client_encoding"], "UTF8", "{direct}");
    assert_eq!(direct["told"]["DateStyle"], "ISO, DMY", "{direct}");
    // Everything, including the backend pid (pg_terminate_backend works with it) and
    // the pid on the client's own notifications.
    assert_eq!(through, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_tells_what_postgresql_tells() {
    let (direct, mut through) = run_both(told_script, PoolMode::Transaction).await;
    // Under transaction pooling the pid is the client's own, not one backend's (README).
    assert_eq!(through["pid_is_backend"], false, "{through}");
    through["pid_is_backend"] = direct["pid_is_backend"].clone();
    assert_eq!(through, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_fatal_reaches_the_client_once() {
    // Session pooling: exactly as PostgreSQL (one error, then the connection ends).
    let (direct, through) = run_both(fatal_script, PoolMode::Session).await;
    assert_eq!(direct["terminated"], true, "{direct}");
    assert_eq!(direct["ended"], true, "{direct}");
    assert_eq!(direct["errors"][0], "57P01", "{direct}");
    assert_eq!(through, direct, "session pooling");
    // Transaction pooling: the client's connection is to pgwarden and outlives the
    // server's (issue 14): the same 57P01 once, at its next query, and it goes on.
    let (_, through) = run_both(fatal_script, PoolMode::Transaction).await;
    assert_eq!(through["terminated"], true, "{through}");
    assert_eq!(through["ended"], false, "{through}");
    assert_eq!(through["errors"], serde_json::json!([]), "{through}");
    assert_eq!(through["next"], "57P01", "{through}");
    assert_eq!(through["after"], "ok", "{through}");
}

/// A second configured database, `scratch`, that a client of `app` drops or renames,
/// through the extended protocol or (`simple`) the simple one.
async fn drop_or_rename(statement: &str, simple: bool) -> String {
    let cluster = support::cluster(0);
    let admin = proxy::connect_direct(&cluster).await;
    tokio::time::timeout(STEP, admin.batch_execute("CREATE DATABASE scratch"))
        .await
        .expect("create database hung")
        .expect("create database");
    let scratch_url = cluster.primary_url().replace("/app", "/scratch");
    let proxy = proxy::start(&cluster, |c| {
        c.databases.insert(
            "scratch".into(),
            DatabaseConfig {
                primary: scratch_url.clone(),
                ..c.databases["app"].clone()
            },
        );
    })
    .await;
    // A client of scratch leaves idle pooled server connections behind.
    let scratch_client = proxy::url(&proxy).replace("/app", "/scratch");
    let (user, task) = connect(&scratch_client).await;
    assert_eq!(execute(&user, "SELECT 1").await, "ok 1");
    common::leave((user, task)).await;
    // An index-advisor round has looked at both databases: it must not keep a
    // connection to scratch (PostgreSQL would count it as another session).
    let config = proxy.runtime.config();
    proxy.runtime.stats.flush().await;
    let snapshot = proxy.runtime.stats.snapshot();
    let rounds = tokio::time::timeout(
        STEP * 6,
        proxy.runtime.advisors.run_round(&config, &snapshot),
    )
    .await
    .expect("advisor round in time");
    assert!(rounds.contains_key("scratch"), "{rounds:?}");
    let (owner, _task) = connect(&proxy::url(&proxy)).await;
    if simple {
        common::answer(&owner, statement).await
    } else {
        execute(&owner, statement).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_through_the_proxy() {
    assert_eq!(drop_or_rename("DROP DATABASE scratch", false).await, "ok 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_database_through_the_proxy() {
    assert_eq!(
        drop_or_rename("ALTER DATABASE scratch RENAME TO scratch2", true).await,
        "",
        "simple protocol: no rows, no error"
    );
}

/// Item 9: a server error is relayed while the client is still streaming its batch
/// (it is not held until the client's `Sync`), and the messages the client sent after
/// the error are skipped by the server and owed nothing: after `Sync` the session is
/// in step and the next statement answers normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reaches_a_streaming_client_and_the_batch_ends_cleanly() {
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cluster, proxy) = setup(|c| {
        c.pool.size = 1;
        c.auth.method = pgwarden::config::AuthMethod::Trust;
    })
    .await;
    let mut raw = common::raw_login(proxy.port()).await;
    let mut out = bytes::BytesMut::new();
    let bind_execute = |out: &mut bytes::BytesMut| {
        let no_params: [Option<&[u8]>; 0] = [];
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            no_params,
            |_: Option<&[u8]>, _: &mut bytes::BytesMut| Ok(postgres_protocol::IsNull::Yes),
            std::iter::empty::<i16>(),
            out,
        )
        .map_err(|_| "bind")
        .unwrap();
        frontend::execute("", 0, out).unwrap();
    };
    frontend::parse("", "select 1 / 0", std::iter::empty(), &mut out).unwrap();
    bind_execute(&mut out);
    raw.write_all(&out.split()).await.unwrap();
    // The client keeps streaming and reads what has arrived: the error, before any Sync.
    let mut seen = Vec::new();
    let mut error_seen = false;
    for _ in 0..50 {
        bind_execute(&mut out);
        raw.write_all(&out.split()).await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), raw.read(&mut buf)).await
        {
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&b'E') {
                error_seen = true;
                break;
            }
        }
    }
    assert!(
        error_seen,
        "the ErrorResponse must reach the client before its Sync: got {seen:?}"
    );
    assert_eq!(seen.first(), Some(&b'1'), "ParseComplete, then the error");
    // What the client had in flight when it noticed, then its Sync.
    for _ in 0..10 {
        bind_execute(&mut out);
    }
    frontend::sync(&mut out);
    raw.write_all(&out.split()).await.unwrap();
    let tags = common::read_until_ready(&mut raw).await;
    assert_eq!(
        tags,
        vec!['Z'],
        "one ReadyForQuery for the skipped rest of the batch"
    );
    // In step: a new batch gets exactly its own answers.
    frontend::parse("", "select 2", std::iter::empty(), &mut out).unwrap();
    bind_execute(&mut out);
    frontend::sync(&mut out);
    raw.write_all(&out.split()).await.unwrap();
    let tags = common::read_until_ready(&mut raw).await;
    assert_eq!(tags, vec!['1', '2', 'D', 'C', 'Z']);
    // And the server connection went back to the pool: another client is served.
    let (other, _task) = connect(&proxy::url(&proxy)).await;
    assert_eq!(execute(&other, "SELECT 1").await, "ok 1");
}
