//! Query statistics: every statement is fingerprinted and counted (calls, errors,
//! rows, time percentiles, route).
//!
//! A session counts its finished statement itself, into its thread's recording shard
//! (`shard`): a lookup by the statement's shape and a few additions, under a lock
//! only the aggregator also takes. The N+1 detector is told about the statement right
//! there, in the order statements finish. A background aggregator collects the shards'
//! sums every few milliseconds, keeps the histograms, the timeline and the bounds, and
//! publishes the snapshot readers (the admin console, the HTTP API, metrics) see.

mod aggregate;
pub mod clock;
mod drain_pace;
mod event_text;
pub mod fingerprint;
mod latency;
mod observer;
mod shard;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

pub use aggregate::{QuerySummary, Snapshot, TimePoint};
pub use event_text::EventText;
pub use latency::LatencyHistogram;
pub use observer::{Call, CallContext, CallObserver};

use crate::config::StatsConfig;
use shard::Shard;

/// Bytes the aggregator holds, updated by it every few milliseconds.
#[derive(Debug, Default)]
pub struct MemoryGauges {
    /// The shards' shape → fingerprint maps (hashes only).
    pub text_map: AtomicU64,
    /// The N+1 detector's sessions and patterns (written by the detector).
    pub n_plus_one: AtomicU64,
    /// Fingerprint entries: counters, histograms, normalized text, samples; the
    /// aggregator's and the shards'.
    pub fingerprints: AtomicU64,
}

/// Which kind of backend served a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Served {
    Primary,
    Replica,
    /// Answered by the result cache, without a server.
    Cache,
}

/// One finished statement.
#[derive(Debug)]
pub struct StatementEvent<'a> {
    /// The text as sent.
    pub sql: &'a [u8],
    /// The text's shape, when the session scanned it already (simple queries); else
    /// the shard works it out (once per text it remembers).
    pub shape: Option<crate::scan::Shape>,
    pub duration: Duration,
    pub rows: u64,
    pub error: bool,
    pub served: Served,
    /// Who ran it, for the N+1 detector; `None` from callers that do not know.
    pub call: Option<CallContext>,
}

/// What the recorders and the aggregator share.
struct Shared {
    shards: Box<[Mutex<Shard>]>,
    observer: Option<Mutex<Box<dyn CallObserver>>>,
    /// Set by an aggregator with nothing to collect before it waits for `wake`; the
    /// next statement clears it and wakes it.
    parked: AtomicBool,
    wake: Notify,
}

/// Numbers the threads that record, so each takes its own shard.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_number() -> usize {
    THREAD_NUMBER.with(|number| {
        if number.get() == usize::MAX {
            number.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        number.get()
    })
}

/// Handle sessions record through; cheap to clone.
#[derive(Clone)]
pub struct StatsRecorder {
    shared: Arc<Shared>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    memory: Arc<MemoryGauges>,
    latency: Arc<LatencyHistogram>,
    limits: StatsLimits,
    pub enabled: bool,
}

/// The byte bounds of the aggregator, for `SHOW MEMORY`.
#[derive(Debug, Clone, Copy)]
pub struct StatsLimits {
    pub text_map_bytes: u64,
    pub fingerprint_bytes: u64,
}

impl StatsRecorder {
    /// Starts the aggregator task (needs a tokio runtime), with one shard.
    pub fn start(config: &StatsConfig) -> StatsRecorder {
        Self::start_observed(config, 1, Arc::new(MemoryGauges::default()), None)
    }

