//! The N+1 detector: fed every fingerprinted statement by the statistics (on the
//! session's thread, under its lock, as statements finish), it follows each session's bursts (see `burst`) and
//! counts the (parent, child) pairs whose bursts repeat, then publishes them as
//! advisories.
//!
//! A session is the trace of a sqlcommenter `traceparent` when the statement carries
//! one, else the `pgwarden.session_key` (shared by pooled connections), else the client
//! connection. State is bounded by bytes (`advise.n_plus_one.max_bytes`): half for
//! sessions (the stalest are forgotten first), half for patterns (the rarest go).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::advisory::{
    now_secs, per_hour, Advisory, AdvisoryKind, FingerprintRef, NPlusOneDetails,
};
use super::burst::{scope_bytes, Closed, Params, Scope, Statement};
use crate::config::NPlusOneConfig;
use crate::stats::clock::Instant;
use crate::stats::fingerprint::FingerprintId;
use crate::stats::{process_map, Call, CallObserver, MemoryGauges, ProcessMap};

/// A burst idle this long is over (the request ended).
const BURST_IDLE: Duration = Duration::from_secs(2);
/// A session idle this long is forgotten.
const SCOPE_IDLE: Duration = Duration::from_secs(30);
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScopeKey {
    Trace(u64),
    SessionKey(u64),
    Client(u64),
}

struct Pattern {
    child_query: Arc<str>,
    parent_query: Arc<str>,
    requests: u64,
    children: u64,
    child_time: Duration,
    span: Duration,
    first_seen: u64,
    last_seen: u64,
}

fn pattern_bytes(pattern: &Pattern) -> usize {
    std::mem::size_of::<((FingerprintId, FingerprintId), Pattern)>()
        + pattern.child_query.len()
        + pattern.parent_query.len()
}

pub struct Detector {
    settings: NPlusOneConfig,
    scopes: ProcessMap<ScopeKey, Scope>,
    patterns: ProcessMap<(FingerprintId, FingerprintId), Pattern>,
    pattern_bytes: usize,
    /// Time of every statement observed, for shares.
    total_time: Duration,
    published: Arc<ArcSwap<Vec<Advisory>>>,
    memory: Arc<MemoryGauges>,
    dirty: bool,
    last_publish: Option<Instant>,
    last_idle_check: Option<Instant>,
    /// Bursts closed and worth counting, until `settle` counts them.
    closed: Closed,
}

impl Detector {
    pub fn new(
        settings: NPlusOneConfig,
        published: Arc<ArcSwap<Vec<Advisory>>>,
        memory: Arc<MemoryGauges>,
    ) -> Detector {
        Detector {
            closed: Closed::new(settings.min_repeats as usize),
            settings,
            scopes: process_map(),
            patterns: process_map(),
            pattern_bytes: 0,
            total_time: Duration::ZERO,
            published,
            memory,
            dirty: false,
            last_publish: None,
            last_idle_check: None,
        }
    }

    fn max_scopes(&self) -> usize {
        (usize::try_from(self.settings.max_bytes / 2).unwrap_or(usize::MAX) / scope_bytes()).max(16)
    }

    fn bytes(&self) -> u64 {
        (self.scopes.len() * scope_bytes() + self.pattern_bytes) as u64
    }

    fn forget_stalest_scopes(&mut self) {
        let mut ages: Vec<(Instant, ScopeKey)> =
            self.scopes.iter().map(|(k, s)| (s.last, *k)).collect();
        ages.sort_unstable_by_key(|(at, _)| *at);
        let drop = (ages.len() / 10).max(1);
        for (_, key) in ages.into_iter().take(drop) {
            if let Some(mut scope) = self.scopes.remove(&key) {
                scope.close_all(&mut self.closed);
            }
        }
    }

    /// Counts the closed bursts that qualify.
    fn settle(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        let now = now_secs();
        // Taken and given back, so that the buffer keeps its capacity.
        let mut closed = std::mem::take(&mut self.closed.bursts);
        for burst in closed.drain(..) {
            let key = (burst.parent, burst.child);
            let pattern = match self.patterns.get_mut(&key) {
                Some(pattern) => pattern,
                None => {
                    let pattern = Pattern {
                        child_query: burst.child_query.clone(),
                        parent_query: burst.parent_query.clone(),
                        requests: 0,
                        children: 0,
                        child_time: Duration::ZERO,
                        span: Duration::ZERO,
                        first_seen: now,
                        last_seen: now,
                    };
                    self.pattern_bytes += pattern_bytes(&pattern);
                    self.patterns.entry(key).or_insert(pattern)
                }
            };
            pattern.requests += 1;
            pattern.children += u64::from(burst.count);
            pattern.child_time += burst.child_time;
            // One batched query would still cost about one child.
            pattern.span += burst
                .span()
                .saturating_sub(burst.child_time / burst.count.max(1));
            pattern.last_seen = now;
            self.dirty = true;
        }
        self.closed.bursts = closed;
        let limit = usize::try_from(self.settings.max_bytes / 2).unwrap_or(usize::MAX);
        while self.pattern_bytes > limit && !self.patterns.is_empty() {
            let rarest = *self
                .patterns
                .iter()
                .min_by_key(|(_, p)| (p.requests, p.last_seen))
                .map(|(k, _)| k)
                .expect("not empty");
            if let Some(pattern) = self.patterns.remove(&rarest) {
                self.pattern_bytes -= pattern_bytes(&pattern);
            }
        }
    }

