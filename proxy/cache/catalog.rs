//! The catalog's word on a statement's names, asked on the session's own server
//! connection (so its `search_path` resolves the names): table OIDs (views expanded to
//! what they read, partitions to their parents and children), temporary and system
//! tables, and whether every function called is `IMMUTABLE` in `pg_proc`.
//! This file only builds the SQL and reads its one-row answer.

use super::row_key::{column_hash, key_hash, KeyPredicate};
use super::versions::KeyedChange;
use crate::route::{parse_lsn, Lsn};

use crate::protocol::sql_quote::quote_literal;

/// The LISTEN/NOTIFY channel invalidations travel on.
pub const CHANNEL: &str = "pgwarden_cache";

pub(super) fn text_array_of(items: &[String]) -> String {
    text_array(items)
}

fn text_array<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(","))
}

/// `roots(n, oid)` from names, and `rels(oid)` closed over what views and row security
/// policies read and over partition/inheritance parents and children.
fn closure(names: &str) -> String {
    format!(
        "WITH RECURSIVE roots AS (SELECT n, to_regclass(n)::oid AS oid FROM unnest({names}) AS n), \
         rels(oid) AS (SELECT oid FROM roots WHERE oid IS NOT NULL \
           UNION SELECT x.oid FROM rels r CROSS JOIN LATERAL ( \
             SELECT d.refobjid AS oid FROM pg_rewrite rw JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass \
               AND d.objid = rw.oid AND d.refclassid = 'pg_class'::regclass WHERE rw.ev_class = r.oid AND d.refobjid <> r.oid \
             UNION ALL SELECT d.refobjid FROM pg_policy pol JOIN pg_depend d ON d.classid = 'pg_policy'::regclass \
               AND d.objid = pol.oid AND d.refclassid = 'pg_class'::regclass WHERE pol.polrelid = r.oid AND d.refobjid <> r.oid \
             UNION ALL SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = r.oid \
             UNION ALL SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = r.oid) x)"
    )
}

/// The question about a read: one row of text columns, read by [`read_verdict`] and
/// [`key_confirmed`]. `key`: the read's key predicate, checked to be on an integer
/// column of a plain table (no partitions, inheritance, rules, row security) that is
/// the only relation the read depends on.
pub fn read_question(
    relations: &[String],
    functions: &[String],
    never: &[String],
    key: Option<&KeyPredicate>,
) -> String {
    let key_check = match key {
        Some(key) => format!(
            ", (SELECT (count(*) = 1 AND bool_and(c.relkind = 'r' AND NOT c.relispartition AND NOT c.relhassubclass \
               AND NOT c.relhasrules AND NOT c.relrowsecurity AND c.oid = to_regclass({relation})::oid \
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = {column} \
                 AND NOT a.attisdropped AND a.atttypid IN (20, 21, 23))))::text \
               FROM rels r JOIN pg_class c ON c.oid = r.oid)",
            relation = quote_literal(&key.relation),
            column = quote_literal(&key.column),
        ),
        None => String::new(),
    };
    format!(
        "{closure} SELECT \
         (SELECT string_agg(n, ',') FROM roots WHERE oid IS NULL), \
         (SELECT string_agg(c.relname, ',') FROM rels r JOIN pg_class c ON c.oid = r.oid \
            JOIN pg_namespace s ON s.oid = c.relnamespace \
            WHERE c.relpersistence = 't' OR c.relkind IN ('S', 'f') \
               OR s.nspname IN ('pg_catalog', 'information_schema') OR s.nspname LIKE 'pg\\_%'), \
         (SELECT string_agg(f, ',') FROM unnest({functions}) f \
            WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f) \
               OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f AND p.provolatile <> 'i')), \
         (SELECT string_agg(DISTINCT p.proname, ',') FROM rels r JOIN pg_rewrite rw ON rw.ev_class = r.oid \
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid AND d.refclassid = 'pg_proc'::regclass \
            JOIN pg_proc p ON p.oid = d.refobjid WHERE p.provolatile <> 'i'), \
         (SELECT string_agg(c.relname, ',') FROM rels r JOIN pg_class c ON c.oid = r.oid \
            WHERE r.oid IN (SELECT to_regclass(x)::oid FROM unnest({never}) x)), \
         (SELECT string_agg(DISTINCT oid::text, ',') FROM rels), \
         (SELECT string_agg(pg_get_viewdef(r.oid), ';') FROM rels r JOIN pg_class c ON c.oid = r.oid WHERE c.relkind IN ('v', 'm')), \
         (SELECT string_agg('SELECT ' || pg_get_expr(pol.polqual, pol.polrelid), E'\\x1f') FROM rels r \
            JOIN pg_class c ON c.oid = r.oid JOIN pg_policy pol ON pol.polrelid = r.oid \
            WHERE c.relrowsecurity AND pol.polqual IS NOT NULL AND pol.polcmd IN ('r', '*')){key_check}",
        closure = closure(&text_array(relations)),
        functions = text_array(functions),
        never = text_array(never),
    )
}

