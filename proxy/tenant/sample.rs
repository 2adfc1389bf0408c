//! A small multi-tenant catalog with no database behind it: scoped `orders`,
//! `customers` and `billing.invoices`, global `products`, and a view `summary` over
//! `orders` without the tenant column. The guard's unit tests decide against it, and
//! so does the rewriter's fuzz target (`crate::fuzzing`).

use std::collections::HashSet;

use super::catalog::{Catalog, RelationRow};
use crate::config::TenancyConfig;

#[doc(hidden)]
pub fn sample_catalog(config: &TenancyConfig) -> Catalog {
    let row = |schema: &str, name: &str, has_column: bool, columns: &[&str]| RelationRow {
        schema: schema.into(),
        name: name.into(),
        has_column,
        columns: columns.iter().map(|c| c.to_string()).collect(),
    };
    Catalog::build(
        config,
        vec![
            row(
                "public",
                "orders",
                true,
                &["id", "tenant_id", "customer_id", "total"],
            ),
            row("public", "customers", true, &["id", "tenant_id", "name"]),
            row("public", "products", false, &["id", "name"]),
            row("public", "summary", false, &["n"]),
            row("billing", "invoices", true, &["id", "tenant_id", "amount"]),
        ],
        vec![(
            ("public".into(), "summary".into()),
            ("public".into(), "orders".into()),
        )],
        HashSet::from(["public".into(), "billing".into(), "pg_catalog".into()]),
        vec![
            ("pg_catalog".into(), "count".into()),
            ("pg_catalog".into(), "sum".into()),
            ("pg_catalog".into(), "now".into()),
            ("pg_catalog".into(), "query_to_xml".into()),
            ("public".into(), "leak_everything".into()),
        ],
    )
}
