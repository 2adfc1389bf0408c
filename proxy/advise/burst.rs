//! One session's recent statements, as the N+1 detector follows them: which
//! fingerprint ran last, and the bursts still open (a child fingerprint repeating
//! after its parent). Pure bookkeeping over fingerprints and instants, no I/O.
//!
//! A burst opens when a fingerprint runs right after a different one (the parent);
//! it grows each time its child runs again, even with unrelated statements between;
//! it closes when its parent runs again (the next request), when more than `MAX_GAP`
//! other statements ran since its child last did (a statement that runs once per
//! transaction is not a loop), when it has been idle for a while, or when the session
//! is forgotten.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::fingerprint::FingerprintId;

/// Bursts one session keeps open at once; past it the stalest is closed.
pub const MAX_OPEN: usize = 8;
/// Distinct parameter hashes a burst remembers (enough to count up to this many).
pub const MAX_PARAMS: usize = 16;
/// Other statements allowed between two children of one burst.
pub const MAX_GAP: u64 = 3;

#[derive(Debug, Clone)]
pub struct Burst {
    pub child: FingerprintId,
    pub child_query: Arc<str>,
    pub parent: FingerprintId,
    pub parent_query: Arc<str>,
    pub count: u32,
    /// Distinct parameter hashes seen, up to `MAX_PARAMS`.
    params: ParamSet,
    pub child_time: Duration,
    /// When the first child started and the last one ended.
    pub started: Instant,
    pub last: Instant,
    /// The session's statement number of the last child.
    last_seq: u64,
}

impl Burst {
    pub fn distinct_params(&self) -> usize {
        usize::from(self.params.len)
    }

    /// Whether the burst repeated enough to count: `min` children with `min` distinct
    /// parameter sets (as far as `MAX_PARAMS` can tell).
    pub fn qualifies(&self, min: usize) -> bool {
        self.count as usize >= min && self.distinct_params() >= min.min(MAX_PARAMS)
    }

    /// Wall time from the first child's start to the last child's end: the children's
    /// own time plus every round trip between them.
    pub fn span(&self) -> Duration {
        self.last.saturating_duration_since(self.started)
    }
}

/// Up to `MAX_PARAMS` distinct parameter hashes, kept inline: a burst opens on almost
/// every statement of a workload whose statements differ (TPC-B opens one per
/// statement), so it must not allocate.
#[derive(Debug, Clone, Copy)]
struct ParamSet {
    hashes: [u64; MAX_PARAMS],
    len: u8,
}

impl ParamSet {
    fn of(first: u64) -> ParamSet {
        let mut hashes = [0; MAX_PARAMS];
        hashes[0] = first;
        ParamSet { hashes, len: 1 }
    }

    fn insert(&mut self, hash: u64) {
        let len = usize::from(self.len);
        if len < MAX_PARAMS && !self.hashes[..len].contains(&hash) {
            self.hashes[len] = hash;
            self.len += 1;
        }
    }
}

/// Where closed bursts go: only those that [`Burst::qualifies`] are kept, the rest
/// (nearly all of them, in a workload without loops) are dropped on the spot.
#[derive(Debug)]
pub struct Closed {
    min: usize,
    pub bursts: Vec<Burst>,
}

impl Closed {
    /// Keeps bursts of at least `min` repeats.
    pub fn new(min: usize) -> Closed {
        Closed {
            min,
            bursts: Vec::new(),
        }
    }

    fn push(&mut self, burst: Burst) {
        if burst.qualifies(self.min) {
            self.bursts.push(burst);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bursts.is_empty()
    }
}

/// What tells two statements of one fingerprint apart: a hash of the bound values, or
/// (simple protocol, whose text carries its values) the text, hashed only when a burst
/// needs it (most statements open or extend none).
#[derive(Debug, Clone, Copy)]
pub enum Params<'a> {
    Bound(u64),
    Text(&'a [u8]),
}

impl Params<'_> {
    fn hash(self) -> u64 {
        match self {
            Params::Bound(hash) => hash,
            Params::Text(text) => crate::stats::process_hash(text),
        }
    }
}

/// One statement as the detector sees it.
pub struct Statement<'a> {
    pub fingerprint: FingerprintId,
    pub query: &'a Arc<str>,
    pub params: Params<'a>,
    pub duration: Duration,
    pub ended: Instant,
}

#[derive(Debug)]
pub struct Scope {
    previous: Option<(FingerprintId, Arc<str>)>,
    pub last: Instant,
    open: Vec<Burst>,
    /// Statements seen.
    seq: u64,
}

impl Scope {
    pub fn new(now: Instant) -> Scope {
        Scope {
            previous: None,
            last: now,
            open: Vec::new(),
            seq: 0,
        }
    }

