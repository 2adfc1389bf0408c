//! `auth_query`: roles created (and re-passworded) in PostgreSQL at run time log in
//! through pgwarden without being listed in its configuration, and pgwarden logs in
//! upstream as them with the keys their own SCRAM login proved (or their md5 hash).
//! Real PostgreSQL, tokio-postgres and psql clients; every client call is bounded.

use crate::support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgwarden::cluster::LocalCluster;
use pgwarden::config::{AuthMethod, Config, PoolMode, UserConfig};
use pgwarden::RunningProxy;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use support::proxy::{self, DATABASE, USER};
use support::{execute, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The lookup cache TTL the tests run with.
const CACHE_MS: u64 = 200;

fn url(proxy: &RunningProxy, user: &str, password: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    )
}

async fn connect(
    proxy: &RunningProxy,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    within("connect", proxy::connect_url(&url(proxy, user, password))).await
}

/// Connects expecting a refusal; returns (SQLSTATE, severity, message).
async fn refusal(proxy: &RunningProxy, user: &str, password: &str) -> (String, String, String) {
    let Err(e) = connect(proxy, user, password).await else {
        panic!("{user} with password {password:?} should have been refused");
    };
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{user}: not a server error: {e}"));
    (
        db.code().code().to_string(),
        db.severity().to_string(),
        db.message().to_string(),
    )
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    within(
        "select current_user",
        client.query_one("SELECT current_user::text", &[]),
    )
    .await
    .expect("select current_user")
    .get(0)
}

async fn direct(cluster: &LocalCluster) -> tokio_postgres::Client {
    within("direct connect", proxy::connect_direct(cluster)).await
}

/// psql through the proxy: (success, stdout, stderr).
async fn psql(
    proxy: &RunningProxy,
    user: &str,
    password: &str,
    sql: &str,
) -> (bool, String, String) {
    let output = tokio::process::Command::new(support::psql_path())
        .args(["-X", "-A", "-t", "-w", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname={DATABASE}",
            proxy.port()
        ))
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output();
    let output = within("psql", output).await.expect("run psql");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

/// The authentication exchange as a client sees it, message by message, for a raw
/// SCRAM client: which steps the proxy takes before it refuses.
async fn scram_steps(proxy: &RunningProxy, user: &str, password: &str) -> Vec<String> {
    within("raw SCRAM exchange", async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut out = BytesMut::new();
        frontend::startup_message([("user", user), ("database", DATABASE)], &mut out).unwrap();
        let mut buf = BytesMut::new();
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut steps = Vec::new();
        loop {
            stream.write_all(&out).await.unwrap();
            out.clear();
            let message = loop {
                if let Some(message) = Message::parse(&mut buf).unwrap() {
                    break message;
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed early");
            };
            match message {
                Message::AuthenticationSasl(_) => {
                    steps.push("SASL".to_string());
                    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                        .unwrap();
                }
                Message::AuthenticationSaslContinue(body) => {
                    let text = String::from_utf8_lossy(body.data()).into_owned();
                    let iterations = text.rsplit(",i=").next().unwrap_or("").to_string();
                    steps.push(format!("SASLContinue i={iterations}"));
                    scram.update(body.data()).unwrap();
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                }
                Message::AuthenticationSaslFinal(_) => steps.push("SASLFinal".into()),
                Message::AuthenticationOk => {
                    steps.push("Ok".into());
                    return steps;
                }
                Message::ErrorResponse(body) => {
                    let mut fields = body.fields();
                    let (mut code, mut message) = (String::new(), String::new());
                    while let Some(field) = fields.next().unwrap() {
                        match field.type_() {
                            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into(),
                            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into(),
                            _ => {}
                        }
                    }
                    steps.push(format!("Error {code} {message}"));
                    return steps;
                }
                other => panic!("unexpected message {:?}", std::mem::discriminant(&other)),
            }
        }
    })
    .await
}

/// Number of server sessions of `role` on the primary.
async fn backends_of(direct: &tokio_postgres::Client, role: &str) -> i64 {
    within(
        "count backends",
        direct.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        ),
    )
    .await
    .unwrap()
    .get(0)
}

