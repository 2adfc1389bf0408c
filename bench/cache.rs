//! The result cache's workloads (`SCRIPTS=report hotkeys`), measured direct, through
//! pgwarden with `cache.mode = "off"` (target `pgwarden_nocache`) and through pgwarden
//! with the default `hinted` mode (target `pgwarden`):
//!
//! - `report`: an aggregate over all of `pgbench_accounts` (100,000 rows per scale
//!   unit), hinted; 1% of transactions update one account instead.
//! - `hotkeys`: point reads of 100 hot accounts, hinted; 5% of transactions update one.
//!
//! Per-transaction latencies come from `pgbench -l` (for p99); hits and misses from
//! pgwarden's `/api/cache`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub fn is_cache_script(script: &str) -> bool {
    matches!(script, "report" | "hotkeys")
}

pub fn script_file(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join(format!("{script}.sql"));
    let text = match script {
        "report" => {
            "\\set r random(1, 100)\n\\set aid random(1, 100000 * :scale)\n\\if :r = 1\n\
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\\else\n\
             SELECT /* pgwarden:cache */ bid, count(*), sum(abalance), avg(abalance) FROM pgbench_accounts GROUP BY bid ORDER BY bid;\n\\endif\n"
        }
        _ => {
            "\\set r random(1, 100)\n\\set aid random(1, 100)\n\\if :r <= 5\n\
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\\else\n\
             SELECT /* pgwarden:cache */ aid, abalance, filler FROM pgbench_accounts WHERE aid = :aid;\n\\endif\n"
        }
    };
    std::fs::write(&path, text).expect("write a cache script");
    path
}

/// p99 of the per-transaction latencies (µs, third column) in `pgbench -l` files
/// starting with `prefix`, in ms.
pub fn p99_ms(prefix: &Path) -> Option<f64> {
    let dir = prefix.parent()?;
    let stem = prefix.file_name()?.to_string_lossy().into_owned();
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
        let _ = std::fs::remove_file(entry.path());
    }
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = (latencies.len() * 99 / 100).min(latencies.len() - 1);
    Some(latencies[at] as f64 / 1000.0)
}

/// (hits, misses) from pgwarden's `/api/cache`.
pub fn hits_and_misses(http_port: u16) -> Option<(u64, u64)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    stream
        .write_all(b"GET /api/cache HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let number = |key: &str| -> Option<u64> {
        // The totals come last (keys are sorted); rows carry the same names as text.
        let at = text.rfind(&format!("\"{key}\":"))? + key.len() + 3;
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    };
    Some((number("hits")?, number("misses")?))
}
