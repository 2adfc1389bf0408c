//! Issue 10: the connection layer behaves as PostgreSQL does. One test per item owned
//! here, each with the client that showed the bug: cancel over TLS (psycopg 3 / libpq
//! 17), a cancel that must not outlive its statement (asyncpg, and raw protocol through a
//! relay that delays cancels so the race is certain), bytes that are not a startup
//! packet (raw TCP, compared with PostgreSQL itself), pool health-check failures that are
//! not "server unreachable" (tokio-postgres), and `check-config` hiding passwords.
//!
//! The scripts live in `tests/connection_fidelity/`; each prints one JSON line with what
//! every step answered (`{"ok": ...}`, `{"error": "SQLSTATE"}` or `{"hung": ...}`).

use crate::support::command::{OutputWithin, SHORT_RUN};
#[path = "connection_fidelity/common.rs"]
mod common;
use crate::support;

use std::time::Duration;

use common::*;
use pgwarden::config::{AuthMethod, PoolMode};
use serde_json::json;
use support::proxy::{self, DATABASE, USER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---- Item 1: cancel over TLS ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item01_psycopg_cancel_safe_over_tls() {
    let cluster = support::cluster(0);
    let tls = tls_files();
    let proxy = proxy::start(&cluster, |c| {
        c.proxy.tls_cert = Some(tls.cert.clone());
        c.proxy.tls_key = Some(tls.key.clone());
    })
    .await;
    let env = vec![("PGW_URL", proxy::url(&proxy))];
    let out = python(include_str!("connection_fidelity/cancel_tls.py"), env).await;
    assert_eq!(
        out,
        json!({
            "tls": true,
            "cancel": {"ok": null},
            "cancelled": {"error": "57014"},
            "after": {"ok": [1]},
        })
    );
}

/// Sessions the proxy itself ends (idle timeout, its own FATAL errors) close TLS the same
/// clean way: the client learns why, not "SSL error: unexpected eof".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_by_the_proxy_ends_tls_cleanly() {
    let cluster = support::cluster(0);
    let tls = tls_files();
    let proxy = proxy::start(&cluster, |c| {
        c.proxy.tls_cert = Some(tls.cert.clone());
        c.proxy.tls_key = Some(tls.key.clone());
        c.proxy.idle_client_timeout_ms = 300;
    })
    .await;
    let env = vec![("PGW_URL", proxy::url(&proxy))];
    let out = python(
        include_str!("connection_fidelity/closed_by_proxy_tls.py"),
        env,
    )
    .await;
    assert_eq!(out["tls"], true, "{out}");
    assert_eq!(out["told_why"], true, "{out}");
    assert_eq!(out["eof_without_close_notify"], false, "{out}");
}

// ---- Item 2: the cancel connection closes after the server acted -----------------------

/// What `cancel_race.py` prints when no next statement was ever cancelled.
fn no_next_statement_cancelled(rounds: u64) -> serde_json::Value {
    json!({
        "sleeps": {r#"{"ok": "timeout"}"#: rounds},
        "nexts": {r#"{"ok": 1}"#: rounds},
    })
}

fn cancel_race_env(
    url: String,
    rounds: u64,
    next: &str,
    fresh: bool,
) -> Vec<(&'static str, String)> {
    vec![
        ("URL", url),
        ("ROUNDS", rounds.to_string()),
        ("NEXT", next.to_string()),
        ("FRESH", if fresh { "1" } else { "0" }.to_string()),
    ]
}

/// The issue's repro: 300 timeouts, each followed by `SELECT 1`, which must never be
/// the statement cancelled; directly first, to show the script itself is sound. The
/// race is narrow (0 to 3 of 300 in the issue, often none on a quiet machine), so the
/// next test widens it until it is certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_asyncpg_timeout_cancel_never_hits_the_next_statement() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.mode = PoolMode::Session).await;
    for (target, url) in [
        ("direct", cluster.primary_url()),
        ("pgwarden", proxy::url(&proxy)),
    ] {
        let env = cancel_race_env(url, 300, "SELECT 1", false);
        let out = python(include_str!("connection_fidelity/cancel_race.py"), env).await;
        assert_eq!(out, no_next_statement_cancelled(300), "{target}");
    }
}

/// The same through a relay that makes PostgreSQL act on every cancel 50 ms late, with
/// a next statement that runs longer than that, and a new statement to time out each
/// round: the timeout strikes while asyncpg prepares it, which ends before the cancel
/// lands, so a proxy that lets asyncpg go on before the server acted has the next
/// statement cancelled instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_asyncpg_late_cancel_never_hits_the_next_statement() {
    let cluster = support::cluster(0);
    let relay = relay(
        cluster.primary().port,
        Cancels::Delay(Duration::from_millis(50)),
    )
    .await;
    let proxy = proxy_via(&cluster, relay.port, AuthMethod::ScramSha256).await;
    let env = cancel_race_env(proxy::url(&proxy), 20, "SELECT 1 FROM pg_sleep(0.2)", true);
    let out = python(include_str!("connection_fidelity/cancel_race.py"), env).await;
    assert_eq!(out, no_next_statement_cancelled(20));
}

