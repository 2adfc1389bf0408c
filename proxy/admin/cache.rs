//! The result cache on the admin surfaces: `SHOW CACHE` (a row per fingerprint, plus
//! one per database for the invalidation channels), `/api/cache` (totals and rows).

use super::tables::Table;
use crate::runtime::Runtime;

/// `SHOW CACHE`.
pub fn table(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "fingerprint",
        "query",
        "entries",
        "bytes",
        "hits",
        "misses",
        "hit_ratio",
        "invalidations",
        "cached",
        "why",
    ]);
    let cache = &runtime.cache;
    let config = runtime.config();
    for name in config.databases.keys() {
        let listening = if !config.cache.notify {
            "off (cache.notify = false)"
        } else if cache.is_listening(name) {
            "listening"
        } else {
            "down: nothing of this database is cached"
        };
        let wal = cache
            .wal_status()
            .into_iter()
            .find(|(d, _)| d == name)
            .map(|(_, s)| s)
            .unwrap_or_else(|| "starting".into());
        table.rows.push(vec![
            "-".into(),
            format!("database {name}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            format!("{:?}", config.cache.mode).to_lowercase(),
            format!("invalidations from other instances: {listening}; wal_invalidation: {wal}"),
        ]);
    }
    for (row, entries, bytes) in cache.fingerprint_rows() {
        table.rows.push(vec![
            row.fingerprint.to_string(),
            row.text.clone(),
            entries.to_string(),
            bytes.to_string(),
            row.hits.to_string(),
            row.misses.to_string(),
            format!("{:.3}", row.hit_ratio()),
            row.invalidations.to_string(),
            if row.cached { "yes" } else { "no" }.into(),
            row.why.clone(),
        ]);
    }
    table
}

/// `/api/cache`.
pub fn json(runtime: &Runtime) -> serde_json::Value {
    let totals = runtime.cache.totals();
    serde_json::json!({
        "mode": format!("{:?}", runtime.config().cache.mode).to_lowercase(),
        "hits": totals.hits,
        "misses": totals.misses,
        "entries": totals.entries,
        "bytes": totals.bytes,
        "max_bytes": totals.max_bytes,
        "invalidations": totals.invalidations,
        "databases": runtime.cache.wal_status().into_iter().map(|(d, wal)| serde_json::json!({
            "database": d,
            "listening": runtime.cache.is_listening(&d),
            "wal_invalidation": wal,
        })).collect::<Vec<_>>(),
        "fingerprints": table(runtime).to_json().as_array().map(|rows| rows.iter().filter(|r| r["fingerprint"] != "-").cloned().collect::<Vec<_>>()).unwrap_or_default(),
    })
}
