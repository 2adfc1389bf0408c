//! The commit hook's SQL: what a committed write changed, told to this process and (with
//! `NOTIFY`) to every other instance before the client sees the commit.
//!
//! The catalog facts it needs (the written names as table OIDs, views, partitions,
//! cascading foreign keys, whether a keyed write's table and column qualify, whether a
//! called function is `VOLATILE`) do not change from one write to the next, so they are
//! asked once per shape of write ([`resolution_question`]) and remembered for
//! [`RESOLUTION_TTL`] or until DDL through pgwarden. Each commit then pays one trivial
//! statement ([`notify_question`]): the commit position, and the `NOTIFY`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::catalog::{parse_oids, text_array_of, Invalidation, CHANNEL};
use super::row_key::{column_hash, key_hash, RowKey};
use super::versions::KeyedChange;
use crate::protocol::sql_quote::quote_literal;
use crate::route::{parse_lsn, Lsn};

/// How long a resolution is trusted: DDL made outside pgwarden (a new trigger, a new
/// foreign key) is seen by writes after at most this long.
pub const RESOLUTION_TTL: Duration = Duration::from_secs(10);

/// `NOTIFY` payloads must stay under 8000 bytes: a longer list becomes `*`.
const MAX_CHANGES_TEXT: usize = 7000;

/// Functions that change no table although `pg_proc` calls them volatile: a write
/// calling them is not taken for "writes everything".
const NO_TABLE_WRITES: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "random",
    "gen_random_uuid",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "set_config",
    "pg_advisory_xact_lock",
    "pg_advisory_lock",
    "pg_advisory_unlock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
];

/// The shape of a write: names and key columns, without key values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteShape {
    pub relations: BTreeSet<String>,
    /// (relation, column) of keyed writes.
    pub keyed: BTreeSet<(String, String)>,
    pub functions: BTreeSet<String>,
}