    /// Starts the aggregator with `shards` recording shards (one per session thread)
    /// and an observer of every fingerprinted statement; `memory` is shared with the
    /// observer so it can report its bytes.
    pub fn start_observed(
        config: &StatsConfig,
        shards: usize,
        memory: Arc<MemoryGauges>,
        observer: Option<Box<dyn CallObserver>>,
    ) -> StatsRecorder {
        clock::calibrate();
        let shards = shards.max(1);
        let text_map_bytes = usize::try_from(config.text_map_bytes).unwrap_or(usize::MAX);
        let max_fingerprints = config.max_fingerprints.max(1);
        // A shard knows at most the fingerprints the aggregator may keep, and its
        // entries stay within a quarter of the fingerprints' bytes.
        let max_bytes = usize::try_from(config.max_bytes).unwrap_or(usize::MAX);
        let shard_entries = max_fingerprints
            .min(max_bytes / 4 / shard::ENTRY_COST / shards)
            .max(16);
        let shared = Arc::new(Shared {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(text_map_bytes / shards, shard_entries)))
                .collect(),
            observer: observer.map(Mutex::new),
            parked: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let (flushes, requests) = mpsc::channel(64);
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let latency = Arc::new(LatencyHistogram::default());
        tokio::spawn(aggregate::run(
            shared.clone(),
            requests,
            snapshot.clone(),
            memory.clone(),
            latency.clone(),
            aggregate::Limits {
                max_fingerprints,
                max_bytes: config.max_bytes,
                show_parameters: config.show_parameters,
            },
        ));
        StatsRecorder {
            shared,
            flushes,
            snapshot,
            memory,
            latency,
            limits: StatsLimits {
                text_map_bytes: config.text_map_bytes,
                fingerprint_bytes: config.max_bytes,
            },
            enabled: config.enabled,
        }
    }

    /// Bytes the aggregator holds now.
    pub fn memory(&self) -> &MemoryGauges {
        &self.memory
    }

    /// Statement latency by route, as of the aggregator's last publish.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    pub fn limits(&self) -> StatsLimits {
        self.limits
    }

    /// Counts a finished statement in this thread's shard, and tells the N+1 detector.
    /// Never waits on anything but the shard's lock (held by the aggregator for one
    /// collection at most).
    pub fn record(&self, event: &StatementEvent<'_>) {
        let shards = &self.shared.shards;
        let shard = if shards.len() == 1 {
            &shards[0]
        } else {
            &shards[thread_number() % shards.len()]
        };
        let mut shard = shard.lock();
        let (entry, may_trace) = shard.record(event);
        if let (Some(observer), Some(context)) = (&self.shared.observer, event.call) {
            observer.lock().observe(&Call {
                fingerprint: entry.id,
                query: &entry.query,
                sql: event.sql,
                may_trace,
                duration: event.duration,
                context,
            });
        }
        drop(shard);
        if self.shared.parked.load(Ordering::Relaxed)
            && self.shared.parked.swap(false, Ordering::Relaxed)
        {
            self.shared.wake.notify_one();
        }
    }

    /// Waits until every statement recorded before this call is in the snapshot.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// A fast hash of bytes for this process's own maps (statement texts, parameters,
/// session keys): foldhash with a seed drawn once per process, so no client can aim
/// collisions at it. Not for ids that must agree between processes or builds
/// (fingerprint ids, invalidation keys): those keep their fixed hash.
pub fn process_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    process_hasher().hash_one(bytes)
}

/// The state of [`process_hasher`], for maps and caches keyed by client-chosen bytes
/// (statement texts, parameters): several times cheaper than SipHash on long texts,
/// and seeded per process.
pub type ProcessHashState = foldhash::fast::FixedState;

/// The seeded state behind [`process_hash`], for this process's own hash maps and
/// caches keyed by client-chosen bytes.
pub fn process_hasher() -> ProcessHashState {
    static STATE: std::sync::OnceLock<ProcessHashState> = std::sync::OnceLock::new();
    STATE
        .get_or_init(|| ProcessHashState::with_seed(rand::random()))
        .clone()
}

/// [`process_hasher`] as a hasher whose `Default` is seeded too, so that maps inside
/// `#[derive(Default)]` types use the process seed, not foldhash's fixed one.
#[derive(Debug, Clone)]
pub struct ProcessState(ProcessHashState);

impl Default for ProcessState {
    fn default() -> ProcessState {
        ProcessState(process_hasher())
    }
}

