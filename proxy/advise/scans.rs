//! Reading a JSON plan: the scans that an index could help (sequential scans, and index
//! scans that still filter), with the table they read and the rows the planner
//! expects.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub schema: String,
    pub table: String,
    pub alias: String,
    pub node: String,
    /// Rows the planner expects this scan to return.
    pub rows: f64,
    pub filtered: bool,
}

/// Every scan of a table in the plan that reads more than an index would: sequential
/// scans, and index or bitmap scans with a `Filter`.
pub fn wasteful_scans(root: &Value) -> Vec<Scan> {
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

fn walk(node: &Value, out: &mut Vec<Scan>) {
    let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or("");
    let filtered = node.get("Filter").is_some();
    let wasteful = kind == "Seq Scan"
        || (filtered && matches!(kind, "Index Scan" | "Index Only Scan" | "Bitmap Heap Scan"));
    if wasteful {
        if let Some(table) = node.get("Relation Name").and_then(Value::as_str) {
            out.push(Scan {
                schema: node
                    .get("Schema")
                    .and_then(Value::as_str)
                    .unwrap_or("public")
                    .to_string(),
                table: table.to_string(),
                alias: node
                    .get("Alias")
                    .and_then(Value::as_str)
                    .unwrap_or(table)
                    .to_string(),
                node: kind.to_string(),
                rows: node.get("Plan Rows").and_then(Value::as_f64).unwrap_or(0.0),
                filtered,
            });
        }
    }
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            walk(child, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sequential_and_filtering_scans() {
        let plan: Value = serde_json::from_str(
            r#"{"Node Type": "Sort", "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "orders", "Schema": "public",
                 "Alias": "o", "Plan Rows": 10, "Filter": "(o.customer_id = 5)"},
                {"Node Type": "Index Scan", "Relation Name": "customers", "Schema": "public",
                 "Alias": "c", "Plan Rows": 1, "Index Name": "customers_pkey"}
            ]}"#,
        )
        .unwrap();
        let scans = wasteful_scans(&plan);
        assert_eq!(scans.len(), 1);
        assert_eq!(
            (scans[0].table.as_str(), scans[0].alias.as_str()),
            ("orders", "o")
        );
        assert!(scans[0].filtered);
    }
}
