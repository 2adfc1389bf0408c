//! The shape cache and the sessions' memos of shapes: texts differing only in
//! literals share one judged shape, decided as the full path decides them. The
//! corpora against the full path are `tests/tenant_shape.rs`.

use super::sample::sample_catalog;
use super::*;

/// A detached guard over the sample catalog, and a way to ask it.
struct ShapeGuard {
    guard: TenantGuard,
    catalog: Catalog,
    config: TenancyConfig,
    /// One session's memo of shapes, kept across the texts it decides.
    memo: std::cell::RefCell<ShapeMemo>,
}

impl ShapeGuard {
    fn new() -> ShapeGuard {
        let config = TenancyConfig::default();
        ShapeGuard {
            guard: TenantGuard::detached(&config),
            catalog: sample_catalog(&config),
            config,
            memo: Default::default(),
        }
    }

    fn decide(&self, mode: TenancyMode, tenant: &str, sql: &str) -> Decision {
        let decision = self
            .guard
            .decide_on(
                &mut self.memo.borrow_mut(),
                &self.catalog,
                "app",
                mode,
                Some(tenant),
                sql,
            )
            .unwrap_or_else(|unknown| unknown);
        Decision::clone(&decision)
    }

    /// The full path's decision, from no cache at all.
    fn full(&self, mode: TenancyMode, tenant: &str, sql: &str) -> Decision {
        decide(&self.config, &self.catalog, mode, Some(tenant), sql)
    }

    fn hits(&self) -> u64 {
        self.guard.shape_counts().0
    }

    /// Decides `sql` and asserts it is rewritten to what the full path prints (or a
    /// text that parses the same), without parameters bound to the tenant; returns it.
    fn rewritten_like_full(&self, mode: TenancyMode, tenant: &str, sql: &str) -> String {
        let decision = self.decide(mode, tenant, sql);
        let Decision::Rewritten {
            sql: text,
            tenant_params,
        } = decision
        else {
            panic!("{sql}: {decision:?}");
        };
        assert!(tenant_params.is_empty(), "{sql}: {tenant_params:?}");
        let Decision::Rewritten { sql: expected, .. } = self.full(mode, tenant, sql) else {
            panic!("{sql}: the full path does not rewrite it");
        };
        assert!(same_text(&text, &expected), "{text}\n{expected}");
        text.to_string()
    }
}

#[test]
fn a_rewritten_shape_is_reapplied_to_new_literals() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    let first = "SELECT o.total FROM orders o JOIN products p ON p.id = o.id WHERE o.id = 17 AND p.name = 'a''b'";
    assert_eq!(g.decide(mode, "1", first), g.full(mode, "1", first));
    assert_eq!(g.hits(), 0);
    for sql in [
        "SELECT o.total FROM orders o JOIN products p ON p.id = o.id WHERE o.id = 4242 AND p.name = ''",
        "SELECT o.total FROM orders o JOIN products p ON p.id = o.id WHERE o.id = 1.5 AND p.name = '/* ''; */'",
    ] {
        let text = g.rewritten_like_full(mode, "1", sql);
        assert!(text.contains("o.\"tenant_id\" = 1"), "{text}");
    }
    assert_eq!(g.hits(), 2);
    // Another tenant's texts of the same shape have their own entry.
    let other = g.decide(mode, "7", first);
    assert_eq!(other, g.full(mode, "7", first));
    assert_eq!(g.hits(), 2);
}

#[test]
fn a_passing_shape_passes_new_literals() {
    let g = ShapeGuard::new();
    for sql in [
        "SELECT name FROM products WHERE id = 1",
        "SELECT name FROM products WHERE id = 99",
    ] {
        assert_eq!(g.decide(TenancyMode::Rewrite, "1", sql), Decision::Pass);
    }
    assert_eq!(g.hits(), 1);
}

