//! The tenant guard against two corpora on a realistic multi-tenant schema
//! (tests/tenancy/): adversarial statements that must never reach another tenant's
//! rows, and the application's legitimate queries, which must give exactly what the
//! same query with hand-written tenant predicates gives. Then focused checks of the
//! modes, of where a session's tenant comes from, of bypass roles and of a prepared
//! statement outliving a change of tenant.
//!
//! tests/tenancy/ holds the corpora and their parser (`corpus`), how one entry is run
//! (`entries`), how returned data is searched for other tenants' (`results`), and the
//! server-side checksums taken around each entry (`server_state`).

use crate::support;

use crate::corpus;
#[path = "tenancy/entries.rs"]
mod entries;
#[path = "tenancy/results.rs"]
mod results;
#[path = "tenancy/server_state.rs"]
mod server_state;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pgwarden::cluster::LocalCluster;
use pgwarden::config::{Config, TenancyMode};
use pgwarden::RunningProxy;
use support::proxy;
use tokio_postgres::types::{Format, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, Error, SimpleQueryMessage};

use corpus::{Adversarial, Expect, Param, Protocol};
use entries::*;
use results::*;
use server_state::*;

const SCHEMA: &str = include_str!("tenancy/schema.sql");
const ADVERSARIAL: &str = include_str!("tenancy/adversarial.txt");
const LEGIT: &str = include_str!("tenancy/legit.txt");
/// The line of schema.sql after which it only inserts rows.
const SEED_MARKER: &str = "-- == seed data ==";

const SCOPED_TABLES: [&str; 5] = [
    "customers",
    "orders",
    "order_items",
    "billing.invoices",
    "\"AuditLog\"",
];
const GLOBAL_TABLES: [&str; 1] = ["products"];
/// Every session of the adversarial test belongs to tenant 1.
const TENANT: i64 = 1;
const OTHER_TENANT_MARKERS: [&str; 3] = ["@t2", "@t3", "@t4"];
const OTHER_TENANT_IDS: std::ops::Range<i64> = 2000..5000;
const INSUFFICIENT_PRIVILEGE: &str = "42501";
const ENTRY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Fixture

struct Fixture {
    proxy: RunningProxy,
    direct: Client,
    // Last: the cluster stops after the proxy and the direct client are gone.
    _cluster: LocalCluster,
}

/// A cluster with tests/tenancy/schema.sql loaded, then pgwarden in `mode` in front.
async fn fixture(mode: TenancyMode, tweak: impl FnOnce(&mut Config)) -> Fixture {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct
        .batch_execute(SCHEMA)
        .await
        .expect("load tests/tenancy/schema.sql");
    let proxy = proxy::start(&cluster, |c| {
        c.tenancy.mode = mode;
        tweak(c);
    })
    .await;
    Fixture {
        proxy,
        direct,
        _cluster: cluster,
    }
}

/// The proxy's URL with the tenant as a startup option, as applications pass it.
fn tenant_url(proxy: &RunningProxy, tenant: Option<i64>) -> String {
    match tenant {
        Some(t) => format!(
            "{}?options=-c%20pgwarden.tenant_id%3D{t}",
            proxy::url(proxy)
        ),
        None => proxy::url(proxy),
    }
}

