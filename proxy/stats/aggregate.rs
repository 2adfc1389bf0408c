//! The aggregator task: per-fingerprint counters and histograms, bounded memory,
//! a per-second time series for the dashboard, and the published snapshot.
//!
//! Nothing here keeps a slice of a session's buffers: the text map holds a 64-bit hash
//! of each statement text, and fingerprints own compact strings. Both are bounded by
//! bytes, and their sizes are published in [`MemoryGauges`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use super::drain_pace::{may_park, next_pause, BUSY_PAUSE, PARKED_TICK};
use super::fingerprint::{fingerprint, FingerprintId};
use super::latency::{LatencyCounts, LatencyHistogram};
use super::observer::{Call, CallObserver};
use super::{Event, MemoryGauges, Served, StatementEvent};

/// How often the observer's tick and the memory gauges run, however short the pause.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(20);
/// Events taken from the channel at a time.
const DRAIN_BATCH: usize = 256;
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

/// Bytes one text-map slot costs (hash key, fingerprint id, control byte).
const TEXT_SLOT_BYTES: usize = 2 * std::mem::size_of::<u64>() + 1;

/// The exact-text → fingerprint map: hashes only, bounded by bytes.
struct TextMap {
    map: super::ProcessMap<u64, FingerprintId>,
    max_entries: usize,
    /// Exact hashes of recent texts with literals, direct-mapped (a new text takes
    /// its slot from whatever was there): a hot text's repeats skip the shape scan,
    /// and a stream of fresh literals costs no more than this fixed table.
    recent: Box<[(u64, FingerprintId)]>,
}

/// Slots of [`TextMap::recent`] at most (a power of two), and the bytes of one.
const RECENT_SLOTS: usize = 1024;
const RECENT_SLOT_BYTES: usize = std::mem::size_of::<(u64, FingerprintId)>();

impl TextMap {
    /// A map whose table never grows past `max_bytes`: the largest power-of-two table
    /// that fits, filled to its load factor (7/8) at most.
    fn new(max_bytes: usize, max_fingerprints: usize) -> TextMap {
        // The recent-text table takes at most an eighth of the budget.
        let mut recent_slots = RECENT_SLOTS;
        while recent_slots > 1 && recent_slots * RECENT_SLOT_BYTES > max_bytes / 8 {
            recent_slots /= 2;
        }
        let max_bytes = max_bytes.saturating_sub(recent_slots * RECENT_SLOT_BYTES);
        let mut buckets = 8usize;
        while buckets * 2 * TEXT_SLOT_BYTES <= max_bytes {
            buckets *= 2;
        }
        let max_entries = (buckets / 8 * 7).min(max_fingerprints.saturating_mul(8).max(1));
        TextMap {
            map: super::process_map(),
            max_entries,
            recent: vec![(0, 0); recent_slots].into_boxed_slice(),
        }
    }

    fn recent_slot(&self, hash: u64) -> usize {
        hash as usize & (self.recent.len() - 1)
    }

    fn recent(&self, hash: u64) -> Option<FingerprintId> {
        let (at, id) = self.recent[self.recent_slot(hash)];
        (at == hash && hash != 0).then_some(id)
    }

    fn remember_recent(&mut self, hash: u64, id: FingerprintId) {
        let slot = self.recent_slot(hash);
        self.recent[slot] = (hash, id);
    }

    fn hash(sql: &[u8]) -> u64 {
        super::process_hash(sql)
    }

    fn get(&self, hash: u64) -> Option<FingerprintId> {
        self.map.get(&hash).copied()
    }

    fn insert(&mut self, hash: u64, id: FingerprintId) {
        if self.map.len() >= self.max_entries {
            self.map.clear();
        }
        self.map.insert(hash, id);
    }

