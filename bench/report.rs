//! The run's tables: TPS and latency per cell against direct and PgBouncer, idle
//! memory, bulk transfers, as Markdown (`bench/results/latest.md`) and CSV.

use std::fmt::Write as _;

use super::pgbench::Measure;
use super::{bulk, idle, mib};

pub fn render(
    targets: &[String],
    rows: &[(String, String, String, Vec<Measure>)],
    idle: &[(&str, &str, usize, idle::IdleResult)],
    duration: u64,
    scale: u64,
    pool: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pgbench {duration}s per cell, scale {scale}, pool size {pool}, 2 pgbench threads; PgBouncer transaction mode{}\n",
        if super::sockets::get().is_some() {
            "; every leg over Unix-domain sockets (SOCKETS=1)"
        } else {
            ""
        }
    );
    let idx = |name: &str| targets.iter().position(|t| t == name);
    let mut header = "| script | mode | clients |".to_string();
    for t in targets {
        let _ = write!(header, " {t} TPS |");
    }
    for t in targets {
        let _ = write!(header, " {t} ms |");
    }
    let ratios = [
        ("pgwarden", "direct"),
        ("pgwarden", "pgbouncer"),
        ("pgwarden", "pgwarden_nostats"),
        ("pgwarden_rewrite", "pgwarden"),
        ("pgwarden", "pgwarden_baseline"),
    ];
    for (a, b) in ratios {
        if idx(a).is_some() && idx(b).is_some() {
            let _ = write!(header, " {a}/{b} |");
        }
    }
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "{}",
        header
            .chars()
            .map(|c| if c == '|' { '|' } else { '-' })
            .collect::<String>()
    );
    for (script, mode, clients, m) in rows {
        let mut line = format!("| {script} | {mode} | {clients} |");
        for x in m {
            if x.failed {
                let _ = write!(line, " {:.0} (errors) |", x.tps);
            } else {
                let _ = write!(line, " {:.0} |", x.tps);
            }
        }
        for x in m {
            let _ = write!(line, " {:.3} |", x.latency_ms);
        }
        for (a, b) in ratios {
            if let (Some(i), Some(j)) = (idx(a), idx(b)) {
                if m[j].failed || m[j].tps == 0.0 {
                    let _ = write!(line, " n/a |");
                } else {
                    let _ = write!(line, " {:.2} |", m[i].tps / m[j].tps);
                }
            }
        }
        let _ = writeln!(out, "{line}");
    }
    out.push_str(&super::tenant::guard_share_table(targets, rows));
    if !idle.is_empty() {
        let _ = writeln!(out, "\n| idle clients | proxy | login | logged in | RSS before (KiB) | RSS with clients (KiB) | KiB per client | RSS after they left (KiB) | KiB left per client |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for (target, auth, count, r) in idle {
            let per = |kib: u64| (kib as f64 - r.rss_before_kib as f64) / r.connected.max(1) as f64;
            let _ = writeln!(
                out,
                "| {count} | {target} | {auth} | {} | {} | {} | {:.2} | {} | {:.2} |",
                r.connected,
                r.rss_before_kib,
                r.rss_after_kib,
                per(r.rss_after_kib),
                r.rss_gone_kib,
                per(r.rss_gone_kib)
            );
        }
    }
    out
}

/// The bulk phase's table: each target's transfer times (medians over `rounds`) against
/// direct's, the proxy's CPU per transfer and its RSS after.
pub fn render_bulk(rows: &[(String, bulk::BulkResult)], rounds: usize) -> String {
    let mut out = String::new();
    // Against the mean of every direct measurement (TARGETS may list it twice).
    // A TLS row is compared with direct over TLS.
    let direct_mean = |tls: bool, f: fn(&bulk::BulkResult) -> f64| {
        let directs: Vec<f64> = rows
            .iter()
            .filter(|(t, _)| t.starts_with("direct") && t.ends_with("(TLS)") == tls)
            .map(|(_, r)| f(r))
            .collect();
        (!directs.is_empty()).then(|| directs.iter().sum::<f64>() / directs.len() as f64)
    };
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    };
    let _ = write!(
        out,
        "\n{rounds} rounds; in each, every target (in an order rotated by one per round) fetches the 1M-row result once (through the next of its {} sessions), one 16 MiB value twice, and runs one 100 MB COPY FROM STDIN. Times: medians over the rounds. CPU: the proxy's user+system ms per transfer. RSS: the proxy's, with those sessions still connected and idle.\n\n| target | 1M rows (s) | vs direct | CPU ms | 16 MiB value (s) | vs direct | CPU ms | COPY 100 MB (s) | vs direct | CPU ms | RSS idle after (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        bulk::SESSIONS
    );
    for (target, r) in rows {
        let tls = target.ends_with("(TLS)");
        let direct_rows = direct_mean(tls, |r| r.million_rows_s);
        let direct_value = direct_mean(tls, |r| r.value_16mib_s);
        let direct_copy = direct_mean(tls, |r| r.copy_in_100mb_s);
        let _ = writeln!(
            out,
            "| {target} | {:.3} | {} | {:.0} | {:.4} | {} | {:.1} | {:.3} | {} | {:.0} | {:.1} | {:.1} |",
            r.million_rows_s,
            ratio(r.million_rows_s, direct_rows),
            r.million_rows_cpu_s * 1000.0,
            r.value_16mib_s,
            ratio(r.value_16mib_s, direct_value),
            r.value_16mib_cpu_s * 1000.0,
            r.copy_in_100mb_s,
            ratio(r.copy_in_100mb_s, direct_copy),
            r.copy_in_100mb_cpu_s * 1000.0,
            mib(r.rss_idle_kib),
            mib(r.rss_peak_kib),
        );
    }
    out
}

pub fn render_csv(targets: &[String], rows: &[(String, String, String, Vec<Measure>)]) -> String {
    let mut out = String::from("script,mode,clients,target,tps,latency_ms,errors\n");
    for (script, mode, clients, m) in rows {
        for (t, x) in targets.iter().zip(m) {
            let _ = writeln!(
                out,
                "{script},{mode},{clients},{t},{:.1},{:.3},{}",
                x.tps, x.latency_ms, x.failed
            );
        }
    }
    out
}