#[test]
fn literals_in_tenant_positions_are_checked_against_the_tenant() {
    let g = ShapeGuard::new();
    // Rewrite mode: an INSERT giving the tenant column a literal.
    let rewrite = TenancyMode::Rewrite;
    let own = "INSERT INTO orders (id, tenant_id, total) VALUES (5, 1, 10)";
    assert_eq!(g.decide(rewrite, "1", own), g.full(rewrite, "1", own));
    let foreign = "INSERT INTO orders (id, tenant_id, total) VALUES (6, 2, 10)";
    let decision = g.decide(rewrite, "1", foreign);
    assert!(
        matches!(&decision, Decision::Reject(r) if r.kind == RejectionKind::ForeignTenantValue),
        "{decision:?}"
    );
    assert_eq!(decision, g.full(rewrite, "1", foreign));
    assert_eq!(
        g.hits(),
        0,
        "an INSERT's tenant literal is never served by shape"
    );
    // Enforce mode: the predicate's literal is what makes the statement safe. The
    // shape passes texts whose literal there is the tenant, and only those.
    let enforce = TenancyMode::Enforce;
    let own = "SELECT * FROM orders WHERE tenant_id = 1 AND id = 3";
    assert_eq!(g.decide(enforce, "1", own), Decision::Pass);
    let again = "SELECT * FROM orders WHERE tenant_id = 1 AND id = 4";
    assert_eq!(g.decide(enforce, "1", again), Decision::Pass);
    assert_eq!(g.hits(), 1, "the second text passed by shape");
    for foreign in [
        "SELECT * FROM orders WHERE tenant_id = 2 AND id = 3",
        "SELECT * FROM orders WHERE tenant_id = 12 AND id = 3",
        "SELECT * FROM orders WHERE tenant_id = 1.5 AND id = 3",
    ] {
        let decision = g.decide(enforce, "1", foreign);
        assert!(
            matches!(&decision, Decision::Reject(r) if r.kind == RejectionKind::MissingTenantPredicate),
            "{foreign}: {decision:?}"
        );
    }
    // A quoted tenant literal is the tenant too; another quoted value is not.
    assert_eq!(
        g.decide(
            enforce,
            "1",
            "SELECT * FROM orders WHERE tenant_id = '1' AND id = 5"
        ),
        Decision::Pass
    );
    assert!(matches!(
        g.decide(
            enforce,
            "1",
            "SELECT * FROM orders WHERE tenant_id = '2' AND id = 5"
        ),
        Decision::Reject(_)
    ));
    assert_eq!(g.hits(), 2);
    // Another tenant's session does not use tenant 1's shape.
    assert!(matches!(
        g.decide(
            enforce,
            "2",
            "SELECT * FROM orders WHERE tenant_id = 1 AND id = 9"
        ),
        Decision::Reject(_)
    ));
    assert_eq!(g.hits(), 2);
    // Rewrite mode: a read pinned to the tenant runs as written (by shape too); one
    // pinned to another tenant keeps its predicate and gets the tenant's.
    let first = "SELECT * FROM orders WHERE tenant_id = 1";
    assert_eq!(g.decide(rewrite, "1", first), Decision::Pass);
    assert_eq!(g.full(rewrite, "1", first), Decision::Pass);
    let second = "SELECT * FROM orders WHERE tenant_id = 2";
    let decision = g.decide(rewrite, "1", second);
    let Decision::Rewritten { sql: text, .. } = &decision else {
        panic!("{decision:?}");
    };
    assert!(
        text.contains("tenant_id = 2") && text.contains("\"tenant_id\" = 1"),
        "{text}"
    );
    assert_eq!(decision, g.full(rewrite, "1", second));
    assert_eq!(
        g.decide(rewrite, "1", "SELECT * FROM orders WHERE tenant_id = 1"),
        Decision::Pass
    );
    assert_eq!(g.hits(), 3);
}

#[test]
fn shapes_that_cannot_be_templated_are_remembered_as_such() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    // Not a single preparable statement: every text takes the full path.
    for sql in [
        "SELECT * FROM orders WHERE id = 1; SELECT 2",
        "SELECT * FROM orders WHERE id = 3; SELECT 4",
        "SET search_path = 'public'",
        "SET search_path = 'nosuchschema'",
    ] {
        assert_eq!(g.decide(mode, "1", sql), g.full(mode, "1", sql), "{sql}");
    }
    assert!(matches!(
        g.decide(mode, "1", "SET search_path = 'nosuchschema'"),
        Decision::Reject(_)
    ));
    // Two shapes, each judged once and then known to need the full path.
    assert_eq!(g.guard.shape_counts(), (0, 2, 3));
}

#[test]
fn typed_literals_keep_their_type_name() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    for sql in [
        "SELECT * FROM orders WHERE created > date '2020-01-01' AND total > 5",
        "SELECT * FROM orders WHERE created > date '2021-02-03' AND total > 6.5",
    ] {
        g.rewritten_like_full(mode, "1", sql);
    }
    assert_eq!(g.hits(), 1);
}

#[test]
fn routing_hints_in_literals_keep_the_full_path() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    let plain = "SELECT * FROM orders WHERE id = 'a'";
    let hinted = "SELECT * FROM orders WHERE id = '/* pgwarden:primary */'";
    assert_eq!(g.decide(mode, "1", plain), g.full(mode, "1", plain));
    assert_eq!(g.decide(mode, "1", hinted), g.full(mode, "1", hinted));
    assert_eq!(g.hits(), 0);
}

