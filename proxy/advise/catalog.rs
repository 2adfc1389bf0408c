//! What the advisors read from PostgreSQL's catalog and statistics views: table sizes
//! and columns, existing indexes with their key columns, index scan counts, table
//! write counts, and whether hypopg is installed. Read-only queries on the advisor's
//! own connections.

use tokio_postgres::Client;

use super::connection::bounded;
use super::error::AdviseError;

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub rows: f64,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexInfo {
    pub schema: String,
    pub table: String,
    pub name: String,
    /// Key columns in order (INCLUDE columns left out).
    pub columns: Vec<String>,
    pub unique: bool,
    pub primary: bool,
    /// A plain btree on columns: no expressions, no predicate.
    pub plain_btree: bool,
    pub bytes: u64,
}

pub async fn hypopg_installed(client: &Client) -> Result<bool, AdviseError> {
    let row = bounded(
        "looking for hypopg",
        client.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'hypopg')",
            &[],
        ),
    )
    .await?;
    Ok(row.get(0))
}

pub async fn table(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>, AdviseError> {
    let rows = bounded(
        "reading the table",
        client.query(
            "SELECT c.reltuples::float8,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                          ORDER BY a.attnum)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        ),
    )
    .await?;
    Ok(rows.first().map(|row| TableInfo {
        rows: row.get::<_, f64>(0).max(0.0),
        columns: row.get(1),
    }))
}

/// Indexes of user tables; of one table when `only` is given.
pub async fn indexes(
    client: &Client,
    only: Option<(&str, &str)>,
) -> Result<Vec<IndexInfo>, AdviseError> {
    let (schema, table) = only.unwrap_or(("", ""));
    let rows = bounded(
        "reading indexes",
        client.query(
            "SELECT n.nspname::text, c.relname::text, ic.relname::text,
                    ARRAY(SELECT a.attname::text
                          FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE k.ord <= i.indnkeyatts ORDER BY k.ord),
                    i.indisunique, i.indisprimary,
                    am.amname = 'btree' AND i.indexprs IS NULL AND i.indpred IS NULL
                        AND i.indisvalid AND NOT (0 = ANY (i.indkey::int2[])),
                    pg_relation_size(i.indexrelid)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_am am ON am.oid = ic.relam
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
               AND ($1 = '' OR (n.nspname = $1 AND c.relname = $2))
             ORDER BY 1, 2, 3",
            &[&schema, &table],
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| IndexInfo {
            schema: row.get(0),
            table: row.get(1),
            name: row.get(2),
            columns: row.get(3),
            unique: row.get(4),
            primary: row.get(5),
            plain_btree: row.get(6),
            bytes: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
        })
        .collect())
}

/// `(schema, index) → idx_scan` on one node.
pub async fn index_scans(client: &Client) -> Result<Vec<(String, String, i64)>, AdviseError> {
    let rows = bounded(
        "reading index scans",
        client.query(
            "SELECT schemaname::text, indexrelname::text, idx_scan FROM pg_stat_user_indexes",
            &[],
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Rows inserted, updated and deleted in a table, and the seconds the counters cover.
pub async fn writes(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<(f64, f64)>, AdviseError> {
    let rows = bounded(
        "reading table writes",
        client.query(
            "SELECT (s.n_tup_ins + s.n_tup_upd + s.n_tup_del)::float8,
                    EXTRACT(epoch FROM now() - coalesce(
                        (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
                        pg_postmaster_start_time()))::float8
             FROM pg_stat_user_tables s WHERE s.schemaname = $1 AND s.relname = $2",
            &[&schema, &table],
        ),
    )
    .await?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

/// Whether `columns` is a prefix of (or equal to) the key of an existing plain btree.
pub fn covered(indexes: &[IndexInfo], columns: &[String]) -> Option<String> {
    indexes
        .iter()
        .filter(|i| i.plain_btree && i.columns.len() >= columns.len())
        .find(|i| i.columns[..columns.len()] == *columns)
        .map(|i| i.name.clone())
}
