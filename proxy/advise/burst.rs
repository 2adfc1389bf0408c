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
//!
//! A child seen once is not a burst yet: it waits in a small ring of [`Pending`]
//! openings (no allocation, no copy of a burst) and becomes one when it runs again
//! inside the same window a burst would have allowed. A burst of one child never
//! counts (`min_repeats` is at least 2), so the detector reports the same bursts; in
//! a workload without loops (TPC-B opens one per statement) nearly every statement
//! only writes its ring slot. Unlike an open burst, a pending one never pushes a
//! burst out of the `MAX_OPEN` slots.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::clock::Instant;
use crate::stats::fingerprint::FingerprintId;

/// Bursts one session keeps open at once; past it the stalest is closed.
pub const MAX_OPEN: usize = 8;
/// Distinct parameter hashes a burst remembers (enough to count up to this many).
pub const MAX_PARAMS: usize = 16;
/// Other statements allowed between two children of one burst.
pub const MAX_GAP: u64 = 4;
/// A burst's child runs again at most this many statements after the last one (an
/// open burst closes at the first other statement past it).
const REACH: u64 = MAX_GAP + 1;
/// Pending openings a session keeps: one per statement within [`REACH`].
const PENDING_SLOTS: usize = REACH as usize;

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
    /// Keeps bursts of at least `min` repeats (and never fewer than two: one child
    /// is not a loop, and stays [`Pending`]).
    pub fn new(min: usize) -> Closed {
        Closed {
            min: min.max(2),
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

/// A child seen once right after its parent: the burst it would open, kept in
/// [`Scope::pending`] until the child runs again (then it becomes a [`Burst`]), its
/// parent runs again, or it falls out of [`REACH`].
#[derive(Debug)]
struct Pending {
    child: FingerprintId,
    parent: FingerprintId,
    parent_query: Arc<str>,
    params: u64,
    duration: Duration,
    ended: Instant,
    /// The session's statement number of the child.
    seq: u64,
}

#[derive(Debug)]
pub struct Scope {
    previous: Option<(FingerprintId, Arc<str>)>,
    pub last: Instant,
    open: Vec<Burst>,
    /// Openings of the last [`REACH`] statements, in the slot of their number.
    pending: [Option<Pending>; PENDING_SLOTS],
    /// Statements seen.
    seq: u64,
}

impl Scope {
    pub fn new(now: Instant) -> Scope {
        Scope {
            previous: None,
            last: now,
            open: Vec::new(),
            pending: Default::default(),
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
            let stopped = burst.child != fingerprint && seq - burst.last_seq >= REACH;
            if burst.parent == fingerprint || stopped {
                closed.push(self.open.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // The same for openings not repeated yet; the one this statement repeats is
        // taken out.
        let mut repeated = None;
        for slot in &mut self.pending {
            let Some(pending) = slot else { continue };
            if pending.parent == fingerprint {
                *slot = None;
            } else if pending.child == fingerprint && seq - pending.seq <= REACH {
                repeated = slot.take();
            }
        }
        if let Some(burst) = self.open.iter_mut().find(|b| b.child == fingerprint) {
            burst.count += 1;
            burst.params.insert(statement.params.hash());
            burst.child_time += statement.duration;
            burst.last = statement.ended;
            burst.last_seq = seq;
        } else if let Some(first) = repeated {
            if self.open.len() >= MAX_OPEN {
                let stalest = (0..self.open.len())
                    .min_by_key(|&i| self.open[i].last)
                    .expect("not empty");
                closed.push(self.open.swap_remove(stalest));
            }
            let mut params = ParamSet::of(first.params);
            params.insert(statement.params.hash());
            self.open.push(Burst {
                child: fingerprint,
                child_query: statement.query.clone(),
                parent: first.parent,
                parent_query: first.parent_query,
                count: 2,
                params,
                child_time: first.duration + statement.duration,
                started: first
                    .ended
                    .checked_sub(first.duration)
                    .unwrap_or(first.ended),
                last: statement.ended,
                last_seq: seq,
            });
        } else if self
            .previous
            .as_ref()
            .is_some_and(|(previous, _)| *previous != fingerprint)
        {
            let (parent, parent_query) = self
                .previous
                .replace((fingerprint, statement.query.clone()))
                .expect("checked above");
            self.pending[(seq % REACH) as usize] = Some(Pending {
                child: fingerprint,
                parent,
                parent_query,
                params: statement.params.hash(),
                duration: statement.duration,
                ended: statement.ended,
                seq,
            });
            return;
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
        for slot in &mut self.pending {
            if slot.as_ref().is_some_and(|p| p.ended < idle_since) {
                *slot = None;
            }
        }
    }

    /// Closes everything (the session is forgotten).
    pub fn close_all(&mut self, closed: &mut Closed) {
        for burst in self.open.drain(..) {
            closed.push(burst);
        }
        self.pending = Default::default();
    }
}

/// Bytes one scope may take at most (its key, itself and full open bursts).
pub fn scope_bytes() -> usize {
    std::mem::size_of::<(u64, Scope)>() + MAX_OPEN * std::mem::size_of::<Burst>()
}

#[cfg(test)]
#[path = "burst_tests.rs"]
mod tests;
