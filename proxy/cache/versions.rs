//! Invalidation state: when each table (by OID) of each database was last written,
//! on one process-wide clock. An entry records the clock before its query ran; it is
//! current while no table it read was invalidated since. This makes a write that
//! commits while a miss is in flight invalidate the result that miss is about to
//! store, without any lock held across the query.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::route::Lsn;

#[derive(Debug, Default)]
struct DatabaseMarks {
    /// Clock value of the last "drop everything" (DDL, lost LISTEN, `CLEAR CACHE`).
    cleared_at: u64,
    /// Table OID → (clock value of its last invalidation, commit LSN of that write).
    tables: HashMap<u32, (u64, Lsn)>,
    /// The LISTEN connection of this database is up (or not needed).
    listening: bool,
}

/// What a miss records before its query runs.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub at: u64,
    /// The newest commit position of a write to one of its tables: a replica must have
    /// replayed it for the result to be storable.
    pub newest_write: Lsn,
}

#[derive(Debug)]
pub struct Versions {
    clock: Mutex<(u64, HashMap<String, DatabaseMarks>)>,
    /// Whether fills need a live LISTEN connection (`cache.notify`).
    need_listen: bool,
}

impl Versions {
    pub fn new(need_listen: bool) -> Versions {
        Versions {
            clock: Mutex::new((1, HashMap::new())),
            need_listen,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut u64, &mut HashMap<String, DatabaseMarks>) -> R) -> R {
        let mut guard = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let (clock, map) = &mut *guard;
        f(clock, map)
    }

    /// Before a miss runs its query. `None` while the database may miss invalidations
    /// (its LISTEN connection is down).
    pub fn snapshot(&self, database: &str, tables: &[u32]) -> Option<Snapshot> {
        let need_listen = self.need_listen;
        self.with(|clock, map| {
            let marks = map.get(database);
            if need_listen && !marks.is_some_and(|m| m.listening) {
                return None;
            }
            *clock += 1;
            let newest_write = marks.map_or(0, |m| {
                tables
                    .iter()
                    .filter_map(|t| m.tables.get(t).map(|(_, lsn)| *lsn))
                    .max()
                    .unwrap_or(0)
            });
            Some(Snapshot {
                at: *clock,
                newest_write,
            })
        })
    }

    /// Whether nothing an entry read was invalidated after `at`.
    pub fn is_current(&self, database: &str, tables: &[u32], at: u64) -> bool {
        self.with(|_, map| match map.get(database) {
            None => true,
            Some(m) => {
                m.cleared_at < at
                    && tables
                        .iter()
                        .all(|t| m.tables.get(t).is_none_or(|(mark, _)| *mark < at))
            }
        })
    }

    /// A committed write changed `tables` (its commit position `lsn`).
    pub fn invalidate(&self, database: &str, tables: &[u32], lsn: Lsn) {
        self.with(|clock, map| {
            *clock += 1;
            let marks = map.entry(database.to_string()).or_default();
            for t in tables {
                let slot = marks.tables.entry(*t).or_insert((0, 0));
                slot.0 = *clock;
                slot.1 = slot.1.max(lsn);
            }
        })
    }

    /// Drops every entry of `database`.
    pub fn clear(&self, database: &str) {
        self.with(|clock, map| {
            *clock += 1;
            map.entry(database.to_string()).or_default().cleared_at = *clock;
        })
    }

    /// Drops every entry of every database.
    pub fn clear_all(&self) {
        self.with(|clock, map| {
            *clock += 1;
            for marks in map.values_mut() {
                marks.cleared_at = *clock;
            }
        })
    }

    pub fn set_listening(&self, database: &str, listening: bool) {
        self.with(|_, map| map.entry(database.to_string()).or_default().listening = listening)
    }

    pub fn is_listening(&self, database: &str) -> bool {
        !self.need_listen || self.with(|_, map| map.get(database).is_some_and(|m| m.listening))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_after_the_snapshot_makes_the_entry_stale() {
        let v = Versions::new(false);
        let s = v.snapshot("app", &[10, 11]).unwrap();
        assert!(v.is_current("app", &[10, 11], s.at));
        v.invalidate("app", &[12], 5);
        assert!(v.is_current("app", &[10, 11], s.at), "another table");
        v.invalidate("app", &[11], 6);
        assert!(!v.is_current("app", &[10, 11], s.at));
        let s2 = v.snapshot("app", &[11]).unwrap();
        assert_eq!(s2.newest_write, 6);
        assert!(v.is_current("app", &[11], s2.at));
        v.clear("app");
        assert!(!v.is_current("app", &[], s2.at));
        assert!(v.is_current("other", &[11], s2.at));
    }

    #[test]
    fn no_snapshot_while_not_listening() {
        let v = Versions::new(true);
        assert!(v.snapshot("app", &[1]).is_none());
        v.set_listening("app", true);
        assert!(v.snapshot("app", &[1]).is_some());
    }
}
