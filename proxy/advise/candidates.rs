//! Candidate indexes for one table scan: from the statement's equality, join, range and
//! sort columns, single columns and ordered multi-column keys (equality and join
//! columns first, then one range column, or else the sort columns), as a btree serves
//! them. Candidates an existing btree already covers as a prefix are dropped.

use super::catalog::{covered, IndexInfo};

/// At most this many columns in one candidate.
const MAX_COLUMNS: usize = 3;
/// At most this many candidates per scan (each costs an EXPLAIN with hypopg).
pub const MAX_CANDIDATES: usize = 5;

/// Candidate keys, most specific first.
pub fn candidates(
    equality: &[String],
    join: &[String],
    range: &[String],
    sort: &[String],
    existing: &[IndexInfo],
) -> Vec<Vec<String>> {
    let mut lookup: Vec<String> = Vec::new();
    for c in equality.iter().chain(join) {
        if !lookup.contains(c) {
            lookup.push(c.clone());
        }
    }
    lookup.truncate(MAX_COLUMNS);
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut add = |key: Vec<String>| {
        let mut unique: Vec<String> = Vec::new();
        for c in key {
            if !unique.contains(&c) {
                unique.push(c);
            }
        }
        unique.truncate(MAX_COLUMNS);
        if !unique.is_empty() && !out.contains(&unique) {
            out.push(unique);
        }
    };
    if let Some(first_range) = range.first() {
        let mut key = lookup.clone();
        key.push(first_range.clone());
        add(key);
    } else if !sort.is_empty() && !lookup.is_empty() {
        let mut key = lookup.clone();
        key.extend(sort.iter().cloned());
        add(key);
    }
    if lookup.len() > 1 {
        add(lookup.clone());
    }
    for c in lookup.iter().chain(range.first()).chain(sort.first()) {
        add(vec![c.clone()]);
    }
    out.retain(|key| covered(existing, key).is_none());
    out.truncate(MAX_CANDIDATES);
    out
}

/// `CREATE INDEX CONCURRENTLY ON schema.table (a, b)`.
pub fn create_ddl(schema: &str, table: &str, columns: &[String]) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY ON {}.{} ({})",
        quote(schema),
        quote(table),
        columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The same without CONCURRENTLY, for hypopg.
pub fn hypothetical_ddl(schema: &str, table: &str, columns: &[String]) -> String {
    create_ddl(schema, table, columns).replace(" CONCURRENTLY", "")
}

/// An identifier as PostgreSQL needs it written (lower-case simple names stay bare).
pub fn quote(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if simple {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn equality_then_range_then_sort() {
        let found = candidates(&s(&["a"]), &[], &s(&["b"]), &s(&["c"]), &[]);
        assert_eq!(found[0], s(&["a", "b"]));
        assert!(found.contains(&s(&["a"])));
        let sorted = candidates(&s(&["a"]), &[], &[], &s(&["c"]), &[]);
        assert_eq!(sorted[0], s(&["a", "c"]));
    }

    #[test]
    fn what_an_existing_btree_covers_is_skipped() {
        let existing = vec![IndexInfo {
            schema: "public".into(),
            table: "t".into(),
            name: "t_a_b".into(),
            columns: s(&["a", "b"]),
            unique: false,
            primary: false,
            plain_btree: true,
            bytes: 0,
        }];
        let found = candidates(&s(&["a"]), &[], &s(&["b"]), &[], &existing);
        assert!(
            found
                .iter()
                .all(|k| k != &s(&["a"]) && k != &s(&["a", "b"])),
            "{found:?}"
        );
        assert_eq!(
            create_ddl("public", "Big", &s(&["a"])),
            "CREATE INDEX CONCURRENTLY ON public.\"Big\" (a)"
        );
    }
}
