//! The result cache: exact response frames of deterministic reads, replayed byte for
//! byte to later clients with the same key, so a hit needs no server connection.
//!
//! This room owns what is cached (`hint`, `analysis`, `catalog`), the entries (moka,
//! weighted by bytes, per-entry TTL), invalidation by table OID (`versions`), the
//! LISTEN/NOTIFY exchange with other instances (`listen`), the logical-slot reader for
//! writes that bypass pgwarden (`wal`), single flight (`flight`) and the per-fingerprint
//! counters shown by the admin surfaces (`fingerprints`). It never touches a client
//! socket: the session (`server/caching.rs`) asks it and carries out its answers.
//! It never decodes a row.

mod activity;
mod analysis;
pub mod catalog;
pub mod commit_hook;
mod entry;
mod fingerprints;
mod flight;
mod hint;
mod listen;
pub mod row_key;
mod versions;
mod wal;
mod write_shapes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

pub use activity::ActivityMemo;
pub use analysis::{names_a_time, read_names, write_names, ReadNames, WriteNames};

use activity::{Activities, Activity};
pub use catalog::Invalidation;
pub use entry::{replayable, Analysis, Entry};
pub use fingerprints::Row as FingerprintRow;
pub use flight::{wait as wait_for_flight, FlightGuard, Joined, Landing};
pub use hint::{cache_hint, has_mark};
pub use versions::{EntryKey, KeyedChange, Snapshot};

use crate::config::{CacheMode, Config};
use crate::route::Lsn;
use crate::stats::ProcessHashState;

/// Bytes the analysis memo may take.
const ANALYSIS_BYTES: u64 = 4 << 20;
/// Bytes the memo of write statements' names may take.
const WRITES_BYTES: u64 = 2 << 20;
/// Bytes the memo of write shapes' catalog facts may take.
const RESOLUTIONS_BYTES: u64 = 1 << 20;

/// (database, settings hash, shape): what a write's catalog facts depend on.
pub type ResolutionKey = (String, u64, commit_hook::WriteShape);

/// Why a lookup found nothing to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Absent,
    /// A table it read was written since: the entry is gone now.
    Invalidated,
    /// The session has seen a write newer than the entry reflects.
    OlderThanSession,
}

pub struct ResultCache {
    entries: moka::sync::Cache<Bytes, Arc<Entry>, ProcessHashState>,
    analyses: moka::sync::Cache<Bytes, Arc<Analysis>, ProcessHashState>,
    /// What a write statement's text may change, by text.
    writes: moka::sync::Cache<String, Arc<WriteNames>, ProcessHashState>,
    /// What a write with inline values may change, by its shape.
    write_shapes: write_shapes::WriteShapes,
    /// The catalog's word on each shape of write, by (database, settings, shape).
    resolutions: moka::sync::Cache<ResolutionKey, Arc<commit_hook::Resolution>, ProcessHashState>,
    versions: versions::Versions,
    pub flights: flight::Flights,
    book: fingerprints::FingerprintBook,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    /// The newest commit position this process knows of (its own writes, NOTIFYs): a
    /// lower bound of what a query started now on the primary sees.
    known_commit: AtomicU64,
    /// Identifies this process in NOTIFY payloads (its own are skipped).
    pub instance: u64,
    /// Per database: whether commits must be tracked (see [`ResultCache::tracks_writes`]).
    activity: Activities,
    /// Per database: NOTIFY payloads for the LISTEN connection to send.
    outbox: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<String>>>,
    need_listen: bool,
    /// Databases being dropped or renamed through pgwarden: their LISTEN connection is
    /// closed meanwhile (PostgreSQL refuses while anyone is connected).
    paused: Mutex<std::collections::HashSet<String>>,
    pub(crate) pause_changed: tokio::sync::Notify,
    /// Per database: the state of `cache.wal_invalidation`, for `SHOW CACHE`.
    wal_status: Mutex<HashMap<String, String>>,
    max_bytes: u64,
}

impl ResultCache {
    /// `DROP/ALTER DATABASE database` is about to run: let go of its connections.
    pub fn pause_database(&self, database: &str) {
        if let Ok(mut paused) = self.paused.lock() {
            paused.insert(database.to_string());
        }
        self.pause_changed.notify_waiters();
    }

    /// That statement finished.
    pub fn resume_database(&self, database: &str) {
        if let Ok(mut paused) = self.paused.lock() {
            paused.remove(database);
        }
    }

    pub fn is_paused(&self, database: &str) -> bool {
        self.paused.lock().is_ok_and(|p| p.contains(database))
    }

