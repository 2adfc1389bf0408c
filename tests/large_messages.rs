//! Server messages far larger than one read (multi-MiB `DataRow`s and `CopyData`),
//! which pgwarden relays as their bytes arrive instead of buffering them whole: the
//! client gets exactly the bytes PostgreSQL sends directly, whatever the protocol, with
//! named statements, pipelined requests, a result cache fill and hit, and an error in
//! the middle of a result; and the server lost in the middle of a streamed row.

use crate::support;

use std::time::Duration;

use pgwarden::cluster::{ClusterSpec, LocalCluster};
use pgwarden::config::{AuthMethod, Config};
use pgwarden::RunningProxy;
use support::proxy::{self, DATABASE, USER};
use support::wire::{cstring, error_code, frame, query, Wire};
use support::within;

const SOCKETS: &str = "/tmp";

/// Row sizes around and far above the streaming threshold (64 KiB), with small rows
/// between them so that large and small messages share reads.
const SIZES: [usize; 7] = [10, 200 * 1024, 3 << 20, 65_530, 65_536, 10, 5 << 20];

fn cluster() -> LocalCluster {
    support::cluster_with(ClusterSpec {
        replicas: 0,
        extra_conf: vec![format!("unix_socket_directories = '{SOCKETS}'")],
        ..ClusterSpec::default()
    })
}

