//! Planning one captured statement with `EXPLAIN (FORMAT JSON, VERBOSE)`, never running
//! it. A statement with `$n` parameters gets its generic plan: `PREPARE` under
//! `plan_cache_mode = force_generic_plan`, `EXPLAIN EXECUTE` with NULLs, inside a
//! read-only transaction that is rolled back, then `DEALLOCATE` of that one name
//! (never `DEALLOCATE ALL`). Only reads are planned.

use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::connection::bounded;
use super::error::AdviseError;

const STATEMENT: &str = "pgwarden_advise_plan";

/// A plan's root cost and JSON tree.
#[derive(Debug, Clone)]
pub struct Plan {
    pub total_cost: f64,
    pub root: Value,
}

/// Whether the advisor may plan `sql`: one read (`SELECT`, `WITH ... SELECT`,
/// `TABLE`, `VALUES`) with nothing that writes.
pub fn is_plannable_read(sql: &str) -> bool {
    plannable_read_lowered(sql).is_some()
}

/// Whether the index advisor should plan `sql`: [`is_plannable_read`], and it may
/// scan a table ([`names_a_table`]); the text is lowercased once for both.
pub fn is_plannable_table_read(sql: &str) -> bool {
    plannable_read_lowered(sql).is_some_and(|lower| names_a_table(&lower))
}

/// The trimmed text in lower case, when it is a plannable read.
fn plannable_read_lowered(sql: &str) -> Option<String> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() || trimmed.contains(';') {
        return None;
    }
    let lower = trimmed.to_ascii_lowercase();
    let first = lower.split_whitespace().next().unwrap_or("");
    let reads = matches!(first, "select" | "with" | "table" | "values" | "(");
    let writes = [
        "insert ",
        "update ",
        "delete ",
        "merge ",
        " for update",
        " for share",
        " into ",
        "nextval",
        "setval",
        "pg_advisory",
    ]
    .iter()
    .any(|w| lower.contains(w));
    (reads && !writes).then_some(lower)
}

/// Whether a statement (lowercased, trimmed at its start) may scan a table: it names
/// one with `FROM` (anywhere, subqueries included) or is `TABLE name`. A statement that
/// cannot has no scan an index could help, so the advisor does not plan it. That also
/// spares it the plans of `SELECT repeat('x', 16 * 1024 * 1024)` and the like, where
/// the planner folds the call into its 16 MiB result and EXPLAIN sends all of it. Errs
/// toward yes: `from` is looked for as bytes, so `from_date` counts too.
fn names_a_table(lower: &str) -> bool {
    lower.starts_with("table") || lower.contains("from")
}

/// The highest `$n` in `sql` outside quotes (0 when none).
pub fn parameter_count(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut max = 0usize;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'$' => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if end > start && end - start < 6 {
                    max = max.max(sql[start..end].parse().unwrap_or(0));
                }
                i = end.max(i + 1);
                continue;
            }
            None => {}
        }
        i += 1;
    }
    max
}

/// Plans `sql` on `client`.
pub async fn explain(client: &Client, sql: &str) -> Result<Plan, AdviseError> {
    let params = parameter_count(sql);
    bounded("BEGIN READ ONLY", client.batch_execute("BEGIN READ ONLY")).await?;
    let planned = async {
        if params == 0 {
            return explain_json(client, &format!("EXPLAIN (FORMAT JSON, VERBOSE) {sql}")).await;
        }
        bounded(
            "SET LOCAL plan_cache_mode",
            client.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan"),
        )
        .await?;
        bounded(
            "PREPARE",
            client.batch_execute(&format!("PREPARE {STATEMENT} AS {sql}")),
        )
        .await?;
        let nulls = vec!["NULL"; params].join(", ");
        explain_json(
            client,
            &format!("EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {STATEMENT}({nulls})"),
        )
        .await
    }
    .await;
    let rolled_back = bounded("ROLLBACK", client.batch_execute("ROLLBACK")).await;
    if params > 0 {
        // PREPARE outlives the rollback; this is our own name on our own connection.
        let _ = bounded(
            "DEALLOCATE",
            client.batch_execute(&format!("DEALLOCATE {STATEMENT}")),
        )
        .await;
    }
    let plan = planned?;
    rolled_back?;
    Ok(plan)
}

/// The longest plan text the advisor parses. A plan is a few KiB; one larger than this
/// holds a constant the planner folded (a large `repeat(...)`), and parsing it would
/// hold it again in the JSON tree, on the thread that may also serve clients.
pub const MAX_PLAN_BYTES: usize = 1 << 20;

