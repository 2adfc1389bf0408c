//! Issue 9: transaction pooling that real drivers cannot tell from PostgreSQL. One test
//! per numbered item of the issue, each with the client that showed the bug (asyncpg,
//! psycopg 3 and libpq, node-postgres, tokio-postgres, or raw protocol). The pinning
//! checks live in `session_pinning.rs`.
//!
//! The Python and node scripts live in `tests/driver_pooling/`; each prints one JSON line
//! with what every step answered (`{"ok": ...}`, `{"error": "SQLSTATE"}` or
//! `{"hung": ...}`), and the assertions here compare it whole.

use crate::driver_common as common;
use crate::support;

use common::*;
use pgwarden::config::AuthMethod;
use serde_json::{json, Value};
use support::proxy;
use tokio::io::AsyncWriteExt;

// ---- Hangs -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item01_asyncpg_parse_error_does_not_wedge_the_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let env = script_env(&cluster, &proxy, "");
    let out = python(include_str!("driver_pooling/parse_error.py"), env).await;
    assert_eq!(
        out,
        json!({
            "too_deep": {"error": "54000"},
            "after": {"ok": 1},
            "other": {"ok": 1},
            "busy": {"ok": []},
        })
    );
    let (other, task) = connect(&proxy::url(&proxy)).await;
    assert_eq!(answer(&other, "select 1").await, "1");
    leave((other, task)).await;
    assert_eq!(busy_backends(&cluster).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_psycopg_pipeline_error_then_rollback_gets_answers() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let env = script_env(&cluster, &proxy, "");
    let out = python(include_str!("driver_pooling/pipeline_error.py"), env).await;
    assert_eq!(
        out,
        json!({
            "pipeline": {"error": "22012"},
            "rollback": {"ok": null},
            "select": {"ok": [1]},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item03_client_leaving_mid_batch_frees_its_server() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let env = script_env(&cluster, &proxy, "close");
    let out = python(include_str!("driver_pooling/batch_without_sync.py"), env).await;
    assert_eq!(out, json!({"new_client": {"ok": [1]}, "busy": {"ok": []}}));
    assert_eq!(busy_backends(&cluster).await, Vec::<String>::new());
}

/// The silent client holds its server mid-batch; `idle_in_batch_timeout_ms` (and the
/// mid-transaction one, should the proxy count it that way) ends it after 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item03_silent_client_mid_batch_is_disconnected() {
    let (cluster, proxy) = setup(|c| {
        c.pool.size = 1;
        c.pool.idle_in_batch_timeout_ms = 1000;
        c.pool.idle_in_transaction_timeout_ms = 1000;
    })
    .await;
    let env = script_env(&cluster, &proxy, "silent");
    let out = python(include_str!("driver_pooling/batch_without_sync.py"), env).await;
    assert_eq!(
        out,
        json!({
            "new_client": {"ok": [1]},
            "busy": {"ok": []},
            "silent_client": {"closed": true, "told_25P03": true},
        })
    );
}

// ---- State leaking between clients -------------------------------------------------

/// What `extended_set.py` must print: A always has its setting, B never.
fn extended_set_expected(changed: Value, hold: bool) -> Value {
    let mut round = json!({
        "a_show": {"ok": "200ms"},
        "a_sleep": {"error": "57014"},
        "b_show": {"ok": "0"},
    });
    if hold {
        round["hold"] = json!({"ok": "SELECT 1"});
        round["release"] = json!({"ok": "COMMIT"});
    }
    json!({
        "changed": changed,
        "rounds": [round, round, round],
        "a_left": {"ok": null},
        "b_after": [{"ok": "0"}, {"ok": "0"}, {"ok": "0"}],
    })
}

/// Pool size 1: A and B alternate on one server connection; B must not inherit A's SET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item04_asyncpg_extended_set_does_not_reach_the_next_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let env = script_env(&cluster, &proxy, "set");
    let out = python(include_str!("driver_pooling/extended_set.py"), env).await;
    assert_eq!(out, extended_set_expected(json!({"ok": []}), false));
}

/// Pool size 2, a third client holding the connection A changed: A, served by the
/// other connection, must still have its setting (its pg_sleep is cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item04_asyncpg_extended_set_follows_its_client_to_another_connection() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let mut env = script_env(&cluster, &proxy, "set");
    env.push(("HOLD", "1".into()));
    let out = python(include_str!("driver_pooling/extended_set.py"), env).await;
    assert_eq!(out, extended_set_expected(json!({"ok": []}), true));
}

