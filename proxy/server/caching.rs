//! The session's side of the result cache: take the cacheable request at the front of
//! the client buffer (found by `cache_request.rs`: a simple `Query`, or a whole
//! `Parse`/`Bind`/`Describe`/`Execute`/`Sync` batch), answer it from the cache, or run
//! it and capture the frames the client receives; note the tables a transaction writes
//! and invalidate them when it commits, before the client sees the commit. Decisions
//! come from the `cache` room.
//!
//! Statements without the hint cost one byte scan here (in `hinted` mode with no
//! `cache.rules`): no parse, no lock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::cache_request::Request;
use super::responses::Expect;
use super::session::Session;
use super::SessionError;
use crate::cache::row_key::{
    column_hash, declared_types, key_hash, resolve, BindParameters, KeyPredicate,
};
use crate::cache::{self, replayable, Entry, EntryKey, FlightGuard, Joined, Landing, WriteNames};
use crate::config::CacheMode;
use crate::protocol::backend;
use crate::protocol::extended::BindView;
use crate::protocol::frame::{body, check_frame};
use crate::protocol::tag::{frontend as tag, TransactionStatus};
use crate::route::{Lsn, StatementClass};

const READY_IDLE: [u8; 6] = [b'Z', 0, 0, 0, 5, b'I'];

#[derive(Default)]
pub struct SessionCache {
    /// Boxed: a fill is made only on a cache miss being captured, and every idle
    /// client holds a `SessionCache` (issue 13: RSS per idle client).
    fill: Option<Box<Fill>>,
    /// What the open transaction (or autocommit statement) on the primary may change.
    pub(super) writes: WriteNames,
    pub(super) statement_writes:
        crate::stats::ProcessMap<Vec<u8>, super::cache_writes::StatementWrites>,
    pub(super) unnamed_writes: Option<super::cache_writes::StatementWrites>,
    /// What the last few unnamed texts may write, oldest first: drivers cycle through
    /// a handful (`cache_writes.rs`).
    pub(super) recent_unnamed:
        super::recent_texts::RecentTexts<super::cache_writes::StatementWrites>,
    /// The `Bind` of a statement whose effects are unknown was sent.
    pub(super) unknown_writes: bool,
    /// This session's copy of whether its database's cache is in use anywhere.
    pub(super) activity: crate::cache::ActivityMemo,
    /// The open transaction began `READ ONLY` (at `READ COMMITTED`) and has forwarded
    /// only reads since: its reads may be answered from the cache.
    pub(super) read_only_transaction: bool,
}

/// A miss being captured: the frames the client receives until `ReadyForQuery`.
struct Fill {
    key: Bytes,
    fingerprint: u64,
    shape: crate::scan::Shape,
    database: String,
    tables: Box<[u32]>,
    row_key: Option<EntryKey>,
    at: u64,
    lsn: Lsn,
    ttl: Duration,
    /// Bytes of `to_client` already captured (or not ours).
    offset: usize,
    captured: BytesMut,
    max_bytes: usize,
    too_large: bool,
    flight: Option<FlightGuard>,
}

