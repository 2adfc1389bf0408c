//! Session-state pinning under transaction pooling: a client that creates session
//! state keeps it on every transaction, no other client ever sees it (also state made
//! inside functions, procedures and `DO` blocks, which the proxy cannot see), pinned
//! clients starve nobody, and the console shows who is pinned and why. Shares the
//! helpers of `driver_pooling.rs`.

use std::time::Duration;

use crate::driver_common as common;
use crate::support;

use common::*;
use serde_json::Value;
use support::proxy::{self, PASSWORD, USER};
use tokio_postgres::SimpleQueryMessage;

/// Every kind of session state at once, created by A and used on each of 5
/// transactions while B, between them, never sees any of it. Pool size 2: A is pinned
/// to one server connection, B is served on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_session_state_stays_with_its_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let a = connect(&proxy::url(&proxy)).await;
    let (b, _b_task) = connect(&proxy::url(&proxy)).await;
    let states = [
        EXTENDED_SET,
        SET_CONFIG,
        SESSION_CHARACTERISTICS,
        TEMP_TABLE,
        PREPARED,
        LISTENING,
        ADVISORY_LOCK,
        HELD_CURSOR,
    ];
    let uses = [OWNER_USES, &[READ_TEMP_TABLE]].concat();
    alternate(&a.0, &b, &states, &uses, OTHER_USES, 5).await;
    leave(a).await;

    let direct = proxy::connect_direct(&cluster).await;
    let left = [
        "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'",
        "SELECT count(*)::text FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'",
    ];
    let mut after = Vec::new();
    for sql in left {
        after.push(answer(&direct, sql).await);
    }
    assert_eq!(after, ["0", "0"], "state left behind after its client left");
}

/// What a function, procedure or `DO` block does to the server session is not in the
/// protocol: settings changed with `set_config` or PL/pgSQL's `SET`, a temp table, a
/// `LISTEN`, a session advisory lock. With one pooled connection, the next client gets
/// that same backend, and must find none of it. Calls of PostgreSQL's own functions do
/// not reset the connection (the pooled prepared statement survives them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_made_inside_functions_never_reaches_the_next_client() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let direct = proxy::connect_direct(&cluster).await;
    let body = "PERFORM set_config('work_mem', '77MB', false); \
                PERFORM set_config('search_path', 'elsewhere, public', false); \
                SET statement_timeout = '12s'; \
                CREATE TEMP TABLE IF NOT EXISTS left_behind(x int); \
                LISTEN left_channel; \
                PERFORM pg_advisory_lock(4242);";
    let setup_sql = format!(
        "CREATE FUNCTION make_state() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN {body} RETURN 1; END $f$; \
         CREATE PROCEDURE make_state_proc() LANGUAGE plpgsql AS $f$ BEGIN {body} END $f$; \
         CREATE FUNCTION plus_one(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';"
    );
    tokio::time::timeout(STEP, direct.batch_execute(&setup_sql))
        .await
        .expect("setup hung")
        .expect("setup");
    let probe = "SELECT concat_ws(' ', current_setting('work_mem'), current_setting('search_path'), \
                 current_setting('statement_timeout'), \
                 (SELECT count(*) FROM pg_class WHERE relname = 'left_behind' AND relpersistence = 't'), \
                 (SELECT count(*) FROM pg_listening_channels()), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()))";
    let clean = "4MB \"$user\", public 0 0 0 0";
    let a = connect(&proxy::url(&proxy)).await;
    let b = connect(&proxy::url(&proxy)).await;
    let pid = "SELECT pg_backend_pid()::text";
    let backend = answer(&a.0, pid).await;
    let mut seen = Vec::new();
    for make in [
        "SELECT make_state()",
        "CALL make_state_proc()",
        // A DO block's own text would pin its client for a temp table, LISTEN or lock
        // (as any statement's does): this one only changes settings.
        "DO $d$ BEGIN SET work_mem = '77MB'; EXECUTE 'SET search_path = elsewhere'; END $d$",
    ] {
        let made = if make.starts_with("SELECT") { "1" } else { "" }; // CALL, DO: no rows
        assert_eq!(answer(&a.0, make).await, made);
        assert_eq!(answer(&b.0, pid).await, backend, "one pooled backend");
        seen.push((make.to_string(), answer(&b.0, probe).await));
    }
    // The extended protocol (tokio-postgres prepares a named statement).
    let row = tokio::time::timeout(STEP, a.0.query_one("SELECT make_state()", &[]))
        .await
        .expect("hung")
        .expect("make_state over the extended protocol");
    assert_eq!(row.get::<_, i32>(0), 1);
    seen.push(("extended".into(), answer(&b.0, probe).await));
    let expected: Vec<_> = seen
        .iter()
        .map(|(make, _)| (make.clone(), clean.to_string()))
        .collect();
    assert_eq!(
        seen, expected,
        "state made inside functions reached the next client"
    );

    // Built-in and immutable calls keep the connection as it is: the proxy's pooled
    // statement stays.
    let builtin =
        "SELECT count(*) FROM generate_series(1, $1::int) WHERE now() IS NOT NULL AND plus_one(1) = 2";
    let row = tokio::time::timeout(STEP, a.0.query_one(builtin, &[&3i32]))
        .await
        .expect("hung")
        .expect("builtin call");
    assert_eq!(row.get::<_, i64>(0), 3);
    let pooled = "SELECT count(*)::text FROM pg_prepared_statements WHERE statement LIKE '%generate_series%'";
    assert_eq!(
        answer(&b.0, pooled).await,
        "1",
        "a built-in call reset the connection"
    );
    leave(a).await;
    leave(b).await;
}

