//! The run's tables: TPS and latency per cell against direct and PgBouncer, idle
//! memory, as Markdown (`bench/results/latest.md`) and CSV.

use std::fmt::Write as _;

use super::idle;
use super::pgbench::Measure;

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
