//! Recording shards: where a finished statement is counted, on the session's own
//! thread, under a lock that no other session thread takes (one shard per session
//! thread; the aggregator takes it every few milliseconds to collect the sums).
//!
//! A shard maps each statement shape to its fingerprint once (normalizing the text is
//! the expensive part, and only a new shape pays it), and then a statement costs a
//! lookup, a few additions and one pushed duration. Nothing crosses a channel and
//! nothing is copied for a shape the shard knows; the aggregator ([`super::aggregate`])
//! turns the sums into the published statistics.
//!
//! Bounded: the shape map by `stats.text_map_bytes` (split between the shards, cleared
//! when full, as the aggregator's text map was), the per-fingerprint entries by
//! `stats.max_fingerprints` (a shard that would exceed it hands its sums over and
//! starts afresh), and the durations by [`MAX_DURATIONS`] between two collections.

use std::sync::Arc;

use super::fingerprint::{fingerprint, FingerprintId};
use super::latency::LatencyCounts;
use super::{ProcessMap, Served, StatementEvent};

/// Durations one entry keeps between two collections; more only count in the sums
/// (a collection runs at least every 20 ms while statements flow).
const MAX_DURATIONS: usize = 4096;
/// Slots of the direct-mapped table from exact text hashes to shapes.
const ALIAS_SLOTS: usize = 256;
/// Bytes one shape-map slot costs (key, slot number, control byte).
const KEY_SLOT_BYTES: usize = std::mem::size_of::<u64>() + std::mem::size_of::<u32>() + 1;
const ALIAS_BYTES: usize = ALIAS_SLOTS * std::mem::size_of::<(u64, u64)>();
/// The bit of a shape-map value that says the shape may carry a `traceparent`.
const TRACED: u32 = 1 << 31;

/// About what one fingerprint a shard knows costs (its entry, its text, a few
/// durations), to keep the shards' part of `stats.max_bytes` to a quarter.
pub(super) const ENTRY_COST: usize = std::mem::size_of::<LocalEntry>() + 96;

/// Whether `sql` has the key of a sqlcommenter `traceparent` anywhere.
fn mentions_traceparent(sql: &[u8]) -> bool {
    memchr::memmem::find(sql, b"traceparent=").is_some()
}

/// What statements of one fingerprint added since the last collection.
#[derive(Debug, Default)]
pub(super) struct Sums {
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub total_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub primary: u64,
    pub replica: u64,
    pub cache_hits: u64,
    /// Each statement's duration (µs), for the percentiles.
    pub durations: Vec<u32>,
}

impl Sums {
    fn add(&mut self, event: &StatementEvent<'_>, micros: u64) {
        if self.calls == 0 {
            self.min_us = micros;
        }
        self.calls += 1;
        self.errors += u64::from(event.error);
        self.rows += event.rows;
        self.total_us += micros;
        self.min_us = self.min_us.min(micros);
        self.max_us = self.max_us.max(micros);
        match event.served {
            Served::Primary => self.primary += 1,
            Served::Replica => self.replica += 1,
            Served::Cache => self.cache_hits += 1,
        }
        if self.durations.len() < MAX_DURATIONS {
            self.durations
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }

    /// Back to nothing, keeping the durations' buffer.
    fn reset(&mut self) {
        let mut durations = std::mem::take(&mut self.durations);
        durations.clear();
        *self = Sums {
            durations,
            ..Sums::default()
        };
    }
}

/// A fingerprint as one shard knows it.
pub(super) struct LocalEntry {
    pub id: FingerprintId,
    /// The normalized text (shared with the N+1 detector's patterns).
    pub query: Arc<str>,
    pub sums: Sums,
    /// The aggregator dropped this fingerprint: the next statement brings a sample.
    resight: bool,
}

/// A fingerprint the aggregator may not have: its normalized text and one statement as
/// sent.
pub(super) struct Sighting {
    pub id: FingerprintId,
    pub query: Arc<str>,
    pub sample: Arc<str>,
}

/// Statements finished in this shard since the last collection, for the timeline.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SecondSums {
    pub calls: u64,
    pub errors: u64,
    pub primary: u64,
    pub replica: u64,
    pub total_us: u64,
    pub max_us: u64,
}