#[test]
fn a_sessions_memo_serves_the_shapes_it_used_last() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    let texts = |id: u32| {
        [
            format!("SELECT o.total FROM orders o WHERE o.id = {id}"),
            format!("SELECT name FROM products WHERE id = {id}"),
            format!("UPDATE orders SET total = total + {id} WHERE id = {id}"),
        ]
    };
    for sql in texts(1) {
        assert_eq!(g.decide(mode, "1", &sql), g.full(mode, "1", &sql), "{sql}");
    }
    assert_eq!(g.guard.shape_memo_hits(), 0);
    // The same statements with other literals, in another order: from the memo.
    for id in [22, 333, 4] {
        for sql in texts(id).iter().rev() {
            let decision = g.decide(mode, "1", sql);
            match g.full(mode, "1", sql) {
                Decision::Rewritten { sql: expected, .. } => {
                    let Decision::Rewritten { sql: text, .. } = &decision else {
                        panic!("{sql}: {decision:?}");
                    };
                    assert!(same_text(text, &expected), "{text}\n{expected}");
                }
                expected => assert_eq!(decision, expected, "{sql}"),
            }
        }
    }
    assert_eq!(g.guard.shape_memo_hits(), 9);
    assert_eq!(g.hits(), 9);
    // Another session (a memo of its own) finds them in the shared cache.
    let mut other = ShapeMemo::default();
    let sql = "SELECT name FROM products WHERE id = 5";
    let decision = g
        .guard
        .decide_on(&mut other, &g.catalog, "app", mode, Some("1"), sql)
        .unwrap();
    assert_eq!(*decision, Decision::Pass);
    assert_eq!((g.hits(), g.guard.shape_memo_hits()), (10, 9));
}

#[test]
fn decisions_are_used_with_the_catalog_they_were_made_against_only() {
    let g = ShapeGuard::new();
    let mode = TenancyMode::Rewrite;
    assert_eq!(
        g.decide(mode, "1", "SELECT name FROM products WHERE id = 1"),
        Decision::Pass
    );
    assert_eq!(
        g.decide(mode, "1", "SELECT name FROM products WHERE id = 2"),
        Decision::Pass
    );
    assert_eq!(g.guard.shape_memo_hits(), 1);
    // A catalog loaded since (here the same contents, but another load): neither the
    // session's memo nor the shared caches answer with what the old one decided.
    let reloaded = sample_catalog(&g.config);
    assert_ne!(reloaded.id(), g.catalog.id());
    assert!(reloaded.same_contents(&g.catalog));
    let mut memo = g.memo.borrow_mut();
    for sql in [
        "SELECT name FROM products WHERE id = 3",
        "SELECT name FROM products WHERE id = 4",
    ] {
        let decision = g
            .guard
            .decide_on(&mut memo, &reloaded, "app", mode, Some("1"), sql)
            .unwrap();
        assert_eq!(*decision, Decision::Pass);
    }
    assert_eq!(g.guard.shape_counts().1, 2, "judged again: a second miss");
    assert_eq!(g.guard.shape_memo_hits(), 2, "then from the memo again");
    // The same text as before, against the new catalog: decided anew, not from the
    // decision cache (a text without literals, which the shape path leaves alone).
    let plain = "SELECT name FROM products";
    g.guard.decisions.run_pending_tasks();
    let before = g.guard.decisions.entry_count();
    g.guard
        .decide_on(&mut memo, &g.catalog, "app", mode, Some("1"), plain)
        .unwrap();
    g.guard
        .decide_on(&mut memo, &reloaded, "app", mode, Some("1"), plain)
        .unwrap();
    g.guard.decisions.run_pending_tasks();
    assert_eq!(g.guard.decisions.entry_count(), before + 2);
}

#[test]
fn a_memo_holds_one_tenants_shapes() {
    let g = ShapeGuard::new();
    let enforce = TenancyMode::Enforce;
    let own = "SELECT * FROM orders WHERE tenant_id = 1 AND id = 3";
    assert_eq!(g.decide(enforce, "1", own), Decision::Pass);
    // Tenant 2's session with the same memo: tenant 1's pinned shape must not pass.
    let decision = g.decide(
        enforce,
        "2",
        "SELECT * FROM orders WHERE tenant_id = 1 AND id = 4",
    );
    assert!(matches!(decision, Decision::Reject(_)), "{decision:?}");
    assert_eq!(g.guard.shape_memo_hits(), 0);
}