    /// Bytes of the table (allocated capacity, not only the entries in use).
    fn bytes(&self) -> u64 {
        let recent = (self.recent.len() * RECENT_SLOT_BYTES) as u64;
        let capacity = self.map.capacity();
        if capacity == 0 {
            return recent;
        }
        // hashbrown keeps 1/8 of its buckets free.
        (capacity.div_ceil(7) * 8 * TEXT_SLOT_BYTES) as u64 + recent
    }
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
    pub text_map_bytes: usize,
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

/// Takes what the channel holds now, up to [`DRAIN_BATCH`] events, without waiting:
/// `None` once every sender is gone. A batch gives the senders' permits back in one
/// step (`try_recv` takes the semaphore's lock for every event). The no-op waker this
/// polls with is never woken: the aggregator drains on its timer.
fn take_batch<'a>(
    rx: &mut mpsc::Receiver<Event>,
    batch: &'a mut Vec<Event>,
) -> Option<&'a mut Vec<Event>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match rx.poll_recv_many(&mut cx, batch, DRAIN_BATCH) {
        std::task::Poll::Ready(0) => None,
        // Pending: empty now (or this task's cooperative budget is spent: the next
        // drain takes the rest).
        std::task::Poll::Ready(_) | std::task::Poll::Pending => Some(batch),
    }
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<Event>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    dropped: Arc<AtomicU64>,
    memory: Arc<MemoryGauges>,
    latency: Arc<LatencyHistogram>,
    limits: Limits,
    mut observer: Option<Box<dyn CallObserver>>,
) {
    let mut entries = Entries {
        map: super::process_map(),
        bytes: 0,
    };
    let mut timeline: VecDeque<(TimePoint, SecondTotals)> = VecDeque::new();
    // Fingerprints by a hash of the exact text, so repeated statements skip
    // normalization.
    let mut by_text = TextMap::new(limits.text_map_bytes, limits.max_fingerprints);
    let mut latency_counts = LatencyCounts::default();
    // Drain on a timer instead of waiting on the channel: senders then never have to
    // wake this task, which keeps recording nearly free for the sessions. The pause
    // follows the rate, so each drain is a small batch (`drain_pace`).
    let mut pause = BUSY_PAUSE;
    let mut last_drain = Instant::now();
    let mut last_housekeeping = Instant::now();
    let mut last_publish = Instant::now();
    let mut dirty = false;
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    let mut parked = false;
    loop {
        if parked {
            // Nothing to record: wait for the next event itself (its sender wakes this
            // task once), or for the housekeeping tick.
            tokio::select! {
                first = rx.recv() => match first {
                    Some(event) => batch.push(event),
                    None => return,
                },
                _ = tokio::time::sleep(PARKED_TICK) => {}
            }
        } else {
            tokio::time::sleep(pause).await;
        }
        let mut waiting = Vec::new();
        let mut drained = 0;
        loop {
            // `batch` may already hold the event a parked wait received.
            let Some(taken) = take_batch(&mut rx, &mut batch) else {
                return;
            };
            if taken.is_empty() {
                break;
            }
            // One wall-clock read per batch: a batch spans a couple of milliseconds,
            // and entries and the timeline count whole seconds.
            let second = now_secs();
            for event in taken.drain(..) {
                match event {
                    Event::Statement(event) => {
                        latency_counts.record(event.served, event.duration.as_micros() as u64);
                        add(
                            &mut entries,
                            &mut by_text,
                            &mut timeline,
                            event,
                            second,
                            &limits,
                            observer.as_deref_mut(),
                        );
                        drained += 1;
                    }
                    Event::Flush(done) => waiting.push(done),
                }
            }
        }
        dirty |= drained > 0;
        let now = Instant::now();
        pause = next_pause(pause, drained, now.duration_since(last_drain));
        last_drain = now;
        if !waiting.is_empty() || now.duration_since(last_housekeeping) >= HOUSEKEEPING_EVERY {
            last_housekeeping = now;
            if let Some(observer) = observer.as_deref_mut() {
                observer.tick(now);
            }
            latency.publish(&latency_counts);
            memory.text_map.store(by_text.bytes(), Ordering::Relaxed);
            memory.fingerprints.store(entries.bytes, Ordering::Relaxed);
        }
        if !waiting.is_empty() {
            if let Some(observer) = observer.as_deref_mut() {
                observer.flush();
            }
        }
        if !waiting.is_empty() || (dirty && now.duration_since(last_publish) >= PUBLISH_EVERY) {
            snapshot.store(Arc::new(build(
                &entries.map,
                &timeline,
                &dropped,
                limits.show_parameters,
            )));
            dirty = false;
            last_publish = now;
            for done in waiting {
                let _ = done.send(());
            }
        }
        parked = may_park(pause, drained, dirty);
    }
}

/// The fingerprint of a text whose shape the session already scanned
/// (`crate::scan`): found by the shape's hash, normalized only for a shape not seen
/// yet.
fn fingerprint_of_shape(
    sql: &[u8],
    shape: crate::scan::Shape,
    by_text: &mut TextMap,
    entries: &Entries,
) -> (FingerprintId, Option<String>) {
    if let Some(id) = by_text
        .get(shape.hash)
        .filter(|id| entries.map.contains_key(id))
    {
        return (id, None);
    }
    let (id, normalized) = fingerprint(&crate::protocol::text::lossy(sql));
    by_text.insert(shape.hash, id);
    (id, Some(normalized))
}

