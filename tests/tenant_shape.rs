//! The tenant guard's shape cache against the full path: every statement of the
//! adversarial and legitimate corpora (tests/tenancy/), first as written and then
//! with its literals replaced by other values — the tenant's own, another tenant's,
//! other numbers and strings, escaped and dollar-quoted strings — is decided by one
//! guard (whose shape cache learns from the first texts and serves the later ones)
//! and by a fresh full-path decision. They must agree on every text: a shape path
//! that let through what the full path refuses, or rewrote it differently, is a leak.
//!
//! The catalog is the one pgwarden loads from tests/tenancy/schema.sql on a real
//! server; the decisions themselves need no server, so the run is fast.

use crate::support;

use crate::corpus;

use std::time::Duration;

use pgwarden::cluster::LocalCluster;
use pgwarden::config::{TenancyConfig, TenancyMode};
use pgwarden::tenant::{self, Catalog, Decision, ShapeMemo, TenantGuard};
use support::proxy;

const SCHEMA: &str = include_str!("tenancy/schema.sql");
const ADVERSARIAL: &str = include_str!("tenancy/adversarial.txt");
const LEGIT: &str = include_str!("tenancy/legit.txt");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Replacement texts for number and string literals, one pair per variant.
const VARIANTS: &[(&str, &str)] = &[
    ("1", "'1'"),
    ("2", "'2'"),
    ("2000", "'@t2'"),
    ("4242", "'x''y'"),
    ("0.5", "E'a\\'b'"),
    ("1e3", "$q$ ' $q$"),
    ("'1'", "1"),
    ("-1", "''"),
    ("3.25", "'-- x'"),
    ("17", "'/* x'"),
    ("99", "'\" OR true; --'"),
];

/// `sql` with every literal the shape cache sees replaced by the variant's values.
fn vary(sql: &str, (number, string): (&str, &str)) -> Option<String> {
    let literals = tenant::shape_literals(sql)?;
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for range in literals {
        out.push_str(&sql[at..range.start]);
        let literal = &sql[range.clone()];
        let is_number = literal.starts_with(|c: char| c.is_ascii_digit() || c == '.');
        out.push_str(if is_number { number } else { string });
        at = range.end;
    }
    out.push_str(&sql[at..]);
    Some(out)
}

/// Whether the cached guard's decision is the full path's.
fn agree(got: &Decision, expected: &Decision) -> bool {
    match (got, expected) {
        (
            Decision::Rewritten {
                sql: a,
                tenant_params: pa,
            },
            Decision::Rewritten {
                sql: b,
                tenant_params: pb,
            },
        ) => pa == pb && tenant::same_statements(a, b),
        _ => got == expected,
    }
}

async fn load_catalog(config: &TenancyConfig) -> (LocalCluster, Catalog) {
    let cluster = support::cluster(0);
    let direct = tokio::time::timeout(TIMEOUT, proxy::connect_direct(&cluster))
        .await
        .expect("connect in time");
    tokio::time::timeout(TIMEOUT, direct.batch_execute(SCHEMA))
        .await
        .expect("schema in time")
        .expect("load tests/tenancy/schema.sql");
    let catalog = tokio::time::timeout(TIMEOUT, tenant::catalog::load(&direct, config))
        .await
        .expect("catalog in time")
        .expect("load the guard's catalog");
    (cluster, catalog)
}

#[tokio::test]
async fn shape_cache_decides_as_the_full_path_on_the_corpora() {
    let config = TenancyConfig::default();
    let (_cluster, catalog) = load_catalog(&config).await;
    let mut texts: Vec<String> = corpus::adversarial(ADVERSARIAL)
        .into_iter()
        .map(|entry| entry.sql)
        .collect();
    for entry in corpus::legit(LEGIT) {
        texts.push(entry.app);
        texts.push(entry.scoped);
    }
    let mut disagreements = Vec::new();
    let mut served = Vec::new();
    for mode in [TenancyMode::Rewrite, TenancyMode::Enforce] {
        let guard = TenantGuard::detached(&config);
        // One session's memo of shapes, kept across every text of the mode.
        let mut session = ShapeMemo::default();
        let mut decided = 0;
        let mut check = |memo: &mut ShapeMemo, sql: &str, by: &str| {
            let got = guard
                .decide_on(memo, &catalog, "app", mode, Some("1"), sql)
                .unwrap_or_else(|unknown| unknown);
            let expected = tenant::decide(&config, &catalog, mode, Some("1"), sql);
            decided += 1;
            if !agree(&got, &expected) {
                disagreements.push(format!(
                    "{mode:?}: {sql}\n  {by}: {got:?}\n  full path:   {expected:?}"
                ));
            }
        };
        // The texts as written first (the shape cache learns). Then each text's
        // variants one after another, decided twice: by a session that never saw the
        // shape (the shared cache) and by the session that runs them all (its memo of
        // shapes serves the variants after the first).
        for text in &texts {
            check(&mut session, text, "shape cache");
        }
        for text in &texts {
            for values in VARIANTS.iter().copied() {
                let Some(sql) = vary(text, values) else {
                    continue;
                };
                check(&mut ShapeMemo::default(), &sql, "shape cache");
                check(&mut session, &sql, "session's memo");
            }
        }
        let (hits, misses, full) = guard.shape_counts();
        let memo_hits = guard.shape_memo_hits();
        println!(
            "{mode:?}: {decided} texts; shape cache hits {hits}, misses {misses}, full path {full}; {memo_hits} matched in the session's memo"
        );
        // Enforce mode keeps its tenant predicates' literals, so it is mostly full path.
        let least = if mode == TenancyMode::Rewrite {
            1000
        } else {
            10
        };
        served.push((mode, hits, least));
        served.push((mode, memo_hits, least / 2));
    }
    assert!(
        disagreements.is_empty(),
        "{} texts decided differently:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    for (mode, hits, least) in served {
        assert!(
            hits >= least,
            "{mode:?}: the shape cache (or the memo) served only {hits} texts, not {least}"
        );
    }
}

#[test]
fn variants_replace_only_literals() {
    assert_eq!(
        vary(
            "SELECT \"1\" FROM t WHERE a = 17 AND b = 'x' -- 'c'",
            ("2", "'y'")
        )
        .as_deref(),
        Some("SELECT \"1\" FROM t WHERE a = 2 AND b = 'y' -- 'c'")
    );
    assert_eq!(vary("SELECT a FROM t WHERE b = $1", ("2", "'y'")), None);
}
