//! Unix-domain sockets on both sides of the proxy. PostgreSQL reached over its socket
//! (a `host` that is a directory, as libpq reads it): the pools, forwarded cancel
//! requests and the readiness probe all use it, and a socket that is not there is a
//! clear error, not a hang. Clients reaching pgwarden over its own socket
//! (`proxy.unix_socket_dir`): logins, both protocols, cancels, no TLS, and the file
//! removed when the proxy stops.

use crate::support::{self, proxy, within};

use std::time::Duration;

use support::proxy::{DATABASE, PASSWORD, USER};

/// Whether this server session came in over a local socket (`client_port` is -1 then).
async fn over_local_socket(client: &tokio_postgres::Client) -> bool {
    let port: i32 = within(
        "read client_port",
        client.query_one(
            "SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap()
    .get(0);
    port == -1
}

/// Cancels a minute's `pg_sleep` on `client` with its cancel token (which goes where the
/// client connected): the sleep must end with 57014, and a lost cancel fails `within`
/// at 30 s.
async fn cancel_a_sleep(client: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let error = within(
        "a cancelled sleep",
        client.batch_execute("SELECT pg_sleep(60)"),
    )
    .await
    .unwrap_err();
    within("the canceller", canceller)
        .await
        .unwrap()
        .expect("cancel request accepted by the proxy");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_behind_its_local_socket_serves_statements_transactions_and_cancels() {
    let cluster = support::cluster(0);
    let socket_url = cluster.socket_url_for(cluster.primary());
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 2;
        c.databases.get_mut(DATABASE).unwrap().primary = socket_url.clone();
    })
    .await;
    let client = proxy::connect(&proxy).await;
    assert!(
        over_local_socket(&client).await,
        "the pool's server connection is not a local-socket one"
    );
    // Statements, a transaction, prepared statements: the plain path over the socket.
    within(
        "create a table",
        client.batch_execute("CREATE TABLE IF NOT EXISTS over_socket (n int)"),
    )
    .await
    .unwrap();
    within(
        "a transaction",
        client.batch_execute(
            "BEGIN; INSERT INTO over_socket SELECT generate_series(1, 1000); COMMIT",
        ),
    )
    .await
    .unwrap();
    let sum: i64 = within(
        "a prepared read",
        client.query_one(
            "SELECT sum(n)::int8 FROM over_socket WHERE n > $1",
            &[&0i32],
        ),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(sum, 500_500);
    // A large answer crosses the socket whole.
    let long: String = within(
        "a 4 MiB value",
        client.query_one("SELECT repeat('x', 4194304)", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(long.len(), 4_194_304);

    // A cancel sent to the proxy reaches the server over its socket.
    cancel_a_sleep(&client).await;
    let one: i32 = within(
        "a statement after the cancel",
        client.query_one("SELECT 1", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(one, 1);

    // Background connections (lag monitor, advisors, read-your-writes notifications)
    // read the same URL through tokio-postgres: over the socket too.
    let (background, connection) = within(
        "a background connection",
        pgwarden::pool::connect_background(&socket_url, "socket check"),
    )
    .await
    .expect("background connection over the socket");
    let connection = tokio::spawn(connection);
    assert!(over_local_socket(&background).await);
    drop(background);
    let _ = within("the background connection's end", connection).await;

    // The readiness probe reaches the primary over the socket too.
    let (status, body) = within(
        "GET /readyz",
        support::http::get(proxy.http_address, "/readyz", None),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_without_a_server_is_an_error_for_the_client_not_a_hang() {
    let cluster = support::cluster(0);
    let missing = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://{}:{}@localhost/{DATABASE}?host={}&port={}",
        proxy::USER,
        proxy::PASSWORD,
        missing.path().display(),
        cluster.primary().port
    );
    let proxy = proxy::start(&cluster, |c| {
        c.pool.connect_timeout_ms = 2_000;
        c.pool.checkout_timeout_ms = 3_000;
        c.databases.get_mut(DATABASE).unwrap().primary = url.clone();
    })
    .await;
    // The login needs a server: it fails with 08006, naming the socket it tried, and
    // the proxy goes on answering the next login the same way.
    for attempt in ["first", "second"] {
        let error = proxy::connect_url(&proxy::url(&proxy))
            .await
            .err()
            .unwrap_or_else(|| panic!("{attempt} login succeeded with no server"));
        let db = error.as_db_error().unwrap_or_else(|| panic!("{error}"));
        assert_eq!(db.code().code(), "08006", "{db:?}");
        assert!(
            db.message().contains(".s.PGSQL.") && db.message().contains("unreachable"),
            "{}",
            db.message()
        );
    }
    let (status, _) = within(
        "GET /readyz",
        support::http::get(proxy.http_address, "/readyz", None),
    )
    .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_this_host_log_in_query_and_cancel_through_the_proxys_local_socket() {
    let cluster = support::cluster(0);
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().to_str().unwrap().to_string();
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 2;
        c.proxy.unix_socket_dir = Some(dir.clone());
    })
    .await;
    let socket = directory.path().join(format!(".s.PGSQL.{}", proxy.port()));
    assert_eq!(proxy.local_socket.as_ref().map(|s| &s.path), Some(&socket));

    // tokio-postgres with `host=<dir>`: the login (SCRAM, as on TCP) and both protocols.
    let url = format!(
        "host={dir} port={} user={USER} password={PASSWORD} dbname={DATABASE}",
        proxy.port()
    );
    let client = proxy::connect_url(&url)
        .await
        .expect("login over the local socket");
    within("a simple query", client.batch_execute("SELECT 1"))
        .await
        .unwrap();
    let doubled: i32 = within(
        "an extended query",
        client.query_one("SELECT $1::int * 2", &[&21i32]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(doubled, 42);

    // Its cancel goes to the same socket and reaches the server.
    cancel_a_sleep(&client).await;

    // No TLS on a local socket, as with PostgreSQL: SSLRequest is answered `N`.
    let mut raw = within("connect", tokio::net::UnixStream::connect(&socket))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("SSLRequest", raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]))
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    within("its answer", raw.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
    drop(raw);

    // psql, as a user would run it.
    let output = within(
        "psql over the local socket",
        tokio::process::Command::new(support::psql_path())
            .args(["-X", "-A", "-t", "-c", "SELECT 'over ' || 'the socket'"])
            .arg(format!(
                "host={dir} port={} user={USER} dbname={DATABASE}",
                proxy.port()
            ))
            .env("PGPASSWORD", PASSWORD)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "over the socket",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The socket file goes with the proxy.
    drop(client);
    drop(proxy);
    assert!(!socket.exists(), "{} left behind", socket.display());
}