/// A statement repeated with other numbers (`SELECT set_state(1)`, then `(2)`) reuses
/// the first one's verdict on opaque code (`FamilyVerdicts`): every call still resets the
/// connection before the next client. Pool size 1: B always gets the connection A just
/// used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_repeated_with_other_numbers_is_judged_like_the_first() {
    let (cluster, proxy) = setup(|c| c.pool.size = 1).await;
    let direct = proxy::connect_direct(&cluster).await;
    tokio::time::timeout(
        STEP,
        direct.batch_execute(
            "CREATE FUNCTION set_state(n int) RETURNS int LANGUAGE plpgsql AS $f$ BEGIN \
             PERFORM set_config('work_mem', (64 + n) || 'MB', false); \
             CREATE TEMP TABLE IF NOT EXISTS left_behind(x int); RETURN n; END $f$;",
        ),
    )
    .await
    .expect("setup hung")
    .expect("setup");
    let probe = "SELECT concat_ws(' ', current_setting('work_mem'), \
                 (SELECT count(*) FROM pg_class WHERE relname = 'left_behind' AND relpersistence = 't'))";
    let a = connect(&proxy::url(&proxy)).await;
    let b = connect(&proxy::url(&proxy)).await;
    for n in [1, 2, 37, 4] {
        assert_eq!(
            answer(&a.0, &format!("SELECT set_state({n})")).await,
            n.to_string()
        );
        assert_eq!(
            answer(&b.0, probe).await,
            "4MB 0",
            "call {n}: state made inside the function reached the next client"
        );
    }
    // Built-in calls with changing numbers (a family judged safe) run as before.
    assert_eq!(
        answer(&a.0, "SELECT count(*) FROM generate_series(1, 5)").await,
        "5"
    );
    assert_eq!(
        answer(&a.0, "SELECT count(*) FROM generate_series(1, 12)").await,
        "12"
    );
    assert_eq!(answer(&b.0, probe).await, "4MB 0");
    leave(a).await;
    leave(b).await;
}

/// `pin_session_state = false` brings back the old behaviour: state may leak, but
/// nothing waits for a pinned connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pinning_nothing_hangs() {
    let (_cluster, proxy) = setup(|c| {
        c.pool.size = 1;
        c.pool.pin_session_state = false;
    })
    .await;
    let a = connect(&proxy::url(&proxy)).await;
    let (b, _b_task) = connect(&proxy::url(&proxy)).await;
    let mut hung = Vec::new();
    let mut b_answers = Vec::new();
    for state in [TEMP_TABLE, PREPARED, LISTENING, ADVISORY_LOCK, HELD_CURSOR] {
        for (client, sql) in [(&a.0, state.create), (&a.0, state.probe)] {
            let got = answer(client, sql).await;
            if got.starts_with("hung") {
                hung.push(got);
            }
        }
        b_answers.push(answer(&b, "SELECT 1").await);
    }
    leave(a).await;
    b_answers.push(answer(&b, "SELECT 1").await);
    let (c, _c_task) = connect(&proxy::url(&proxy)).await;
    b_answers.push(answer(&c, "SELECT 1").await);
    assert_eq!(hung, Vec::<String>::new());
    assert_eq!(b_answers, ["1"; 7]);
}