/// The question about functions (those a view calls): one row, the names that are not
/// `IMMUTABLE` (or unknown), read by [`functions_verdict`].
pub fn functions_question(functions: &[String]) -> String {
    format!(
        "SELECT (SELECT string_agg(f, ',') FROM unnest({functions}) f \
            WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f) \
               OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f AND p.provolatile <> 'i'))",
        functions = text_array(functions),
    )
}

/// `caller`: who calls the functions asked about (`view`, `row security policy`).
pub fn functions_verdict(answer: &[Option<String>], caller: &str) -> Result<(), String> {
    match answer.first().cloned().flatten().filter(|s| !s.is_empty()) {
        Some(names) => Err(format!("{caller} calls non-IMMUTABLE {names}")),
        None => Ok(()),
    }
}

/// The functions the read's views and row security policies call, by caller, from
/// [`view_definitions`] and [`policy_expressions`]; those a policy may call because
/// the key covers them ([`POLICY_FUNCTIONS_IN_THE_KEY`]) are left out.
pub fn functions_called(
    answer: &[Option<String>],
) -> Result<[(&'static str, Vec<String>); 2], String> {
    let mut by_views = Vec::new();
    for definition in view_definitions(answer).as_deref().unwrap_or("").split(';') {
        match super::read_names(definition) {
            Ok(names) => by_views.extend(names.functions),
            Err(_) if definition.trim().is_empty() => {}
            Err(why) => return Err(format!("view not understood: {why}")),
        }
    }
    let mut by_policies = Vec::new();
    for expression in policy_expressions(answer) {
        let names = super::read_names(&expression)
            .map_err(|why| format!("row security policy not understood: {why}"))?;
        by_policies.extend(
            names
                .functions
                .into_iter()
                .filter(|f| !POLICY_FUNCTIONS_IN_THE_KEY.contains(&f.as_str())),
        );
    }
    Ok([("view", by_views), ("row security policy", by_policies)])
}

/// The definitions of the views among a read's relations (`;`-separated), whose
/// function calls must be checked too: `pg_depend` does not record built-in functions.
pub fn view_definitions(answer: &[Option<String>]) -> Option<String> {
    answer.get(6).cloned().flatten().filter(|s| !s.is_empty())
}

/// The `USING` expressions of the row security policies that apply to the read's
/// tables, each as `SELECT expression`, whose function calls must be checked too.
pub fn policy_expressions(answer: &[Option<String>]) -> Vec<String> {
    answer
        .get(7)
        .cloned()
        .flatten()
        .map(|all| {
            all.split('\u{1f}')
                .filter(|e| !e.trim().is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Functions a row security policy may call although they are not `IMMUTABLE`, because
/// what they return is part of the cache key: `current_setting` reads the session's
/// settings (every `SET` and startup setting is in the key; a session-wide
/// `set_config` pins the session, and a pinned session is not served from the cache),
/// and `current_user` and its kin name the role (in the key; `SET ROLE` is a `SET`).
/// A read calling them itself is still never cached.
pub const POLICY_FUNCTIONS_IN_THE_KEY: &[&str] = &[
    "current_setting",
    "current_user",
    "current_role",
    "session_user",
    "user",
];

/// Whether the catalog confirmed the read's key predicate (see [`read_question`]).
pub fn key_confirmed(answer: &[Option<String>]) -> bool {
    answer.get(8).cloned().flatten().as_deref() == Some("true")
}

/// The tables a read depends on, or why it is not cached.
pub fn read_verdict(answer: &[Option<String>]) -> Result<Vec<u32>, String> {
    let col = |i: usize| answer.get(i).cloned().flatten().filter(|s| !s.is_empty());
    if let Some(names) = col(0) {
        return Err(format!("unknown relation {names}"));
    }
    if let Some(names) = col(1) {
        return Err(format!(
            "temporary, system or foreign table, or sequence {names}"
        ));
    }
    if let Some(names) = col(2) {
        return Err(format!("calls non-IMMUTABLE {names}"));
    }
    if let Some(names) = col(3) {
        return Err(format!("view calls non-IMMUTABLE {names}"));
    }
    if let Some(names) = col(4) {
        return Err(format!("table in cache.never: {names}"));
    }
    Ok(col(5).map(|oids| parse_oids(&oids)).unwrap_or_default())
}

pub fn parse_oids(text: &str) -> Vec<u32> {
    text.split(',')
        .filter_map(|o| o.trim().parse().ok())
        .collect()
}

/// What a committed write invalidated, as its commit hook learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub lsn: Lsn,
    /// Tables changed as a whole; `None`: everything in the database.
    pub tables: Option<Vec<u32>>,
    /// Rows of one key changed (`row_key.rs`).
    pub keys: Vec<KeyedChange>,
}

impl Invalidation {
    pub fn everything(lsn: Lsn) -> Invalidation {
        Invalidation {
            lsn,
            tables: None,
            keys: Vec::new(),
        }
    }
}

/// A list of changes: `*`, or `oid` (table-wide) and `oid:column=value` items.
pub fn parse_changes(list: &str) -> (Option<Vec<u32>>, Vec<KeyedChange>) {
    if list == "*" {
        return (None, Vec::new());
    }
    let mut tables = Vec::new();
    let mut keys = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = match item.split_once(':') {
            None => item.parse().ok().map(|oid| tables.push(oid)),
            Some((oid, key)) => key.split_once('=').and_then(|(column, value)| {
                let table = oid.parse().ok()?;
                keys.push(KeyedChange {
                    table,
                    column: column_hash(column),
                    key: key_hash(column, value),
                });
                Some(())
            }),
        };
        if parsed.is_none() {
            return (None, Vec::new()); // not understood: everything, never less
        }
    }
    (Some(tables), keys)
}

/// Payload of a NOTIFY: `instance|database|lsn|changes` (see [`parse_changes`]).
pub fn parse_payload(payload: &str) -> Option<(u64, String, Invalidation)> {
    let mut parts = payload.splitn(4, '|');
    let instance = parts.next()?.parse().ok()?;
    let database = parts.next()?.to_string();
    let lsn = parse_lsn(parts.next()?).unwrap_or(0);
    let (tables, keys) = parse_changes(parts.next()?);
    Some((instance, database, Invalidation { lsn, tables, keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_payloads() {
        let answer = vec![None, None, None, None, None, Some("16384,16390".into())];
        assert_eq!(read_verdict(&answer), Ok(vec![16384, 16390]));
        let answer = vec![None, None, Some("now".into()), None, None, None];
        assert!(read_verdict(&answer).unwrap_err().contains("now"));
        let (i, db, inv) = parse_payload("7|app|0/16B3748|1,2").unwrap();
        assert_eq!((i, db.as_str()), (7, "app"));
        assert_eq!(inv.tables, Some(vec![1, 2]));
        assert_eq!(parse_payload("7|app|0/1|*").unwrap().2.tables, None);
        assert!(parse_payload("junk").is_none());
        let keyed = parse_payload("7|app|0/1|5,9:aid=12").unwrap().2;
        assert_eq!(keyed.tables, Some(vec![5]));
        assert_eq!(
            keyed.keys,
            vec![KeyedChange {
                table: 9,
                column: column_hash("aid"),
                key: key_hash("aid", "12")
            }]
        );
        assert_eq!(parse_payload("7|app|0/1|5,9:aid").unwrap().2.tables, None);
    }

    #[test]
    fn names_are_quoted() {
        let sql = read_question(&["o'brien".into()], &[], &[], None);
        assert!(sql.contains("'o''brien'"));
    }
}
