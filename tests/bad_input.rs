//! Malformed input from clients: every case gets an `ErrorResponse` with SQLSTATE
//! 08P01 (or the connection just ends when nothing can be said, or, before the startup
//! packet, when PostgreSQL would say nothing), and the proxy keeps serving everyone
//! else, including a client that is mid-transaction meanwhile.

use crate::support;

use std::time::Duration;

use pgwarden::config::AuthMethod;
use support::proxy::{self, DATABASE, USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn startup_packet() -> Vec<u8> {
    let mut packet = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", USER), ("database", DATABASE)],
        &mut packet,
    )
    .expect("small startup packet");
    packet.to_vec()
}

/// Reads until the connection closes (or 5 s pass) and returns all bytes.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    all
}

/// Finds the SQLSTATE of the first ErrorResponse in `bytes` (after any login chatter).
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let tag = bytes[at];
        let len = i32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        let end = (at + 1 + len).min(bytes.len());
        if tag == b'E' {
            let body = &bytes[at + 5..end];
            for field in body.split(|b| *b == 0) {
                if let Some(code) = field.strip_prefix(b"C") {
                    return Some(String::from_utf8_lossy(code).into_owned());
                }
            }
        }
        at += 1 + len;
    }
    None
}

/// Connects and logs in (trust), returning the stream after `ReadyForQuery`.
async fn logged_in(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&startup_packet()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("login answer")
            .unwrap();
        assert!(n > 0, "closed during login: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() >= 6 && seen[seen.len() - 6] == b'Z' {
            return stream;
        }
    }
}

async fn assert_rejected(port: u16, pre_login: bool, bytes: &[u8], expect: &str) {
    let mut stream = if pre_login {
        TcpStream::connect(("127.0.0.1", port)).await.unwrap()
    } else {
        logged_in(port).await
    };
    let _ = stream.write_all(bytes).await;
    let answer = read_to_close(&mut stream).await;
    assert_eq!(
        sqlstate(&answer).as_deref(),
        Some(expect),
        "input {:?} got {:?}",
        &bytes[..bytes.len().min(16)],
        String::from_utf8_lossy(&answer)
    );
}

/// Bytes that are not a startup packet: the connection ends without a reply.
async fn assert_closed_silently(port: u16, bytes: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "input {bytes:?}: connection left open");
    assert!(answer.is_empty(), "input {bytes:?} got {answer:?}");
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_proxy_keeps_serving() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.auth.method = AuthMethod::Trust;
        c.pool.size = 2;
        c.proxy.max_message_bytes = 1024 * 1024;
    })
    .await;
    let port = proxy.port();

    // A well-behaved client holds a transaction open the whole time.
    let bystander = proxy::connect(&proxy).await;
    bystander
        .batch_execute("CREATE TABLE survivors (v int); BEGIN; INSERT INTO survivors VALUES (1);")
        .await
        .unwrap();

    // Before login: what is not a startup packet ends silently, as in PostgreSQL;
    // refused startups get PostgreSQL's errors (tests/connection_fidelity.rs compares).
    assert_closed_silently(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_closed_silently(port, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await;
    assert_closed_silently(port, &[0, 0, 0, 2]).await;
    assert_closed_silently(port, &frame(b'X', b"")).await; // Terminate first
    assert_rejected(port, true, &[0, 0, 0, 8, 0, 4, 0, 0], "0A000").await; // protocol 4.0
    let mut no_user = 196608i32.to_be_bytes().to_vec();
    no_user.extend_from_slice(b"database\0app\0\0");
    let mut packet = ((no_user.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&no_user);
    assert_rejected(port, true, &packet, "28000").await;
    let mut no_terminator = 196608i32.to_be_bytes().to_vec();
    no_terminator.extend_from_slice(b"user\0pgwarden\0");
    let mut packet = ((no_terminator.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&no_terminator);
    assert_rejected(port, true, &packet, "08P01").await;

    // After login.
    assert_rejected(port, false, &[b'Q', 0, 0, 0, 2], "08P01").await; // length < 4
    assert_rejected(port, false, &[b'Q', 0x7f, 0xff, 0xff, 0xff], "08P01").await; // 2 GB
    assert_rejected(port, false, &[b'Q', 0xff, 0xff, 0xff, 0xff], "08P01").await; // negative
    assert_rejected(port, false, &frame(b'z', b"junk"), "08P01").await; // unknown type
    assert_rejected(port, false, &frame(b'p', b"late password\0"), "08P01").await;
    assert_rejected(port, false, &frame(b'P', b"no-terminators"), "08P01").await;
    assert_rejected(port, false, &frame(b'P', b"s\0select 1\0\x00\x05"), "08P01").await;
    assert_rejected(port, false, &frame(b'B', b"portal-only\0"), "08P01").await;
    assert_rejected(port, false, &frame(b'D', b"Xname\0"), "08P01").await;
    assert_rejected(port, false, &frame(b'C', b""), "08P01").await;
    let mut big = vec![b'Q'];
    big.extend_from_slice(&(2 * 1024 * 1024i32).to_be_bytes());
    assert_rejected(port, false, &big, "08P01").await; // over max_message_bytes

    // Truncated frames, then the client vanishes.
    for cut in [1usize, 3, 5, 9] {
        let mut stream = logged_in(port).await;
        let query = frame(b'Q', b"SELECT 1\0");
        stream.write_all(&query[..cut]).await.unwrap();
        drop(stream);
    }
    // A query sent, then the client vanishes before reading the answer.
    for _ in 0..5 {
        let mut stream = logged_in(port).await;
        stream
            .write_all(&frame(b'Q', b"SELECT pg_sleep(0.05)\0"))
            .await
            .unwrap();
        drop(stream);
    }

    // Everyone else is fine: the bystander's transaction is intact and new clients work.
    bystander.batch_execute("COMMIT").await.unwrap();
    let n: i64 = bystander
        .query_one("SELECT count(*) FROM survivors", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    for _ in 0..5 {
        let client = proxy::connect(&proxy).await;
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statement_names_and_sync_without_server() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.auth.method = AuthMethod::Trust).await;
    let mut stream = logged_in(proxy.port()).await;
    // Bind to a statement that was never prepared: PostgreSQL's own error, then Sync.
    let mut batch = frame(b'B', b"\0nope\0\0\0\0\0\0\0");
    batch.extend_from_slice(&frame(b'E', b"\0\0\0\0\0"));
    batch.extend_from_slice(&frame(b'S', b""));
    // A lone Sync with nothing in flight.
    batch.extend_from_slice(&frame(b'S', b""));
    stream.write_all(&batch).await.unwrap();
    let mut seen = Vec::new();
    while seen.iter().filter(|b| **b == b'Z').count() < 2 {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("answers")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(sqlstate(&seen).as_deref(), Some("26000"));
}
