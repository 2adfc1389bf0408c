//! Bulk transfers through every target: a 1,000,000-row result (about 110 MB), one row
//! holding a 16 MiB value, and a 100 MB `COPY FROM STDIN`, timed; then each proxy's RSS
//! while the sessions that did them sit idle, to show that buffers shrink back.
//!
//! The targets take turns: each round runs every transfer once per target (the value
//! twice), in an order rotated by one target per round, and a target's time is the
//! median over the rounds. Measured one target after the other, a transfer's ratio to
//! direct was as much the VM's drift between minutes as the proxy (the 2026-12-04
//! evening run: pgwarden 1.30× direct on the 1M rows and, right after it, pgwarden
//! without statistics 0.99×, at the same proxy CPU per transfer). Next to each time, the
//! proxy's own CPU time for one transfer, which the rest of the machine barely moves.

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

/// Sessions per target: each round's 1M-row fetch goes through the next one, so all of
/// them have carried a large result before RSS is read.
pub const SESSIONS: usize = 4;
/// Fetches of the 16 MiB value per target and round (one is tens of milliseconds).
const VALUE_RUNS_PER_ROUND: usize = 2;

/// The median (the upper of the middle two for an even count; 0 for none).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

const MILLION_ROWS: &str = "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g";
const VALUE_16MIB: &str = "SELECT repeat('x', 16 * 1024 * 1024)";

/// One target of the bulk phase.
pub struct BulkTarget {
    pub name: String,
    pub url: String,
    /// The proxy's processes (none for direct), whose CPU time is summed; the first
    /// one's memory is read.
    pub pids: Vec<u32>,
}

/// A target's sessions and what its transfers took so far.
struct Measured<'a> {
    target: &'a BulkTarget,
    clients: Vec<tokio_postgres::Client>,
    rows: Samples,
    value: Samples,
    copy: Samples,
}

/// Wall times of one kind of transfer, and the proxy CPU they used.
#[derive(Default)]
struct Samples {
    seconds: Vec<f64>,
    cpu_seconds: f64,
}

impl Samples {
    /// Median wall seconds and CPU seconds per transfer.
    fn summary(&self) -> (f64, f64) {
        let per_transfer = self.cpu_seconds / self.seconds.len().max(1) as f64;
        (median(self.seconds.clone()), per_transfer)
    }
}

/// Runs `rounds` rounds of every transfer through every target; `tls`: connect with
/// `sslmode=require` through this connector.
pub fn measure(
    targets: &[BulkTarget],
    tls: Option<&MakeRustlsConnect>,
    rounds: usize,
) -> Vec<(String, BulkResult)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut measured = Vec::new();
        for target in targets {
            let mut clients = Vec::new();
            for _ in 0..SESSIONS {
                clients.push(connect(&target.url, tls).await);
            }
            measured.push(Measured {
                target,
                clients,
                rows: Samples::default(),
                value: Samples::default(),
                copy: Samples::default(),
            });
        }
        let Some(first) = measured.first() else {
            return Vec::new();
        };
        first.clients[0]
            .batch_execute("CREATE TABLE IF NOT EXISTS bench_bulk (line text)")
            .await
            .expect("bulk: create table");
        let count = measured.len();
        for round in 0..rounds {
            for turn in 0..count {
                let m = &mut measured[(round + turn) % count];
                let pids = &m.target.pids;
                let client = &m.clients[round % SESSIONS];
                timed(pids, &mut m.rows, async {
                    assert_eq!(count_rows(client, MILLION_ROWS).await, 1_000_000);
                })
                .await;
                let client = &m.clients[0];
                for _ in 0..VALUE_RUNS_PER_ROUND {
                    timed(pids, &mut m.value, async {
                        assert_eq!(value_len(client, VALUE_16MIB).await, 16 * 1024 * 1024);
                    })
                    .await;
                }
                timed(pids, &mut m.copy, copy_in(client, 100 * 1024 * 1024)).await;
                client
                    .batch_execute("TRUNCATE bench_bulk")
                    .await
                    .expect("bulk: truncate");
            }
        }
        measured[0].clients[0]
            .batch_execute("DROP TABLE bench_bulk")
            .await
            .expect("bulk: drop table");
        // The sessions stay connected and idle while the proxies' memory is read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        measured
            .into_iter()
            .map(|m| {
                let (million_rows_s, million_rows_cpu_s) = m.rows.summary();
                let (value_16mib_s, value_16mib_cpu_s) = m.value.summary();
                let (copy_in_100mb_s, copy_in_100mb_cpu_s) = m.copy.summary();
                let mut result = BulkResult {
                    million_rows_s,
                    value_16mib_s,
                    copy_in_100mb_s,
                    million_rows_cpu_s,
                    value_16mib_cpu_s,
                    copy_in_100mb_cpu_s,
                    ..BulkResult::default()
                };
                if let Some(&pid) = m.target.pids.first() {
                    result.rss_idle_kib = crate::idle::status_kib(pid, "VmRSS:");
                    result.rss_peak_kib = crate::idle::status_kib(pid, "VmHWM:");
                }
                (m.target.name.clone(), result)
            })
            .collect()
    })
}

/// Runs `transfer`, adding its wall time and the proxy's CPU time to `samples`.
async fn timed(
    pids: &[u32],
    samples: &mut Samples,
    transfer: impl std::future::Future<Output = ()>,
) {
    let cpu_before = crate::cpu::cpu_seconds_of(pids);
    let started = Instant::now();
    transfer.await;
    samples.seconds.push(started.elapsed().as_secs_f64());
    samples.cpu_seconds += crate::cpu::cpu_seconds_of(pids) - cpu_before;
}

async fn connect(url: &str, tls: Option<&MakeRustlsConnect>) -> tokio_postgres::Client {
    match tls {
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
    }
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