/// The fingerprint of `sql` (whose hash is `exact`), normalized only for a text whose shape was not seen yet:
/// texts without literals are found by their own hash; texts that differ only in
/// their literals (`WHERE aid = 17` / `= 42`) share the hash of their shape (the
/// statement scanner's one pass, far cheaper than normalizing), which is what they are
/// remembered by, so a stream of fresh literals does not flood the map.
fn fingerprint_of(
    sql: &[u8],
    exact: u64,
    by_text: &mut TextMap,
    entries: &Entries,
) -> (FingerprintId, Option<String>) {
    let known = |id: Option<FingerprintId>| id.filter(|id| entries.map.contains_key(id));
    if let Some(id) = known(by_text.get(exact).or_else(|| by_text.recent(exact))) {
        return (id, None);
    }
    let shape = crate::scan::scan(sql).shape;
    if shape.has_literals {
        let (id, normalized) = fingerprint_of_shape(sql, shape, by_text, entries);
        by_text.remember_recent(exact, id);
        return (id, normalized);
    }
    let (id, normalized) = fingerprint(&crate::protocol::text::lossy(sql));
    by_text.insert(exact, id);
    (id, Some(normalized))
}

fn add(
    entries: &mut Entries,
    by_text: &mut TextMap,
    timeline: &mut VecDeque<(TimePoint, SecondTotals)>,
    event: StatementEvent,
    now: u64,
    limits: &Limits,
    observer: Option<&mut dyn CallObserver>,
) {
    let micros = event.duration.as_micros() as u64;
    let (id, normalized, exact) = match event.shape {
        Some(shape) => {
            let (id, normalized) = fingerprint_of_shape(&event.sql, shape, by_text, entries);
            (id, normalized, None)
        }
        None => {
            let hash = TextMap::hash(&event.sql);
            let (id, normalized) = fingerprint_of(&event.sql, hash, by_text, entries);
            (id, normalized, Some(hash))
        }
    };
    let entry = match entries.map.entry(id) {
        std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => {
            let query: Arc<str> = Arc::from(normalized.unwrap_or_default());
            let entry = Entry {
                query,
                sample: Arc::from(crate::protocol::text::lossy(&event.sql)),
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
            };
            entries.bytes += entry_bytes(&entry);
            slot.insert(entry)
        }
    };
    entry.calls += 1;
    entry.errors += u64::from(event.error);
    entry.rows += event.rows;
    entry.total_us += micros;
    entry.min_us = entry.min_us.min(micros);
    entry.max_us = entry.max_us.max(micros);
    let _ = entry.histogram.record(micros.clamp(1, 3_600_000_000));
    match event.served {
        Served::Primary => entry.primary_calls += 1,
        Served::Replica => entry.replica_calls += 1,
        Served::Cache => entry.cache_hits += 1,
    }
    entry.last_seen = now;
    if let (Some(observer), Some(context)) = (observer, event.call) {
        observer.observe(&Call {
            fingerprint: id,
            query: &entry.query,
            sql: &event.sql,
            text_hash: exact.unwrap_or_else(|| TextMap::hash(&event.sql)),
            duration: event.duration,
            context,
        });
    }

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
        point.calls += 1;
        point.errors += u64::from(event.error);
        match event.served {
            Served::Primary => point.primary += 1,
            Served::Replica => point.replica += 1,
            Served::Cache => {}
        }
        totals.total_us += micros;
        totals.max_us = totals.max_us.max(micros);
    }
    if entries.map.len() > limits.max_fingerprints || entries.bytes > limits.max_bytes {
        evict(entries, limits, id);
    }
}

/// Drops the tenth of fingerprints that cost the least total time (more while the
/// entries still exceed their byte bound), never `keep`, the one just recorded.
fn evict(entries: &mut Entries, limits: &Limits, keep: FingerprintId) {
    let mut costs: Vec<(u64, FingerprintId)> = entries
        .map
        .iter()
        .filter(|(id, _)| **id != keep)
        .map(|(id, e)| (e.total_us, *id))
        .collect();
    costs.sort_unstable();
    let tenth = (limits.max_fingerprints / 10).max(1);
    for (removed, (_, id)) in costs.into_iter().enumerate() {
        let over = entries.map.len() > limits.max_fingerprints || entries.bytes > limits.max_bytes;
        if removed >= tenth && !over {
            break;
        }
        if let Some(entry) = entries.map.remove(&id) {
            entries.bytes = entries.bytes.saturating_sub(entry_bytes(&entry));
        }
    }
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
    dropped: &AtomicU64,
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
        dropped_events: dropped.load(std::sync::atomic::Ordering::Relaxed),
    }
}