/// A client that waits for the cancel connection to close (as asyncpg and libpq do) and
/// then runs its next statement. The relay makes PostgreSQL act on cancels 500 ms late:
/// the cancel, sent while the session was idle, must be spent by the time the client is
/// let go, so it cannot hit the next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_cancel_connection_closes_only_after_the_server_acted() {
    let cluster = support::cluster(0);
    let relay = relay(
        cluster.primary().port,
        Cancels::Delay(Duration::from_millis(500)),
    )
    .await;
    let proxy = proxy_via(&cluster, relay.port, AuthMethod::Trust).await;
    let (mut client, pid, secret) = raw_login(proxy.port(), USER, DATABASE).await;
    assert_eq!(simple_query(&mut client, "SELECT 1").await, "ok");

    let mut cancel = TcpStream::connect(proxy.address).await.unwrap();
    cancel.write_all(&cancel_packet(pid, secret)).await.unwrap();
    assert!(
        closed_within(&mut cancel, Duration::from_secs(15)).await,
        "the proxy must close the cancel connection"
    );
    assert_eq!(simple_query(&mut client, "SELECT pg_sleep(1)").await, "ok");
}

/// A server that never closes the cancel connection: the proxy gives up after its bound,
/// closes the client's cancel connection, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_cancel_to_a_server_that_never_answers_is_bounded() {
    let cluster = support::cluster(0);
    let relay = relay(cluster.primary().port, Cancels::Swallow).await;
    let proxy = proxy_via(&cluster, relay.port, AuthMethod::Trust).await;
    let (mut client, pid, secret) = raw_login(proxy.port(), USER, DATABASE).await;
    assert_eq!(simple_query(&mut client, "SELECT 1").await, "ok");

    let mut cancel = TcpStream::connect(proxy.address).await.unwrap();
    cancel.write_all(&cancel_packet(pid, secret)).await.unwrap();
    assert!(
        closed_within(&mut cancel, Duration::from_secs(20)).await,
        "the proxy must give up on a silent server and close the cancel connection"
    );
    assert_eq!(simple_query(&mut client, "SELECT 2").await, "ok");
}

/// Session pooling (the client keeps its server, so a cancel always has a target),
/// client logins by `auth`, and the primary reached through `port` (a relay).
async fn proxy_via(
    cluster: &pgwarden::cluster::LocalCluster,
    port: u16,
    auth: AuthMethod,
) -> pgwarden::RunningProxy {
    let config = proxy::config_for(cluster, |c| {
        c.auth.method = auth;
        c.pool.mode = PoolMode::Session;
        let db = c.databases.values_mut().next().unwrap();
        db.primary = db.primary.replace(
            &format!(":{}/", cluster.primary().port),
            &format!(":{port}/"),
        );
    });
    pgwarden::RunningProxy::start(config).await.unwrap()
}

// ---- Item 7: bytes that are not a startup packet ---------------------------------------

