//! Counts of what the guard refused (or, in audit mode, let through), per database,
//! tenant, statement fingerprint and reason. Bounded: past the limit, new keys are
//! counted only in the totals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::decision::Rejection;

const MAX_KEYS: usize = 10_000;
const MAX_SAMPLE: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    database: String,
    tenant: String,
    fingerprint: String,
    kind: &'static str,
    action: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ViolationRow {
    pub database: String,
    pub tenant: String,
    pub fingerprint: String,
    pub kind: &'static str,
    /// "rejected" (enforce/rewrite) or "audited" (audit: it ran).
    pub action: &'static str,
    pub count: u64,
    pub last_reason: String,
    pub last_seen_unix_ms: u64,
}

#[derive(Default)]
pub struct Violations {
    rows: Mutex<HashMap<Key, ViolationRow>>,
}

impl Violations {
    pub fn record(
        &self,
        database: &str,
        tenant: Option<&str>,
        sql: &str,
        rejection: &Rejection,
        audited: bool,
    ) {
        let action = if audited { "audited" } else { "rejected" };
        let tenant = tenant.unwrap_or("(none)").to_string();
        metrics::counter!(
            "pgwarden_tenant_violations_total",
            "database" => database.to_string(),
            "kind" => rejection.kind.as_str(),
            "action" => action,
        )
        .increment(1);
        let (_, mut fingerprint) = crate::stats::fingerprint::fingerprint(sql);
        if fingerprint.len() > MAX_SAMPLE {
            let mut cut = MAX_SAMPLE;
            while !fingerprint.is_char_boundary(cut) {
                cut -= 1;
            }
            fingerprint.truncate(cut);
        }
        let key = Key {
            database: database.to_string(),
            tenant: tenant.clone(),
            fingerprint: fingerprint.clone(),
            kind: rejection.kind.as_str(),
            action,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        if rows.len() >= MAX_KEYS && !rows.contains_key(&key) {
            return;
        }
        let row = rows.entry(key).or_insert_with(|| ViolationRow {
            database: database.to_string(),
            tenant,
            fingerprint,
            kind: rejection.kind.as_str(),
            action,
            count: 0,
            last_reason: String::new(),
            last_seen_unix_ms: 0,
        });
        row.count += 1;
        row.last_reason = rejection.message();
        row.last_seen_unix_ms = now;
    }

    /// Every row, most frequent first.
    pub fn snapshot(&self) -> Vec<ViolationRow> {
        let mut rows: Vec<ViolationRow> = self
            .rows
            .lock()
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        rows
    }
}
