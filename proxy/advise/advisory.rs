//! What an advisor tells a user: one advisory, in the shape `SHOW ADVISORIES`,
//! `/api/advisories`, the dashboard and `pgwarden advise` show.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvisoryKind {
    /// A missing index.
    Index,
    /// A loop of one child statement per parent row.
    NPlusOne,
    /// An index no scan has used since the statistics were reset.
    UnusedIndex,
    /// An index another index makes redundant (same or prefix columns).
    DuplicateIndex,
}

impl AdvisoryKind {
    pub const ALL: [AdvisoryKind; 4] = [
        AdvisoryKind::Index,
        AdvisoryKind::NPlusOne,
        AdvisoryKind::UnusedIndex,
        AdvisoryKind::DuplicateIndex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdvisoryKind::Index => "index",
            AdvisoryKind::NPlusOne => "n_plus_one",
            AdvisoryKind::UnusedIndex => "unused_index",
            AdvisoryKind::DuplicateIndex => "duplicate_index",
        }
    }
}

/// A fingerprint an advisory is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FingerprintRef {
    /// As in `SHOW QUERIES` (16 hex digits).
    pub id: String,
    pub query: String,
    /// Its share of the total time of every statement seen (0..1).
    pub share: f64,
    /// `child` or `parent` for N+1 advisories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Advisory {
    pub kind: AdvisoryKind,
    pub database: String,
    /// `schema.table` for index kinds, the child's table for N+1 (when known).
    pub table: Option<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    /// `CREATE INDEX CONCURRENTLY ...` or `DROP INDEX CONCURRENTLY ...`.
    pub ddl: Option<String>,
    #[serde(default)]
    pub fingerprints: Vec<FingerprintRef>,
    /// Estimated milliseconds saved per hour (what the list is sorted by).
    pub score: f64,
    /// Index: confirmed with a hypothetical index (hypopg). Others: true.
    pub confirmed: bool,
    /// One line for people.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_plus_one: Option<NPlusOneDetails>,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds of the last round (or burst) that found it again.
    pub last_confirmed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct IndexDetails {
    /// Planner cost of the costliest helped statement, without and with the index.
    pub cost_before: Option<f64>,
    pub cost_after: Option<f64>,
    /// hypopg's estimate of the index size.
    pub estimated_bytes: Option<u64>,
    pub table_rows: Option<f64>,
    /// Rows inserted, updated and deleted per second (primary, between rounds; since
    /// the statistics reset on the first round): what every index adds work to.
    pub table_writes_per_second: Option<f64>,
    /// For unused and duplicate indexes: the index and, for duplicates, the one that
    /// covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NPlusOneDetails {
    pub parent: String,
    pub child: String,
    /// Mean children per burst.
    pub burst_size: f64,
    /// Requests (bursts) seen.
    pub requests: u64,
    /// Bursts per minute since first seen.
    pub per_minute: f64,
    /// Children's own time plus the round trips between them, minus one query.
    pub time_lost_ms: f64,
    pub child_ms: f64,
    /// The column of the child's `col = $1` predicate.
    pub column: Option<String>,
    pub rewrite: String,
}

/// Milliseconds per hour from `ms` spent over `seconds` (at least a minute, so a
/// fresh observation is not extrapolated wildly).
pub fn per_hour(ms: f64, seconds: u64) -> f64 {
    ms * 3600.0 / seconds.max(60) as f64
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