impl Session {
    /// Answers a request at the front of the client buffer from the cache, or prepares
    /// to capture its answer. True when the request was answered (and consumed).
    pub(super) async fn cache_front(&mut self) -> Result<bool, SessionError> {
        if self.caching.is_none()
            || !matches!(self.client_buf[0], tag::QUERY | tag::PARSE | tag::BIND)
            || self.skip_until_sync
            || !self.cache_may_answer_in(self.status)
            || !self.responses.is_empty()
            || self.batch_open
            || self.pooled.is_pinned()
            || self.caching.as_ref().is_some_and(|c| c.fill.is_some())
        {
            return Ok(false);
        }
        let Some(request) = self.front_request() else {
            return Ok(false);
        };
        let config = self.runtime.config();
        let settings = &config.cache;
        let hint = cache::cache_hint(&request.sql);
        let by_rule = !settings.rules.is_empty() && self.rules_match(&request.sql, &settings.rules);
        let by_auto_only = hint.is_none() && !by_rule;
        let wanted = hint.is_some()
            || by_rule
            || (settings.mode == CacheMode::Auto && self.auto_match(&request.sql, settings));
        if !wanted {
            return Ok(false);
        }
        let key = self.cache_key(&request);
        let cache = self.runtime.cache.clone();
        let min_lsn = self.routing.as_ref().and_then(|r| r.required_lsn());
        // A hot entry near its TTL is refreshed by the first client that hits it then;
        // the others keep being served until the new result replaces it.
        let refreshing = match cache.lookup(&key, min_lsn) {
            Ok(entry) if !entry.claim_refresh() => {
                self.serve_entry(&request, &entry);
                return Ok(true);
            }
            Ok(entry) => Some(entry),
            Err(_) => None,
        };
        // Boxed: the miss path (single flight, checkout, catalog questions) is a large
        // future that hits and uncached statements should not carry.
        Box::pin(self.cache_miss(request, key, refreshing, hint, by_auto_only, min_lsn)).await
    }