pub(super) struct Shard {
    /// Shape hash → slot in `entries`, with [`TRACED`] set for a shape whose first
    /// text mentioned a `traceparent`.
    keys: ProcessMap<u64, u32>,
    max_keys: usize,
    /// Exact text hash → shape hash, for statements the session did not scan
    /// (extended protocol, cache hits): a repeated text skips the scan.
    aliases: Box<[(u64, u64)]>,
    entries: Vec<LocalEntry>,
    by_id: ProcessMap<FingerprintId, u32>,
    max_entries: usize,
    /// Slots with sums since the last collection.
    touched: Vec<u32>,
    sightings: Vec<Sighting>,
    /// Sums of entries dropped before their collection (the shard started afresh).
    orphans: Vec<(FingerprintId, Arc<str>, Sums)>,
    latency: LatencyCounts,
    second: SecondSums,
    text_bytes: usize,
}

/// What a collection hands the aggregator, shard by shard.
pub(super) trait Collector {
    fn sighting(&mut self, sighting: Sighting);
    fn sums(&mut self, id: FingerprintId, query: &Arc<str>, sums: &Sums);
    fn second(&mut self, second: &SecondSums, latency: &LatencyCounts);
}

impl Shard {
    /// A shard whose shape map stays within `key_bytes` and which knows at most
    /// `max_entries` fingerprints.
    pub fn new(key_bytes: usize, max_entries: usize) -> Shard {
        let room = key_bytes.saturating_sub(ALIAS_BYTES);
        // hashbrown keeps an eighth of its power-of-two table free.
        let mut buckets = 8usize;
        while buckets * 2 * KEY_SLOT_BYTES <= room {
            buckets *= 2;
        }
        Shard {
            keys: super::process_map(),
            max_keys: buckets / 8 * 7,
            aliases: vec![(0, 0); ALIAS_SLOTS].into_boxed_slice(),
            entries: Vec::new(),
            by_id: super::process_map(),
            max_entries: max_entries.max(1),
            touched: Vec::new(),
            sightings: Vec::new(),
            orphans: Vec::new(),
            latency: LatencyCounts::default(),
            second: SecondSums::default(),
            text_bytes: 0,
        }
    }

    /// Counts `event`; returns its entry and whether its text may carry a
    /// `traceparent` (for the N+1 detector).
    pub fn record(&mut self, event: &StatementEvent<'_>) -> (&LocalEntry, bool) {
        let micros = event.duration.as_micros() as u64;
        let value = self.slot_of(event);
        let slot = value & !TRACED;
        let entry = &mut self.entries[slot as usize];
        if entry.sums.calls == 0 {
            self.touched.push(slot);
        }
        entry.sums.add(event, micros);
        if entry.resight {
            entry.resight = false;
            self.sightings.push(Sighting {
                id: entry.id,
                query: entry.query.clone(),
                sample: Arc::from(crate::protocol::text::lossy(event.sql)),
            });
        }
        self.latency.record(event.served, micros);
        let second = &mut self.second;
        second.calls += 1;
        second.errors += u64::from(event.error);
        match event.served {
            Served::Primary => second.primary += 1,
            Served::Replica => second.replica += 1,
            Served::Cache => {}
        }
        second.total_us += micros;
        second.max_us = second.max_us.max(micros);
        (&self.entries[slot as usize], value & TRACED != 0)
    }

    /// The slot of the event's fingerprint, made on its first sighting, with
    /// [`TRACED`] when the shape may carry a `traceparent`. Comments are part of the
    /// shape, so every text of a shape has the first one's sqlcommenter comment.
    fn slot_of(&mut self, event: &StatementEvent<'_>) -> u32 {
        let key = match event.shape {
            Some(shape) => shape.hash,
            None => self.shape_of_unscanned(event.sql),
        };
        if let Some(slot) = self.keys.get(&key) {
            return *slot;
        }
        let mut value = self.entry_for(event.sql);
        if mentions_traceparent(event.sql) {
            value |= TRACED;
        }
        if self.keys.len() >= self.max_keys {
            self.keys.clear();
        }
        self.keys.insert(key, value);
        value
    }

    /// The shape hash of a text the session did not scan: remembered by the text's
    /// exact hash, so a repeated text is not scanned again.
    fn shape_of_unscanned(&mut self, sql: &[u8]) -> u64 {
        let exact = super::process_hash(sql);
        let at = exact as usize & (ALIAS_SLOTS - 1);
        let (known, shape) = self.aliases[at];
        if known == exact && exact != 0 {
            return shape;
        }
        let shape = crate::scan::scan(sql).shape.hash;
        self.aliases[at] = (exact, shape);
        shape
    }

