//! Decisions on a small catalog: what is rewritten into what, and what is refused.
//! The end-to-end proof (against PostgreSQL, with other tenants' rows present) is
//! `tests/tenant_guard.rs`.

use super::sample::sample_catalog;
use super::*;

fn decide_as(mode: TenancyMode, tenant: Option<&str>, sql: &str) -> Decision {
    let config = TenancyConfig::default();
    decide(&config, &sample_catalog(&config), mode, tenant, sql)
}

fn rewritten(sql: &str) -> String {
    match decide_as(TenancyMode::Rewrite, Some("1"), sql) {
        Decision::Rewritten { sql, .. } => sql.to_string(),
        other => panic!("{sql}: expected a rewrite, got {other:?}"),
    }
}

fn rejected(mode: TenancyMode, sql: &str) -> RejectionKind {
    match decide_as(mode, Some("1"), sql) {
        Decision::Reject(r) => r.kind,
        other => panic!("{sql}: expected a rejection, got {other:?}"),
    }
}

#[test]
fn every_reference_is_limited_to_the_tenant() {
    // Plain FROM items take a predicate (in ON for the nullable side of LEFT JOIN)...
    assert_eq!(
        rewritten("SELECT * FROM orders o WHERE o.total > 5 OR 1=1"),
        "SELECT * FROM orders o WHERE (o.total > 5 OR 1 = 1) AND o.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("SELECT c.name FROM customers c LEFT JOIN orders ON orders.customer_id = c.id"),
        "SELECT c.name FROM customers c LEFT JOIN orders ON orders.customer_id = c.id AND orders.\"tenant_id\" = 1 WHERE c.\"tenant_id\" = 1"
    );
    // ...everything else becomes a filtered derived table.
    assert_eq!(
        rewritten("SELECT * FROM customers c RIGHT JOIN orders o USING (id)"),
        "SELECT * FROM (SELECT * FROM customers WHERE \"tenant_id\" = 1) c RIGHT JOIN (SELECT * FROM orders WHERE \"tenant_id\" = 1) o USING(id)"
    );
    assert_eq!(
        rewritten("SELECT * FROM orders AS o(a, b)"),
        "SELECT * FROM (SELECT * FROM orders WHERE \"tenant_id\" = 1) AS o (a, b)"
    );
    let sql = rewritten(
        "WITH t AS (SELECT * FROM billing.invoices) SELECT (SELECT count(*) FROM orders), * FROM t \
         WHERE EXISTS (SELECT 1 FROM customers) UNION SELECT 1, 2, 3, 4 FROM products",
    );
    assert_eq!(sql.matches("\"tenant_id\" = 1").count(), 3, "{sql}");
    assert!(sql.contains("FROM products"), "{sql}");
}

#[test]
fn only_ctes_and_qualified_references_keep_their_meaning() {
    assert_eq!(
        rewritten("SELECT * FROM ONLY orders"),
        "SELECT * FROM ONLY orders WHERE orders.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("SELECT * FROM customers FULL JOIN ONLY orders ON true"),
        "SELECT * FROM (SELECT * FROM customers WHERE \"tenant_id\" = 1) AS customers FULL JOIN (SELECT * FROM ONLY orders WHERE \"tenant_id\" = 1) AS orders ON true"
    );
    assert_eq!(
        rewritten("DELETE FROM ONLY orders WHERE id = 1"),
        "DELETE FROM ONLY orders WHERE id = 1 AND orders.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("SELECT public.orders.id FROM public.orders"),
        "SELECT public.orders.id FROM public.orders WHERE orders.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("SELECT public.orders.id FROM products FULL JOIN public.orders ON true"),
        "SELECT orders.id FROM products FULL JOIN (SELECT * FROM public.orders WHERE \"tenant_id\" = 1) AS orders ON true"
    );
    // A CTE named like a table is the CTE in the query, the table in its own body.
    assert_eq!(
        rewritten("WITH orders AS (SELECT id FROM orders) SELECT * FROM orders"),
        "WITH orders AS (SELECT id FROM orders WHERE orders.\"tenant_id\" = 1) SELECT * FROM orders"
    );
    assert_eq!(
        decide_as(
            TenancyMode::Rewrite,
            Some("1"),
            "WITH orders AS (SELECT 7 AS id) SELECT * FROM orders"
        ),
        Decision::Pass
    );
    let sql = rewritten(
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t, customers",
    );
    assert!(
        sql.ends_with("FROM t, customers WHERE customers.\"tenant_id\" = 1"),
        "{sql}"
    );
    assert!(rewritten("SELECT ARRAY(SELECT id FROM orders)").contains("\"tenant_id\" = 1"));
}