    /// A miss, or a hit that refreshes its entry: wait for another client's flight, or
    /// run the request and prepare to capture its answer.
    async fn cache_miss(
        &mut self,
        request: Request,
        key: Bytes,
        refreshing: Option<std::sync::Arc<Entry>>,
        hint: Option<Option<Duration>>,
        by_auto_only: bool,
        min_lsn: Option<Lsn>,
    ) -> Result<bool, SessionError> {
        let config = self.runtime.config();
        let settings = &config.cache;
        let ttl_hint = hint.flatten();
        let cache = self.runtime.cache.clone();
        // Single flight: the first miss runs the query, the others wait for it. When a
        // write committed while the leader ran (its result is not stored), the
        // followers join the next flight rather than all running the query at once;
        // after `flight_wait_ms` in all, when the result was not cacheable, or when
        // the next flight was overtaken too (a table written faster than the query
        // runs), a follower runs it on its own.
        let deadline = Instant::now() + Duration::from_millis(settings.flight_wait_ms);
        let mut rejoins_left = 1;
        let flight = loop {
            match cache.flights.join(&key) {
                Joined::Leader(guard) => break Some(guard),
                Joined::Follower(_) if refreshing.is_some() => {
                    let entry = refreshing.expect("checked");
                    self.serve_entry(&request, &entry);
                    return Ok(true);
                }
                Joined::Follower(rx) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let landing = cache::wait_for_flight(rx, left).await;
                    if let Ok(entry) = cache.lookup(&key, min_lsn) {
                        self.serve_entry(&request, &entry);
                        return Ok(true);
                    }
                    if landing != Landing::Superseded
                        || rejoins_left == 0
                        || Instant::now() >= deadline
                    {
                        break None;
                    }
                    rejoins_left -= 1;
                }
            }
        };
        let first_len = check_frame(&self.client_buf, self.max_message)?.unwrap_or(0);
        let first = Bytes::copy_from_slice(&self.client_buf[..first_len]);
        match self.attach_for(first[0], &first).await {
            Ok(()) => {}
            Err(e) if e.is_recoverable() || matches!(e, SessionError::Answered) => {
                return Ok(false); // the normal path reports it
            }
            Err(e) => return Err(e),
        }
        // Inside a transaction a failed catalog question would abort the client's
        // transaction: only a verdict reached outside one is used there.
        let may_ask = self.status == TransactionStatus::Idle;
        let Some(analysis) = self.analyse(&request.sql, may_ask).await else {
            return Ok(false);
        };
        let text = crate::protocol::text::lossy(&request.sql);
        cache.count_miss(analysis.fingerprint, &text);
        let tables = match &analysis.verdict {
            Ok(tables) => tables.clone(),
            Err(why) => {
                cache.decided(analysis.fingerprint, &text, false, why);
                return Ok(false);
            }
        };
        if self.binds_a_time(&request) {
            // `$1::timestamptz` bound to 'now': this result is of the moment. Other
            // values of the same statement are cached as usual.
            return Ok(false);
        }
        let database = self.identity.database.clone();
        if by_auto_only {
            if let Err(why) = cache.read_mostly(
                &database,
                &tables,
                analysis.fingerprint,
                settings.min_hit_ratio,
            ) {
                cache.decided(analysis.fingerprint, &text, false, &why);
                return Ok(false);
            }
        }
        // From now on this database's writes are tracked (here and elsewhere).
        cache.activate(&database);
        let Some(snapshot) = cache.snapshot(&database, &tables) else {
            cache.decided(
                analysis.fingerprint,
                &text,
                false,
                "invalidation LISTEN is down",
            );
            return Ok(false);
        };
        let lsn = match self.routing.as_ref() {
            Some(state) if self.backend > 0 => {
                let replay = state.topology.backends[self.backend]
                    .replay_lsn
                    .load(std::sync::atomic::Ordering::Relaxed);
                if replay < snapshot.newest_write {
                    return Ok(false); // the replica has not replayed a known write yet
                }
                replay
            }
            Some(state) => cache
                .known_commit()
                .max(state.topology.primary_lsn().unwrap_or(0)),
            None => cache.known_commit(),
        };
        let why = if hint.is_some() {
            "hint"
        } else {
            "rule or auto"
        };
        cache.decided(analysis.fingerprint, &text, true, why);
        let offset = self.to_client.len();
        let row_key = self.entry_key(&request, analysis.key.as_ref());
        if let Some(state) = self.caching.as_mut() {
            state.fill = Some(Box::new(Fill {
                key,
                fingerprint: analysis.fingerprint,
                shape: crate::scan::scan(&request.sql).shape,
                database,
                tables,
                row_key,
                at: snapshot.at,
                lsn,
                ttl: ttl_hint.unwrap_or(Duration::from_millis(settings.ttl_ms)),
                offset,
                captured: BytesMut::new(),
                max_bytes: usize::try_from(settings.max_entry_bytes).unwrap_or(usize::MAX),
                too_large: false,
                flight,
            }));
        }
        Ok(false)
    }

    /// Outside a transaction, or inside a read-only one at `READ COMMITTED` that has run
    /// nothing but reads: there every statement sees the newest committed data, as an
    /// autocommit read does.
    fn cache_may_answer_in(&self, status: TransactionStatus) -> bool {
        match status {
            TransactionStatus::Idle => true,
            TransactionStatus::InTransaction => self
                .caching
                .as_ref()
                .is_some_and(|c| c.read_only_transaction),
            TransactionStatus::Failed => false,
        }
    }

    /// Whether a statement without the hint can be skipped without more work
    /// (`hinted` mode without rules).
    pub(super) fn cheap_skip(&self) -> bool {
        self.runtime.cache_hints_only()
    }

    fn rules_match(&self, sql: &[u8], rules: &[String]) -> bool {
        let text = crate::protocol::text::lossy(sql);
        let (fingerprint, _) = crate::stats::fingerprint::fingerprint(&text);
        let id = fingerprint.to_string();
        if rules.contains(&id) {
            return true;
        }
        let Ok(names) = cache::read_names(&text) else {
            return false;
        };
        names.relations.iter().any(|relation| {
            let relation = relation.to_lowercase();
            let bare = relation.rsplit('.').next().unwrap_or(&relation);
            rules
                .iter()
                .any(|r| r.to_lowercase() == relation || r.to_lowercase() == bare)
        })
    }

    fn auto_match(&self, sql: &[u8], settings: &crate::config::CacheConfig) -> bool {
        let text = crate::protocol::text::lossy(sql);
        if self.runtime.routing().classify(&text) != StatementClass::Read {
            return false;
        }
        let (fingerprint, normalized) = crate::stats::fingerprint::fingerprint(&text);
        self.runtime.cache.auto_wants(
            fingerprint,
            &normalized,
            settings.auto_min_calls,
            settings.min_hit_ratio,
        )
    }

    /// Whether the request's `Bind` sends a text parameter PostgreSQL may read as the
    /// current time or day (`'now'`, `'today'`, ...; see `cache::names_a_time`). An
    /// unreadable `Bind` counts as one.
    fn binds_a_time(&self, request: &Request) -> bool {
        let Some((at, len)) = request.bind else {
            return false;
        };
        let frame = &self.client_buf[at..at + len];
        match BindView::parse(body(frame))
            .ok()
            .and_then(|view| BindParameters::parse(view.rest))
        {
            Some(params) => params.any_text(cache::names_a_time),
            None => true,
        }
    }

    /// The key a keyed read's result depends on, its value taken from the literal or
    /// from the request's `Bind`.
    fn entry_key(&self, request: &Request, predicate: Option<&KeyPredicate>) -> Option<EntryKey> {
        let predicate = predicate?;
        let bind = request.bind.as_ref().map(|(at, len)| {
            let frame = &self.client_buf[*at..*at + *len];
            BindView::parse(body(frame)).map(|view| view.rest)
        });
        let types = request
            .parse
            .as_ref()
            .map(|(_, d)| d)
            .or(request.definition.as_ref())
            .map(|d| declared_types(d))
            .unwrap_or_default();
        let key = match bind {
            Some(Ok(rest)) => {
                let params = BindParameters::parse(rest)?;
                resolve(predicate, Some((&params, types.as_slice())))?
            }
            Some(Err(_)) => return None,
            None => resolve(predicate, None)?,
        };
        Some(EntryKey {
            column: column_hash(&key.column),
            key: key_hash(&key.column, &key.value),
        })
    }

    /// Database, role, tenant, settings, then the request's exact bytes (statement,
    /// parameter values and formats, result formats).
    fn cache_key(&self, request: &Request) -> Bytes {
        let tenant = self
            .tenancy
            .as_ref()
            .and_then(|t| t.tenant.as_deref())
            .unwrap_or("");
        let mut key = BytesMut::with_capacity(
            request.len + 48 + request.definition.as_ref().map_or(0, |d| d.len()),
        );
        for part in [
            self.identity.database.as_bytes(),
            self.identity.user.as_bytes(),
            tenant.as_bytes(),
        ] {
            key.extend_from_slice(&(part.len() as u32).to_be_bytes());
            key.extend_from_slice(part);
        }
        key.extend_from_slice(&self.settings.hash().to_be_bytes());
        if let Some(definition) = &request.definition {
            key.extend_from_slice(&(definition.len() as u32).to_be_bytes());
            key.extend_from_slice(definition);
        }
        key.extend_from_slice(&self.client_buf[..request.len]);
        key.freeze()
    }

    fn serve_entry(&mut self, request: &Request, entry: &Entry) {
        let started = Instant::now();
        let _ = self.client_buf.split_to(request.len);
        if let Some((name, definition)) = &request.parse {
            // The client now believes the statement is prepared: so it is, for us.
            let query_len = crate::protocol::extended::cstr(definition).map_or(0, |(q, _)| q.len());
            let query = definition.slice(0..query_len);
            if name.is_empty() {
                self.on_unnamed_parse(definition, &query);
                self.pooled.unnamed.on_server = false;
            } else {
                let access = self.statement_access(&query);
                let opaque = self.pooled.opaque_check(self.mode);
                self.statements
                    .define(name, definition, &query, access, opaque);
            }
        }
        if self.responses.is_empty() {
            // Nothing owed ahead of it: the answer goes straight out, without a copy
            // queued first (what `push` then `release_held` would write, in order).
            self.responses.release_held(&mut self.to_client);
            self.to_client
                .reserve(entry.frames.len() + READY_IDLE.len());
            self.to_client.extend_from_slice(&entry.frames);
            backend::ready_for_query(&mut self.to_client, self.status);
        } else {
            let mut answer = BytesMut::with_capacity(entry.frames.len() + READY_IDLE.len());
            answer.extend_from_slice(&entry.frames);
            backend::ready_for_query(&mut answer, self.status);
            self.responses
                .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
            self.responses.release_held(&mut self.to_client);
        }
        self.runtime.cache.count_hit(entry.fingerprint);
        if let Some(stats) = self.stats.as_ref() {
            stats.record_cache_hit(
                &self.runtime.stats,
                &request.sql,
                entry.shape,
                started.elapsed(),
                entry.rows,
            );
        }
    }

    /// Before the pump writes to the client: the bytes a fill has not captured yet.
    #[inline]
    pub(super) fn cache_capture(&mut self) {
        let Some(fill) = self.caching.as_mut().and_then(|c| c.fill.as_mut()) else {
            return;
        };
        if fill.offset < self.to_client.len() && !fill.too_large {
            fill.captured
                .extend_from_slice(&self.to_client[fill.offset..]);
            if fill.captured.len() > fill.max_bytes {
                fill.too_large = true;
                fill.captured = BytesMut::new();
            }
        }
        fill.offset = self.to_client.len();
    }

    /// After the pump wrote: what is left in `to_client` is already captured.
    #[inline]
    pub(super) fn cache_captured(&mut self) {
        if let Some(fill) = self.caching.as_mut().and_then(|c| c.fill.as_mut()) {
            fill.offset = self.to_client.len();
        }
    }

    /// After each step of the session loop: store a completed fill; invalidate what a
    /// committed transaction wrote (before its `ReadyForQuery` reaches the client).
    /// Only the invalidation, which may take a round trip, is a boxed future: most
    /// steps have nothing to invalidate and allocate nothing.
    pub(super) async fn cache_after_step(&mut self) {
        if self.cache_store_settled_fill() {
            Box::pin(self.invalidate_writes()).await;
        }
    }

    /// Stores a completed fill once the batch has settled; whether a committed
    /// transaction's writes are left to invalidate.
    fn cache_store_settled_fill(&mut self) -> bool {
        let Some(state) = self.caching.as_ref() else {
            return false;
        };
        let settled =
            self.responses.is_empty() && !self.batch_open && !self.responses.awaiting_sync();
        if !settled {
            return false;
        }
        if state.fill.is_some() {
            self.cache_capture();
            if let Some(fill) = self.caching.as_mut().and_then(|c| c.fill.take()) {
                self.store_fill(*fill);
            }
        }
        let Some(state) = self.caching.as_mut() else {
            return false;
        };
        let pending = !state.writes.is_empty() || state.unknown_writes;
        if !pending || self.status != TransactionStatus::Idle {
            return false;
        }
        if !(self.runtime.cache)
            .tracks_writes_memoized(&self.identity.database, &mut state.activity)
        {
            // No instance caches this database: the writes are forgotten here, as
            // `invalidate_writes` would, without a boxed future per transaction. (Most
            // often only `unknown_writes` is set: dropping an empty `WriteNames`, four
            // B-trees, would cost more than the test.)
            if !state.writes.is_empty() {
                state.writes = Default::default();
            }
            state.unknown_writes = false;
            return false;
        }
        true
    }

    fn store_fill(&mut self, fill: Fill) {
        let cache = self.runtime.cache.clone();
        if fill.too_large {
            cache.decided(
                fill.fingerprint,
                "",
                false,
                "result over cache.max_entry_bytes",
            );
            return;
        }
        let captured = &fill.captured[..];
        let ready = [b'Z', 0, 0, 0, 5, self.status.as_byte()];
        if !self.cache_may_answer_in(self.status) || !captured.ends_with(&ready) {
            return;
        }
        let frames = &captured[..captured.len() - ready.len()];
        let Some(rows) = replayable(frames) else {
            return;
        };
        let entry = Entry {
            frames: Bytes::copy_from_slice(frames),
            database: fill.database,
            tables: fill.tables,
            key: fill.row_key,
            at: fill.at,
            lsn: fill.lsn,
            fingerprint: fill.fingerprint,
            shape: fill.shape,
            ttl: fill.ttl,
            rows,
            stored: Instant::now(),
            refreshing: Default::default(),
        };
        if !cache.store(fill.key, entry) {
            if let Some(mut flight) = fill.flight {
                flight.superseded();
            }
        }
    }
}