    /// The slot of `sql`'s fingerprint: normalizes the text (a shape not seen yet).
    fn entry_for(&mut self, sql: &[u8]) -> u32 {
        let (id, normalized) = fingerprint(&crate::protocol::text::lossy(sql));
        if let Some(slot) = self.by_id.get(&id) {
            return *slot;
        }
        if self.entries.len() >= self.max_entries {
            self.start_afresh();
        }
        let query: Arc<str> = Arc::from(normalized);
        self.sightings.push(Sighting {
            id,
            query: query.clone(),
            sample: Arc::from(crate::protocol::text::lossy(sql)),
        });
        self.text_bytes += query.len();
        let slot = self.entries.len() as u32;
        self.entries.push(LocalEntry {
            id,
            query,
            sums: Sums::default(),
            resight: false,
        });
        self.by_id.insert(id, slot);
        slot
    }

    /// Forgets every fingerprint and shape; sums not collected yet wait in `orphans`.
    fn start_afresh(&mut self) {
        for slot in self.touched.drain(..) {
            let entry = &mut self.entries[slot as usize];
            let sums = std::mem::take(&mut entry.sums);
            self.orphans.push((entry.id, entry.query.clone(), sums));
        }
        self.entries.clear();
        self.by_id.clear();
        self.keys.clear();
        self.text_bytes = 0;
    }

    /// Hands everything recorded since the last collection to `collector` (new
    /// fingerprints first), and starts counting from zero. Returns the statements
    /// collected.
    pub fn collect(&mut self, collector: &mut impl Collector) -> u64 {
        for sighting in self.sightings.drain(..) {
            collector.sighting(sighting);
        }
        for (id, query, sums) in self.orphans.drain(..) {
            collector.sums(id, &query, &sums);
        }
        for slot in self.touched.drain(..) {
            let entry = &mut self.entries[slot as usize];
            collector.sums(entry.id, &entry.query, &entry.sums);
            let kept = (entry.sums.calls as usize).max(8);
            entry.sums.reset();
            // A burst's buffer does not stay with a fingerprint that went quiet.
            if entry.sums.durations.capacity() > 2 * kept {
                entry.sums.durations.shrink_to(kept);
            }
        }
        let statements = self.second.calls;
        collector.second(&self.second, &self.latency);
        self.second = SecondSums::default();
        self.latency = LatencyCounts::default();
        statements
    }

    /// The aggregator dropped `id`: its next statement here brings a sample again.
    pub fn forget(&mut self, id: FingerprintId) {
        if let Some(slot) = self.by_id.get(&id) {
            self.entries[*slot as usize].resight = true;
        }
    }

    /// Bytes of the shape map (table capacity, not only the slots in use) and the
    /// alias table.
    pub fn key_bytes(&self) -> u64 {
        let capacity = self.keys.capacity();
        let table = if capacity == 0 {
            0
        } else {
            capacity.div_ceil(7) * 8 * KEY_SLOT_BYTES
        };
        (table + ALIAS_BYTES) as u64
    }

    /// Bytes of the fingerprints this shard knows: entries, their texts and buffers.
    pub fn entry_bytes(&self) -> u64 {
        let durations: usize = self
            .entries
            .iter()
            .map(|e| e.sums.durations.capacity() * std::mem::size_of::<u32>())
            .sum();
        (self.entries.capacity() * std::mem::size_of::<LocalEntry>()
            + self.by_id.capacity() * (std::mem::size_of::<(FingerprintId, u32)>() + 1)
            + self.text_bytes
            + durations) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(sql: &str, micros: u64) -> StatementEvent<'_> {
        StatementEvent {
            sql: sql.as_bytes(),
            shape: None,
            duration: Duration::from_micros(micros),
            rows: 1,
            error: false,
            served: Served::Primary,
            call: None,
        }
    }

    /// What a collection handed over.
    #[derive(Default)]
    struct Collected {
        sightings: Vec<(FingerprintId, String, String)>,
        sums: Vec<(String, u64, u64, u64, Vec<u32>)>,
        seconds: Vec<SecondSums>,
    }

    impl Collector for Collected {
        fn sighting(&mut self, sighting: Sighting) {
            self.sightings.push((
                sighting.id,
                sighting.query.to_string(),
                sighting.sample.to_string(),
            ));
        }