    fn allowed(&self, child: FingerprintId, query: &str) -> bool {
        let id = format!("{child:016x}");
        if self
            .settings
            .allow
            .iter()
            .any(|a| *a == id || a.trim() == query)
        {
            return true;
        }
        self.settings.allow_uniqueness_checks && is_uniqueness_check(query)
    }

    /// The advisories for the patterns seen in enough requests.
    pub fn advisories(&self) -> Vec<Advisory> {
        let total_ms = self.total_time.as_secs_f64() * 1000.0;
        let now = now_secs();
        let mut out = Vec::new();
        for ((parent, child), p) in &self.patterns {
            if p.requests < u64::from(self.settings.min_requests)
                || self.allowed(*child, &p.child_query)
                // Loops of writes are a batching question, not N+1 reads; and an
                // ORM's parent fetches the rows it then loops over.
                || !super::plan::is_plannable_read(&p.child_query)
                || !super::plan::is_plannable_read(&p.parent_query)
            {
                continue;
            }
            let child_ms = p.child_time.as_secs_f64() * 1000.0;
            let lost_ms = p.span.as_secs_f64() * 1000.0;
            let burst_size = p.children as f64 / p.requests as f64;
            let (column, rewrite) = super::rewrite::rewrite(&p.child_query, &p.parent_query);
            let table = super::rewrite::lookup_column(&p.child_query).and_then(|(t, _)| t);
            let minutes = (now.saturating_sub(p.first_seen).max(60)) as f64 / 60.0;
            out.push(Advisory {
                kind: AdvisoryKind::NPlusOne,
                database: String::new(),
                table,
                columns: column.iter().cloned().collect(),
                ddl: None,
                fingerprints: vec![
                    FingerprintRef {
                        id: format!("{child:016x}"),
                        query: p.child_query.to_string(),
                        share: if total_ms > 0.0 {
                            child_ms / total_ms
                        } else {
                            0.0
                        },
                        role: Some("child".into()),
                    },
                    FingerprintRef {
                        id: format!("{parent:016x}"),
                        query: p.parent_query.to_string(),
                        share: 0.0,
                        role: Some("parent".into()),
                    },
                ],
                score: per_hour(lost_ms, now.saturating_sub(p.first_seen)),
                confirmed: true,
                summary: format!(
                    "N+1: `{}` runs {:.0} times after each `{}` ({} requests, {:.0} ms lost)",
                    p.child_query, burst_size, p.parent_query, p.requests, lost_ms
                ),
                index: None,
                n_plus_one: Some(NPlusOneDetails {
                    parent: format!("{parent:016x}"),
                    child: format!("{child:016x}"),
                    burst_size,
                    requests: p.requests,
                    per_minute: p.requests as f64 / minutes,
                    time_lost_ms: lost_ms,
                    child_ms,
                    column,
                    rewrite,
                }),
                first_seen: p.first_seen,
                last_confirmed: p.last_seen,
            });
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }
}

/// `SELECT 1 FROM ... LIMIT 1` (normalized: `select ? from ... limit ?`).
pub fn is_uniqueness_check(query: &str) -> bool {
    (query.starts_with("select ? from") || query.starts_with("select exists"))
        && (query.contains(" limit ?") || query.starts_with("select exists"))
}

impl CallObserver for Detector {
    fn observe(&mut self, call: &Call<'_>) {
        if !self.settings.enabled {
            return;
        }
        self.total_time += call.duration;
        let context = call.context;
        let trace = call
            .may_trace
            .then(|| super::traceparent::trace_id(call.sql))
            .flatten();
        let key = if let Some(trace) = trace {
            ScopeKey::Trace(hash(trace))
        } else if context.session_key != 0 {
            ScopeKey::SessionKey(context.session_key)
        } else {
            ScopeKey::Client(context.client)
        };
        // The size first: the lookup below is the only one a statement pays.
        if self.scopes.len() >= self.max_scopes() && !self.scopes.contains_key(&key) {
            self.forget_stalest_scopes();
        }
        let scope = self
            .scopes
            .entry(key)
            .or_insert_with(|| Scope::new(context.ended));
        scope.observe(
            &Statement {
                fingerprint: call.fingerprint,
                query: call.query,
                params: if context.params != 0 {
                    Params::Bound(context.params)
                } else {
                    Params::Text(call.sql)
                },
                duration: call.duration,
                ended: context.ended,
            },
            &mut self.closed,
        );
        if !self.closed.is_empty() {
            self.settle();
        }
    }

    fn tick(&mut self, now: Instant) {
        if self
            .last_idle_check
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_millis(250))
        {
            self.last_idle_check = Some(now);
            if let Some(idle_since) = now.checked_sub(BURST_IDLE) {
                for scope in self.scopes.values_mut() {
                    scope.close_idle(idle_since, &mut self.closed);
                }
            }
            if let Some(forget_before) = now.checked_sub(SCOPE_IDLE) {
                self.scopes.retain(|_, s| s.last >= forget_before);
            }
            self.settle();
        }
        self.memory
            .n_plus_one
            .store(self.bytes(), Ordering::Relaxed);
        if self.dirty
            && self
                .last_publish
                .is_none_or(|at| now.saturating_duration_since(at) >= PUBLISH_EVERY)
        {
            self.published.store(Arc::new(self.advisories()));
            self.dirty = false;
            self.last_publish = Some(now);
        }
    }

    fn flush(&mut self) {
        self.published.store(Arc::new(self.advisories()));
        self.dirty = false;
    }
}

fn hash(bytes: &[u8]) -> u64 {
    crate::stats::process_hash(bytes)
}

#[cfg(test)]
#[path = "n_plus_one_tests.rs"]
mod tests;