#[test]
fn the_added_predicate_is_never_inside_the_clients_or() {
    // Comparisons and ANDs bind tighter than the added AND: no parentheses needed.
    assert_eq!(
        rewritten("SELECT * FROM orders WHERE id = 1 AND total > 2"),
        "SELECT * FROM orders WHERE id = 1 AND total > 2 AND orders.\"tenant_id\" = 1"
    );
    // Everything else is parenthesized: OR, NOT, IS, IN, LIKE, and a comparison whose
    // operand the client parenthesized keeps its own parentheses.
    for (sql, kept) in [
        (
            "SELECT * FROM orders WHERE id = 1 OR true",
            "(id = 1 OR true)",
        ),
        (
            "SELECT * FROM orders WHERE NOT id = 1 OR true",
            "(NOT id = 1 OR true)",
        ),
        (
            "SELECT * FROM orders WHERE id = 1 AND total = 2 OR true",
            "(id = 1 AND total = 2 OR true)",
        ),
        (
            "SELECT * FROM orders WHERE id IN (1, 2) OR true",
            "(id IN (1, 2) OR true)",
        ),
        (
            "SELECT * FROM orders WHERE note LIKE 'a%' OR true",
            "(note LIKE 'a%' OR true)",
        ),
        (
            "SELECT * FROM orders WHERE id = (1 OR true)",
            "id = (1 OR true) AND",
        ),
        (
            "SELECT * FROM orders WHERE true = (id = 1 OR true)",
            "true = (id = 1 OR true) AND",
        ),
    ] {
        let text = rewritten(sql);
        assert!(text.contains(kept), "{sql}: {text}");
        assert!(
            text.ends_with("AND orders.\"tenant_id\" = 1"),
            "{sql}: {text}"
        );
        // The tenant conjunct is at the top of WHERE: the enforce walk accepts the text.
        assert_eq!(
            decide_as(TenancyMode::Enforce, Some("1"), &text),
            Decision::Pass,
            "{text}"
        );
    }
}

#[test]
fn rewrite_mode_runs_reads_already_pinned_to_the_tenant_as_written() {
    let rewrite = TenancyMode::Rewrite;
    for sql in [
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id \
         WHERE o.tenant_id = 1 AND c.tenant_id = 1 AND o.id = 5",
        "SELECT name FROM products",
        "SELECT (SELECT count(*) FROM orders WHERE tenant_id = 1), 2",
    ] {
        assert_eq!(decide_as(rewrite, Some("1"), sql), Decision::Pass, "{sql}");
    }
    // One table left unpinned, a predicate that does not pin (OR), a parameter to
    // check at Bind, another tenant: rewritten, as before.
    for sql in [
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.tenant_id = 1",
        "SELECT * FROM orders WHERE tenant_id = 1 OR id = 5",
        "SELECT * FROM orders WHERE tenant_id = $1",
        "SELECT * FROM orders WHERE tenant_id = 2",
    ] {
        let decision = decide_as(rewrite, Some("1"), sql);
        assert!(
            matches!(&decision, Decision::Rewritten { sql: text, .. } if text.contains("\"tenant_id\" = 1")),
            "{sql}: {decision:?}"
        );
    }
    // Writes are rewritten even when pinned: a data-modifying WITH, and an INSERT
    // without a column list (the rewrite names the tenant column).
    let sql = "WITH w AS (UPDATE orders SET total = 0 WHERE tenant_id = 1 RETURNING id) \
               SELECT * FROM w";
    assert!(
        matches!(
            decide_as(rewrite, Some("1"), sql),
            Decision::Rewritten { .. }
        ),
        "{sql}"
    );
    assert!(rewritten("INSERT INTO orders VALUES (5, 1, 3, 9)").contains("\"tenant_id\""));
}

#[test]
fn writes_are_limited_and_filled() {
    assert_eq!(
        rewritten("UPDATE orders SET total = 0 WHERE id = 7 OR true"),
        "UPDATE orders SET total = 0 WHERE (id = 7 OR true) AND orders.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("DELETE FROM orders o USING customers c WHERE o.customer_id = c.id"),
        "DELETE FROM orders o USING (SELECT * FROM customers WHERE \"tenant_id\" = 1) c WHERE o.customer_id = c.id AND o.\"tenant_id\" = 1"
    );
    assert_eq!(
        rewritten("INSERT INTO orders (id, total) VALUES (1, 2), (3, 4)"),
        "INSERT INTO orders (id, total, \"tenant_id\") VALUES (1, 2, 1), (3, 4, 1)"
    );
    assert_eq!(
        rewritten("INSERT INTO orders VALUES (5, 1, 3, 9)"),
        "INSERT INTO orders (\"id\", \"tenant_id\", \"customer_id\", \"total\") VALUES (5, 1, 3, 9)"
    );
    assert!(rewritten("INSERT INTO orders (id) SELECT id FROM products")
        .contains("SELECT pgw_src.*, 1 FROM (SELECT id FROM products) AS pgw_src"));
    let sql = rewritten(
        "INSERT INTO orders (id, tenant_id) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET total = 0",
    );
    assert!(
        sql.ends_with("DO UPDATE SET total = 0 WHERE orders.\"tenant_id\" = 1"),
        "{sql}"
    );
    assert_eq!(
        decide_as(
            TenancyMode::Rewrite,
            Some("1"),
            "INSERT INTO orders (id, tenant_id) VALUES (1, $2)"
        ),
        Decision::PassWithParams {
            tenant_params: vec![2]
        }
    );
    for sql in [
        "INSERT INTO orders (id, tenant_id) VALUES (1, 2)",
        "INSERT INTO orders (id, tenant_id) VALUES (1, 1 + 1)",
        "INSERT INTO orders (id, tenant_id) SELECT id, 2 FROM products",
        "UPDATE orders SET tenant_id = 2",
        "UPDATE orders SET tenant_id = DEFAULT",
        "UPDATE orders SET (total, tenant_id) = (1, 1)",
    ] {
        assert_eq!(
            rejected(TenancyMode::Rewrite, sql),
            RejectionKind::ForeignTenantValue,
            "{sql}"
        );
    }
}