/// Every case is sent to PostgreSQL and to pgwarden on a fresh connection; both must
/// answer the same messages (type, severity, SQLSTATE, text) or nothing, and both must
/// close the connection or both keep waiting. (`GSSENCRequest` is left out: PostgreSQL
/// built with GSSAPI accepts it, pgwarden declines it as a server without does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item07_first_bytes_are_treated_as_postgres_treats_them() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |_| {}).await;
    let user = [("user", USER), ("database", DATABASE)];
    let mut random = Vec::new();
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..64 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        random.push((seed >> 24) as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Terminate before the startup packet",
            vec![b'X', 0, 0, 0, 4],
        ),
        (
            "Query before the startup packet",
            b"Q\0\0\0\x0dSELECT 1\0".to_vec(),
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello without SSLRequest",
            vec![0x16, 3, 1, 0, 0xc8, 1, 0, 0, 0xc4, 3, 3],
        ),
        ("random bytes", random),
        ("length 2", vec![0, 0, 0, 2]),
        ("length 7", vec![0, 0, 0, 7, 0, 3, 0]),
        ("negative length", vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]),
        ("length over 10000", vec![0, 0, 0x27, 0x15, 0, 3, 0, 0]),
        (
            "incomplete packet",
            packet(196608, &[b'u'; 40])[..20].to_vec(),
        ),
        (
            "cancel request with an unknown key",
            cancel_packet(4242, 4242),
        ),
        ("protocol 2.0", packet(0x0002_0000, &params(&user))),
        ("protocol 4.0", packet(0x0004_0000, &params(&user))),
        ("protocol 3.1", packet(0x0003_0001, &params(&user))),
        ("protocol 3.1 with a protocol option", {
            packet(0x0003_0001, &params(&[("user", USER), ("_pq_.plan", "x")]))
        }),
        (
            "no user",
            packet(196608, &params(&[("database", DATABASE)])),
        ),
        ("no terminator", packet(196608, b"user\0pgwarden\0")),
    ];
    let mut differences = Vec::new();
    for (name, bytes) in &cases {
        let postgres = first_bytes(cluster.primary().port, bytes).await;
        let pgwarden = first_bytes(proxy.port(), bytes).await;
        if postgres != pgwarden {
            differences.push(format!(
                "{name}:\n  postgres {postgres:?}\n  pgwarden {pgwarden:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // And pgwarden still serves everyone.
    let client = proxy::connect(&proxy).await;
    let one = tokio::time::timeout(STEP, client.query_one("SELECT 1", &[]))
        .await
        .expect("SELECT 1 within 5 s")
        .unwrap();
    assert_eq!(one.get::<_, i32>(0), 1);
}

// ---- Item 8: a failed health check is not "server unreachable" -------------------------

/// Idle pooled server connections are terminated behind the proxy's back; the next
/// clients must get fresh ones, not `08006 server unreachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item08_killed_idle_server_connections_do_not_fail_new_clients() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 4).await;
    // Four server connections, all idle in the pool afterwards.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy::connect(&proxy).await);
    }
    let sleeps = clients
        .iter()
        .map(|c| tokio::time::timeout(STEP, c.simple_query("SELECT pg_sleep(0.3)")));
    for result in futures_util::future::join_all(sleeps).await {
        result.expect("pg_sleep within 5 s").unwrap();
    }
    drop(clients);

    let direct = proxy::connect_direct(&cluster).await;
    let killed = tokio::time::timeout(
        STEP,
        direct.query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[&USER],
        ),
    )
    .await
    .expect("pg_terminate_backend within 5 s")
    .unwrap();
    assert!(killed.len() >= 4, "terminated {} backends", killed.len());

    let mut answers = Vec::new();
    for _ in 0..6 {
        let answer = async {
            let client = proxy::connect_url(&proxy::url(&proxy)).await?;
            client
                .query_one("SELECT 1", &[])
                .await?
                .try_get::<_, i32>(0)
        };
        answers.push(match tokio::time::timeout(STEP, answer).await {
            Err(_) => "hung".to_string(),
            Ok(Ok(one)) => one.to_string(),
            Ok(Err(e)) => match e.as_db_error() {
                Some(db) => format!("error {} {}", db.code().code(), db.message()),
                None => format!("error {e}"),
            },
        });
    }
    assert_eq!(answers, vec!["1"; 6]);
}

// ---- Item 12: check-config masks passwords ---------------------------------------------

#[test]
fn item12_check_config_does_not_print_passwords() {
    let secrets = [
        "file-secret-user",
        "file-secret-server",
        "file-secret-token",
        "file-secret-primary",
        "file-secret-replica",
        "env-secret-primary",
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwarden.toml");
    std::fs::write(
        &path,
        r#"
[auth]
users = [
  { name = "app", password = "file-secret-user" },
  { name = "hashed", password = "md5f8bbf3ea7f1e0a1f4e9b2b3f1d1a1c1e", server_password = "file-secret-server" },
]
[admin]
http_token = "file-secret-token"
[databases.shop]
primary = "postgres://app:file-secret-primary@db.internal:5432/shop"
replicas = ["postgres://app:file-secret-replica@replica.internal:5432/shop"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("check-config")
        .arg(&path)
        .env(
            "PGWARDEN_PRIMARY_URL",
            "postgres://envuser:env-secret-primary@db2.internal:5432/envdb",
        )
        .output_within(SHORT_RUN);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in ["db.internal", "replica.internal", "db2.internal", "hashed"] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    let shown: Vec<_> = secrets
        .iter()
        .filter(|s| stdout.contains(*s) || stderr.contains(*s))
        .collect();
    assert!(shown.is_empty(), "printed {shown:?}:\n{stdout}\n{stderr}");
}
