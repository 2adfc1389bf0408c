//! Added latency at one client, in rounds: each round runs a short pgbench against
//! direct and then against every proxy, back to back, and takes each proxy's mean
//! latency minus direct's of the same round. The median over the rounds is the
//! figure; the spread of the rounds is printed with it.
//!
//! One 10-second run per target (the main table's `added latency` column) is at the
//! mercy of whatever the VM does during that run: on a shared 2-core machine the same
//! cell moved by 20 µs between two runs a minute apart, more than the few µs a proxy
//! adds. Rounds that alternate the targets see the same drift, and the median leaves
//! out the round a neighbour spoiled.

use std::path::Path;

use super::pgbench::run_pgbench;

/// What the rounds measured for one proxy in one protocol mode.
pub struct AddedLatency {
    pub mode: String,
    pub target: String,
    /// Per round, the proxy's mean latency minus direct's, in µs (sorted).
    pub rounds_us: Vec<f64>,
}

impl AddedLatency {
    pub fn median_us(&self) -> f64 {
        super::bulk::median(self.rounds_us.clone())
    }
}

/// Runs `rounds` rounds of `seconds` each per target, for each of `modes`, against
/// `-S` at one client. `port_of` gives a target's port; `targets` must include
/// `direct`, which every round runs first.
pub fn measure(
    pgbench: &Path,
    work: &Path,
    scale: u64,
    modes: &[String],
    targets: &[String],
    port_of: impl Fn(&str) -> u16,
    (rounds, seconds): (u32, u64),
) -> Vec<AddedLatency> {
    let proxies: Vec<&String> = targets.iter().filter(|t| *t != "direct").collect();
    let mut out = Vec::new();
    for mode in modes {
        let mut per_proxy: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
        for round in 0..rounds {
            let direct = run_pgbench(
                pgbench,
                (&super::sockets::host_for("direct"), port_of("direct")),
                ("select", work, scale),
                mode,
                "1",
                seconds,
            );
            for (i, proxy) in proxies.iter().enumerate() {
                let m = run_pgbench(
                    pgbench,
                    (&super::sockets::host_for(proxy), port_of(proxy)),
                    ("select", work, scale),
                    mode,
                    "1",
                    seconds,
                );
                if !m.failed && !direct.failed {
                    per_proxy[i].push((m.latency_ms - direct.latency_ms) * 1000.0);
                }
            }
            eprintln!("latency rounds: {mode} round {} of {rounds}", round + 1);
        }
        for (proxy, mut rounds_us) in proxies.iter().zip(per_proxy) {
            rounds_us.sort_by(f64::total_cmp);
            out.push(AddedLatency {
                mode: mode.clone(),
                target: proxy.to_string(),
                rounds_us,
            });
        }
    }
    out
}

/// The rounds as a markdown table.
pub fn report(results: &[AddedLatency], rounds: u32, seconds: u64) -> String {
    let mut table = format!(
        "\nAdded latency at 1 client (`-S`), in {rounds} rounds of {seconds} s per target, direct first in each round: the proxy's mean latency minus direct's of the same round.\n\n| mode | proxy | median added (us) | rounds, lowest to highest (us) |\n|---|---|---|---|\n"
    );
    for r in results {
        if r.rounds_us.is_empty() {
            // Every round failed through this proxy (PgBouncer 1.18 and `prepared`).
            table.push_str(&format!(
                "| {} | {} | n/a | failed in every round |\n",
                r.mode, r.target
            ));
            continue;
        }
        let rounds: Vec<String> = r.rounds_us.iter().map(|v| format!("{v:.0}")).collect();
        table.push_str(&format!(
            "| {} | {} | {:.1} | {} |\n",
            r.mode,
            r.target,
            r.median_us(),
            rounds.join(", ")
        ));
    }
    table
}
