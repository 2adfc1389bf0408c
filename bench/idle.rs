//! RSS of a proxy holding many idle, logged-in client connections (trust auth).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub connected: usize,
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` for the peak); 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut packet = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", database)],
        &mut packet,
    )
    .expect("small startup packet");
    packet.to_vec()
}

async fn connect_idle(port: u16, packet: &[u8]) -> Option<TcpStream> {
    let login = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(packet).await.ok()?;
        let mut seen = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&chunk[..n]);
            // ReadyForQuery is the last message of the login answer.
            if seen.len() >= 6 && seen[seen.len() - 6] == b'Z' {
                return Some(stream);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), login)
        .await
        .ok()?
}

pub fn measure(pid: u32, port: u16, user: &str, database: &str, count: usize) -> IdleResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Warm up: one connection so the pool and allocator exist before the baseline.
        let packet = startup(user, database);
        let warm = connect_idle(port, &packet).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(pid);
        let mut held = Vec::with_capacity(count);
        for chunk in 0..count.div_ceil(200) {
            let batch =
                (chunk * 200..((chunk + 1) * 200).min(count)).map(|_| connect_idle(port, &packet));
            for stream in futures_util::future::join_all(batch)
                .await
                .into_iter()
                .flatten()
            {
                held.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        let connected = held.len();
        drop(held);
        drop(warm);
        IdleResult {
            rss_before_kib: before,
            rss_after_kib: after,
            connected,
        }
    })
}
