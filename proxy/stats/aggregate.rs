//! The aggregator task: collects the recording shards' sums (`shard`) every few
//! milliseconds into per-fingerprint counters and histograms with bounded memory, a
//! per-second time series for the dashboard, and the published snapshot.
//!
//! Nothing here keeps a slice of a session's buffers: fingerprints own compact
//! strings and one sample each, bounded by bytes, and their sizes are published in
//! [`MemoryGauges`] with the shards'.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::drain_pace::{may_park, next_pause, BUSY_PAUSE, PARKED_TICK};
use super::fingerprint::FingerprintId;
use super::latency::{LatencyCounts, LatencyHistogram};
use super::shard::{Collector, SecondSums, Sighting, Sums};
use super::{MemoryGauges, Shared};

/// How often the observer's tick and the memory gauges run, however short the pause.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(20);
/// How often the snapshot readers see is rebuilt while statements flow.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// What readers see of one fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct QuerySummary {
    pub id: String,
    pub query: String,
    /// One statement as sent (literals included): only with `stats.show_parameters`.
    pub sample: Option<String>,
    /// The same statement, always kept, for the index advisor to plan; never shown.
    #[serde(skip)]
    pub plan_sample: Option<Arc<str>>,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub primary_calls: u64,
    pub replica_calls: u64,
    /// Calls answered by the result cache.
    pub cache_hits: u64,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// Statements finished in one second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TimePoint {
    pub second: u64,
    pub calls: u64,
    pub errors: u64,
    pub primary: u64,
    pub replica: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Sorted by total time, most expensive first.
    pub queries: Vec<QuerySummary>,
    /// The last five minutes, oldest first.
    pub timeline: Vec<TimePoint>,
    /// Statements not counted. Sessions count into their shard directly, so none
    /// are dropped any more; the field (and its metric) stays for existing readers.
    pub dropped_events: u64,
}

struct Entry {
    query: Arc<str>,
    /// The first statement as sent (shown only with `stats.show_parameters`).
    sample: Arc<str>,
    calls: u64,
    errors: u64,
    rows: u64,
    total_us: u64,
    min_us: u64,
    max_us: u64,
    histogram: Histogram<u64>,
    primary_calls: u64,
    replica_calls: u64,
    cache_hits: u64,
    first_seen: u64,
    last_seen: u64,
}

const TIMELINE_SECONDS: usize = 300;

/// A timeline second's durations, turned into its mean and maximum when published.
#[derive(Debug, Default, Clone, Copy)]
struct SecondTotals {
    total_us: u64,
    max_us: u64,
}

/// Bytes one fingerprint entry holds: the entry, its histogram counts, its strings.
fn entry_bytes(entry: &Entry) -> u64 {
    (std::mem::size_of::<Entry>()
        + std::mem::size_of::<FingerprintId>()
        + entry.histogram.distinct_values() * std::mem::size_of::<u64>()
        + entry.query.len()
        + entry.sample.len()) as u64
}

/// What the aggregator may keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_fingerprints: usize,
    pub max_bytes: u64,
    pub show_parameters: bool,
}

/// Fingerprints with their byte total.
struct Entries {
    map: super::ProcessMap<FingerprintId, Entry>,
    bytes: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything the aggregator keeps, and the second a collection counts in.
struct Aggregation {
    entries: Entries,
    timeline: VecDeque<(TimePoint, SecondTotals)>,
    latency_counts: LatencyCounts,
    /// The wall-clock second of this collection: a collection gathers a few
    /// milliseconds of statements, and entries and the timeline count whole seconds.
    now: u64,
}

impl Aggregation {
    fn new_entry(query: Arc<str>, sample: Arc<str>, now: u64) -> Entry {
        Entry {
            query,
            sample,
            calls: 0,
            errors: 0,
            rows: 0,
            total_us: 0,
            min_us: u64::MAX,
            max_us: 0,
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            primary_calls: 0,
            replica_calls: 0,
            cache_hits: 0,
            first_seen: now,
            last_seen: now,
        }
    }
}

impl Collector for Aggregation {
    fn sighting(&mut self, sighting: Sighting) {
        if self.entries.map.contains_key(&sighting.id) {
            return;
        }
        let entry = Self::new_entry(sighting.query, sighting.sample, self.now);
        self.entries.bytes += entry_bytes(&entry);
        self.entries.map.insert(sighting.id, entry);
    }