fn with_auth_query(c: &mut Config) {
    c.auth.auth_user = Some(USER.into());
    c.auth.auth_query_cache_ms = CACHE_MS;
}

async fn past_the_cache() {
    tokio::time::sleep(Duration::from_millis(CACHE_MS * 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_roles_log_in_and_password_changes_take_effect() {
    let cluster = support::cluster(0);
    let admin = direct(&cluster).await;
    execute(&admin, "CREATE ROLE rt_app LOGIN PASSWORD 'x'").await;
    let proxy = proxy::start(&cluster, |c| {
        with_auth_query(c);
        c.pool.checkout_timeout_ms = 1000;
    })
    .await;
    assert!(proxy.runtime.config().user("rt_app").is_none());

    // The right password: queries run on the server as that role.
    let client = connect(&proxy, "rt_app", "x")
        .await
        .expect("rt_app logs in");
    assert_eq!(current_user(&client).await, "rt_app");
    let client2 = connect(&proxy, "rt_app", "x")
        .await
        .expect("rt_app logs in");
    assert_eq!(current_user(&client2).await, "rt_app");
    let (ok, out, err) = psql(&proxy, "rt_app", "x", "select current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out, "rt_app");

    // A wrong password and an unknown role: 28P01, the same message but for the name,
    // after the same steps of the exchange.
    let wrong = refusal(&proxy, "rt_app", "nope").await;
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    let unknown = refusal(&proxy, "rt_ghost", "nope").await;
    assert_eq!(unknown.0, "28P01", "{unknown:?}");
    assert_eq!(
        (wrong.1.clone(), wrong.2.replace("rt_app", "rt_ghost")),
        (unknown.1.clone(), unknown.2.clone())
    );
    let wrong_steps = scram_steps(&proxy, "rt_app", "nope").await;
    let unknown_steps = scram_steps(&proxy, "rt_ghost", "nope").await;
    assert_eq!(
        wrong_steps.join(" | ").replace("rt_app", "rt_ghost"),
        unknown_steps.join(" | ")
    );
    assert_eq!(wrong_steps.len(), 3, "{wrong_steps:?}");
    let (ok, _, wrong_err) = psql(&proxy, "rt_app", "nope", "select 1").await;
    let (ok2, _, unknown_err) = psql(&proxy, "rt_ghost", "nope", "select 1").await;
    assert!(!ok && !ok2);
    assert!(
        wrong_err.contains("password authentication failed"),
        "{wrong_err}"
    );
    assert_eq!(
        wrong_err.replace("rt_app", "rt_ghost"),
        unknown_err,
        "psql sees the same refusal"
    );
    assert_eq!(
        scram_steps(&proxy, "rt_app", "x").await,
        ["SASL", "SASLContinue i=4096", "SASLFinal", "Ok"]
    );

    // A role whose password is stored as md5 is refused under scram-sha-256, as
    // PostgreSQL refuses it, the same way as a wrong password.
    execute(
        &admin,
        "SET password_encryption = 'md5'; CREATE ROLE rt_md5 LOGIN PASSWORD 'm'; RESET password_encryption",
    )
    .await;
    let md5 = refusal(&proxy, "rt_md5", "m").await;
    assert_eq!(
        (md5.0, md5.2.replace("rt_md5", "rt_ghost")),
        (unknown.0.clone(), unknown.2.clone())
    );

    // The configured user works as before.
    let configured = within("configured user", proxy::connect_url(&proxy::url(&proxy)))
        .await
        .expect("configured user logs in");
    assert_eq!(current_user(&configured).await, USER);

    // The password changes in PostgreSQL: once the cache expires, the new one works
    // and the old one is refused.
    assert_eq!(backends_of(&admin, "rt_app").await, 1);
    execute(&admin, "ALTER ROLE rt_app PASSWORD 'y'").await;
    past_the_cache().await;
    let (code, _, _) = refusal(&proxy, "rt_app", "x").await;
    assert_eq!(code, "28P01");
    // Clients still connected from before the change: a new server connection would
    // need the new password's keys, which no client has proved yet: a clear error.
    execute(&client, "BEGIN").await;
    let stale = within("stale keys", client2.batch_execute("BEGIN"))
        .await
        .expect_err("no keys for the new password yet");
    let stale = stale.as_db_error().expect("server error");
    assert_eq!(stale.code().code(), "08001", "{stale:?}");
    assert!(stale.message().contains("salt"), "{stale:?}");
    execute(&client, "COMMIT").await;
    let a = connect(&proxy, "rt_app", "y").await.expect("new password");
    let b = connect(&proxy, "rt_app", "y").await.expect("new password");
    // Two transactions at once need a second server connection, opened now with the
    // keys of the new password (the old keys no longer match the server's salt).
    execute(&a, "BEGIN").await;
    execute(&b, "BEGIN").await;
    assert_eq!(current_user(&a).await, "rt_app");
    assert_eq!(current_user(&b).await, "rt_app");
    assert_eq!(backends_of(&admin, "rt_app").await, 2);
    execute(&a, "COMMIT").await;
    execute(&b, "COMMIT").await;
    let (ok, out, err) = psql(&proxy, "rt_app", "y", "select current_user").await;
    assert!(ok && out == "rt_app", "{err}");

    // A role created after the proxy started, and a dropped one.
    execute(&admin, "CREATE ROLE rt_late LOGIN PASSWORD 'late'").await;
    past_the_cache().await;
    let late = connect(&proxy, "rt_late", "late").await.expect("new role");
    assert_eq!(current_user(&late).await, "rt_late");
    drop(late);
    execute(&admin, "DROP ROLE rt_late").await;
    past_the_cache().await;
    let (code, _, message) = refusal(&proxy, "rt_late", "late").await;
    assert_eq!(
        (code, message.replace("rt_late", "rt_ghost")),
        (unknown.0, unknown.2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_on_two_server_connections_and_a_replica() {
    let cluster = support::cluster(1);
    let admin = direct(&cluster).await;
    execute(
        &admin,
        "CREATE ROLE tx_app LOGIN PASSWORD 'tx'; CREATE TABLE counts (n int); GRANT INSERT, SELECT ON counts TO tx_app",
    )
    .await;
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .expect("role replicated");
    let replicas = cluster.replica_urls();
    let proxy = proxy::start(&cluster, |c| {
        with_auth_query(c);
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 2;
        let db = c.databases.get_mut(DATABASE).unwrap();
        db.replicas = replicas;
        c.routing.lag_poll_ms = 20;
    })
    .await;

    let mut tasks = Vec::new();
    for i in 0..6 {
        let proxy_url = url(&proxy, "tx_app", "tx");
        tasks.push(tokio::spawn(async move {
            let client = within("connect", proxy::connect_url(&proxy_url))
                .await
                .expect("tx_app logs in");
            for j in 0..5 {
                let sql = format!(
                    "BEGIN; INSERT INTO counts VALUES ({}); SELECT pg_sleep(0.02); COMMIT",
                    i * 10 + j
                );
                within(&sql, client.batch_execute(&sql))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            current_user(&client).await
        }));
    }
    for task in tasks {
        assert_eq!(within("client task", task).await.unwrap(), "tx_app");
    }
    let total: i64 = within("count", admin.query_one("SELECT count(*) FROM counts", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 30);
    // The primary pool of tx_app opened both its connections with pass-through keys.
    assert_eq!(backends_of(&admin, "tx_app").await, 2);

    // Autocommit reads go to the replica, whose pool logs in the same way.
    let client = connect(&proxy, "tx_app", "tx").await.expect("tx_app");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = within(
            "read",
            client.query_one("SELECT current_user::text, pg_is_in_recovery()", &[]),
        )
        .await
        .expect("read as tx_app");
        assert_eq!(row.get::<_, String>(0), "tx_app");
        if row.get::<_, bool>(1) {
            break; // served by the replica
        }
        assert!(Instant::now() < deadline, "reads never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_roles_session_pooling_and_a_security_definer_lookup() {
    let cluster = support::cluster(0);
    let admin = direct(&cluster).await;
    // What README.md recommends instead of reading pg_shadow as a superuser.
    execute(
        &admin,
        "CREATE ROLE pgwarden_auth LOGIN PASSWORD 'auth-secret';
         CREATE SCHEMA pgwarden;
         CREATE FUNCTION pgwarden.user_lookup(in i_username text, out uname text, out phash text)
         RETURNS record AS $$
         BEGIN
             SELECT usename, passwd FROM pg_catalog.pg_shadow
             WHERE usename = i_username INTO uname, phash;
             RETURN;
         END;
         $$ LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
         REVOKE ALL ON FUNCTION pgwarden.user_lookup(text) FROM public;
         GRANT USAGE ON SCHEMA pgwarden TO pgwarden_auth;
         GRANT EXECUTE ON FUNCTION pgwarden.user_lookup(text) TO pgwarden_auth;
         SET password_encryption = 'md5';
         CREATE ROLE md5_app LOGIN PASSWORD 'five';
         RESET password_encryption;
         CREATE ROLE scram_app LOGIN PASSWORD 'sha';",
    )
    .await;
    // md5 logins need an md5 line in pg_hba.conf (it still lets SCRAM roles use SCRAM).
    std::fs::write(
        cluster.primary().data_dir.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 md5\nhost replication all 127.0.0.1/32 md5\n",
    )
    .unwrap();
    execute(&admin, "SELECT pg_reload_conf()").await;
    let direct_md5 = format!(
        "postgres://md5_app:five@127.0.0.1:{}/{DATABASE}",
        cluster.primary().port
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while within("direct md5", proxy::connect_url(&direct_md5))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL never accepted md5_app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let proxy = proxy::start(&cluster, |c| {
        c.auth.method = AuthMethod::Md5;
        c.auth.users.push(UserConfig {
            name: "pgwarden_auth".into(),
            password: Some("auth-secret".into()),
            server_password: None,
        });
        c.auth.auth_user = Some("pgwarden_auth".into());
        c.auth.auth_query = "SELECT uname, phash FROM pgwarden.user_lookup($1)".into();
        c.auth.auth_query_cache_ms = CACHE_MS;
        c.pool.mode = PoolMode::Session;
    })
    .await;

    // md5 client login, md5 pass-through upstream (psql and tokio-postgres).
    let (ok, out, err) = psql(&proxy, "md5_app", "five", "select current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out, "md5_app");
    let a = connect(&proxy, "md5_app", "five").await.expect("md5_app");
    let b = connect(&proxy, "md5_app", "five").await.expect("md5_app");
    assert_eq!(current_user(&a).await, "md5_app");
    assert_eq!(current_user(&b).await, "md5_app");
    assert_eq!(
        backends_of(&admin, "md5_app").await,
        2,
        "session mode: one each"
    );
    let wrong = refusal(&proxy, "md5_app", "four").await;
    assert_eq!(wrong.0, "28P01");
    assert!(
        wrong.2.contains("password authentication failed"),
        "{wrong:?}"
    );

    // A SCRAM role under method md5 uses SCRAM, as PostgreSQL does.
    let scram = connect(&proxy, "scram_app", "sha")
        .await
        .expect("scram_app");
    assert_eq!(current_user(&scram).await, "scram_app");
    assert_eq!(
        scram_steps(&proxy, "scram_app", "sha").await,
        ["SASL", "SASLContinue i=4096", "SASLFinal", "Ok"]
    );

    // The function returns a row of NULLs for an unknown role: refused like a wrong
    // password of a SCRAM role.
    let unknown = refusal(&proxy, "nobody_here", "x").await;
    let wrong_scram = refusal(&proxy, "scram_app", "x").await;
    assert_eq!(
        (unknown.0, unknown.2),
        (
            wrong_scram.0,
            wrong_scram.2.replace("scram_app", "nobody_here")
        )
    );
}