    /// Follows one statement; bursts it closes go to `closed`.
    pub fn observe(&mut self, statement: &Statement<'_>, closed: &mut Closed) {
        let fingerprint = statement.fingerprint;
        self.last = statement.ended;
        self.seq += 1;
        let seq = self.seq;
        // The parent again: its children's burst is over (the next request began).
        // A child that stopped repeating: over too.
        let mut i = 0;
        while i < self.open.len() {
            let burst = &self.open[i];
            let stopped = burst.child != fingerprint && seq - burst.last_seq > MAX_GAP + 1;
            if burst.parent == fingerprint || stopped {
                closed.push(self.open.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if let Some(burst) = self.open.iter_mut().find(|b| b.child == fingerprint) {
            burst.count += 1;
            burst.params.insert(statement.params.hash());
            burst.child_time += statement.duration;
            burst.last = statement.ended;
            burst.last_seq = seq;
        } else if let Some((parent, parent_query)) = self
            .previous
            .as_ref()
            .filter(|(previous, _)| *previous != fingerprint)
        {
            if self.open.len() >= MAX_OPEN {
                let stalest = (0..self.open.len())
                    .min_by_key(|&i| self.open[i].last)
                    .expect("not empty");
                closed.push(self.open.swap_remove(stalest));
            }
            self.open.push(Burst {
                child: fingerprint,
                child_query: statement.query.clone(),
                parent: *parent,
                parent_query: parent_query.clone(),
                count: 1,
                params: ParamSet::of(statement.params.hash()),
                child_time: statement.duration,
                started: statement
                    .ended
                    .checked_sub(statement.duration)
                    .unwrap_or(statement.ended),
                last: statement.ended,
                last_seq: seq,
            });
        }
        if self.previous.as_ref().map(|(f, _)| *f) != Some(fingerprint) {
            self.previous = Some((fingerprint, statement.query.clone()));
        }
    }

    /// Closes bursts idle since before `idle_since`.
    pub fn close_idle(&mut self, idle_since: Instant, closed: &mut Closed) {
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].last < idle_since {
                closed.push(self.open.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Closes everything (the session is forgotten).
    pub fn close_all(&mut self, closed: &mut Closed) {
        for burst in self.open.drain(..) {
            closed.push(burst);
        }
    }
}

/// Bytes one scope may take at most (its key, itself and full open bursts).
pub fn scope_bytes() -> usize {
    std::mem::size_of::<(u64, Scope)>() + MAX_OPEN * std::mem::size_of::<Burst>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scope: &mut Scope, start: Instant, steps: &[(u64, u64)]) -> Vec<Burst> {
        let query: Arc<str> = Arc::from("q");
        let mut closed = Closed::new(0);
        for (i, (fingerprint, params)) in steps.iter().enumerate() {
            scope.observe(
                &Statement {
                    fingerprint: *fingerprint,
                    query: &query,
                    params: Params::Bound(*params),
                    duration: Duration::from_millis(1),
                    ended: start + Duration::from_millis(2 * i as u64 + 1),
                },
                &mut closed,
            );
        }
        closed.bursts
    }

    #[test]
    fn a_child_loop_closes_when_the_parent_runs_again() {
        let start = Instant::now();
        let mut scope = Scope::new(start);
        // parent 1, children 2 (params 10..15), unrelated 9 in between, parent again.
        let closed = run(
            &mut scope,
            start,
            &[
                (1, 0),
                (2, 10),
                (2, 11),
                (9, 0),
                (2, 12),
                (2, 13),
                (2, 14),
                (1, 1),
            ],
        );
        let burst = closed.iter().find(|b| b.child == 2).expect("burst of 2");
        assert_eq!(
            (burst.parent, burst.count, burst.distinct_params()),
            (1, 5, 5)
        );
        assert!(burst.span() >= Duration::from_millis(9));
    }

    #[test]
    fn a_statement_once_per_transaction_is_no_loop() {
        let start = Instant::now();
        let mut scope = Scope::new(start);
        // TPC-B-like: the child once per transaction with five other statements in
        // between, after one of two "parents" (pgbench's UPDATE with a positive or a
        // negative literal fingerprints apart), so a parent does not recur to close it.
        let mut steps = Vec::new();
        for t in 0..10u64 {
            let parent = if t == 0 { 1 } else { 2 };
            steps.extend([
                (parent, t),
                (3, 100 + t),
                (4, t),
                (5, t),
                (6, t),
                (7, 0),
                (8, 0),
            ]);
        }
        let mut closed = Closed::new(0);
        closed.bursts = run(&mut scope, start, &steps);
        scope.close_all(&mut closed);
        let closed = closed.bursts;
        assert!(closed.iter().any(|b| b.child == 3), "{closed:?}");
        assert!(closed.iter().all(|b| b.count < 5), "{closed:?}");
    }

    #[test]
    fn idle_bursts_close() {
        let start = Instant::now();
        let mut scope = Scope::new(start);
        let closed = run(&mut scope, start, &[(1, 0), (2, 1), (2, 2)]);
        assert!(closed.is_empty());
        let mut closed = Closed::new(0);
        scope.close_idle(start + Duration::from_secs(1), &mut closed);
        assert_eq!(closed.bursts.len(), 1);
        assert_eq!(closed.bursts[0].count, 2);
    }

    #[test]
    fn bursts_too_short_to_count_are_dropped_where_they_close() {
        let start = Instant::now();
        let query: Arc<str> = Arc::from("q");
        let mut scope = Scope::new(start);
        let mut closed = Closed::new(3);
        // Child 2 runs three times after parent 1 (distinct parameters), child 4 once
        // after parent 3; parent 1 again closes the first, idleness the second.
        for (i, (fingerprint, params)) in [(1, 0), (2, 1), (2, 2), (2, 3), (3, 0), (4, 5), (1, 0)]
            .into_iter()
            .enumerate()
        {
            let statement = Statement {
                fingerprint,
                query: &query,
                params: Params::Bound(params),
                duration: Duration::from_millis(1),
                ended: start + Duration::from_millis(i as u64 + 1),
            };
            scope.observe(&statement, &mut closed);
        }
        scope.close_all(&mut closed);
        let kept: Vec<(u64, u32)> = closed.bursts.iter().map(|b| (b.child, b.count)).collect();
        assert_eq!(kept, vec![(2, 3)], "{:?}", closed.bursts);
    }
}
