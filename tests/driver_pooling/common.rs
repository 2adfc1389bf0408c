//! Helpers for `driver_pooling.rs` and `session_pinning.rs`: running the driver
//! scripts beside this file, tokio-postgres clients whose every statement has a
//! timeout, the kinds of session state a client can create (and how to see them), and
//! raw protocol reads.

use std::time::Duration;

use pgwarden::cluster::LocalCluster;
use pgwarden::config::Config;
use pgwarden::RunningProxy;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{self, drivers, proxy};

/// Longest a driver script may run; every step inside it has its own, shorter timeout.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one statement of a Rust client may take before it counts as hung.
pub const STEP: Duration = Duration::from_secs(5);

/// A cluster and a proxy in front of it, configured by `tweak`.
pub async fn setup(tweak: impl FnOnce(&mut Config)) -> (LocalCluster, RunningProxy) {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, tweak).await;
    (cluster, proxy)
}

pub fn script_env(
    cluster: &LocalCluster,
    proxy: &RunningProxy,
    mode: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("PGW_URL", proxy::url(proxy)),
        ("DIRECT_URL", cluster.primary_url()),
        ("MODE", mode.to_string()),
    ]
}

/// Runs a Python script of `tests/driver_pooling/` and returns the JSON line it printed.
pub async fn python(script: &'static str, env: Vec<(&'static str, String)>) -> Value {
    let run = move || drivers::json_line(&drivers::run_python(script, &env, SCRIPT_TIMEOUT));
    tokio::task::spawn_blocking(run)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Runs a node script of `tests/driver_pooling/` and returns the JSON line it printed.
pub async fn node(script: &'static str, env: Vec<(&'static str, String)>) -> Value {
    let run = move || drivers::json_line(&drivers::run_node(script, &env, SCRIPT_TIMEOUT));
    tokio::task::spawn_blocking(run)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A tokio-postgres client whose disconnection can be awaited with [`leave`].
pub async fn connect(url: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, connection) =
        tokio::time::timeout(STEP, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .expect("connect within 5 s")
            .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Disconnects the client (Terminate) and waits until its connection is closed.
pub async fn leave((client, task): (Client, tokio::task::JoinHandle<()>)) {
    drop(client);
    tokio::time::timeout(STEP, task)
        .await
        .expect("client connection closes")
        .unwrap();
}

/// What one statement answers through the simple protocol: the first column of the
/// first row ("NULL" for null, "" when there are no rows), `error SQLSTATE`, or `hung`.
pub async fn answer(client: &Client, sql: &str) -> String {
    match tokio::time::timeout(STEP, client.simple_query(sql)).await {
        Err(_) => format!("hung: {sql}"),
        Ok(Err(e)) => match e.code() {
            Some(code) => format!("error {}", code.code()),
            None => format!("error {e}"),
        },
        Ok(Ok(messages)) => messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
                _ => None,
            })
            .unwrap_or_default(),
    }
}

/// Like [`answer`], through the extended protocol (`Client::execute`): rows affected.
pub async fn execute(client: &Client, sql: &str) -> String {
    match tokio::time::timeout(STEP, client.execute(sql, &[])).await {
        Err(_) => format!("hung: {sql}"),
        Ok(Err(e)) => match e.code() {
            Some(code) => format!("error {}", code.code()),
            None => format!("error {e}"),
        },
        Ok(Ok(rows)) => format!("ok {rows}"),
    }
}

