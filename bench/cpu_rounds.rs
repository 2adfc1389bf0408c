//! CPU per transaction in rounds: each round runs a short pgbench through every proxy,
//! the order rotated by one per round, and reads each proxy's CPU time (user and
//! system, `/proc`) around its run. The figures are medians over the rounds: per proxy
//! its µs of CPU per transaction (and of it, the kernel's), and per pair (pgwarden
//! against PgBouncer, statistics on against off) the ratio of the two proxies' figures
//! within each round. For pgwarden against PgBouncer also pgwarden's system time
//! alone against PgBouncer's whole: the kernel's work for the same system calls sets a
//! floor under any ratio of the totals.
//!
//! The main table gives each proxy one run per cell, minutes apart from the other
//! proxies' runs of the same cell; on a shared 2-core VM the same build's CPU per
//! transaction moved by 10% between two such runs, more than the 3% the statistics
//! target allows. Runs seconds apart, repeated, see more nearly the same machine; the
//! spread of the rounds is printed with the medians, as it is still not small.

use std::path::Path;

use super::pgbench::run_pgbench;

/// What the rounds measured for one proxy in one cell.
pub struct CpuRounds {
    pub script: String,
    pub mode: String,
    pub target: String,
    /// Per round, µs of the proxy's CPU per transaction (in round order).
    pub per_round_us: Vec<f64>,
    /// Per round, the part of `per_round_us` spent in the kernel (system time).
    pub per_round_system_us: Vec<f64>,
}

/// The pairs whose ratio the report gives, when both targets ran.
const PAIRS: [(&str, &str); 4] = [
    ("pgwarden", "pgbouncer"),
    ("pgwarden", "pgwarden_nostats"),
    ("pgwarden_rewrite", "pgwarden"),
    ("pgwarden", "pgwarden_baseline"),
];

/// The run's shape: cells, clients, and how many rounds of how many seconds.
pub struct Plan<'a> {
    pub cells: &'a [(String, String)],
    pub clients: &'a str,
    pub rounds: u32,
    pub seconds: u64,
}

/// Runs the rounds for every cell (script, mode) at `plan.clients` clients. `proxies`
/// are the targets measured (not `direct`); `port_of` and `cpu_pids_of` find them.
pub fn measure(
    pgbench: &Path,
    (work, scale): (&Path, u64),
    plan: &Plan<'_>,
    proxies: &[String],
    port_of: impl Fn(&str) -> u16,
    cpu_pids_of: impl Fn(&str) -> Vec<u32>,
) -> Vec<CpuRounds> {
    let mut out = Vec::new();
    for (script, mode) in plan.cells {
        // Per proxy, per round: (total, system) µs per transaction.
        let mut per_proxy: Vec<Vec<(f64, f64)>> = vec![Vec::new(); proxies.len()];
        for round in 0..plan.rounds as usize {
            let first = round % proxies.len().max(1);
            for index in (first..proxies.len()).chain(0..first) {
                let target = &proxies[index];
                let pids = cpu_pids_of(target);
                let before = super::cpu::cpu_time_of(&pids);
                let m = run_pgbench(
                    pgbench,
                    (&super::sockets::host_for(target), port_of(target)),
                    (script, work, scale),
                    mode,
                    plan.clients,
                    plan.seconds,
                );
                let spent = super::cpu::cpu_time_of(&pids).since(before);
                let transactions = m.tps * plan.seconds as f64;
                // A failed run or one without transactions has no figure: NaN keeps
                // the rounds aligned, and the medians leave it out.
                per_proxy[index].push(if m.failed || transactions < 1.0 {
                    (f64::NAN, f64::NAN)
                } else {
                    (
                        spent.total() * 1e6 / transactions,
                        spent.system * 1e6 / transactions,
                    )
                });
            }
            eprintln!(
                "cpu rounds: {script} {mode} round {} of {}",
                round + 1,
                plan.rounds
            );
        }
        for (target, rounds) in proxies.iter().zip(per_proxy) {
            let (per_round_us, per_round_system_us) = rounds.into_iter().unzip();
            out.push(CpuRounds {
                script: script.clone(),
                mode: mode.clone(),
                target: target.clone(),
                per_round_us,
                per_round_system_us,
            });
        }
    }
    out
}