/// Pool size 3 with two pinned clients: ten others share the one connection left and
/// all finish, and the pinned clients keep their temp tables throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_do_not_starve_the_others() {
    let (_cluster, proxy) = setup(|c| c.pool.size = 3).await;
    let url = proxy::url(&proxy);
    let mut pinned = Vec::new();
    for i in 0..2 {
        let (client, task) = connect(&url).await;
        let create = format!("CREATE TEMP TABLE mine AS SELECT {i} AS x");
        assert_eq!(answer(&client, &create).await, "");
        pinned.push((client, task));
    }
    let workers = (0..10).map(|w| {
        let url = url.clone();
        tokio::spawn(async move {
            let (client, _task) = connect(&url).await;
            let mut sum = 0;
            for q in 0..20 {
                let row = tokio::time::timeout(STEP, client.query_one("SELECT $1::int", &[&q]))
                    .await
                    .map_err(|_| format!("worker {w}: query {q} hung"))?;
                sum += row
                    .map(|r| r.get::<_, i32>(0))
                    .map_err(|e| format!("worker {w}: {e}"))?;
            }
            Ok::<i32, String>(sum)
        })
    });
    let workers = futures_util::future::join_all(workers);
    let reads = async {
        let mut seen = Vec::new();
        for _ in 0..10 {
            for (client, _) in &pinned {
                seen.push(answer(client, "SELECT x::text FROM mine").await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    let (sums, seen) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(workers, reads)
    })
    .await
    .expect("everyone finishes within 60 s");
    let sums: Vec<Result<i32, String>> = sums.into_iter().map(|s| s.unwrap()).collect();
    assert_eq!(sums, vec![Ok(190); 10]);
    assert_eq!(seen, ["0", "1"].repeat(10));
}

/// `SHOW CLIENTS` on the admin console and `/api/clients` say who is pinned and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_pinned_clients_and_why() {
    let (_cluster, proxy) = setup(|c| c.pool.size = 2).await;
    let base = proxy::url(&proxy);
    let (pinned, _p) = connect(&format!("{base}?application_name=pinned-client")).await;
    let (free, _f) = connect(&format!("{base}?application_name=free-client")).await;
    assert_eq!(answer(&pinned, TEMP_TABLE.create).await, "");
    assert_eq!(answer(&free, "SELECT 1").await, "1");

    let admin_url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/pgwarden",
        proxy.port()
    );
    let (admin, _a) = connect(&admin_url).await;
    let rows = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let pinned_column = |app: &str| -> String {
        rows.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) if r.get("application_name") == Some(app) => Some(
                    r.try_get("pinned")
                        .expect("SHOW CLIENTS has a pinned column")
                        .unwrap_or("NULL")
                        .to_string(),
                ),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no SHOW CLIENTS row for {app}"))
    };
    let pinned_reason = pinned_column("pinned-client");
    assert!(pinned_reason.contains("temp table"), "{pinned_reason:?}");
    let free_reason = pinned_column("free-client");
    assert!(!free_reason.contains("temp table"), "{free_reason:?}");

    let (status, body) = support::http::get(proxy.http_address, "/api/clients", None).await;
    assert_eq!(status, 200);
    let clients: Value = serde_json::from_str(&body).unwrap();
    let field = |app: &str| -> Value {
        clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["application_name"] == app)
            .unwrap_or_else(|| panic!("no /api/clients entry for {app}: {body}"))["pinned"]
            .clone()
    };
    let pinned_field = field("pinned-client");
    assert!(
        pinned_field
            .as_str()
            .is_some_and(|s| s.contains("temp table")),
        "{body}"
    );
    assert!(
        !field("free-client").to_string().contains("temp table"),
        "{body}"
    );
}