/// `set_config(..., false)` may be replayed or may pin its client: with pool size 2 and
/// a holder, either way A keeps the value and B never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item04_asyncpg_set_config_follows_its_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let mut env = script_env(&cluster, &proxy, "set_config");
    env.push(("HOLD", "1".into()));
    let out = python(include_str!("driver_pooling/extended_set.py"), env).await;
    assert_eq!(out, extended_set_expected(json!({"ok": [["200ms"]]}), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item05_session_characteristics_follow_their_client() {
    let (_cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let (a, _a_task) = connect(&proxy::url(&proxy)).await;
    let (b, _b_task) = connect(&proxy::url(&proxy)).await;
    let set = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE";
    assert_eq!(answer(&a, set).await, "");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(answer(&a, "SHOW transaction_isolation").await);
        seen.push(answer(&b, "SHOW transaction_isolation").await);
        seen.push(answer(&a, "BEGIN; SHOW transaction_isolation; COMMIT").await);
    }
    let expected = ["serializable", "read committed", "serializable"].repeat(3);
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item06_temp_table_is_gone_when_its_client_leaves() {
    let (_cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let a = connect(&proxy::url(&proxy)).await;
    let mut seen = vec![
        execute(&a.0, "CREATE TEMP TABLE t (x int)").await,
        execute(&a.0, "INSERT INTO t VALUES (7)").await,
    ];
    for _ in 0..3 {
        seen.push(answer(&a.0, "SELECT x::text FROM t").await);
    }
    leave(a).await;
    let b = connect(&proxy::url(&proxy)).await;
    seen.push(answer(&b.0, "SELECT (to_regclass('pg_temp.t') IS NULL)::text").await);
    seen.push(execute(&b.0, "CREATE TEMP TABLE t (x int)").await);
    assert_eq!(
        seen,
        ["ok 0", "ok 1", "7", "7", "7", "true", "ok 0"].map(String::from)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item06_temp_table_is_private_and_lasts_across_transactions() {
    let (_cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let (a, _a_task) = connect(&proxy::url(&proxy)).await;
    let (b, _b_task) = connect(&proxy::url(&proxy)).await;
    let temp = State {
        extended: true,
        ..TEMP_TABLE
    };
    alternate(&a, &b, &[temp], &[READ_TEMP_TABLE], &[], 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item07_prepare_advisory_lock_and_held_cursor_stay_with_their_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let a = connect(&proxy::url(&proxy)).await;
    let (b, _b_task) = connect(&proxy::url(&proxy)).await;
    alternate(
        &a.0,
        &b,
        &[PREPARED, ADVISORY_LOCK, HELD_CURSOR],
        OWNER_USES,
        OTHER_USES,
        5,
    )
    .await;
    leave(a).await;
    // The lock went with its client.
    let direct = proxy::connect_direct(&cluster).await;
    let held = "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'";
    let mut after = vec![answer(&direct, held).await];
    for _ in 0..4 {
        after.push(answer(&b, "SELECT pg_try_advisory_xact_lock(42)::text").await);
        after.push(answer(&b, PREPARED.probe).await);
        after.push(answer(&b, HELD_CURSOR.probe).await);
    }
    assert_eq!(after, [&["0"][..], &["true", "0", "0"].repeat(4)].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item07_node_listen_notify_through_transaction_pooling() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let env = script_env(&cluster, &proxy, "");
    let out = node(include_str!("driver_pooling/listen_notify.js"), env).await;
    let select = json!({"ok": [{"one": 1}]});
    let notify = json!({"ok": "NOTIFY"});
    assert_eq!(
        out,
        json!({
            "steps": [
                {"ok": "connected"}, {"ok": "connected"}, {"ok": "LISTEN"},
                notify, select, notify, select, notify, select,
            ],
            "waited": {"ok": "done"},
            "received": ["jobs:job-0", "jobs:job-1", "jobs:job-2"],
        })
    );
}

// ---- Prepared statements under transaction pooling ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item08_reprepare_after_deallocate_all_through_extended_protocol() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let (client, _task) = connect(&proxy::url(&proxy)).await;
    let mut seen = Vec::new();
    // As pgjdbc does: prepare S, execute, DEALLOCATE ALL, prepare S again, execute.
    for reset in ["DEALLOCATE ALL", "DISCARD ALL"] {
        for round in 0..2 {
            let result = async {
                let statement = client.prepare("SELECT $1::int + 1").await?;
                let row = client.query_one(&statement, &[&(round * 10)]).await?;
                Ok::<i32, tokio_postgres::Error>(row.get(0))
            };
            seen.push(match tokio::time::timeout(STEP, result).await {
                Ok(Ok(v)) => format!("{reset}, round {round}: {v}"),
                Ok(Err(e)) => format!("{reset}, round {round}: error {:?}", e.code()),
                Err(_) => format!("{reset}, round {round}: hung"),
            });
            seen.push(execute(&client, reset).await);
        }
    }
    assert_eq!(
        seen,
        [
            "DEALLOCATE ALL, round 0: 1",
            "ok 0",
            "DEALLOCATE ALL, round 1: 11",
            "ok 0",
            "DISCARD ALL, round 0: 1",
            "ok 0",
            "DISCARD ALL, round 1: 11",
            "ok 0",
        ]
        .map(String::from)
    );
    let env = script_env(&cluster, &proxy, "");
    let out = python(include_str!("driver_pooling/deallocate_all.py"), env).await;
    assert_eq!(
        out,
        json!({"before": {"ok": 2}, "deallocated": {"ok": []}, "again": {"ok": 42}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item09_asyncpg_reprepares_after_column_type_change() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let env = script_env(&cluster, &proxy, "");
    let out = python(include_str!("driver_pooling/altered_result_type.py"), env).await;
    assert_eq!(
        out,
        json!({"before": [{"ok": [[1]]}, {"ok": [[1]]}], "after": {"ok": [["1"]]}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item10_unnamed_statement_survives_sync() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let env = script_env(&cluster, &proxy, "");
    let out = python(include_str!("driver_pooling/unnamed_statement.py"), env).await;
    let described = json!({"ok": {"status": "COMMAND_OK", "nparams": 1}});
    assert_eq!(
        out,
        json!({
            "prepare": {"ok": {"status": "COMMAND_OK", "nparams": 0}},
            "describe": described,
            "other_busy": {"ok": [1]},
            "describe_again": described,
            "execute": {"ok": {"status": "TUPLES_OK", "value": "42"}},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_server_statements_are_bounded_per_connection() {
    let (_cluster, proxy) = setup(|c| {
        c.pool.size = 1;
        c.pool.max_prepared_statements = 5;
    })
    .await;
    let (client, _task) = connect(&proxy::url(&proxy)).await;
    let mut statements = Vec::new();
    for i in 0..20 {
        let sql = format!("SELECT $1::int + {i}");
        let prepared = tokio::time::timeout(STEP, client.prepare(&sql)).await;
        statements.push(prepared.expect("prepare hung").expect(&sql));
    }
    let (mut got, mut expected) = (Vec::new(), Vec::new());
    for round in 0..4 {
        for (i, statement) in statements.iter().enumerate() {
            let result = tokio::time::timeout(STEP, client.query_one(statement, &[&100])).await;
            got.push(match result {
                Ok(result) => result
                    .map(|r| r.get::<_, i32>(0))
                    .map_err(|e| e.to_string()),
                Err(_) => Err("hung".into()),
            });
            expected.push(Ok(100 + i as i32));
        }
        let kept = answer(&client, "SELECT count(*) FROM pg_prepared_statements").await;
        let kept: i64 = kept.parse().expect(&kept);
        assert!(
            kept <= 5,
            "round {round}: {kept} statements on the server connection"
        );
    }
    assert_eq!(got, expected);
}

// ---- Raw protocol: when answers reach the client ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item12_known_statement_parse_is_answered_only_at_sync() {
    use postgres_protocol::message::frontend;
    let (_cluster, proxy) = setup(|c| {
        c.pool.size = 1;
        c.auth.method = AuthMethod::Trust;
    })
    .await;
    // Another client makes the statement known to the proxy and its server connection.
    let (other, _task) = connect(&proxy::url(&proxy)).await;
    let known = tokio::time::timeout(STEP, other.prepare("select 1"))
        .await
        .expect("prepare hung")
        .unwrap();
    tokio::time::timeout(STEP, other.query_one(&known, &[]))
        .await
        .expect("query hung")
        .unwrap();

    let mut raw = raw_login(proxy.port()).await;
    let mut out = bytes::BytesMut::new();
    frontend::parse("p1", "select 1", std::iter::empty(), &mut out).unwrap();
    raw.write_all(&out.split()).await.unwrap();
    assert_silent(&mut raw, "Parse").await;
    frontend::sync(&mut out);
    raw.write_all(&out.split()).await.unwrap();
    assert_eq!(read_until_ready(&mut raw).await, ['1', 'Z']);

    // The same for a whole pipeline: nothing before Sync, then every answer in order.
    frontend::parse("p2", "select 1", std::iter::empty(), &mut out).unwrap();
    let no_params: [Option<&[u8]>; 0] = [];
    frontend::bind(
        "",
        "p2",
        std::iter::empty::<i16>(),
        no_params,
        |value: Option<&[u8]>, buf: &mut bytes::BytesMut| match value {
            Some(v) => {
                buf.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        std::iter::empty::<i16>(),
        &mut out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    raw.write_all(&out.split()).await.unwrap();
    assert_silent(&mut raw, "Parse/Bind/Execute").await;
    frontend::sync(&mut out);
    raw.write_all(&out.split()).await.unwrap();
    assert_eq!(read_until_ready(&mut raw).await, ['1', '2', 'D', 'C', 'Z']);
    drop(known);
}
