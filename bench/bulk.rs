//! Bulk transfers through a target: a 1,000,000-row result (about 100 MB), one row
//! holding a 16 MiB value, and a 100 MB `COPY FROM STDIN`, timed; then the proxy's RSS
//! while the sessions that did them sit idle, to show that buffers shrink back.
//! Times are medians of several runs (one run of the 16 MiB value is tens of
//! milliseconds, too short to trust alone); next to each, the proxy's own CPU time for
//! one transfer, which the rest of the machine barely moves.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The seconds each transfer took through one target, and the proxy's RSS after.
#[derive(Debug, Clone, Copy, Default)]
pub struct BulkResult {
    pub million_rows_s: f64,
    pub value_16mib_s: f64,
    pub copy_in_100mb_s: f64,
    /// The proxy's CPU seconds per transfer (0 for direct).
    pub million_rows_cpu_s: f64,
    pub value_16mib_cpu_s: f64,
    pub copy_in_100mb_cpu_s: f64,
    /// KiB; 0 for a target with no proxy process.
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
}

/// Sessions that each do every transfer, and then stay connected while RSS is read.
pub const SESSIONS: usize = 4;
/// Fetches of the 16 MiB value, and COPYs, per measurement (the median is reported).
const VALUE_RUNS: usize = 7;
const COPY_RUNS: usize = 3;

/// The median (the upper of the middle two for an even count; 0 for none).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

const MILLION_ROWS: &str = "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g";
const VALUE_16MIB: &str = "SELECT repeat('x', 16 * 1024 * 1024)";

/// `tls`: connect with `sslmode=require` through this connector.
/// `pids`: the proxy's processes (none for direct), whose CPU time is summed; the
/// first one's memory is read.
pub fn measure(url: &str, pids: &[u32], tls: Option<&MakeRustlsConnect>) -> BulkResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..SESSIONS {
            let client = match tls {
                Some(tls) => {
                    let url = format!("{url}?sslmode=require");
                    let (client, connection) = tokio_postgres::connect(&url, tls.clone())
                        .await
                        .expect("bulk: connect with TLS");
                    tokio::spawn(connection);
                    client
                }
                None => {
                    let (client, connection) = tokio_postgres::connect(url, NoTls)
                        .await
                        .expect("bulk: connect");
                    tokio::spawn(connection);
                    client
                }
            };
            clients.push(client);
        }
        let first = &clients[0];
        first
            .batch_execute("CREATE TABLE IF NOT EXISTS bench_bulk (line text)")
            .await
            .expect("bulk: create table");
        let mut result = BulkResult::default();
        // Every session pulls the large result once, one after the other.
        let mut times = Vec::new();
        let cpu_before = crate::cpu::cpu_seconds_of(pids);
        for client in &clients {
            let started = Instant::now();
            let rows = count_rows(client, MILLION_ROWS).await;
            assert_eq!(rows, 1_000_000, "bulk: the 1M-row result");
            times.push(started.elapsed().as_secs_f64());
        }
        result.million_rows_cpu_s =
            (crate::cpu::cpu_seconds_of(pids) - cpu_before) / SESSIONS as f64;
        result.million_rows_s = median(times);
        let mut times = Vec::new();
        let cpu_before = crate::cpu::cpu_seconds_of(pids);
        for _ in 0..VALUE_RUNS {
            let started = Instant::now();
            assert_eq!(value_len(first, VALUE_16MIB).await, 16 * 1024 * 1024);
            times.push(started.elapsed().as_secs_f64());
        }
        result.value_16mib_cpu_s =
            (crate::cpu::cpu_seconds_of(pids) - cpu_before) / VALUE_RUNS as f64;
        result.value_16mib_s = median(times);
        let mut times = Vec::new();
        let cpu_before = crate::cpu::cpu_seconds_of(pids);
        for _ in 0..COPY_RUNS {
            let started = Instant::now();
            copy_in(first, 100 * 1024 * 1024).await;
            times.push(started.elapsed().as_secs_f64());
            first
                .batch_execute("TRUNCATE bench_bulk")
                .await
                .expect("bulk: truncate");
        }
        result.copy_in_100mb_cpu_s =
            (crate::cpu::cpu_seconds_of(pids) - cpu_before) / COPY_RUNS as f64;
        result.copy_in_100mb_s = median(times);
        first
            .batch_execute("DROP TABLE bench_bulk")
            .await
            .expect("bulk: drop table");
        // The sessions stay connected and idle while the proxy's memory is read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(&pid) = pids.first() {
            result.rss_idle_kib = crate::idle::status_kib(pid, "VmRSS:");
            result.rss_peak_kib = crate::idle::status_kib(pid, "VmHWM:");
        }
        drop(clients);
        result
    })
}

/// Rows of a simple-protocol query, counted as they stream in (simple protocol: PgBouncer
/// 1.18 in transaction mode cannot carry tokio-postgres's named statements).
async fn count_rows(client: &tokio_postgres::Client, sql: &str) -> usize {
    let stream = client.simple_query_raw(sql).await.expect("bulk: query");
    pin_mut!(stream);
    let mut rows = 0;
    while let Some(message) = stream.next().await {
        if let SimpleQueryMessage::Row(_) = message.expect("bulk: row") {
            rows += 1;
        }
    }
    rows
}

/// The length of the first column of a one-row simple-protocol result.
async fn value_len(client: &tokio_postgres::Client, sql: &str) -> usize {
    let messages = client.simple_query(sql).await.expect("bulk: value");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::len),
            _ => None,
        })
        .unwrap_or(0)
}

/// COPY FROM STDIN inside a transaction, so that PgBouncer 1.18 keeps tokio-postgres's
/// named statement and its execution on one server.
async fn copy_in(client: &tokio_postgres::Client, bytes: usize) {
    client.batch_execute("BEGIN").await.expect("bulk: BEGIN");
    let sink = client
        .copy_in("COPY bench_bulk FROM STDIN")
        .await
        .expect("bulk: COPY");
    pin_mut!(sink);
    let line = Bytes::from(format!("{}\n", "y".repeat(1023)));
    for _ in 0..bytes / line.len() {
        sink.feed(line.clone()).await.expect("bulk: COPY data");
    }
    sink.finish().await.expect("bulk: COPY done");
    client.batch_execute("COMMIT").await.expect("bulk: COMMIT");
}
