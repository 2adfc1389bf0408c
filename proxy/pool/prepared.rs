//! Which pooled prepared statements one server connection holds, bounded like
//! PgBouncer's `max_prepared_statements`: past the bound, the least recently used
//! statement is closed. Statements used since the current batch began are never
//! chosen (closing a statement closes its portals).

use std::collections::HashSet;

use crate::stats::ProcessMap;

#[derive(Debug, Default)]
pub struct PreparedStatements {
    /// Statement id → tick of its last use.
    last_used: ProcessMap<u64, u64>,
    tick: u64,
    /// Uses at or after this tick belong to the batch in flight.
    batch_start: u64,
    /// Statements that may still exist on the server although the proxy no longer
    /// counts on them (a stale plan, a `Close` the server skipped after an error):
    /// closed before they are prepared again.
    stale: HashSet<u64, crate::stats::ProcessState>,
}

impl PreparedStatements {
    pub fn contains(&self, id: u64) -> bool {
        self.last_used.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// Notes a use of the statement if the server has it; whether it has.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.last_used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a statement being prepared now. Returns the ids to close first: a stale
    /// copy of this statement, and the least recently used ones beyond `capacity`.
    pub fn insert(&mut self, id: u64, capacity: usize) -> Vec<u64> {
        let mut close = Vec::new();
        if self.stale.remove(&id) {
            close.push(id);
        }
        while self.last_used.len() >= capacity.max(1) {
            let victim = self
                .last_used
                .iter()
                .filter(|(_, t)| **t < self.batch_start)
                .min_by_key(|(_, t)| **t)
                .map(|(id, _)| *id);
            let Some(victim) = victim else { break };
            self.last_used.remove(&victim);
            close.push(victim);
        }
        self.tick += 1;
        self.last_used.insert(id, self.tick);
        close
    }

    pub fn remove(&mut self, id: u64) {
        self.last_used.remove(&id);
    }

    /// The statement may or may not exist on the server: close it before reuse.
    pub fn mark_stale(&mut self, id: u64) {
        self.last_used.remove(&id);
        self.stale.insert(id);
    }

    /// A client sent `DEALLOCATE ALL` or `DISCARD ALL`: if it succeeds nothing is
    /// left; if it fails everything is. Either way, close before preparing again.
    pub fn mark_all_stale(&mut self) {
        self.stale.extend(self.last_used.drain().map(|(id, _)| id));
    }

    /// Everything was deallocated on the server (the proxy's own `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.last_used.clear();
        self.stale.clear();
    }

    /// A new batch starts: statements used from now on are in use until its `Sync`.
    pub fn start_batch(&mut self) {
        self.tick += 1;
        self.batch_start = self.tick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_outside_the_batch() {
        let mut p = PreparedStatements::default();
        assert!(p.insert(1, 2).is_empty());
        assert!(p.insert(2, 2).is_empty());
        assert!(p.touch(1));
        p.start_batch();
        assert_eq!(p.insert(3, 2), vec![2]);
        assert!(p.contains(1) && p.contains(3) && !p.contains(2));
        // Both remaining were used in this batch: the bound is exceeded, not violated.
        assert!(p.touch(1));
        assert!(p.insert(4, 2).is_empty());
        assert_eq!(p.len(), 3);
        p.start_batch();
        assert_eq!(p.insert(5, 2).len(), 2);
    }

    #[test]
    fn stale_statements_are_closed_before_preparing_again() {
        let mut p = PreparedStatements::default();
        p.insert(7, 10);
        p.mark_stale(7);
        assert!(!p.contains(7));
        assert!(!p.touch(7), "a stale statement is not one the server has");
        assert_eq!(p.insert(7, 10), vec![7]);
        assert!(p.insert(8, 10).is_empty());
    }
}