#[test]
fn what_cannot_be_proven_safe_is_refused() {
    use RejectionKind::*;
    let cases: &[(&str, RejectionKind)] = &[
        (
            "DO $$ BEGIN DELETE FROM orders; END $$",
            StatementNotAllowed,
        ),
        (
            "/* x */ do language plpgsql $$ BEGIN END $$",
            StatementNotAllowed,
        ),
        ("SELEC * FROM orders", Unparseable),
        ("SELECT leak_everything()", FunctionNotAllowed),
        ("SELECT public.leak_everything()", FunctionNotAllowed),
        (
            "SELECT query_to_xml('select * from orders', true, true, '')",
            FunctionNotAllowed,
        ),
        ("SELECT no_such_function()", FunctionNotAllowed),
        ("SELECT * FROM summary", UnguardableView),
        ("SELECT * FROM nowhere", UnknownRelation),
        ("COPY orders TO STDOUT", CopyOfScopedTable),
        ("SET ROLE postgres", SettingNotAllowed),
        ("SET SESSION AUTHORIZATION postgres", SettingNotAllowed),
        ("SET search_path TO evil", SettingNotAllowed),
        (
            "CREATE TABLE x AS SELECT * FROM orders",
            StatementNotAllowed,
        ),
        ("TRUNCATE orders", StatementNotAllowed),
        ("PREPARE p AS SELECT * FROM orders", StatementNotAllowed),
        ("SELECT 1; DROP TABLE orders", StatementNotAllowed),
        (
            "SELECT * INTO copy_of_orders FROM orders",
            StatementNotAllowed,
        ),
        ("SELECT query FROM pg_stat_activity", StatementNotAllowed),
        (
            "SELECT query FROM pg_catalog.pg_stat_activity",
            StatementNotAllowed,
        ),
    ];
    for (sql, kind) in cases {
        assert_eq!(rejected(TenancyMode::Rewrite, sql), *kind, "{sql}");
    }
    assert_eq!(
        decide_as(TenancyMode::Rewrite, None, "SELECT * FROM orders"),
        Decision::Reject(Rejection::new(RejectionKind::NoTenant, "orders"))
    );
    for sql in [
        "SELECT 1",
        "SELECT * FROM products",
        "SET search_path TO billing, public",
        "SET statement_timeout = 1000",
        "BEGIN",
        "COPY products TO STDOUT",
    ] {
        assert_eq!(
            decide_as(TenancyMode::Rewrite, None, sql),
            Decision::Pass,
            "{sql}"
        );
    }
}

#[test]
fn enforce_accepts_only_pinned_references() {
    for sql in [
        "SELECT * FROM orders WHERE tenant_id = 1",
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id AND c.tenant_id = 1 WHERE o.tenant_id = 1",
        "SELECT * FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.tenant_id = 1 WHERE c.tenant_id = 1",
        "UPDATE orders SET total = 0 WHERE tenant_id = 1 AND id = 3",
        "INSERT INTO orders (id, tenant_id) VALUES (1, 1)",
        "SELECT * FROM products",
    ] {
        assert_eq!(decide_as(TenancyMode::Enforce, Some("1"), sql), Decision::Pass, "{sql}");
    }
    assert_eq!(
        decide_as(
            TenancyMode::Enforce,
            Some("1"),
            "SELECT * FROM orders WHERE tenant_id = $1"
        ),
        Decision::PassWithParams {
            tenant_params: vec![1]
        }
    );
    for sql in [
        "SELECT * FROM orders",
        "SELECT * FROM orders WHERE tenant_id = 1 OR 1 = 1",
        "SELECT * FROM orders WHERE tenant_id IN (1, 2)",
        "SELECT * FROM orders WHERE tenant_id <> 2",
        "SELECT * FROM orders o WHERE o.tenant_id = 1 AND EXISTS (SELECT 1 FROM customers)",
        "SELECT * FROM customers c LEFT JOIN orders o ON o.tenant_id = 1 AND c.tenant_id = 1",
        "DELETE FROM orders WHERE id = 3",
        "INSERT INTO orders (id) VALUES (1)",
        "TABLE orders",
    ] {
        assert!(
            matches!(
                decide_as(TenancyMode::Enforce, Some("1"), sql),
                Decision::Reject(_)
            ),
            "{sql}"
        );
    }
}
