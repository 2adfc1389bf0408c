//! Quarantined fingerprints: refused at once. The set comes from
//! `protection.blocked_fingerprints` and the console's `BLOCK QUERY` / `UNBLOCK QUERY`
//! (which survive a reload). Sessions read one atomic flag when nothing is blocked.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::stats::fingerprint::FingerprintId;

#[derive(Default)]
struct Sources {
    configured: HashSet<FingerprintId>,
    blocked: HashSet<FingerprintId>,
    unblocked: HashSet<FingerprintId>,
}

#[derive(Default)]
pub struct Quarantine {
    any: AtomicBool,
    effective: ArcSwap<HashSet<FingerprintId>>,
    sources: Mutex<Sources>,
    /// Refusals per fingerprint (only quarantined ones, so bounded by the set).
    refused: Mutex<BTreeMap<FingerprintId, u64>>,
}

impl Quarantine {
    /// Whether any fingerprint is quarantined (the only cost when none is).
    pub fn is_active(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn is_blocked(&self, id: FingerprintId) -> bool {
        self.is_active() && self.effective.load().contains(&id)
    }

    pub fn note_refused(&self, id: FingerprintId) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
    }

    /// The configured set (at start and on reload).
    pub fn configure(&self, ids: impl IntoIterator<Item = FingerprintId>) {
        self.edit(|s| s.configured = ids.into_iter().collect());
    }

    /// `BLOCK QUERY <id>`.
    pub fn block(&self, id: FingerprintId) {
        self.edit(|s| {
            s.unblocked.remove(&id);
            s.blocked.insert(id);
        });
    }

    /// `UNBLOCK QUERY <id>`; false when it was not blocked.
    pub fn unblock(&self, id: FingerprintId) -> bool {
        let was = self.effective.load().contains(&id);
        self.edit(|s| {
            s.blocked.remove(&id);
            s.unblocked.insert(id);
        });
        was
    }

    /// (fingerprint, refusals) of every quarantined fingerprint.
    pub fn list(&self) -> Vec<(FingerprintId, u64)> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<_> = self
            .effective
            .load()
            .iter()
            .map(|id| (*id, refused.get(id).copied().unwrap_or(0)))
            .collect();
        ids.sort();
        ids
    }

    fn edit(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut sources);
        let effective: HashSet<_> = sources
            .configured
            .union(&sources.blocked)
            .filter(|id| !sources.unblocked.contains(id))
            .copied()
            .collect();
        self.any.store(!effective.is_empty(), Ordering::Relaxed);
        self.effective.store(Arc::new(effective));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_and_config_combine() {
        let q = Quarantine::default();
        assert!(!q.is_active());
        q.configure([1, 2]);
        assert!(q.is_blocked(1) && q.is_blocked(2));
        assert!(q.unblock(1));
        assert!(!q.is_blocked(1));
        q.configure([1, 2]); // a reload keeps the console's word
        assert!(!q.is_blocked(1));
        q.block(3);
        q.unblock(2);
        assert_eq!(q.list(), [(3, 0)]);
        q.unblock(3);
        assert!(!q.is_active());
    }
}
