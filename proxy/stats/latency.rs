//! The `pgwarden_query_duration_seconds` histogram, one per route: bucket counts the
//! recording shards keep in plain integers per statement, which the aggregator sums
//! and publishes to atomics every few milliseconds, rendered as Prometheus text when
//! `/metrics` is scraped.
//!
//! The `metrics` crate's histogram kept every sample until an upkeep pass drained it
//! (about 150 instructions per statement, plus the samples' memory); these buckets cost
//! a search over 13 bounds and an increment.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Served;

/// The buckets' upper bounds (inclusive), in µs: 0.5 ms to 5 s.
const BOUNDS_US: [u64; 13] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000,
];
/// The bounds as Prometheus writes them (`le`).
const BOUNDS_TEXT: [&str; 13] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5",
];
/// One count per bound, and one for durations above the last.
const SLOTS: usize = BOUNDS_US.len() + 1;
const ROUTES: [(Served, &str); 3] = [
    (Served::Primary, "primary"),
    (Served::Replica, "replica"),
    (Served::Cache, "cache"),
];

fn route_index(served: Served) -> usize {
    match served {
        Served::Primary => 0,
        Served::Replica => 1,
        Served::Cache => 2,
    }
}

/// The aggregator's own counts (no atomics per statement).
#[derive(Debug, Default, Clone)]
pub(super) struct LatencyCounts {
    /// Per route: the count of each slot (not cumulative), the sum in µs.
    slots: [[u64; SLOTS]; 3],
    sum_us: [u64; 3],
}

impl LatencyCounts {
    #[inline]
    pub(super) fn record(&mut self, served: Served, micros: u64) {
        let route = route_index(served);
        let slot = BOUNDS_US.partition_point(|bound| *bound < micros);
        self.slots[route][slot] += 1;
        self.sum_us[route] = self.sum_us[route].saturating_add(micros);
    }

    /// Adds a shard's counts to these.
    pub(super) fn add(&mut self, other: &LatencyCounts) {
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            for (count, more) in mine.iter_mut().zip(theirs) {
                *count += more;
            }
        }
        for (sum, more) in self.sum_us.iter_mut().zip(other.sum_us) {
            *sum = sum.saturating_add(more);
        }
    }
}

/// What readers see: the aggregator's counts as of its last publish.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    slots: [[AtomicU64; SLOTS]; 3],
    sum_us: [AtomicU64; 3],
}

impl LatencyHistogram {
    pub(super) fn publish(&self, counts: &LatencyCounts) {
        for route in 0..ROUTES.len() {
            for (shared, count) in self.slots[route].iter().zip(counts.slots[route]) {
                shared.store(count, Ordering::Relaxed);
            }
            self.sum_us[route].store(counts.sum_us[route], Ordering::Relaxed);
        }
    }

    /// The histogram in the Prometheus text format (cumulative buckets, `+Inf`, sum
    /// in seconds, count), every route, recorded or not.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP pgwarden_query_duration_seconds Statement latency through the proxy, by route.\n\
             # TYPE pgwarden_query_duration_seconds histogram\n",
        );
        for (route, (_, name)) in ROUTES.iter().enumerate() {
            let mut cumulative = 0u64;
            for (slot, count) in self.slots[route].iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = BOUNDS_TEXT.get(slot).copied().unwrap_or("+Inf");
                let _ = writeln!(
                    out,
                    "pgwarden_query_duration_seconds_bucket{{route=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let seconds = self.sum_us[route].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "pgwarden_query_duration_seconds_sum{{route=\"{name}\"}} {seconds}"
            );
            let _ = writeln!(
                out,
                "pgwarden_query_duration_seconds_count{{route=\"{name}\"}} {cumulative}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each duration lands in the first bucket whose bound it does not exceed; the
    /// rendered buckets are cumulative and the count and sum match what was recorded.
    #[test]
    fn buckets_are_inclusive_and_rendered_cumulative() {
        let mut counts = LatencyCounts::default();
        for micros in [0, 500, 501, 1_000, 7_000_000] {
            counts.record(Served::Primary, micros);
        }
        counts.record(Served::Cache, 30);
        let histogram = LatencyHistogram::default();
        histogram.publish(&counts);
        let text = histogram.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let bucket = |route: &str, le: &str| {
            line(&format!(
                "pgwarden_query_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("primary", "0.0005"), "2");
        assert_eq!(bucket("primary", "0.001"), "4");
        assert_eq!(bucket("primary", "5"), "4");
        assert_eq!(bucket("primary", "+Inf"), "5");
        assert_eq!(
            line("pgwarden_query_duration_seconds_count{route=\"primary\"}"),
            "5"
        );
        assert_eq!(
            line("pgwarden_query_duration_seconds_sum{route=\"primary\"}"),
            "7.002001"
        );
        assert_eq!(bucket("cache", "0.0005"), "1");
        assert_eq!(bucket("replica", "+Inf"), "0");
        assert_eq!(text.matches("# TYPE").count(), 1);
    }
}