async fn explain_json(client: &Client, sql: &str) -> Result<Plan, AdviseError> {
    let messages = bounded("EXPLAIN", client.simple_query(sql)).await?;
    let text = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .ok_or_else(|| AdviseError::Plan("EXPLAIN returned no row".into()))?;
    parse(within_limit(text)?)
}

/// `text`, if the advisor reads a plan that long.
fn within_limit(text: &str) -> Result<&str, AdviseError> {
    if text.len() > MAX_PLAN_BYTES {
        return Err(AdviseError::PlanTooLarge(text.len()));
    }
    Ok(text)
}

/// The root of `EXPLAIN (FORMAT JSON)` output.
pub fn parse(text: &str) -> Result<Plan, AdviseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| AdviseError::Plan(e.to_string()))?;
    let root = value
        .get(0)
        .and_then(|v| v.get("Plan"))
        .cloned()
        .ok_or_else(|| AdviseError::Plan("no Plan".into()))?;
    let total_cost = root
        .get("Total Cost")
        .and_then(Value::as_f64)
        .ok_or_else(|| AdviseError::Plan("no Total Cost".into()))?;
    Ok(Plan { total_cost, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may_scan_a_table(sql: &str) -> bool {
        names_a_table(&sql.trim_start().to_ascii_lowercase())
    }

    #[test]
    fn statements_that_name_no_table_are_not_planned() {
        assert!(!may_scan_a_table("SELECT repeat('x', 16 * 1024 * 1024)"));
        assert!(!may_scan_a_table("select now(), 1 + $1"));
        assert!(!may_scan_a_table("VALUES (1), (2)"));
        assert!(may_scan_a_table("SELECT id FROM t WHERE u = $1"));
        assert!(may_scan_a_table("select (select max(a) from t)"));
        assert!(may_scan_a_table(
            "WITH x AS (SELECT * FROM t) SELECT * FROM x"
        ));
        assert!(may_scan_a_table("TABLE t"));
        assert!(may_scan_a_table("  table t"));
    }

    #[test]
    fn a_plan_past_the_limit_is_refused_before_it_is_parsed() {
        let small = r#"[{"Plan": {"Node Type": "Result", "Total Cost": 0.01}}]"#;
        assert_eq!(within_limit(small).unwrap(), small);
        let folded = format!(
            r#"[{{"Plan": {{"Node Type": "Result", "Output": ["'{}'::text"]}}}}]"#,
            "x".repeat(MAX_PLAN_BYTES)
        );
        match within_limit(&folded) {
            Err(AdviseError::PlanTooLarge(bytes)) => assert_eq!(bytes, folded.len()),
            other => panic!("a {} byte plan was read: {other:?}", folded.len()),
        }
    }

    #[test]
    fn only_single_reads_are_planned() {
        assert!(is_plannable_read("SELECT * FROM t WHERE a = $1"));
        assert!(is_plannable_read("with x as (select 1) select * from x;"));
        assert!(!is_plannable_read("UPDATE t SET a = 1"));
        assert!(!is_plannable_read(
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"
        ));
        assert!(!is_plannable_read("SELECT * FROM t FOR UPDATE"));
        assert!(!is_plannable_read("SELECT 1; DROP TABLE t"));
        assert!(!is_plannable_read("SELECT nextval('s')"));
    }

    #[test]
    fn the_index_advisor_plans_reads_that_may_scan_a_table() {
        for sql in [
            "SELECT * FROM t WHERE a = $1",
            "  table t;",
            "with x as (select 1) select * from x;",
            "SELECT repeat('x', 16 * 1024 * 1024)",
            "VALUES (1), (2)",
            "UPDATE t SET a = 1 FROM u",
            "SELECT * FROM t FOR UPDATE",
            "SELECT 1 FROM t; DROP TABLE t",
            "",
        ] {
            assert_eq!(
                is_plannable_table_read(sql),
                is_plannable_read(sql) && may_scan_a_table(sql),
                "{sql}"
            );
        }
        assert!(is_plannable_table_read("SELECT * FROM t WHERE a = $1"));
        assert!(!is_plannable_table_read(
            "SELECT repeat('x', 16 * 1024 * 1024)"
        ));
    }

    #[test]
    fn counts_parameters_outside_quotes() {
        assert_eq!(
            parameter_count("SELECT * FROM t WHERE a = $1 AND b > $2"),
            2
        );
        assert_eq!(parameter_count("SELECT '$5' FROM t WHERE a = $1"), 1);
        assert_eq!(parameter_count("SELECT 1"), 0);
    }
}
