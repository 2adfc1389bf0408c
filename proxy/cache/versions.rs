//! Invalidation state: when each table (by OID) of each database was last written,
//! on one process-wide clock. An entry records the clock before its query ran; it is
//! current while no table it read was invalidated since. This makes a write that
//! commits while a miss is in flight invalidate the result that miss is about to
//! store, without any lock held across the query.

use std::sync::Mutex;

use crate::route::Lsn;
use crate::stats::ProcessMap;

/// A keyed write to one table: hashes of its column and of (column, value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedChange {
    pub table: u32,
    pub column: u64,
    pub key: u64,
}

#[derive(Debug, Default)]
struct DatabaseMarks {
    /// Clock value of the last "drop everything" (DDL, lost LISTEN, `CLEAR CACHE`).
    cleared_at: u64,
    tables: ProcessMap<u32, TableMarks>,
    /// The LISTEN connection of this database is up (or not needed).
    listening: bool,
}

/// Keyed marks a table keeps before it falls back to one table-wide mark.
const MAX_KEYED_MARKS: usize = 65_536;

/// When one table was last written, table-wide and per key (see `row_key.rs`).
#[derive(Debug, Default)]
struct TableMarks {
    /// Clock of the last table-wide write.
    wide: u64,
    /// Commit LSN of the newest write of any kind.
    lsn: Lsn,
    /// Clock of the last keyed write, whatever its key: entries without a key (or keyed
    /// on another column) are stale after it.
    any_keyed: u64,
    /// Column hash → clock of the last write keyed on that column.
    columns: ProcessMap<u64, u64>,
    /// (column, value) hash → clock of the last write keyed on it.
    keys: ProcessMap<u64, u64>,
    /// Committed writes in the current minute (for `auto` mode's "read-mostly").
    minute: Option<(std::time::Instant, u64)>,
}

impl TableMarks {
    fn count_write(&mut self) {
        let now = std::time::Instant::now();
        match &mut self.minute {
            Some((start, n)) if now.duration_since(*start) < std::time::Duration::from_secs(60) => {
                *n += 1
            }
            slot => *slot = Some((now, 1)),
        }
    }

    fn writes_this_minute(&self) -> u64 {
        match self.minute {
            Some((start, n)) if start.elapsed() < std::time::Duration::from_secs(60) => n,
            _ => 0,
        }
    }
}

/// The key an entry depends on: hashes of its column and of (column, value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKey {
    pub column: u64,
    pub key: u64,
}

impl TableMarks {
    fn is_current(&self, at: u64, key: Option<EntryKey>) -> bool {
        if self.wide >= at {
            return false;
        }
        let Some(key) = key else {
            return self.any_keyed < at;
        };
        if self.any_keyed < at {
            return true;
        }
        self.keys.get(&key.key).is_none_or(|mark| *mark < at)
            && self
                .columns
                .iter()
                .all(|(column, mark)| *column == key.column || *mark < at)
    }
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
    clock: Mutex<(u64, ProcessMap<String, DatabaseMarks>)>,
    /// Whether fills need a live LISTEN connection (`cache.notify`).
    need_listen: bool,
}