/// The rounds as the run's knobs ask for them (`CPU_ROUNDS`, `CPU_SECONDS`,
/// `CPU_CLIENTS`): the `select` and `tpcb` scripts in the `simple` and `extended` modes
/// among the run's, through every target with a CPU time of its own (the proxies). The
/// report, or `None` when there is nothing to compare.
pub fn run_configured(
    pgbench: &Path,
    (work, scale): (&Path, u64),
    (scripts, modes, targets): (&[String], &[String], &[String]),
    port_of: impl Fn(&str) -> u16,
    cpu_pids_of: impl Fn(&str) -> Vec<u32>,
) -> Option<String> {
    let cells: Vec<(String, String)> = scripts
        .iter()
        .filter(|s| *s == "select" || *s == "tpcb" || super::tenant::is_tenant_script(s))
        .flat_map(|s| {
            modes
                .iter()
                .filter(|m| *m == "simple" || *m == "extended")
                .map(move |m| (s.clone(), m.clone()))
        })
        .collect();
    let proxies: Vec<String> = targets
        .iter()
        .filter(|t| !cpu_pids_of(t).is_empty())
        .cloned()
        .collect();
    let clients = std::env::var("CPU_CLIENTS").unwrap_or_else(|_| "16".into());
    let plan = Plan {
        cells: &cells,
        clients: &clients,
        rounds: super::env_num("CPU_ROUNDS", 5) as u32,
        seconds: super::env_num("CPU_SECONDS", 4),
    };
    if plan.rounds == 0 || proxies.len() < 2 || cells.is_empty() {
        return None;
    }
    let results = measure(
        pgbench,
        (work, scale),
        &plan,
        &proxies,
        port_of,
        cpu_pids_of,
    );
    Some(report(&results, &plan))
}

/// The median of the figures that are numbers; NaN when none is.
fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let numbers: Vec<f64> = values.filter(|v| !v.is_nan()).collect();
    if numbers.is_empty() {
        return f64::NAN;
    }
    super::bulk::median(numbers)
}

fn sorted_list(values: &[f64], decimals: usize) -> String {
    let mut values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    values.sort_by(f64::total_cmp);
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rounds as two markdown tables: per proxy, then per pair.
pub fn report(results: &[CpuRounds], plan: &Plan<'_>) -> String {
    let mut table = format!(
        "\nCPU per transaction in {} rounds of {} s per proxy at {} clients, the proxies' order rotated each round (`cpu_rounds.rs`): µs of the proxy's user + system CPU per transaction, and of it the system (kernel) time.\n\n| script | mode | proxy | median (µs/txn) | of it system, median | rounds, lowest to highest |\n|---|---|---|---|---|---|\n",
        plan.rounds, plan.seconds, plan.clients
    );
    for r in results {
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} |\n",
            r.script,
            r.mode,
            r.target,
            median_of(r.per_round_us.iter().copied()),
            median_of(r.per_round_system_us.iter().copied()),
            sorted_list(&r.per_round_us, 2)
        ));
    }
    table.push_str("\nRatios of the same rounds: per round, the first proxy's CPU per transaction divided by the second's; the median over the rounds.\n\n| script | mode | ratio | median | rounds, lowest to highest |\n|---|---|---|---|---|\n");
    for (script, mode) in plan.cells {
        let of = |target: &str| {
            results
                .iter()
                .find(|r| &r.script == script && &r.mode == mode && r.target == target)
        };
        for (a, b) in PAIRS {
            let (Some(a_rounds), Some(b_rounds)) = (of(a), of(b)) else {
                continue;
            };
            let mut row = |label: String, of_a: &[f64]| {
                let ratios: Vec<f64> = of_a
                    .iter()
                    .zip(&b_rounds.per_round_us)
                    .map(|(x, y)| x / y)
                    .collect();
                table.push_str(&format!(
                    "| {script} | {mode} | {label} | {:.3} | {} |\n",
                    median_of(ratios.iter().copied()),
                    sorted_list(&ratios, 3)
                ));
            };
            row(format!("{a} / {b}"), &a_rounds.per_round_us);
            if b == "pgbouncer" {
                row(
                    format!("{a}'s system time alone / {b}"),
                    &a_rounds.per_round_system_us,
                );
            }
        }
    }
    table
}