async fn start(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> RunningProxy {
    let proxy = proxy::start(cluster, |c| {
        c.auth.method = AuthMethod::Trust;
        c.pool.size = 2;
        tweak(c);
    })
    .await;
    proxy::wait_for_cache_listen(&proxy).await;
    proxy
}

async fn pair(cluster: &LocalCluster, proxy: &RunningProxy) -> (Wire, Wire) {
    let direct = within(
        "direct login",
        Wire::unix(SOCKETS, cluster.primary().port, USER, DATABASE),
    )
    .await;
    let through = within("login", Wire::tcp(proxy.port(), USER, DATABASE, &[])).await;
    (direct, through)
}

/// A table whose rows have the sizes in `SIZES`, with content that varies by byte.
async fn create_big(w: &mut Wire) {
    let answer = within(
        "create",
        w.simple(
            "CREATE TABLE big (id int primary key, v text not null);
             INSERT INTO big
               SELECT i, left(repeat(md5(i::text) || chr(65 + i::int), (s / 33) + 1), s)
               FROM unnest(ARRAY[10, 204800, 3145728, 65530, 65536, 10, 5242880])
                    WITH ORDINALITY AS t(s, i)",
        ),
    )
    .await;
    assert!(answer.iter().all(|f| f[0] != b'E'), "create big");
}

fn assert_same(what: &str, direct: &[Vec<u8>], through: &[Vec<u8>]) {
    assert_eq!(
        direct.len(),
        through.len(),
        "{what}: number of messages (tags direct {:?}, through {:?})",
        direct.iter().map(|f| f[0] as char).collect::<String>(),
        through.iter().map(|f| f[0] as char).collect::<String>()
    );
    for (i, (d, t)) in direct.iter().zip(through).enumerate() {
        assert!(d == t, "{what}: message {i} ({:?}) differs", d[0] as char);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_and_copy_data_arrive_byte_identical() {
    let cluster = cluster();
    let proxy = start(&cluster, |_| {}).await;
    let (mut d, mut p) = pair(&cluster, &proxy).await;
    create_big(&mut d).await;

    let all = "SELECT id, v FROM big ORDER BY id";
    let expected = within("direct", d.simple(all)).await;
    let rows: Vec<usize> = expected
        .iter()
        .filter(|f| f[0] == b'D')
        .map(|f| f.len())
        .collect();
    assert_eq!(rows.len(), SIZES.len());
    assert!(rows.iter().zip(SIZES).all(|(len, size)| *len > size));
    assert_same("simple", &expected, &within("simple", p.simple(all)).await);

    // Extended protocol, unnamed and then named statements (renamed per server
    // connection under transaction pooling), text and binary results.
    for format in [0, 1] {
        let expected = within("direct", d.extended("", Some(all), &[], false, format)).await;
        let got = within("unnamed", p.extended("", Some(all), &[], false, format)).await;
        assert_same("extended unnamed", &expected, &got);
    }
    let expected = within("direct", d.extended("s1", Some(all), &[], false, 0)).await;
    assert_same(
        "named, parsed",
        &expected,
        &within("parse", p.extended("s1", Some(all), &[], false, 0)).await,
    );
    let expected = within("direct", d.extended("s1", None, &[], false, 0)).await;
    assert_same(
        "named, reused",
        &expected,
        &within("reuse", p.extended("s1", None, &[], false, 0)).await,
    );

    // COPY OUT: one CopyData message per row.
    let copy = "COPY (SELECT v FROM big ORDER BY id) TO STDOUT";
    let expected = within("direct", d.simple(copy)).await;
    assert!(expected.iter().any(|f| f[0] == b'd' && f.len() > 5 << 20));
    assert_same("copy out", &expected, &within("copy", p.simple(copy)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_wait_for_a_streamed_row_and_errors_mid_result_are_relayed() {
    let cluster = cluster();
    let proxy = start(&cluster, |_| {}).await;
    let (mut d, mut p) = pair(&cluster, &proxy).await;
    create_big(&mut d).await;

    // Three requests in one write: a large result, a small one, an extended batch
    // whose Parse/Bind answers come while the proxy may still be streaming.
    let mut batch = Vec::new();
    for sql in ["SELECT v FROM big ORDER BY id", "SELECT 1"] {
        batch.extend(query(sql));
    }
    let mut body = Vec::new();
    cstring(&mut body, "");
    cstring(&mut body, "SELECT v FROM big WHERE id >= $1 ORDER BY id");
    body.extend_from_slice(&0i16.to_be_bytes());
    batch.extend(frame(b'P', &body));
    let mut body = Vec::new();
    cstring(&mut body, "");
    cstring(&mut body, "");
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.push(b'3');
    body.extend_from_slice(&0i16.to_be_bytes());
    batch.extend(frame(b'B', &body));
    let mut body = Vec::new();
    cstring(&mut body, "");
    body.extend_from_slice(&0i32.to_be_bytes());
    batch.extend(frame(b'E', &body));
    batch.extend(frame(b'S', &[]));
    for (what, w) in [("direct", &mut d), ("proxy", &mut p)] {
        within(what, w.send(&batch)).await;
    }
    for i in 0..3 {
        let expected = within("direct", d.answer()).await;
        let got = within("pipelined", p.answer()).await;
        assert_same(&format!("pipelined answer {i}"), &expected, &got);
    }

    // An error after two large rows: the rows, then the error, then the connection
    // goes on (the server connection is reused by the next query).
    let failing =
        "SELECT CASE WHEN id < 4 THEN v ELSE (1 / (id - id))::text END FROM big ORDER BY id";
    let expected = within("direct", d.simple(failing)).await;
    assert_eq!(error_code(&expected).as_deref(), Some("22012"));
    assert_same(
        "error mid-result",
        &expected,
        &within("fail", p.simple(failing)).await,
    );
    let expected = within("direct", d.simple("SELECT length(v) FROM big WHERE id = 7")).await;
    let got = within("after", p.simple("SELECT length(v) FROM big WHERE id = 7")).await;
    assert_same("after the error", &expected, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_result_fills_the_result_cache_and_is_replayed_exactly() {
    let cluster = cluster();
    let proxy = start(&cluster, |c| {
        c.cache.max_entry_bytes = 8 << 20;
        c.cache.max_bytes = c.cache.max_bytes.max(64 << 20);
    })
    .await;
    let (mut d, mut p) = pair(&cluster, &proxy).await;
    create_big(&mut d).await;

    let sql = "/* pgwarden:cache */ SELECT id, v FROM big WHERE id <= 3 ORDER BY id";
    let expected = within("direct", d.simple(sql)).await;
    assert_same("miss", &expected, &within("miss", p.simple(sql)).await);
    let before = proxy.runtime.cache.totals().hits;
    assert_same("hit", &expected, &within("hit", p.simple(sql)).await);
    assert_eq!(proxy.runtime.cache.totals().hits, before + 1, "a hit");
}

/// The server connection dies while a 64 MiB row is half relayed: the client cannot be
/// sent an `ErrorResponse` in the middle of a message, so its connection is closed
/// (it must not wait forever), and the proxy goes on serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lost_in_the_middle_of_a_streamed_row_closes_only_that_client() {
    const ROW: usize = 64 << 20;
    let cluster = cluster();
    let proxy = start(&cluster, |_| {}).await;
    let (mut d, mut victim) = pair(&cluster, &proxy).await;

    // The victim asks for one huge value and does not read: PostgreSQL blocks writing
    // it once the proxy's buffer and both sockets are full, in the middle of the row.
    within(
        "send",
        victim.send_query(&format!("SELECT repeat('x', {ROW}) /* victim */")),
    )
    .await;
    let blocked = "SELECT count(*) FROM pg_stat_activity
                   WHERE query LIKE '%/* victim */' AND wait_event = 'ClientWrite'";
    within("the server blocked in mid-row", async {
        loop {
            let answer = d.simple(blocked).await;
            if support::wire::first_value(&answer).as_deref() == Some("1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let answer = within(
        "terminate",
        d.simple(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE '%/* victim */' AND pid <> pg_backend_pid()",
        ),
    )
    .await;
    assert_eq!(support::wire::first_value(&answer).as_deref(), Some("t"));

    // The victim gets what was relayed, then its connection closes: never the whole row.
    let received = victim.read_until_closed(support::CALL_LIMIT).await;
    assert!(
        received > 0 && received < ROW,
        "{received} bytes of a {ROW}-byte row before the close"
    );

    // Everyone else is served as before, on the same pool.
    for i in 0..3 {
        let mut other = within("login", Wire::tcp(proxy.port(), USER, DATABASE, &[])).await;
        let answer = within("query", other.simple("SELECT 40 + 2")).await;
        assert_eq!(
            support::wire::first_value(&answer).as_deref(),
            Some("42"),
            "client {i} after the loss"
        );
    }
}
