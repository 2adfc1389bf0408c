//! The catalog's word on a statement's names, asked on the session's own server
//! connection (so its `search_path` resolves the names): table OIDs (views expanded to
//! what they read, partitions to their parents and children), temporary and system
//! tables, and whether every function called is `IMMUTABLE` in `pg_proc`.
//! This file only builds the SQL and reads its one-row answer.

use crate::route::{parse_lsn, Lsn};

/// The LISTEN/NOTIFY channel invalidations travel on.
pub const CHANNEL: &str = "pgwarden_cache";

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

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn text_array<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(","))
}

/// `roots(n, oid)` from names, and `rels(oid)` closed over what views read and over
/// partition/inheritance parents and children.
fn closure(names: &str) -> String {
    format!(
        "WITH RECURSIVE roots AS (SELECT n, to_regclass(n)::oid AS oid FROM unnest({names}) AS n), \
         rels(oid) AS (SELECT oid FROM roots WHERE oid IS NOT NULL \
           UNION SELECT x.oid FROM rels r CROSS JOIN LATERAL ( \
             SELECT d.refobjid AS oid FROM pg_rewrite rw JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass \
               AND d.objid = rw.oid AND d.refclassid = 'pg_class'::regclass WHERE rw.ev_class = r.oid AND d.refobjid <> r.oid \
             UNION ALL SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = r.oid \
             UNION ALL SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = r.oid) x)"
    )
}

/// The question about a read: one row of six text columns, read by [`read_verdict`].
pub fn read_question(relations: &[String], functions: &[String], never: &[String]) -> String {
    format!(
        "{closure} SELECT \
         (SELECT string_agg(n, ',') FROM roots WHERE oid IS NULL), \
         (SELECT string_agg(c.relname, ',') FROM rels r JOIN pg_class c ON c.oid = r.oid \
            JOIN pg_namespace s ON s.oid = c.relnamespace \
            WHERE c.relpersistence = 't' OR s.nspname IN ('pg_catalog', 'information_schema') OR s.nspname LIKE 'pg\\_%'), \
         (SELECT string_agg(f, ',') FROM unnest({functions}) f \
            WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f) \
               OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = f AND p.provolatile <> 'i')), \
         (SELECT string_agg(DISTINCT p.proname, ',') FROM rels r JOIN pg_rewrite rw ON rw.ev_class = r.oid \
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid AND d.refclassid = 'pg_proc'::regclass \
            JOIN pg_proc p ON p.oid = d.refobjid WHERE p.provolatile <> 'i'), \
         (SELECT string_agg(c.relname, ',') FROM rels r JOIN pg_class c ON c.oid = r.oid \
            WHERE r.oid IN (SELECT to_regclass(x)::oid FROM unnest({never}) x)), \
         (SELECT string_agg(DISTINCT oid::text, ',') FROM rels), \
         (SELECT string_agg(pg_get_viewdef(r.oid), ';') FROM rels r JOIN pg_class c ON c.oid = r.oid WHERE c.relkind IN ('v', 'm'))",
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

pub fn functions_verdict(answer: &[Option<String>]) -> Result<(), String> {
    match answer.first().cloned().flatten().filter(|s| !s.is_empty()) {
        Some(names) => Err(format!("view calls non-IMMUTABLE {names}")),
        None => Ok(()),
    }
}

/// The definitions of the views among a read's relations (`;`-separated), whose
/// function calls must be checked too: `pg_depend` does not record built-in functions.
pub fn view_definitions(answer: &[Option<String>]) -> Option<String> {
    answer.get(6).cloned().flatten().filter(|s| !s.is_empty())
}

/// The tables a read depends on, or why it is not cached.
pub fn read_verdict(answer: &[Option<String>]) -> Result<Vec<u32>, String> {
    let col = |i: usize| answer.get(i).cloned().flatten().filter(|s| !s.is_empty());
    if let Some(names) = col(0) {
        return Err(format!("unknown relation {names}"));
    }
    if let Some(names) = col(1) {
        return Err(format!("temporary or system table {names}"));
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
    /// `None`: everything in the database.
    pub tables: Option<Vec<u32>>,
}

/// Payload of a NOTIFY: `instance|database|lsn|oid,oid,...` (or `*`).
pub fn parse_payload(payload: &str) -> Option<(u64, String, Invalidation)> {
    let mut parts = payload.splitn(4, '|');
    let instance = parts.next()?.parse().ok()?;
    let database = parts.next()?.to_string();
    let lsn = parse_lsn(parts.next()?).unwrap_or(0);
    let tables = match parts.next()? {
        "*" => None,
        oids => Some(parse_oids(oids)),
    };
    Some((instance, database, Invalidation { lsn, tables }))
}

/// The commit hook of a transaction that wrote: resolves the written names to OIDs,
/// decides "everything" when a called function is `VOLATILE`, reads the commit
/// position, and (with `notify`) tells the other instances, in one round trip.
/// `extra` adds columns (the read-your-writes NOTIFY). Answer: lsn, oids or `*`, ...
pub fn write_question(
    instance: u64,
    database: &str,
    relations: impl IntoIterator<Item = impl AsRef<str>>,
    functions: impl IntoIterator<Item = impl AsRef<str>>,
    everything: bool,
    notify: bool,
    extra: &str,
) -> String {
    let relations: Vec<String> = relations
        .into_iter()
        .map(|r| r.as_ref().to_string())
        .collect();
    let functions: Vec<String> = functions
        .into_iter()
        .map(|f| f.as_ref().to_string())
        .filter(|f| !NO_TABLE_WRITES.contains(&f.as_str()))
        .collect();
    let oids = if everything {
        "'*'".to_string()
    } else {
        format!(
            "CASE WHEN EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = ANY({functions}) AND p.provolatile = 'v') THEN '*' \
             ELSE (SELECT CASE WHEN length(x) > 7000 THEN '*' ELSE x END FROM \
                   (SELECT coalesce(string_agg(DISTINCT oid::text, ','), '') AS x FROM rels) agg) END",
            functions = text_array(&functions)
        )
    };
    let notify = if notify {
        format!(
            ", pg_notify('{CHANNEL}', {prefix} || w.lsn || '|' || w.oids)",
            prefix = quote_literal(&format!("{instance}|{database}|"))
        )
    } else {
        String::new()
    };
    format!(
        "{closure}, w AS (SELECT pg_current_wal_insert_lsn()::text AS lsn, {oids} AS oids) \
         SELECT w.lsn, w.oids{notify}{extra} FROM w",
        closure = closure(&text_array(&relations)),
    )
}

/// Reads the commit hook's answer.
pub fn write_answer(answer: &[Option<String>]) -> Option<Invalidation> {
    let lsn = parse_lsn(answer.first()?.as_deref()?)?;
    let tables = match answer.get(1)?.as_deref()? {
        "*" => None,
        oids => Some(parse_oids(oids)),
    };
    Some(Invalidation { lsn, tables })
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
        assert_eq!(
            write_answer(&[Some("0/10".into()), Some("*".into())]),
            Some(Invalidation {
                lsn: 16,
                tables: None
            })
        );
    }

    #[test]
    fn names_are_quoted() {
        let sql = read_question(&["o'brien".into()], &[], &[]);
        assert!(sql.contains("'o''brien'"));
    }
}
