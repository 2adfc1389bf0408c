//! COPY in both directions through the proxy (100 MB, byte-identical) and cancel
//! requests reaching the right server backend.

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use support::proxy;

/// Deterministic COPY text: `rows` lines of `id<TAB>payload`.
fn copy_payload(rows: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(rows * 110);
    for i in 0..rows {
        data.extend_from_slice(format!("{i}\t").as_bytes());
        // 100 printable bytes that vary with i.
        for j in 0..100u32 {
            data.push(b'a' + ((i as u32).wrapping_mul(31).wrapping_add(j * 7) % 26) as u8);
        }
        data.push(b'\n');
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100_megabytes_in_and_out_byte_identical() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let client = proxy::connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE blob (id bigint primary key, payload text not null)")
        .await
        .unwrap();

    let rows = 1_000_000; // ~ 105 MB of COPY text
    let payload = copy_payload(rows);
    assert!(payload.len() > 100 * 1000 * 1000);
    let expected = Sha256::digest(&payload);

    let sink = client
        .copy_in("COPY blob (id, payload) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in payload.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, rows as u64);

    let stream = client
        .copy_out("COPY (SELECT id, payload FROM blob ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut hasher = Sha256::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(total, payload.len());
    assert_eq!(hasher.finalize(), expected, "COPY OUT differs from COPY IN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_errors_leave_the_connection_usable() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let client = proxy::connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE nums (n int)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY nums FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\nnot-a-number\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22P02");
    let n: i64 = client
        .query_one("SELECT count(*) FROM nums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let client = proxy::connect(&proxy).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = client
        .batch_execute("SELECT pg_sleep(10)")
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    canceller.await.unwrap();
    assert_eq!(err.code().unwrap().code(), "57014", "query_canceled");
    assert!(elapsed < Duration::from_secs(1), "cancel took {elapsed:?}");
    // The connection still works after the cancel.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_a_wrong_key_does_nothing() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |_| {}).await;
    let client = proxy::connect(&proxy).await;
    // A forged cancel: random pid/secret to the proxy port.
    let mut packet = vec![0, 0, 0, 16, 4, 210, 22, 46];
    packet.extend_from_slice(&12345i32.to_be_bytes());
    packet.extend_from_slice(&678i32.to_be_bytes());
    let forged = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut s = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &packet)
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(client.batch_execute("SELECT pg_sleep(0.6)"), forged);
    result.expect("query must not be cancelled by a wrong key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_after_a_failed_copy_does_not_hand_on_a_confused_server() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let setup = proxy::connect(&proxy).await;
    setup
        .batch_execute("CREATE TABLE strict (id int NOT NULL)")
        .await
        .unwrap();
    drop(setup);
    for round in 0..20 {
        // A COPY that fails on its second row, from a client whose connection then
        // drops without ending the COPY.
        let (leaver, connection) =
            tokio_postgres::connect(&proxy::url(&proxy), tokio_postgres::NoTls)
                .await
                .unwrap();
        let socket = tokio::spawn(connection);
        let sink = leaver.copy_in("COPY strict FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        let rows: String = (0..2000)
            .map(|i| {
                if i == 1 {
                    "\\N\n".to_string()
                } else {
                    format!("{i}\n")
                }
            })
            .collect();
        let _ = sink.send(Bytes::from(rows)).await;
        // The server reports the failure while the client is still in COPY.
        tokio::time::sleep(Duration::from_millis(if round % 2 == 0 { 50 } else { 5 })).await;
        socket.abort();
        let _ = socket.await;
        // The next client on the only server connection works normally.
        let next = proxy::connect(&proxy).await;
        let sink = next.copy_in("COPY strict FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"7\n8\n")).await.unwrap();
        let copied = sink.finish().await;
        assert_eq!(copied.map_err(|e| e.to_string()), Ok(2), "round {round}");
        let row = next
            .query_one("SELECT count(*) FROM strict", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2 * (round + 1), "round {round}");
    }
}