    /// Builds the cache and starts its background tasks (LISTEN per database, the
    /// logical-slot reader). Must run inside a tokio runtime.
    pub fn start(config: &Config) -> Arc<ResultCache> {
        let settings = &config.cache;
        let cache = Arc::new(ResultCache::new(settings.max_bytes, settings.notify));
        if settings.mode == CacheMode::Off {
            return cache;
        }
        for (name, db) in &config.databases {
            if settings.notify {
                listen::spawn(cache.clone(), name.clone(), db.primary.clone());
            }
            if settings.wal_invalidation {
                wal::spawn(
                    cache.clone(),
                    name.clone(),
                    db.primary.clone(),
                    Duration::from_millis(settings.wal_poll_ms.max(10)),
                );
            } else {
                cache.set_wal_status(
                    name,
                    "off (TTL is the backstop for writes outside pgwarden)",
                );
            }
        }
        cache
    }

    pub fn new(max_bytes: u64, need_listen: bool) -> ResultCache {
        ResultCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes.max(1))
                .weigher(|key: &Bytes, entry: &Arc<Entry>| entry.weight(key))
                .expire_after(entry::EntryExpiry)
                .build_with_hasher(crate::stats::process_hasher()),
            analyses: moka::sync::Cache::builder()
                .max_capacity(ANALYSIS_BYTES)
                .weigher(|key: &Bytes, a: &Arc<Analysis>| {
                    let why = a.verdict.as_ref().map_or_else(|e| e.len(), |t| t.len() * 4);
                    u32::try_from(key.len() + why + 96).unwrap_or(u32::MAX)
                })
                .time_to_live(Duration::from_secs(600))
                .build_with_hasher(crate::stats::process_hasher()),
            writes: moka::sync::Cache::builder()
                .max_capacity(WRITES_BYTES)
                .weigher(|key: &String, w: &Arc<WriteNames>| {
                    u32::try_from(key.len() + w.names_weight() + 96).unwrap_or(u32::MAX)
                })
                .build_with_hasher(crate::stats::process_hasher()),
            write_shapes: write_shapes::WriteShapes::new(),
            resolutions: moka::sync::Cache::builder()
                .max_capacity(RESOLUTIONS_BYTES)
                .weigher(|key: &ResolutionKey, r: &Arc<commit_hook::Resolution>| {
                    let bytes =
                        key.0.len() + key.2.weight() + r.tables.len() * 4 + r.keyed.len() * 64 + 96;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .time_to_live(commit_hook::RESOLUTION_TTL)
                .build_with_hasher(crate::stats::process_hasher()),
            versions: versions::Versions::new(need_listen),
            flights: flight::Flights::default(),
            book: fingerprints::FingerprintBook::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            known_commit: AtomicU64::new(0),
            instance: rand::random::<u64>() >> 1,
            wal_status: Mutex::new(HashMap::new()),
            activity: Activities::new(),
            outbox: Mutex::new(HashMap::new()),
            need_listen,
            paused: Mutex::new(std::collections::HashSet::new()),
            pause_changed: tokio::sync::Notify::new(),
            max_bytes,
        }
    }

    /// The entry for `key` if it may be served to a session that must see `min_lsn`.
    pub fn lookup(&self, key: &Bytes, min_lsn: Option<Lsn>) -> Result<Arc<Entry>, Miss> {
        let Some(entry) = self.entries.get(key) else {
            return Err(Miss::Absent);
        };
        if !self
            .versions
            .is_current(&entry.database, &entry.tables, entry.key, entry.at)
        {
            self.entries.invalidate(key);
            self.book.invalidated(entry.fingerprint);
            return Err(Miss::Invalidated);
        }
        if min_lsn.is_some_and(|min| min > entry.lsn) {
            return Err(Miss::OlderThanSession);
        }
        Ok(entry)
    }

    pub fn count_hit(&self, fingerprint: u64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.book.hit(fingerprint);
    }