async fn connect_as(proxy: &RunningProxy, tenant: Option<i64>) -> Client {
    proxy::connect_url(&tenant_url(proxy, tenant))
        .await
        .expect("connect through pgwarden")
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// The adversarial run

/// Runs adversarial entries through pgwarden as tenant 1, one client each, and puts
/// the server back as it was after each entry that changed anything.
struct AdversarialRun {
    fixture: Fixture,
    url: String,
    rows: Snapshot,
    schema: String,
}

impl AdversarialRun {
    async fn start() -> AdversarialRun {
        let fixture = fixture(TenancyMode::Rewrite, |_| {}).await;
        AdversarialRun {
            url: tenant_url(&fixture.proxy, Some(TENANT)),
            rows: snapshot(&fixture.direct).await.expect("snapshot"),
            schema: schema_fingerprint(&fixture.direct).await,
            fixture,
        }
    }

    fn direct(&self) -> &Client {
        &self.fixture.direct
    }

    /// The problems of one entry; none when the guard did its job.
    async fn check(&self, entry: &Adversarial, format: ParamFormat) -> Vec<String> {
        let client = proxy::connect_url(&self.url)
            .await
            .expect("connect through pgwarden as tenant 1");
        let outcome = tokio::time::timeout(ENTRY_TIMEOUT, run_entry(&client, entry, format)).await;
        drop(client);
        let mut problems = match outcome {
            Ok(outcome) => outcome_problems(entry.expect, &outcome),
            Err(_) => vec![format!("did not finish within {ENTRY_TIMEOUT:?}")],
        };
        let rows = snapshot(self.direct()).await;
        let schema = schema_fingerprint(self.direct()).await;
        problems.extend(state_problems(entry.expect, &self.rows, &rows));
        if schema != self.schema {
            problems.push("changed the schema (DDL got through)".into());
        }
        if !problems.is_empty() && may_change_identity(entry) {
            self.fresh_server_sessions().await;
        }
        if schema != self.schema || rows.as_ref().ok() != Some(&self.rows) {
            self.restore(schema != self.schema).await;
        }
        problems
    }

    /// Replaces pgwarden's pooled server sessions with new ones. Clients may see
    /// errors while pgwarden notices the old ones are gone, so this waits until
    /// statements run through it again.
    async fn fresh_server_sessions(&self) {
        end_server_sessions(self.direct()).await;
        let mut successes = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let client = proxy::connect_url(&self.url).await;
            match client {
                Ok(client) if client.simple_query("SHOW role").await.is_ok() => successes += 1,
                _ => successes = 0,
            }
            if successes == 3 {
                return;
            }
        }
        panic!("pgwarden does not serve statements again after its server sessions ended");
    }

    /// Reloads the seed rows, or the whole schema when DDL changed it.
    async fn restore(&self, whole_schema: bool) {
        let sql = if whole_schema {
            let schemas: Vec<String> = self
                .direct()
                .query(
                    "SELECT quote_ident(nspname) FROM pg_namespace \
                     WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            format!(
                "DROP SCHEMA {} CASCADE; CREATE SCHEMA public; {SCHEMA}",
                schemas.join(", ")
            )
        } else {
            let (_, seed) = SCHEMA.split_once(SEED_MARKER).expect("seed marker");
            let tables = SCOPED_TABLES.iter().chain(&GLOBAL_TABLES);
            let tables = tables.copied().collect::<Vec<_>>().join(", ");
            format!("TRUNCATE {tables} RESTART IDENTITY; {seed}")
        };
        self.direct().batch_execute(&sql).await.expect("restore");
        assert_eq!(
            snapshot(self.direct()).await.unwrap(),
            self.rows,
            "restored rows"
        );
        assert_eq!(
            schema_fingerprint(self.direct()).await,
            self.schema,
            "restored schema"
        );
    }
}

/// `TENANT_GUARD_LINES=740-760` (or `=751`) runs only the adversarial entries that
/// start on those lines of adversarial.txt, to look at a few entries closely.
fn selected(entry: &Adversarial) -> bool {
    let Ok(lines) = std::env::var("TENANT_GUARD_LINES") else {
        return true;
    };
    let (first, last) = lines.split_once('-').unwrap_or((&lines, &lines));
    let bound = |s: &str| {
        s.trim()
            .parse::<usize>()
            .expect("TENANT_GUARD_LINES=first-last")
    };
    (bound(first)..=bound(last)).contains(&entry.line)
}

fn formats(entry: &Adversarial) -> &'static [ParamFormat] {
    match entry.protocol {
        Protocol::Prepared => &[ParamFormat::Binary, ParamFormat::Text],
        _ => &[ParamFormat::Binary],
    }
}

