//! Per-fingerprint cache counters and decisions, for `SHOW CACHE`, `/api/cache` and
//! `auto` mode: hits, misses, invalidations, whether it is cached and why (or why
//! not), and the calls of the last minute. Bounded: past [`MAX_ROWS`] fingerprints,
//! new ones are not tracked (they are still cached when hinted).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::stats::ProcessMap;

pub const MAX_ROWS: usize = 10_000;
/// Lookups before `auto` mode judges a fingerprint's hit ratio.
const JUDGE_AFTER: u64 = 50;

#[derive(Debug, Clone)]
pub struct Row {
    pub fingerprint: u64,
    pub text: String,
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub cached: bool,
    pub why: String,
    window_start: Instant,
    window_calls: u64,
    /// `auto`: its hit ratio stayed under `cache.min_hit_ratio`.
    pub ratio_too_low: bool,
}

impl Row {
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[derive(Default)]
pub struct FingerprintBook {
    rows: Mutex<ProcessMap<u64, Row>>,
}

impl FingerprintBook {
    fn with<R>(&self, fingerprint: u64, text: &str, f: impl FnOnce(&mut Row) -> R) -> Option<R> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(row) = rows.get_mut(&fingerprint) {
            return Some(f(row)); // a hit's case: one hash, one probe
        }
        if rows.len() >= MAX_ROWS {
            return None;
        }
        let row = rows.entry(fingerprint).or_insert_with(|| Row {
            fingerprint,
            text: text.chars().take(200).collect(),
            hits: 0,
            misses: 0,
            invalidations: 0,
            cached: false,
            why: String::new(),
            window_start: Instant::now(),
            window_calls: 0,
            ratio_too_low: false,
        });
        Some(f(row))
    }

    pub fn hit(&self, fingerprint: u64) {
        self.with(fingerprint, "", |r| r.hits += 1);
    }

    pub fn miss(&self, fingerprint: u64, text: &str) {
        self.with(fingerprint, text, |r| r.misses += 1);
    }

    pub fn invalidated(&self, fingerprint: u64) {
        self.with(fingerprint, "", |r| r.invalidations += 1);
    }

    pub fn decided(&self, fingerprint: u64, text: &str, cached: bool, why: &str) {
        self.with(fingerprint, text, |r| {
            r.cached = cached;
            if r.why != why {
                r.why = why.to_string();
            }
        });
    }

    /// `auto`: counts a call; true when the fingerprint is hot (`min_calls` in the last
    /// minute) and its hit ratio has not proved too low.
    pub fn auto_wants(&self, fingerprint: u64, text: &str, min_calls: u64, min_ratio: f64) -> bool {
        self.with(fingerprint, text, |r| {
            if r.window_start.elapsed() > Duration::from_secs(60) {
                r.window_start = Instant::now();
                r.window_calls = 0;
            }
            r.window_calls += 1;
            if r.hits + r.misses >= JUDGE_AFTER && r.hit_ratio() < min_ratio {
                if !r.ratio_too_low {
                    r.ratio_too_low = true;
                    r.cached = false;
                    r.why = format!(
                        "auto: hit ratio {:.2} under cache.min_hit_ratio {min_ratio}",
                        r.hit_ratio()
                    );
                }
                return false;
            }
            r.window_calls >= min_calls
        })
        .unwrap_or(false)
    }

    /// `auto`: calls counted in the fingerprint's current minute.
    pub fn calls_this_minute(&self, fingerprint: u64) -> u64 {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.get(&fingerprint)
            .filter(|r| r.window_start.elapsed() <= Duration::from_secs(60))
            .map_or(0, |r| r.window_calls)
    }

    pub fn rows(&self) -> Vec<Row> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.values().cloned().collect()
    }

    pub fn clear(&self) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_stops_caching_a_low_hit_ratio() {
        let book = FingerprintBook::default();
        assert!(!book.auto_wants(1, "q", 3, 0.7));
        assert!(!book.auto_wants(1, "q", 3, 0.7));
        assert!(book.auto_wants(1, "q", 3, 0.7));
        for _ in 0..60 {
            book.miss(1, "q");
        }
        assert!(!book.auto_wants(1, "q", 3, 0.7));
        let row = &book.rows()[0];
        assert!(row.ratio_too_low && row.why.contains("hit ratio"));
    }
}