    pub fn count_miss(&self, fingerprint: u64, text: &str) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.book.miss(fingerprint, text);
    }

    pub fn decided(&self, fingerprint: u64, text: &str, cached: bool, why: &str) {
        self.book.decided(fingerprint, text, cached, why);
    }

    /// `auto` mode: whether this read's fingerprint is hot enough (and not judged).
    pub fn auto_wants(&self, fingerprint: u64, text: &str, min_calls: u64, min_ratio: f64) -> bool {
        self.book
            .auto_wants(fingerprint, text, min_calls, min_ratio)
    }

    /// `auto` mode: whether the tables a fingerprint reads are read-mostly, i.e. they
    /// were written at most `(1 - min_hit_ratio)` times per read of it this minute (more
    /// writes would keep its hit ratio under `min_hit_ratio`). `Err` says why not.
    pub fn read_mostly(
        &self,
        database: &str,
        tables: &[u32],
        fingerprint: u64,
        min_ratio: f64,
    ) -> Result<(), String> {
        let writes = self.versions.writes_this_minute(database, tables);
        let reads = self.book.calls_this_minute(fingerprint);
        if writes as f64 <= (1.0 - min_ratio).max(0.0) * reads as f64 {
            Ok(())
        } else {
            Err(format!(
                "auto: tables not read-mostly ({writes} writes for {reads} reads this minute)"
            ))
        }
    }

    pub fn analysis(&self, key: &Bytes) -> Option<Arc<Analysis>> {
        self.analyses.get(key)
    }

    /// What a statement run on the primary may change (memoized by shape, or by text).
    pub fn write_names(&self, sql: &str) -> Arc<WriteNames> {
        // By shape first: a text with inline values is seldom seen twice.
        if let Some(names) = self.write_shapes.names_of(sql) {
            return Arc::new(names);
        }
        if let Some(names) = self.writes.get(sql) {
            return names;
        }
        let names = Arc::new(write_names(sql));
        self.writes.insert(sql.to_string(), names.clone());
        names
    }

    pub fn remember_analysis(&self, key: Bytes, analysis: Arc<Analysis>) {
        self.analyses.insert(key, analysis);
    }

    /// The remembered catalog facts of a shape of write, if still fresh.
    pub fn resolution(&self, key: &ResolutionKey) -> Option<Arc<commit_hook::Resolution>> {
        self.resolutions.get(key)
    }

    pub fn remember_resolution(
        &self,
        key: ResolutionKey,
        resolution: Arc<commit_hook::Resolution>,
    ) {
        self.resolutions.insert(key, resolution);
    }

    /// Before a miss runs its query: `None` when nothing of `database` may be stored now.
    pub fn snapshot(&self, database: &str, tables: &[u32]) -> Option<Snapshot> {
        self.versions.snapshot(database, tables)
    }

    /// Stores a result, unless a table it read was written while its query ran.
    pub fn store(&self, key: Bytes, entry: Entry) -> bool {
        if !self
            .versions
            .is_current(&entry.database, &entry.tables, entry.key, entry.at)
        {
            return false;
        }
        self.entries.insert(key, Arc::new(entry));
        true
    }

    /// A write committed (here, or elsewhere as a NOTIFY or the WAL told).
    pub fn invalidate(&self, database: &str, invalidation: &Invalidation) {
        self.observe_commit(invalidation.lsn);
        let changes = invalidation
            .tables
            .as_ref()
            .is_none_or(|t| !t.is_empty() || !invalidation.keys.is_empty());
        if changes {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        match &invalidation.tables {
            Some(_) if !changes => {}
            Some(tables) => {
                self.versions
                    .invalidate(database, tables, &invalidation.keys, invalidation.lsn)
            }
            None => self.clear_database(database),
        }
    }

    /// Drops every entry of `database` (DDL, `REVOKE`, a lost LISTEN connection).
    pub fn clear_database(&self, database: &str) {
        self.versions.clear(database);
        self.analyses.invalidate_all();
        self.writes.invalidate_all();
        self.write_shapes.clear();
        self.resolutions.invalidate_all();
    }

    /// `CLEAR CACHE`.
    pub fn clear(&self) {
        self.versions.clear_all();
        self.entries.invalidate_all();
        self.analyses.invalidate_all();
        self.book.clear();
    }

    pub fn observe_commit(&self, lsn: Lsn) {
        if lsn != u64::MAX {
            self.known_commit.fetch_max(lsn, Ordering::Relaxed);
        }
    }

    pub fn known_commit(&self) -> Lsn {
        self.known_commit.load(Ordering::Relaxed)
    }

    pub fn is_listening(&self, database: &str) -> bool {
        self.versions.is_listening(database)
    }

    pub(crate) fn set_listening(&self, database: &str, listening: bool) {
        self.versions.set_listening(database, listening);
    }

    pub(crate) fn set_wal_status(&self, database: &str, status: &str) {
        let mut map = self.wal_status.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(database).map(String::as_str) != Some(status) {
            map.insert(database.to_string(), status.to_string());
        }
    }

    pub fn wal_status(&self) -> Vec<(String, String)> {
        let map = self.wal_status.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = map.iter().map(|(d, s)| (d.clone(), s.clone())).collect();
        list.sort();
        list
    }

    pub fn totals(&self) -> Totals {
        self.entries.run_pending_tasks();
        Totals {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            max_bytes: self.max_bytes,
        }
    }

    /// Bytes the entries and the analysis memo hold now, and their bound.
    pub fn memory(&self) -> (u64, u64) {
        (
            self.entries.weighted_size()
                + self.analyses.weighted_size()
                + self.writes.weighted_size()
                + self.write_shapes.weighted_size()
                + self.resolutions.weighted_size(),
            self.max_bytes
                + ANALYSIS_BYTES
                + WRITES_BYTES
                + write_shapes::WRITE_SHAPES_BYTES
                + RESOLUTIONS_BYTES,
        )
    }

    /// One row per fingerprint seen, with its entries and bytes now.
    pub fn fingerprint_rows(&self) -> Vec<(FingerprintRow, u64, u64)> {
        let mut sizes: HashMap<u64, (u64, u64)> = HashMap::new();
        for (key, entry) in self.entries.iter() {
            let slot = sizes.entry(entry.fingerprint).or_default();
            slot.0 += 1;
            slot.1 += u64::from(entry.weight(&key));
        }
        let mut rows: Vec<_> = self
            .book
            .rows()
            .into_iter()
            .map(|row| {
                let (entries, bytes) = sizes.get(&row.fingerprint).copied().unwrap_or_default();
                (row, entries, bytes)
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0.hits + r.0.misses));
        rows
    }
}