impl WriteShape {
    pub fn new(
        relations: &BTreeSet<String>,
        keys: &BTreeSet<RowKey>,
        functions: &BTreeSet<String>,
    ) -> WriteShape {
        WriteShape {
            relations: relations.clone(),
            keyed: keys
                .iter()
                .map(|k| (k.relation.clone(), k.column.clone()))
                .collect(),
            functions: functions
                .iter()
                .filter(|f| !NO_TABLE_WRITES.contains(&f.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Bytes it takes as a memo key.
    pub fn weight(&self) -> usize {
        let names = |set: &BTreeSet<String>| set.iter().map(|n| n.len() + 24).sum::<usize>();
        names(&self.relations)
            + names(&self.functions)
            + self
                .keyed
                .iter()
                .map(|(r, c)| r.len() + c.len() + 48)
                .sum::<usize>()
    }
}

/// What the catalog says about one shape of write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// A called function is `VOLATILE`: everything in the database may have changed.
    pub everything: bool,
    /// Tables changed as a whole (closure included).
    pub tables: Vec<u32>,
    /// Keyed writes the catalog confirmed: (relation, column) → table OID.
    pub keyed: BTreeMap<(String, String), u32>,
}

impl Resolution {
    /// What one commit changed, for this process: what [`Resolution::changes`] lists,
    /// without writing the list out and reading it back.
    pub fn invalidation(&self, keys: &BTreeSet<RowKey>, lsn: Lsn) -> Invalidation {
        if self.everything {
            return Invalidation::everything(lsn);
        }
        let keys = keys
            .iter()
            .filter_map(|key| {
                Some(KeyedChange {
                    table: self.table_of(key)?,
                    column: column_hash(&key.column),
                    key: key_hash(&key.column, &key.value),
                })
            })
            .collect();
        Invalidation {
            lsn,
            tables: Some(self.tables.clone()),
            keys,
        }
    }

    /// The table of a keyed write the catalog confirmed (a statement has a few: a
    /// look at each beats copying the names into a key).
    fn table_of(&self, key: &RowKey) -> Option<u32> {
        self.keyed
            .iter()
            .find(|((relation, column), _)| *relation == key.relation && *column == key.column)
            .map(|(_, table)| *table)
    }

    /// The change list for one commit, for the other instances: table-wide OIDs and
    /// `oid:column=value` items, or `*` (see `catalog::parse_changes`).
    pub fn changes(&self, keys: &BTreeSet<RowKey>) -> String {
        if self.everything {
            return "*".into();
        }
        let mut items: Vec<String> = self.tables.iter().map(u32::to_string).collect();
        for key in keys {
            if let Some(oid) = self.table_of(key) {
                items.push(format!("{oid}:{}={}", key.column, key.value));
            }
        }
        let text = items.join(",");
        if text.len() > MAX_CHANGES_TEXT {
            "*".into()
        } else {
            text
        }
    }
}

/// Foreign keys whose actions write the referencing table (`conrelid`) when the
/// referenced one (`confrelid`) changes.
const CASCADING_FOREIGN_KEYS: &str = "con.contype = 'f' AND (con.confupdtype IN ('c', 'n', 'd') OR con.confdeltype IN ('c', 'n', 'd'))";

/// A user trigger function that changes no table but its own row: one of PostgreSQL's
/// own (`suppress_redundant_updates_trigger`, `tsvector_update_trigger`), or PL/pgSQL
/// whose body has no statement that writes or runs hidden SQL (`EXECUTE`, `CALL`) and
/// calls no `VOLATILE` function beyond those that change no table. A name followed by
/// `(` that is no function in `pg_proc` is a keyword (`IF (`), since a call of it would
/// fail. What this cannot tell (a word inside a string or comment) counts as writing.
/// `$1`: the volatile functions that change no table.
const TRIGGER_WRITES_ONLY_ITS_ROW: &str = r#"(p.pronamespace = 'pg_catalog'::regnamespace
  OR (p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
    AND p.prosrc !~* E'\\m(insert|update|delete|merge|truncate|copy|execute|call|create|alter|drop|grant|revoke|refresh|import|vacuum|cluster|reindex)\\M'
    AND NOT EXISTS (SELECT 1 FROM regexp_matches(p.prosrc, E'"?([A-Za-z_][A-Za-z0-9_$]*)"?\\s*\\(', 'g') m
      JOIN pg_proc q ON q.proname IN (m[1], lower(m[1]))
      WHERE q.provolatile = 'v' AND NOT q.proname = ANY($1))))"#;

/// One row: `everything` (t/f), the table-wide OIDs, and the confirmed keyed writes as
/// `oid:index` items (index into the shape's `keyed`, in order). A keyed write is
/// confirmed on an integer column of a plain table without user triggers, rules or
/// inheritance; an unconfirmed one is table-wide. Table-wide closes over what views
/// read, partitions, and tables written by cascading foreign keys. A `VOLATILE`
/// function called, or an enabled user trigger on any of those tables whose function
/// may write elsewhere ([`TRIGGER_WRITES_ONLY_ITS_ROW`]), makes it `everything`.
pub fn resolution_question(shape: &WriteShape) -> String {
    let relations: Vec<String> = shape.relations.iter().cloned().collect();
    let key_names: Vec<String> = shape.keyed.iter().map(|(r, _)| r.clone()).collect();
    let key_columns: Vec<String> = shape.keyed.iter().map(|(_, c)| c.clone()).collect();
    let functions: Vec<String> = shape.functions.iter().cloned().collect();
    let no_table_writes: Vec<String> = NO_TABLE_WRITES.iter().map(|f| f.to_string()).collect();
    format!(
        "WITH RECURSIVE keyed AS (SELECT k.n, k.col, k.i, to_regclass(k.n)::oid AS oid \
           FROM unnest({key_names}, {key_columns}) WITH ORDINALITY AS k(n, col, i)), \
         keyed_ok AS (SELECT k.oid, k.i FROM keyed k JOIN pg_class c ON c.oid = k.oid \
           WHERE c.relkind = 'r' AND NOT c.relispartition AND NOT c.relhassubclass AND NOT c.relhasrules \
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = k.col \
             AND NOT a.attisdropped AND a.atttypid IN (20, 21, 23)) \
           AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)), \
         roots AS (SELECT to_regclass(n)::oid AS oid FROM unnest({wide}) AS n \
           UNION ALL SELECT k.oid FROM keyed k WHERE k.i NOT IN (SELECT i FROM keyed_ok) \
           UNION ALL SELECT con.conrelid FROM keyed_ok o JOIN pg_constraint con \
             ON con.confrelid = o.oid AND {CASCADING_FOREIGN_KEYS}), \
         rels(oid) AS (SELECT oid FROM roots WHERE oid IS NOT NULL \
           UNION SELECT x.oid FROM rels r CROSS JOIN LATERAL ( \
             SELECT d.refobjid AS oid FROM pg_rewrite rw JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass \
               AND d.objid = rw.oid AND d.refclassid = 'pg_class'::regclass WHERE rw.ev_class = r.oid AND d.refobjid <> r.oid \
             UNION ALL SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = r.oid \
             UNION ALL SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = r.oid \
             UNION ALL SELECT con.conrelid FROM pg_constraint con WHERE con.confrelid = r.oid AND {CASCADING_FOREIGN_KEYS}) x) \
         SELECT (EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = ANY({functions}) AND p.provolatile = 'v') \
           OR EXISTS (SELECT 1 FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid \
             AND NOT t.tgisinternal AND t.tgenabled <> 'D' JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE NOT {trigger_writes_only_its_row}))::text, \
           (SELECT string_agg(DISTINCT oid::text, ',') FROM rels), \
           (SELECT string_agg(o.oid::text || ':' || o.i::text, ',') FROM keyed_ok o)",
        wide = text_array_of(&relations),
        key_names = text_array_of(&key_names),
        key_columns = text_array_of(&key_columns),
        functions = text_array_of(&functions),
        trigger_writes_only_its_row = TRIGGER_WRITES_ONLY_ITS_ROW
            .replace("$1", &text_array_of(&no_table_writes)),
    )
}

pub fn resolution_answer(shape: &WriteShape, answer: &[Option<String>]) -> Option<Resolution> {
    let everything = answer.first()?.as_deref()? == "true";
    let tables = answer
        .get(1)?
        .as_deref()
        .map(parse_oids)
        .unwrap_or_default();
    let pairs: Vec<&(String, String)> = shape.keyed.iter().collect();
    let mut keyed = BTreeMap::new();
    for item in answer.get(2)?.as_deref().unwrap_or("").split(',') {
        let Some((oid, index)) = item.split_once(':') else {
            continue;
        };
        let oid: u32 = oid.parse().ok()?;
        let index: usize = index.parse().ok()?;
        keyed.insert((*pairs.get(index.checked_sub(1)?)?).clone(), oid);
    }
    Some(Resolution {
        everything,
        tables,
        keyed,
    })
}

/// The per-commit statement: the commit position and, with `notify`, the change list
/// sent to the other instances. Answer: lsn.
pub fn notify_question(instance: u64, database: &str, changes: &str, notify: bool) -> String {
    if !notify {
        return "SELECT pg_current_wal_insert_lsn()::text".into();
    }
    format!(
        "SELECT w.lsn, pg_notify('{CHANNEL}', {prefix} || w.lsn || {suffix}) \
         FROM (SELECT pg_current_wal_insert_lsn()::text AS lsn) w",
        prefix = quote_literal(&format!("{instance}|{database}|")),
        suffix = quote_literal(&format!("|{changes}")),
    )
}

/// Reads the commit position from the per-commit statement's answer.
pub fn notify_answer(answer: &[Option<String>]) -> Option<Lsn> {
    parse_lsn(answer.first()?.as_deref()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolution_lists_each_commits_changes() {
        let keys: BTreeSet<RowKey> = [
            RowKey::new("acc", "id", "5"),
            RowKey::new("other", "id", "1"),
        ]
        .into();
        let shape = WriteShape::new(&["t".to_string()].into(), &keys, &BTreeSet::new());
        let answer = vec![
            Some("false".into()),
            Some("10,11".into()),
            Some("20:1".into()), // acc confirmed; other not (so it is among the tables)
        ];
        let resolution = resolution_answer(&shape, &answer).unwrap();
        assert_eq!(resolution.changes(&keys), "10,11,20:id=5");
        let everything = resolution_answer(&shape, &[Some("true".into()), None, None]).unwrap();
        assert_eq!(everything.changes(&keys), "*");
        // This process's own invalidation is what the other instances read from the list.
        for resolution in [&resolution, &everything] {
            let local = resolution.invalidation(&keys, 7);
            let (tables, listed) = super::super::catalog::parse_changes(&resolution.changes(&keys));
            assert_eq!(
                (local.lsn, &local.tables, &local.keys),
                (7, &tables, &listed)
            );
        }
        assert!(resolution_question(&shape).contains("'acc'"));
    }

    #[test]
    fn functions_that_write_no_table_are_left_out() {
        let shape = WriteShape::new(
            &BTreeSet::new(),
            &BTreeSet::new(),
            &["nextval".to_string(), "my_fn".to_string()].into(),
        );
        assert_eq!(shape.functions.len(), 1);
        let sql = notify_question(7, "app", "1,2:id=3", true);
        assert!(sql.contains("'7|app|'") && sql.contains("'|1,2:id=3'"));
    }
}
