//! The index advisories one database has, kept across rounds: which fingerprints each
//! candidate index helps and by how much, when it was first seen and last confirmed.
//! Turned into [`Advisory`] values for readers.

use std::collections::BTreeMap;

use super::advisory::{per_hour, Advisory, AdvisoryKind, FingerprintRef, IndexDetails};
use super::candidates::{create_ddl, quote};

/// Saving assumed for a candidate hypopg could not check (for ranking only).
const UNCONFIRMED_SAVING: f64 = 0.5;

#[derive(Debug, Clone)]
pub struct Helped {
    pub query: String,
    pub total_ms: f64,
    pub share: f64,
    /// Seconds the fingerprint's statistics cover.
    pub seconds: u64,
    pub cost_before: f64,
    pub cost_after: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct IndexAdvice {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub confirmed: bool,
    pub estimated_bytes: Option<u64>,
    pub table_rows: f64,
    pub writes_per_second: Option<f64>,
    /// Fingerprint id → what the index does for it.
    pub helped: BTreeMap<String, Helped>,
    pub first_seen: u64,
    pub last_confirmed: u64,
}

impl IndexAdvice {
    pub fn key(&self) -> (String, String, Vec<String>) {
        (
            self.schema.clone(),
            self.table.clone(),
            self.columns.clone(),
        )
    }

    fn saving(h: &Helped) -> f64 {
        match h.cost_after {
            Some(after) if h.cost_before > 0.0 => (1.0 - after / h.cost_before).clamp(0.0, 1.0),
            _ => UNCONFIRMED_SAVING,
        }
    }

    pub fn advisory(&self, database: &str) -> Advisory {
        let seconds = self.helped.values().map(|h| h.seconds).max().unwrap_or(0);
        let saved_ms: f64 = self
            .helped
            .values()
            .map(|h| h.total_ms * Self::saving(h))
            .sum();
        let worst = self
            .helped
            .values()
            .max_by(|a, b| a.cost_before.total_cmp(&b.cost_before));
        let table = format!("{}.{}", quote(&self.schema), quote(&self.table));
        let (before, after) = worst.map_or((None, None), |h| (Some(h.cost_before), h.cost_after));
        let share: f64 = self.helped.values().map(|h| h.share).sum();
        let summary = format!(
            "index {} ({}){}: {} statement(s), {:.1}% of query time{}",
            table,
            self.columns.join(", "),
            if self.confirmed {
                ""
            } else {
                " (unconfirmed: hypopg not installed)"
            },
            self.helped.len(),
            100.0 * share,
            match (before, after) {
                (Some(b), Some(a)) => format!(", plan cost {b:.0} -> {a:.0}"),
                _ => String::new(),
            }
        );
        Advisory {
            kind: AdvisoryKind::Index,
            database: database.to_string(),
            table: Some(table),
            columns: self.columns.clone(),
            ddl: Some(create_ddl(&self.schema, &self.table, &self.columns)),
            fingerprints: self
                .helped
                .iter()
                .map(|(id, h)| FingerprintRef {
                    id: id.clone(),
                    query: h.query.clone(),
                    share: h.share,
                    role: None,
                })
                .collect(),
            score: per_hour(saved_ms, seconds),
            confirmed: self.confirmed,
            summary,
            index: Some(IndexDetails {
                cost_before: before,
                cost_after: after,
                estimated_bytes: self.estimated_bytes,
                table_rows: Some(self.table_rows),
                table_writes_per_second: self.writes_per_second,
                ..IndexDetails::default()
            }),
            n_plus_one: None,
            first_seen: self.first_seen,
            last_confirmed: self.last_confirmed,
        }
    }
}