    fn sums(&mut self, id: FingerprintId, query: &Arc<str>, sums: &Sums) {
        let now = self.now;
        let entries = &mut self.entries;
        let entry = entries.map.entry(id).or_insert_with(|| {
            // Dropped here while a shard still counted it, and not seen since: the
            // normalized text stands in for a sample until the shard sends one.
            let entry = Self::new_entry(query.clone(), query.clone(), now);
            entries.bytes += entry_bytes(&entry);
            entry
        });
        entry.calls += sums.calls;
        entry.errors += sums.errors;
        entry.rows += sums.rows;
        entry.total_us += sums.total_us;
        entry.min_us = entry.min_us.min(sums.min_us);
        entry.max_us = entry.max_us.max(sums.max_us);
        for micros in &sums.durations {
            let _ = entry
                .histogram
                .record(u64::from(*micros).clamp(1, 3_600_000_000));
        }
        entry.primary_calls += sums.primary;
        entry.replica_calls += sums.replica;
        entry.cache_hits += sums.cache_hits;
        entry.last_seen = now;
    }

    fn second(&mut self, second: &SecondSums, latency: &LatencyCounts) {
        if second.calls == 0 {
            return;
        }
        self.latency_counts.add(latency);
        let now = self.now;
        let timeline = &mut self.timeline;
        if timeline.back().is_none_or(|(p, _)| p.second != now) {
            timeline.push_back((
                TimePoint {
                    second: now,
                    ..TimePoint::default()
                },
                SecondTotals::default(),
            ));
            while timeline.len() > TIMELINE_SECONDS {
                timeline.pop_front();
            }
        }
        if let Some((point, totals)) = timeline.back_mut() {
            point.calls += second.calls;
            point.errors += second.errors;
            point.primary += second.primary;
            point.replica += second.replica;
            totals.total_us += second.total_us;
            totals.max_us = totals.max_us.max(second.max_us);
        }
    }
}

/// Collects every shard; returns the statements collected.
fn collect(shared: &Shared, aggregation: &mut Aggregation) -> u64 {
    aggregation.now = now_secs();
    shared
        .shards
        .iter()
        .map(|shard| shard.lock().collect(aggregation))
        .sum()
}

/// Bytes the shards hold: their shape maps, and their fingerprints.
fn shard_bytes(shared: &Shared) -> (u64, u64) {
    shared.shards.iter().fold((0, 0), |(keys, entries), shard| {
        let shard = shard.lock();
        (keys + shard.key_bytes(), entries + shard.entry_bytes())
    })
}

pub(super) async fn run(
    shared: Arc<Shared>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    memory: Arc<MemoryGauges>,
    latency: Arc<LatencyHistogram>,
    limits: Limits,
) {
    let mut aggregation = Aggregation {
        entries: Entries {
            map: super::process_map(),
            bytes: 0,
        },
        timeline: VecDeque::new(),
        latency_counts: LatencyCounts::default(),
        now: 0,
    };
    // Collect on a timer: sessions then never have to wake this task, which keeps
    // recording nearly free for them. The pause follows the rate, so each collection
    // is a small batch (`drain_pace`).
    let mut pause = BUSY_PAUSE;
    let mut last_drain = Instant::now();
    let mut last_housekeeping = Instant::now();
    let mut last_publish = Instant::now();
    let mut dirty = false;
    let mut parked = false;
    let mut shard_entry_bytes = 0;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let wait = if parked { PARKED_TICK } else { pause };
        tokio::select! {
            request = flushes.recv() => match request {
                Some(done) => waiting.push(done),
                None => return,
            },
            // Nothing to record while parked: the next statement wakes this task once.
            _ = shared.wake.notified(), if parked => {}
            _ = tokio::time::sleep(wait) => {}
        }
        shared.parked.store(false, Ordering::Relaxed);
        while let Ok(done) = flushes.try_recv() {
            waiting.push(done);
        }
        let collected = collect(&shared, &mut aggregation);
        dirty |= collected > 0;
        let now = Instant::now();
        pause = next_pause(pause, collected as usize, now.duration_since(last_drain));
        last_drain = now;
        let housekeeping =
            !waiting.is_empty() || now.duration_since(last_housekeeping) >= HOUSEKEEPING_EVERY;
        let mut shard_key_bytes = 0;
        if housekeeping {
            (shard_key_bytes, shard_entry_bytes) = shard_bytes(&shared);
        }
        let entries = &mut aggregation.entries;
        if entries.map.len() > limits.max_fingerprints
            || entries.bytes + shard_entry_bytes > limits.max_bytes
        {
            for id in evict(entries, &limits, shard_entry_bytes) {
                for shard in shared.shards.iter() {
                    shard.lock().forget(id);
                }
            }
        }
        if housekeeping {
            last_housekeeping = now;
            if let Some(observer) = &shared.observer {
                observer.lock().tick(super::clock::now());
            }
            latency.publish(&aggregation.latency_counts);
            memory.text_map.store(shard_key_bytes, Ordering::Relaxed);
            memory.fingerprints.store(
                aggregation.entries.bytes + shard_entry_bytes,
                Ordering::Relaxed,
            );
        }
        if !waiting.is_empty() {
            if let Some(observer) = &shared.observer {
                observer.lock().flush();
            }
        }
        if !waiting.is_empty() || (dirty && now.duration_since(last_publish) >= PUBLISH_EVERY) {
            snapshot.store(Arc::new(build(
                &aggregation.entries.map,
                &aggregation.timeline,
                limits.show_parameters,
            )));
            dirty = false;
            last_publish = now;
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        parked = may_park(pause, collected as usize, dirty);
        if parked {
            // A statement recorded after the collection above, but before it could see
            // the flag, is collected by the next tick; one recorded after, wakes it.
            shared.parked.store(true, Ordering::Relaxed);
        }
    }
}

/// Drops the tenth of fingerprints that cost the least total time (more while the
/// entries, with the shards' `shard_bytes`, still exceed their bounds); returns them.
fn evict(entries: &mut Entries, limits: &Limits, shard_bytes: u64) -> Vec<FingerprintId> {
    let mut costs: Vec<(u64, FingerprintId)> = entries
        .map
        .iter()
        .map(|(id, e)| (e.total_us, *id))
        .collect();
    costs.sort_unstable();
    let tenth = (costs.len() / 10).max(1);
    let mut evicted = Vec::new();
    for (removed, (_, id)) in costs.into_iter().enumerate() {
        let over = entries.map.len() > limits.max_fingerprints
            || entries.bytes + shard_bytes > limits.max_bytes;
        if removed >= tenth && !over {
            break;
        }
        if let Some(entry) = entries.map.remove(&id) {
            entries.bytes = entries.bytes.saturating_sub(entry_bytes(&entry));
            evicted.push(id);
        }
    }
    evicted
}

/// A percentile from the histogram, kept within what was observed (histogram buckets
/// report their upper edge, which can exceed the true maximum).
fn quantile(entry: &Entry, q: f64) -> u64 {
    entry
        .histogram
        .value_at_quantile(q)
        .clamp(entry.min_us.min(entry.max_us), entry.max_us)
}

fn build(
    entries: &super::ProcessMap<FingerprintId, Entry>,
    timeline: &VecDeque<(TimePoint, SecondTotals)>,
    show_parameters: bool,
) -> Snapshot {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut queries: Vec<QuerySummary> = entries
        .iter()
        .map(|(id, e)| QuerySummary {
            id: format!("{id:016x}"),
            query: e.query.to_string(),
            sample: show_parameters.then(|| e.sample.to_string()),
            plan_sample: Some(e.sample.clone()),
            calls: e.calls,
            errors: e.errors,
            rows: e.rows,
            total_ms: ms(e.total_us),
            mean_ms: ms(e.total_us) / e.calls.max(1) as f64,
            min_ms: if e.calls == 0 { 0.0 } else { ms(e.min_us) },
            max_ms: ms(e.max_us),
            p50_ms: ms(quantile(e, 0.50)),
            p95_ms: ms(quantile(e, 0.95)),
            p99_ms: ms(quantile(e, 0.99)),
            primary_calls: e.primary_calls,
            replica_calls: e.replica_calls,
            cache_hits: e.cache_hits,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
        })
        .collect();
    queries.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Snapshot {
        queries,
        timeline: timeline
            .iter()
            .map(|(point, totals)| TimePoint {
                mean_ms: ms(totals.total_us) / point.calls.max(1) as f64,
                max_ms: ms(totals.max_us),
                ..*point
            })
            .collect(),
        dropped_events: 0,
    }
}