        fn sums(&mut self, _: FingerprintId, query: &Arc<str>, sums: &Sums) {
            self.sums.push((
                query.to_string(),
                sums.calls,
                sums.min_us,
                sums.max_us,
                sums.durations.clone(),
            ));
        }

        fn second(&mut self, second: &SecondSums, _: &LatencyCounts) {
            self.seconds.push(*second);
        }
    }

    #[test]
    fn statements_are_counted_by_fingerprint_and_collected_once() {
        let mut shard = Shard::new(64 * 1024, 100);
        for (sql, micros) in [
            ("SELECT a FROM t WHERE id = 1", 10),
            ("SELECT a FROM t WHERE id = 2", 30),
            ("select a from t where id = 3", 20),
            ("SELECT b FROM t", 5),
        ] {
            shard.record(&event(sql, micros));
        }
        let mut collected = Collected::default();
        assert_eq!(shard.collect(&mut collected), 4);
        // One sighting per fingerprint, with the first text as its sample.
        let samples: Vec<&str> = collected.sightings.iter().map(|s| s.2.as_str()).collect();
        assert_eq!(samples, ["SELECT a FROM t WHERE id = 1", "SELECT b FROM t"]);
        let a = collected
            .sums
            .iter()
            .find(|s| s.0 == "select a from t where id = ?")
            .expect("sums of a");
        assert_eq!((a.1, a.2, a.3), (3, 10, 30));
        assert_eq!(a.4, [10, 30, 20]);
        assert_eq!(collected.seconds[0].calls, 4);
        assert_eq!(collected.seconds[0].max_us, 30);

        // Collected: the next collection starts from nothing.
        let mut again = Collected::default();
        assert_eq!(shard.collect(&mut again), 0);
        assert!(again.sightings.is_empty() && again.sums.is_empty());
        shard.record(&event("SELECT a FROM t WHERE id = 9", 7));
        let mut third = Collected::default();
        shard.collect(&mut third);
        assert!(third.sightings.is_empty(), "a known fingerprint");
        assert_eq!((third.sums[0].1, third.sums[0].2), (1, 7));
    }

    #[test]
    fn a_shape_with_a_traceparent_comment_may_trace() {
        let mut shard = Shard::new(64 * 1024, 100);
        let traced =
            "SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";
        assert!(shard.record(&event(traced, 1)).1);
        assert!(
            shard.record(&event(traced, 1)).1,
            "remembered with the shape"
        );
        assert!(!shard.record(&event("SELECT 1", 1)).1);
        assert!(!shard.record(&event("SELECT 2", 1)).1);
    }

    #[test]
    fn a_full_shard_starts_afresh_without_losing_sums() {
        let mut shard = Shard::new(64 * 1024, 2);
        for sql in ["SELECT a FROM t", "SELECT b FROM t", "SELECT c FROM t"] {
            shard.record(&event(sql, 1));
        }
        let mut collected = Collected::default();
        assert_eq!(shard.collect(&mut collected), 3);
        let mut queries: Vec<&str> = collected.sums.iter().map(|s| s.0.as_str()).collect();
        queries.sort();
        assert_eq!(
            queries,
            ["select a from t", "select b from t", "select c from t"]
        );
        assert_eq!(
            shard.entries.len(),
            1,
            "only the fingerprint after the fresh start"
        );
    }

    #[test]
    fn a_forgotten_fingerprint_is_sighted_again_with_a_sample() {
        let mut shard = Shard::new(64 * 1024, 100);
        shard.record(&event("SELECT a FROM t WHERE id = 1", 1));
        let mut first = Collected::default();
        shard.collect(&mut first);
        let id = first.sightings[0].0;
        shard.forget(id);
        shard.record(&event("SELECT a FROM t WHERE id = 2", 1));
        let mut again = Collected::default();
        shard.collect(&mut again);
        assert_eq!(again.sightings.len(), 1);
        assert_eq!(again.sightings[0].2, "SELECT a FROM t WHERE id = 2");
    }

    #[test]
    fn the_shape_map_stays_within_its_bytes() {
        let mut shard = Shard::new(16 * 1024, 100);
        for i in 0..5_000 {
            // Distinct shapes (the comment), one fingerprint.
            shard.record(&event(&format!("SELECT 1 /* {i} */"), 1));
        }
        assert!(shard.key_bytes() <= 16 * 1024, "{}", shard.key_bytes());
        assert_eq!(shard.entries.len(), 1);
    }
}
