//! What pgwarden's bounded structures hold, in bytes, next to their bounds: shown by
//! `SHOW MEMORY`, `/api/memory` and the `pgwarden_memory_bytes{part}` gauge.
//!
//! Every part is read on demand from its owner (atomics or moka's weighted size), so
//! nothing here is on the data path. `process_rss` is the resident set of the whole
//! process (Linux only; 0 elsewhere) and has no bound.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::tables::Table;
use crate::runtime::Runtime;

/// One accounted part.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub part: &'static str,
    pub bytes: u64,
    /// The bound the part is kept within (0: none).
    pub limit: u64,
}

/// Every accounted part, in a fixed order.
pub fn parts(runtime: &Runtime) -> Vec<Part> {
    let stats = runtime.stats.memory();
    let limits = runtime.stats.limits();
    let (classifier, classifier_limit) = runtime.routing().classifier_cache_bytes();
    let (decisions, decisions_limit) = runtime.tenancy().cache_bytes();
    let (results, results_limit) = runtime.cache.memory();
    vec![
        Part {
            part: "stats_text_map",
            bytes: stats.text_map.load(Ordering::Relaxed),
            limit: limits.text_map_bytes,
        },
        Part {
            part: "stats_fingerprints",
            bytes: stats.fingerprints.load(Ordering::Relaxed),
            limit: limits.fingerprint_bytes,
        },
        Part {
            part: "n_plus_one",
            bytes: stats.n_plus_one.load(Ordering::Relaxed),
            limit: runtime.config().advise.n_plus_one.max_bytes,
        },
        Part {
            part: "classifier_cache",
            bytes: classifier,
            limit: classifier_limit,
        },
        Part {
            part: "tenant_decisions",
            bytes: decisions,
            limit: decisions_limit,
        },
        Part {
            part: "ryw_positions",
            bytes: runtime.routing().positions.bytes(),
            limit: crate::route::ryw::POSITIONS_MAX_BYTES,
        },
        Part {
            part: "statement_registry",
            bytes: crate::server::statement_registry_bytes() as u64,
            limit: crate::server::STATEMENT_REGISTRY_MAX_BYTES as u64,
        },
        Part {
            part: "result_cache",
            bytes: results,
            limit: results_limit,
        },
        Part {
            part: "process_rss",
            bytes: resident_bytes(),
            limit: 0,
        },
    ]
}

/// `SHOW MEMORY`.
pub fn table(runtime: &Runtime) -> Table {
    let mut table = Table::new(&["part", "bytes", "limit"]);
    for part in parts(runtime) {
        table.rows.push(vec![
            part.part.to_string(),
            part.bytes.to_string(),
            part.limit.to_string(),
        ]);
    }
    table
}

/// The process's resident set size from `/proc/self/statm`.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}