/// Server backends of the proxy's user that are not idle (direct, excluding itself),
/// after giving the proxy up to 3 s to clean up.
pub async fn busy_backends(cluster: &LocalCluster) -> Vec<String> {
    let direct = proxy::connect_direct(cluster).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let rows = direct
            .query(
                "SELECT state || ': ' || query FROM pg_stat_activity \
                 WHERE usename = 'pgwarden' AND pid <> pg_backend_pid() AND state <> 'idle'",
                &[],
            )
            .await
            .unwrap();
        let busy: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if busy.is_empty() || std::time::Instant::now() > deadline {
            return busy;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- Session state ----------------------------------------------------------------

/// One kind of session state: how client A creates it (`extended`: through
/// `Client::execute`, else the simple protocol), and a probe whose answer shows it, as
/// its owner and as any other (fresh) session sees it.
pub struct State {
    pub create: &'static str,
    pub extended: bool,
    pub probe: &'static str,
    pub owner_sees: &'static str,
    pub others_see: &'static str,
}

pub const PREPARED: State = State {
    create: "PREPARE p AS SELECT 'prepared'::text",
    extended: false,
    probe: "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'p'",
    owner_sees: "1",
    others_see: "0",
};
pub const ADVISORY_LOCK: State = State {
    create: "SELECT pg_advisory_lock(42)",
    extended: false,
    probe: "SELECT count(*)::text FROM pg_locks \
            WHERE locktype = 'advisory' AND objid = 42 AND pid = pg_backend_pid()",
    owner_sees: "1",
    others_see: "0",
};
pub const HELD_CURSOR: State = State {
    create: "DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 10)",
    extended: true,
    probe: "SELECT count(*)::text FROM pg_cursors WHERE name = 'c'",
    owner_sees: "1",
    others_see: "0",
};
pub const LISTENING: State = State {
    create: "LISTEN ch",
    extended: true,
    probe: "SELECT count(*)::text FROM pg_listening_channels() c WHERE c = 'ch'",
    owner_sees: "1",
    others_see: "0",
};
pub const TEMP_TABLE: State = State {
    create: "CREATE TEMP TABLE t AS SELECT 7 AS x",
    extended: false,
    probe: "SELECT (to_regclass('pg_temp.t') IS NOT NULL)::text",
    owner_sees: "true",
    others_see: "false",
};
/// A setting: the proxy may replay it on every server connection or pin its client.
pub const EXTENDED_SET: State = State {
    create: "SET work_mem = '7MB'",
    extended: true,
    probe: "SHOW work_mem",
    owner_sees: "7MB",
    others_see: "4MB",
};
pub const SET_CONFIG: State = State {
    create: "SELECT set_config('lock_timeout', '4321ms', false)",
    extended: false,
    probe: "SHOW lock_timeout",
    owner_sees: "4321ms",
    others_see: "0",
};
pub const SESSION_CHARACTERISTICS: State = State {
    create: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    extended: true,
    probe: "SHOW transaction_isolation",
    owner_sees: "serializable",
    others_see: "read committed",
};

/// A statement the owner runs on every round, and what it must answer in round `r`.
pub type Use = (&'static str, fn(usize) -> String);

/// What the owner of [`PREPARED`] and [`HELD_CURSOR`] runs on every round.
pub const OWNER_USES: &[Use] = &[
    ("EXECUTE p", |_| "prepared".into()),
    ("FETCH 1 FROM c", |r| (r + 1).to_string()),
];
/// What the owner of [`TEMP_TABLE`] runs on every round.
pub const READ_TEMP_TABLE: Use = ("SELECT x::text FROM t", |_| "7".into());
/// What another client runs on every round, and must get back, while lock 42 is held.
pub const OTHER_USES: &[(&str, &str)] = &[("SELECT pg_try_advisory_xact_lock(42)::text", "false")];

/// A creates `states`; then, for `rounds` rounds, A runs every probe and use (each its
/// own transaction) and B, in between, runs every probe and its own uses. A must see
/// its state every time; B must see what a fresh session sees.
pub async fn alternate(
    a: &Client,
    b: &Client,
    states: &[State],
    owner_uses: &[Use],
    other_uses: &[(&str, &str)],
    rounds: usize,
) {
    for state in states {
        let done = if state.extended {
            execute(a, state.create).await
        } else {
            answer(a, state.create).await
        };
        assert!(
            !done.starts_with("error") && !done.starts_with("hung"),
            "{}: {done}",
            state.create
        );
    }
    let (mut a_seen, mut a_expected, mut b_seen, mut b_expected) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        for state in states {
            a_seen.push((state.probe, answer(a, state.probe).await));
            a_expected.push((state.probe, state.owner_sees.to_string()));
        }
        for (sql, expect) in owner_uses {
            a_seen.push((sql, answer(a, sql).await));
            a_expected.push((sql, expect(round)));
        }
        for state in states {
            b_seen.push((state.probe, answer(b, state.probe).await));
            b_expected.push((state.probe, state.others_see.to_string()));
        }
        for (sql, expect) in other_uses {
            b_seen.push((sql, answer(b, sql).await));
            b_expected.push((sql, expect.to_string()));
        }
    }
    assert_eq!(
        a_seen, a_expected,
        "the owner must see its state on every transaction"
    );
    assert_eq!(b_seen, b_expected, "the other client must never see it");
}

// ---- Raw protocol -------------------------------------------------------------------

/// Logs in (trust) over raw TCP, returning the stream after `ReadyForQuery`.
pub async fn raw_login(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut packet = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", proxy::USER), ("database", proxy::DATABASE)],
        &mut packet,
    )
    .unwrap();
    stream.write_all(&packet).await.unwrap();
    let tags = read_until_ready(&mut stream).await;
    assert_eq!(tags.last(), Some(&'Z'), "login: {tags:?}");
    stream
}

/// Reads messages up to and including `ReadyForQuery`; returns their tags.
pub async fn read_until_ready(stream: &mut TcpStream) -> Vec<char> {
    let mut tags = Vec::new();
    loop {
        let mut head = [0u8; 5];
        tokio::time::timeout(STEP, stream.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("no ReadyForQuery within 5 s after {tags:?}"))
            .unwrap();
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        tags.push(head[0] as char);
        if head[0] == b'Z' {
            return tags;
        }
    }
}

/// Fails if the client receives anything within 300 ms.
pub async fn assert_silent(stream: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 64];
    if let Ok(read) = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await
    {
        let n = read.unwrap();
        panic!(
            "{what}: the client got {:?} before sending Sync",
            &byte[..n]
        );
    }
}
