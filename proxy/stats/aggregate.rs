//! The aggregator task: per-fingerprint counters and histograms, bounded memory,
//! a per-second time series for the dashboard, and the published snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use super::fingerprint::{fingerprint, FingerprintId};
use super::{Event, Served, StatementEvent};

/// What readers see of one fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct QuerySummary {
    pub id: String,
    pub query: String,
    /// One statement as sent (literals included): only with `stats.show_parameters`.
    pub sample: Option<String>,
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
    query: String,
    sample: Option<String>,
    calls: u64,
    errors: u64,
    rows: u64,
    total_us: u64,
    min_us: u64,
    max_us: u64,
    histogram: Histogram<u64>,
    primary_calls: u64,
    replica_calls: u64,
    first_seen: u64,
    last_seen: u64,
}

const TIMELINE_SECONDS: usize = 300;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<Event>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    dropped: Arc<AtomicU64>,
    max_fingerprints: usize,
    show_parameters: bool,
) {
    let mut entries: HashMap<FingerprintId, Entry> = HashMap::new();
    let mut timeline: VecDeque<(TimePoint, u64)> = VecDeque::new();
    // Fingerprints by exact text, so repeated statements skip normalization.
    let mut by_text: HashMap<bytes::Bytes, FingerprintId> = HashMap::new();
    let latency = [
        metrics::histogram!("pgwarden_query_duration_seconds", "route" => "primary"),
        metrics::histogram!("pgwarden_query_duration_seconds", "route" => "replica"),
    ];
    // Drain on a timer instead of waiting on the channel: senders then never have to
    // wake this task, which keeps recording nearly free for the sessions.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_publish = 0u32;
    let mut dirty = false;
    loop {
        tick.tick().await;
        let mut waiting = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Event::Statement(event)) => {
                    let index = usize::from(event.served == Served::Replica);
                    latency[index].record(event.duration.as_secs_f64());
                    add(
                        &mut entries,
                        &mut by_text,
                        &mut timeline,
                        event,
                        max_fingerprints,
                        show_parameters,
                    );
                    dirty = true;
                }
                Ok(Event::Flush(done)) => waiting.push(done),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        since_publish += 1;
        if !waiting.is_empty() || (dirty && since_publish >= 25) {
            snapshot.store(Arc::new(build(&entries, &timeline, &dropped)));
            dirty = false;
            since_publish = 0;
            for done in waiting {
                let _ = done.send(());
            }
        }
    }
}

fn add(
    entries: &mut HashMap<FingerprintId, Entry>,
    by_text: &mut HashMap<bytes::Bytes, FingerprintId>,
    timeline: &mut VecDeque<(TimePoint, u64)>,
    event: StatementEvent,
    max_fingerprints: usize,
    show_parameters: bool,
) {
    let micros = event.duration.as_micros() as u64;
    let now = now_secs();
    let (id, normalized) = match by_text.get(&event.sql) {
        Some(id) if entries.contains_key(id) => (*id, None),
        _ => {
            let text = String::from_utf8_lossy(&event.sql);
            let (id, normalized) = fingerprint(&text);
            if by_text.len() > max_fingerprints * 8 {
                by_text.clear();
            }
            by_text.insert(event.sql.clone(), id);
            (id, Some(normalized))
        }
    };
    if !entries.contains_key(&id) && entries.len() >= max_fingerprints {
        evict(entries, max_fingerprints);
    }
    let entry = entries.entry(id).or_insert_with(|| Entry {
        query: normalized.unwrap_or_default(),
        sample: show_parameters.then(|| String::from_utf8_lossy(&event.sql).into_owned()),
        calls: 0,
        errors: 0,
        rows: 0,
        total_us: 0,
        min_us: u64::MAX,
        max_us: 0,
        histogram: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
        primary_calls: 0,
        replica_calls: 0,
        first_seen: now,
        last_seen: now,
    });
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
    }
    entry.last_seen = now;

    if timeline.back().is_none_or(|(p, _)| p.second != now) {
        timeline.push_back((
            TimePoint {
                second: now,
                ..TimePoint::default()
            },
            0,
        ));
        while timeline.len() > TIMELINE_SECONDS {
            timeline.pop_front();
        }
    }
    if let Some((point, total_us)) = timeline.back_mut() {
        point.calls += 1;
        point.errors += u64::from(event.error);
        match event.served {
            Served::Primary => point.primary += 1,
            Served::Replica => point.replica += 1,
        }
        *total_us += micros;
        point.mean_ms = *total_us as f64 / point.calls as f64 / 1000.0;
        point.max_ms = point.max_ms.max(micros as f64 / 1000.0);
    }
}

/// Drops the tenth of fingerprints that cost the least total time.
fn evict(entries: &mut HashMap<FingerprintId, Entry>, max: usize) {
    let mut costs: Vec<(u64, FingerprintId)> =
        entries.iter().map(|(id, e)| (e.total_us, *id)).collect();
    costs.sort_unstable();
    let remove = (max / 10).max(1);
    for (_, id) in costs.into_iter().take(remove) {
        entries.remove(&id);
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
    entries: &HashMap<FingerprintId, Entry>,
    timeline: &VecDeque<(TimePoint, u64)>,
    dropped: &AtomicU64,
) -> Snapshot {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut queries: Vec<QuerySummary> = entries
        .iter()
        .map(|(id, e)| QuerySummary {
            id: format!("{id:016x}"),
            query: e.query.clone(),
            sample: e.sample.clone(),
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
            first_seen: e.first_seen,
            last_seen: e.last_seen,
        })
        .collect();
    queries.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Snapshot {
        queries,
        timeline: timeline.iter().map(|(p, _)| *p).collect(),
        dropped_events: dropped.load(std::sync::atomic::Ordering::Relaxed),
    }
}
