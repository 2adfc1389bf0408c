//! Indexes that cost writes and serve nothing: unused ones (`idx_scan = 0` on every
//! node since the statistics were reset, on a table the workload reads) and ones
//! another btree makes redundant (the same key, or a prefix of its key). Unique and
//! primary-key indexes enforce constraints and are never called unused; a unique index
//! is redundant only to another unique index on the same columns.

use std::collections::{HashMap, HashSet};

use super::advisory::{Advisory, AdvisoryKind, IndexDetails};
use super::candidates::quote;
use super::catalog::IndexInfo;

fn drop_ddl(index: &IndexInfo) -> String {
    format!(
        "DROP INDEX CONCURRENTLY {}.{}",
        quote(&index.schema),
        quote(&index.name)
    )
}

fn advisory(
    kind: AdvisoryKind,
    database: &str,
    index: &IndexInfo,
    summary: String,
    covered_by: Option<String>,
    now: u64,
) -> Advisory {
    Advisory {
        kind,
        database: database.to_string(),
        table: Some(format!("{}.{}", quote(&index.schema), quote(&index.table))),
        columns: index.columns.clone(),
        ddl: Some(drop_ddl(index)),
        fingerprints: Vec::new(),
        score: 0.0,
        confirmed: true,
        summary,
        index: Some(IndexDetails {
            index_name: Some(index.name.clone()),
            covered_by,
            index_bytes: Some(index.bytes),
            ..IndexDetails::default()
        }),
        n_plus_one: None,
        first_seen: now,
        last_confirmed: now,
    }
}

/// Unused indexes: `scans` sums `idx_scan` over every node by (schema, index);
/// `workload_tables` are table names the statistics show statements reading.
pub fn unused(
    database: &str,
    indexes: &[IndexInfo],
    scans: &HashMap<(String, String), i64>,
    workload_tables: &HashSet<String>,
    now: u64,
) -> Vec<Advisory> {
    indexes
        .iter()
        .filter(|i| !i.unique && !i.primary)
        .filter(|i| workload_tables.contains(&i.table))
        .filter(|i| scans.get(&(i.schema.clone(), i.name.clone())) == Some(&0))
        .map(|i| {
            advisory(
                AdvisoryKind::UnusedIndex,
                database,
                i,
                format!(
                    "index {} on {} ({}) has not been scanned since the statistics were reset ({} bytes)",
                    i.name,
                    i.table,
                    i.columns.join(", "),
                    i.bytes
                ),
                None,
                now,
            )
        })
        .collect()
}

/// Indexes whose key another plain btree of the same table starts with.
pub fn duplicates(database: &str, indexes: &[IndexInfo], now: u64) -> Vec<Advisory> {
    let mut out = Vec::new();
    for (i, a) in indexes.iter().enumerate() {
        if !a.plain_btree || a.primary || a.columns.is_empty() {
            continue;
        }
        let covering = indexes.iter().enumerate().find(|(j, b)| {
            if *j == i || !b.plain_btree || b.schema != a.schema || b.table != a.table {
                return false;
            }
            if b.columns.len() < a.columns.len() || b.columns[..a.columns.len()] != a.columns[..] {
                return false;
            }
            let same = b.columns.len() == a.columns.len();
            if a.unique {
                // Only an identical unique index makes a unique one redundant.
                return same && b.unique && (b.primary || *j < i);
            }
            // Identical non-unique twins: keep the first by name.
            !same || b.unique || *j < i
        });
        if let Some((_, b)) = covering {
            out.push(advisory(
                AdvisoryKind::DuplicateIndex,
                database,
                a,
                format!(
                    "index {} on {} ({}) is redundant: {} ({}) covers it ({} bytes)",
                    a.name,
                    a.table,
                    a.columns.join(", "),
                    b.name,
                    b.columns.join(", "),
                    a.bytes
                ),
                Some(b.name.clone()),
                now,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(name: &str, columns: &[&str], unique: bool) -> IndexInfo {
        IndexInfo {
            schema: "public".into(),
            table: "t".into(),
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            unique,
            primary: false,
            plain_btree: true,
            bytes: 8192,
        }
    }

    #[test]
    fn prefix_and_twin_indexes_are_redundant() {
        let list = vec![
            index("t_a", &["a"], false),
            index("t_a_b", &["a", "b"], false),
            index("t_c", &["c"], false),
            index("t_c_again", &["c"], false),
            index("t_d_unique", &["d"], true),
            index("t_d_e", &["d", "e"], false),
        ];
        let found: Vec<String> = duplicates("app", &list, 0)
            .into_iter()
            .map(|a| a.index.unwrap().index_name.unwrap())
            .collect();
        assert_eq!(found, vec!["t_a", "t_c_again"]);
    }

    #[test]
    fn unused_needs_zero_scans_and_a_workload_table() {
        let list = vec![index("t_a", &["a"], false), index("t_u", &["u"], true)];
        let scans = HashMap::from([
            (("public".to_string(), "t_a".to_string()), 0),
            (("public".to_string(), "t_u".to_string()), 0),
        ]);
        let tables = HashSet::from(["t".to_string()]);
        let found = unused("app", &list, &scans, &tables, 0);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].ddl.as_deref(),
            Some("DROP INDEX CONCURRENTLY public.t_a")
        );
        assert!(unused("app", &list, &scans, &HashSet::new(), 0).is_empty());
    }
}