impl std::hash::BuildHasher for ProcessState {
    type Hasher = <ProcessHashState as std::hash::BuildHasher>::Hasher;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A hash map on the seeded process hash, for maps looked up per statement (the
/// aggregator's, the N+1 detector's, the result cache's bookkeeping): several times
/// cheaper than the std SipHash.
pub type ProcessMap<K, V> = std::collections::HashMap<K, V, ProcessState>;

/// An empty [`ProcessMap`].
pub fn process_map<K, V>() -> ProcessMap<K, V> {
    ProcessMap::default()
}

/// Rows a `CommandComplete` tag reports (`SELECT 5`, `INSERT 0 3`, `UPDATE 2`): the
/// digits after its last space (or the whole tag), 0 when there are none or they
/// overflow.
pub fn rows_from_tag(tag: &[u8]) -> u64 {
    let start = tag
        .iter()
        .rposition(|b| *b == b' ')
        .map_or(0, |space| space + 1);
    let count = &tag[start..];
    if count.is_empty() || count.len() > 20 {
        return 0;
    }
    let mut rows = 0u64;
    for &digit in count {
        if !digit.is_ascii_digit() {
            return 0;
        }
        rows = match rows
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
        {
            Some(n) => n,
            None => return 0,
        };
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A defaulted map hashes with the process seed (as `process_hash` does), not with
    /// foldhash's fixed default seed.
    #[test]
    fn defaulted_process_maps_are_seeded() {
        use std::hash::BuildHasher;
        let key = b"a key".as_slice();
        let defaulted = ProcessState::default().hash_one(key);
        assert_eq!(defaulted, process_hash(key));
        assert_ne!(
            defaulted,
            foldhash::fast::FixedState::default().hash_one(key)
        );
    }

    /// A successful statement event of no rows, outside any call context.
    fn event(sql: &str, duration: Duration, served: Served) -> StatementEvent<'_> {
        StatementEvent {
            sql: sql.as_bytes(),
            shape: None,
            duration,
            rows: 0,
            error: false,
            served,
            call: None,
        }
    }

    fn config(max_fingerprints: usize) -> StatsConfig {
        StatsConfig {
            max_fingerprints,
            ..StatsConfig::default()
        }
    }

    #[tokio::test]
    async fn text_map_and_fingerprints_stay_within_their_bytes() {
        let stats = StatsRecorder::start(&StatsConfig {
            max_fingerprints: 100_000,
            max_bytes: 512 * 1024,
            text_map_bytes: 64 * 1024,
            ..StatsConfig::default()
        });
        for i in 0..20_000 {
            // Distinct texts, a few hundred distinct fingerprints.
            stats.record(&event(
                &format!("SELECT c{} FROM t WHERE id = {i}", i % 300),
                Duration::from_micros(10),
                Served::Primary,
            ));
        }
        stats.flush().await;
        let memory = stats.memory();
        let text = memory.text_map.load(Ordering::Relaxed);
        let fingerprints = memory.fingerprints.load(Ordering::Relaxed);
        assert!(text > 0 && text <= 64 * 1024, "text map {text}");
        assert!(
            fingerprints > 0 && fingerprints <= 512 * 1024,
            "fingerprints {fingerprints}"
        );
        assert!(!stats.snapshot().queries.is_empty());
    }

    #[tokio::test]
    async fn repeated_texts_with_literals_count_under_their_fingerprint() {
        let stats = StatsRecorder::start(&config(100));
        // Repeats of one text are found by its exact hash (the recent table); a new
        // literal by the shape; a text of another shape gets its own fingerprint.
        for sql in [
            "SELECT a FROM t WHERE id = 1",
            "SELECT a FROM t WHERE id = 1",
            "SELECT a FROM t WHERE id = 2",
            "SELECT a FROM t WHERE id = 1",
            "SELECT b FROM t WHERE id = 1",
            "SELECT a FROM t WHERE id = 2",
        ] {
            stats.record(&StatementEvent {
                rows: 1,
                ..event(sql, Duration::from_micros(5), Served::Cache)
            });
        }
        stats.flush().await;
        let snapshot = stats.snapshot();
        let calls = |query: &str| {
            snapshot
                .queries
                .iter()
                .find(|q| q.query == query)
                .map(|q| (q.calls, q.cache_hits))
        };
        assert_eq!(calls("select a from t where id = ?"), Some((5, 5)));
        assert_eq!(calls("select b from t where id = ?"), Some((1, 1)));
    }

    #[test]
    fn rows_from_command_tags() {
        assert_eq!(rows_from_tag(b"SELECT 5"), 5);
        assert_eq!(rows_from_tag(b"INSERT 0 3"), 3);
        assert_eq!(rows_from_tag(b"CREATE TABLE"), 0);
        assert_eq!(rows_from_tag(b"SELECT 18446744073709551615"), u64::MAX);
        assert_eq!(rows_from_tag(b"SELECT 18446744073709551616"), 0, "overflow");
        assert_eq!(rows_from_tag(b"SELECT 1x"), 0);
        assert_eq!(rows_from_tag(b"SELECT "), 0);
        assert_eq!(rows_from_tag(b""), 0);
        assert_eq!(rows_from_tag(b"42"), 42);
    }

    #[tokio::test]
    async fn aggregates_by_fingerprint() {
        let stats = StatsRecorder::start(&config(100));
        for (sql, error) in [
            ("SELECT 1", false),
            ("select 2", false),
            ("SELECT x FROM t", true),
        ] {
            stats.record(&StatementEvent {
                rows: 1,
                error,
                ..event(sql, Duration::from_millis(2), Served::Primary)
            });
        }
        stats.flush().await;
        let snapshot = stats.snapshot();
        let select = snapshot
            .queries
            .iter()
            .find(|q| q.query == "select ?")
            .unwrap();
        assert_eq!((select.calls, select.errors, select.rows), (2, 0, 2));
        assert!(
            select.p50_ms >= 1.9 && select.p50_ms <= 2.1,
            "{}",
            select.p50_ms
        );
        let other = snapshot
            .queries
            .iter()
            .find(|q| q.query == "select x from t")
            .unwrap();
        assert_eq!(other.errors, 1);
        assert_eq!(snapshot.queries.len(), 2);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_cheap_fingerprints_go_first() {
        let stats = StatsRecorder::start(&config(10));
        stats.record(&event(
            "SELECT expensive FROM t",
            Duration::from_secs(1),
            Served::Replica,
        ));
        for i in 0..50 {
            stats.record(&event(
                &format!("SELECT c{i} FROM t"),
                Duration::from_micros(10),
                Served::Primary,
            ));
        }
        stats.flush().await;
        let snapshot = stats.snapshot();
        assert!(snapshot.queries.len() <= 10);
        assert!(snapshot
            .queries
            .iter()
            .any(|q| q.query == "select expensive from t"));
    }

    /// Threads record at once, each into its shard (more threads than shards, so
    /// some share one): every statement is counted once, and the timeline agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_recorded_on_many_threads_are_all_counted() {
        let stats =
            StatsRecorder::start_observed(&config(100), 3, Arc::new(MemoryGauges::default()), None);
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let sql = format!("SELECT c{} FROM t WHERE id = {i}", (t + i) % 4);
                        stats.record(&event(&sql, Duration::from_micros(3), Served::Replica));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        stats.flush().await;
        let snapshot = stats.snapshot();
        let calls: u64 = snapshot.queries.iter().map(|q| q.calls).sum();
        let replica: u64 = snapshot.queries.iter().map(|q| q.replica_calls).sum();
        assert_eq!((calls, replica), (30_000, 30_000));
        assert_eq!(snapshot.queries.len(), 4);
        let timeline: u64 = snapshot.timeline.iter().map(|p| p.calls).sum();
        assert_eq!(timeline, 30_000);
    }
}