impl Versions {
    pub fn new(need_listen: bool) -> Versions {
        Versions {
            clock: Mutex::new((1, ProcessMap::default())),
            need_listen,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut u64, &mut ProcessMap<String, DatabaseMarks>) -> R) -> R {
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
                    .filter_map(|t| m.tables.get(t).map(|marks| marks.lsn))
                    .max()
                    .unwrap_or(0)
            });
            Some(Snapshot {
                at: *clock,
                newest_write,
            })
        })
    }

    /// Whether nothing an entry read (its key, when it has one) was invalidated
    /// after `at`.
    pub fn is_current(
        &self,
        database: &str,
        tables: &[u32],
        key: Option<EntryKey>,
        at: u64,
    ) -> bool {
        self.with(|_, map| match map.get(database) {
            None => true,
            Some(m) => {
                m.cleared_at < at
                    && tables.iter().all(|t| {
                        m.tables
                            .get(t)
                            .is_none_or(|marks| marks.is_current(at, key))
                    })
            }
        })
    }

    /// A committed write changed `tables` as a whole, and the rows of `keys` (table,
    /// column and value hashes) only; its commit position is `lsn`.
    pub fn invalidate(&self, database: &str, tables: &[u32], keys: &[KeyedChange], lsn: Lsn) {
        self.with(|clock, map| {
            *clock += 1;
            let marks = map.entry(database.to_string()).or_default();
            for t in tables {
                let slot = marks.tables.entry(*t).or_default();
                slot.wide = *clock;
                slot.lsn = slot.lsn.max(lsn);
                slot.columns.clear();
                slot.keys.clear();
                slot.count_write();
            }
            for change in keys {
                let slot = marks.tables.entry(change.table).or_default();
                slot.lsn = slot.lsn.max(lsn);
                slot.count_write();
                if slot.wide == *clock {
                    continue;
                }
                if slot.keys.len() >= MAX_KEYED_MARKS {
                    slot.wide = *clock;
                    slot.columns.clear();
                    slot.keys.clear();
                    continue;
                }
                slot.any_keyed = *clock;
                slot.columns.insert(change.column, *clock);
                slot.keys.insert(change.key, *clock);
            }
        })
    }

    /// Committed writes to `tables` seen in their current minute.
    pub fn writes_this_minute(&self, database: &str, tables: &[u32]) -> u64 {
        self.with(|_, map| {
            map.get(database).map_or(0, |m| {
                tables
                    .iter()
                    .filter_map(|t| m.tables.get(t))
                    .map(TableMarks::writes_this_minute)
                    .sum()
            })
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
        assert!(v.is_current("app", &[10, 11], None, s.at));
        v.invalidate("app", &[12], &[], 5);
        assert!(v.is_current("app", &[10, 11], None, s.at), "another table");
        v.invalidate("app", &[11], &[], 6);
        assert!(!v.is_current("app", &[10, 11], None, s.at));
        let s2 = v.snapshot("app", &[11]).unwrap();
        assert_eq!(s2.newest_write, 6);
        assert!(v.is_current("app", &[11], None, s2.at));
        v.clear("app");
        assert!(!v.is_current("app", &[], None, s2.at));
        assert!(v.is_current("other", &[11], None, s2.at));
    }

    #[test]
    fn a_keyed_write_spares_other_keys_only() {
        let v = Versions::new(false);
        let id = |value: u64| EntryKey {
            column: 1,
            key: 100 + value,
        };
        let by_email = EntryKey {
            column: 2,
            key: 500,
        };
        let s = v.snapshot("app", &[10]).unwrap();
        v.invalidate(
            "app",
            &[],
            &[KeyedChange {
                table: 10,
                column: 1,
                key: 105,
            }],
            7,
        );
        assert!(!v.is_current("app", &[10], Some(id(5)), s.at), "its key");
        assert!(v.is_current("app", &[10], Some(id(6)), s.at), "another key");
        assert!(!v.is_current("app", &[10], None, s.at), "an unkeyed read");
        assert!(
            !v.is_current("app", &[10], Some(by_email), s.at),
            "keyed on another column"
        );
        assert!(v.is_current("app", &[11], None, s.at), "another table");
        assert_eq!(v.snapshot("app", &[10]).unwrap().newest_write, 7);
        let s2 = v.snapshot("app", &[10]).unwrap();
        v.invalidate("app", &[10], &[], 8);
        assert!(
            !v.is_current("app", &[10], Some(id(6)), s2.at),
            "table-wide"
        );
    }

    #[test]
    fn no_snapshot_while_not_listening() {
        let v = Versions::new(true);
        assert!(v.snapshot("app", &[1]).is_none());
        v.set_listening("app", true);
        assert!(v.snapshot("app", &[1]).is_some());
    }
}