fn failure_report(entry: &Adversarial, format: ParamFormat, problems: &[String]) -> String {
    let expect = match entry.expect {
        Expect::Ok => "ok",
        Expect::Reject => "reject",
        Expect::Either => "either",
    };
    let how = match (entry.protocol, format) {
        (Protocol::Simple, _) => "",
        (Protocol::Prepared, ParamFormat::Binary) => " prepared, binary parameters",
        (Protocol::Prepared, ParamFormat::Text) => " prepared, text parameters",
        (Protocol::CopyOut, _) => " copy_out",
        (Protocol::CopyIn, _) => " copy_in",
    };
    let mut report = format!(
        "line {} [{expect}{how}]: {}",
        entry.line,
        shorten(&entry.sql, 110)
    );
    for problem in problems {
        report.push_str(&format!("\n      - {problem}"));
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_statements_never_reach_another_tenant() {
    let entries = corpus::adversarial(ADVERSARIAL);
    assert!(
        entries.len() >= 150,
        "only {} adversarial entries",
        entries.len()
    );
    let run = AdversarialRun::start().await;

    let selected: Vec<&Adversarial> = entries.iter().filter(|e| selected(e)).collect();
    let mut failures = Vec::new();
    for entry in &selected {
        for &format in formats(entry) {
            let problems = run.check(entry, format).await;
            if !problems.is_empty() {
                failures.push(failure_report(entry, format, &problems));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {} adversarial entries (tests/tenancy/adversarial.txt):\n\n  {}\n",
        failures.len(),
        selected.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The legitimate queries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_queries_match_hand_written_tenant_predicates() {
    let entries = corpus::legit(LEGIT);
    assert!(entries.len() >= 50, "only {} legit entries", entries.len());
    let f = fixture(TenancyMode::Rewrite, |_| {}).await;

    let mut failures = Vec::new();
    for entry in &entries {
        if !predicates_matter(&f.direct, entry).await {
            failures.push(format!(
                "line {}: the hand-written predicates change nothing for tenants 1 and 2, \
                 so the entry cannot catch a missing one",
                entry.line
            ));
        }
    }
    for tenant in [1, 2] {
        let client = connect_as(&f.proxy, Some(tenant)).await;
        for entry in &entries {
            let expected = text_rows(&f.direct, &entry.scoped_for(tenant))
                .await
                .unwrap_or_else(|e| panic!("hand-written query at line {}: {e}", entry.line));
            let problem = match text_rows(&client, &entry.app).await {
                Ok(rows) if rows == expected => continue,
                Ok(rows) => difference(&rows, &expected),
                Err(e) => describe(&e),
            };
            failures.push(format!(
                "line {} as tenant {tenant}: {}\n      - {problem}",
                entry.line,
                shorten(&entry.app, 110)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {} legit entries run as tenants 1 and 2 (tests/tenancy/legit.txt):\n\n  {}\n",
        failures.len(),
        entries.len(),
        failures.join("\n  ")
    );
}

/// Whether the unscoped query gives another answer than the scoped one, directly on
/// the server, for tenant 1 or tenant 2.
async fn predicates_matter(direct: &Client, entry: &corpus::Legit) -> bool {
    let unscoped = text_rows(direct, &entry.app).await.unwrap();
    for tenant in [1, 2] {
        if text_rows(direct, &entry.scoped_for(tenant)).await.unwrap() != unscoped {
            return true;
        }
    }
    false
}

fn difference(got: &Rows, expected: &Rows) -> String {
    let first = got
        .iter()
        .zip(expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "{} rows, expected {}; row {first} is {}, expected {}",
        got.len(),
        expected.len(),
        show_row(got.get(first)),
        show_row(expected.get(first))
    )
}

fn show_row(row: Option<&Vec<Option<String>>>) -> String {
    let Some(row) = row else {
        return "missing".into();
    };
    let values: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    format!("({})", values.join(", "))
}

// ---------------------------------------------------------------------------
// Focused checks

const ALL_ORDERS: &str = "SELECT * FROM orders ORDER BY id";

async fn orders_of(direct: &Client, tenant: i64) -> Rows {
    text_rows(
        direct,
        &format!("SELECT * FROM orders WHERE tenant_id = {tenant} ORDER BY id"),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_mode_rejects_unscoped_statements_and_runs_scoped_ones() {
    let f = fixture(TenancyMode::Enforce, |_| {}).await;
    let client = connect_as(&f.proxy, Some(1)).await;
    assert_rejected(
        client.simple_query("SELECT * FROM orders").await,
        "unscoped SELECT in enforce mode",
    );
    let scoped = text_rows(
        &client,
        "SELECT * FROM orders WHERE tenant_id = 1 ORDER BY id",
    )
    .await
    .expect("a SELECT limited to the session's tenant runs in enforce mode");
    assert_eq!(scoped, orders_of(&f.direct, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_statements_through() {
    let f = fixture(TenancyMode::Audit, |_| {}).await;
    let client = connect_as(&f.proxy, Some(1)).await;
    let all = text_rows(&f.direct, ALL_ORDERS).await.unwrap();
    assert_eq!(text_rows(&client, ALL_ORDERS).await.unwrap(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_comes_from_the_session_setting() {
    let f = fixture(TenancyMode::Rewrite, |_| {}).await;
    let client = connect_as(&f.proxy, None).await;
    assert_rejected(client.simple_query(ALL_ORDERS).await, "no tenant set");

    client
        .batch_execute("SET pgwarden.tenant_id = '2'")
        .await
        .unwrap();
    assert_eq!(
        text_rows(&client, ALL_ORDERS).await.unwrap(),
        orders_of(&f.direct, 2).await
    );

    client
        .batch_execute("RESET pgwarden.tenant_id")
        .await
        .unwrap();
    assert_rejected(client.simple_query(ALL_ORDERS).await, "tenant reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_roles_see_every_tenant() {
    let f = fixture(TenancyMode::Rewrite, |c| {
        c.tenancy.bypass_roles = vec![proxy::USER.into()];
    })
    .await;
    let all = text_rows(&f.direct, ALL_ORDERS).await.unwrap();
    for tenant in [None, Some(1)] {
        let client = connect_as(&f.proxy, tenant).await;
        assert_eq!(
            text_rows(&client, ALL_ORDERS).await.unwrap(),
            all,
            "bypass role with tenant {tenant:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_does_not_keep_its_tenant() {
    let f = fixture(TenancyMode::Rewrite, |_| {}).await;
    let client = connect_as(&f.proxy, Some(1)).await;
    let statement = client
        .prepare("SELECT id, tenant_id, note FROM orders ORDER BY id")
        .await
        .unwrap();
    let rows = client.query(&statement, &[]).await.unwrap();
    let tenants: Vec<i64> = rows.iter().map(|r| r.get("tenant_id")).collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| *t == 1),
        "tenant 1 should see its own orders only, saw tenants {tenants:?}"
    );

    client
        .batch_execute("SET pgwarden.tenant_id = '2'")
        .await
        .unwrap();
    match client.query(&statement, &[]).await {
        Err(e) => assert_eq!(sqlstate(&e), Some(INSUFFICIENT_PRIVILEGE), "{e}"),
        Ok(rows) => {
            for row in &rows {
                let note: &str = row.get("note");
                assert!(
                    !note.contains("@t1"),
                    "tenant 1's order {note:?} shown to tenant 2"
                );
                assert_eq!(row.get::<_, i64>("tenant_id"), 2);
            }
        }
    }
}

/// With `standard_conforming_strings = off`, PostgreSQL reads `\'` as a quote, so
/// `SELECT '\', ' UNION SELECT ... --'` would run SQL that the guard (reading standard
/// strings, as PostgreSQL does by default) takes for two strings. A guarded session can
/// change the string syntax neither with `SET` nor in its startup packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_string_syntax_cannot_be_changed_to_hide_sql_from_the_guard() {
    const CALL: std::time::Duration = std::time::Duration::from_secs(20);
    let f = fixture(TenancyMode::Rewrite, |_| {}).await;
    let client = tokio::time::timeout(CALL, connect_as(&f.proxy, Some(TENANT)))
        .await
        .expect("login in time");
    for sql in [
        "SET standard_conforming_strings = off",
        "set STANDARD_CONFORMING_STRINGS to 'off'",
        "SET SESSION standard_conforming_strings = false",
        "SET backslash_quote = on",
        "RESET standard_conforming_strings",
    ] {
        let result = tokio::time::timeout(CALL, client.simple_query(sql))
            .await
            .expect("answer in time");
        assert_rejected(result, sql);
    }
    // With the syntax left alone, the smuggling text is what the guard reads: one row
    // of two strings, nothing from another tenant.
    let smuggled = r"SELECT '\', ' UNION SELECT note FROM orders WHERE tenant_id = 2 --'";
    let rows = tokio::time::timeout(CALL, text_rows(&client, smuggled))
        .await
        .expect("answer in time")
        .expect("runs");
    assert_eq!(
        rows,
        vec![vec![
            Some("\\".to_string()),
            Some(" UNION SELECT note FROM orders WHERE tenant_id = 2 --".to_string())
        ]]
    );

    for options in [
        "-c%20standard_conforming_strings%3Doff",
        "-c%20backslash_quote%3Don",
    ] {
        let url = format!("{}%20{options}", tenant_url(&f.proxy, Some(TENANT)));
        let refused = tokio::time::timeout(CALL, proxy::connect_url(&url))
            .await
            .expect("login answered in time");
        assert_rejected(refused, options);
    }
}