/// After the LISTEN connection comes up, writes are tracked this long whatever the
/// activity: the time other instances take to answer the `hello` with `active`.
const GRACE: Duration = Duration::from_secs(1);

impl ResultCache {
    fn activity_of(&self, database: &str) -> Activity {
        self.activity.of(database)
    }

    /// Changes `database`'s activity (rare: activation, LISTEN up or down, an
    /// announcement); returns what `change` returns.
    fn change_activity<T>(&self, database: &str, change: impl FnOnce(&mut Activity) -> T) -> T {
        self.activity.change(database, change)
    }

    /// Whether a committed write to `database` must be resolved, invalidated and sent
    /// to other instances. False only while no instance is known to cache it: then
    /// writes cost nothing extra. Conservative while the LISTEN connection is down or
    /// just came up (the answer of other instances may not have arrived yet).
    pub fn tracks_writes(&self, database: &str) -> bool {
        self.tracks_writes_at(self.activity_of(database))
    }

    /// [`ResultCache::tracks_writes`], with the session's copy of the activity.
    pub fn tracks_writes_memoized(&self, database: &str, memo: &mut ActivityMemo) -> bool {
        let activity = self.activity.of_memoized(database, memo);
        if !activity.active && memo.grace_over {
            return false;
        }
        let tracks = self.tracks_writes_at(activity);
        // Listening past the grace period: "no" until the activity changes.
        memo.grace_over = !tracks && activity.listening_since.is_some();
        tracks
    }

    fn tracks_writes_at(&self, a: Activity) -> bool {
        if a.active {
            return true;
        }
        if !self.need_listen {
            return false;
        }
        a.listening_since
            .is_none_or(|since| since.elapsed() < GRACE)
    }

    /// Whether another instance may cache `database`: one said so, or this process's
    /// LISTEN connection is down or came up too recently to have heard. When false,
    /// a commit needs no `NOTIFY` (and no round trip) to be invalidated everywhere.
    pub fn others_may_cache(&self, database: &str) -> bool {
        if !self.need_listen {
            return false;
        }
        let a = self.activity_of(database);
        a.others_active
            || a.listening_since
                .is_none_or(|since| since.elapsed() < GRACE)
    }

    /// This process starts caching `database`: from now on its writes are tracked, and
    /// other instances are told to track theirs.
    pub fn activate(&self, database: &str) {
        if self.activity_of(database).active {
            return;
        }
        let newly = self.change_activity(database, |a| !std::mem::replace(&mut a.active, true));
        if newly {
            self.announce(database, "active");
        }
    }

    fn announce(&self, database: &str, word: &str) {
        let outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = outbox.get(database) {
            let _ = tx.send(format!("{}|{database}|0/0|{word}", self.instance));
        }
    }

    pub(crate) fn listener_up(
        &self,
        database: &str,
        outbox: tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database.to_string(), outbox);
        let active = self.change_activity(database, |a| {
            a.listening_since = Some(std::time::Instant::now());
            a.active
        });
        self.set_listening(database, true);
        self.announce(database, if active { "active" } else { "hello" });
    }

    pub(crate) fn listener_down(&self, database: &str) {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(database);
        self.change_activity(database, |a| a.listening_since = None);
        self.set_listening(database, false);
        self.clear_database(database);
    }

    /// `hello` (an instance came up) or `active` (an instance caches this database).
    pub(crate) fn on_announcement(&self, database: &str, word: &str) {
        match word {
            "active" => self.change_activity(database, |a| {
                a.active = true;
                a.others_active = true;
            }),
            // `active` implies `tracks_writes`.
            "hello" if self.activity_of(database).active => {
                self.announce(database, "active");
            }
            _ => {}
        }
    }
}

/// Totals for `/api/cache` and the metrics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Totals {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}
