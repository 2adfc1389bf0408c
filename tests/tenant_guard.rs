//! The tenant guard against two corpora on a realistic multi-tenant schema
//! (tests/tenancy/): adversarial statements that must never reach another tenant's
//! rows, and the application's legitimate queries, which must give exactly what the
//! same query with hand-written tenant predicates gives. Then focused checks of the
//! modes, of where a session's tenant comes from, of bypass roles and of a prepared
//! statement outliving a change of tenant.

mod support;

#[path = "tenancy/corpus.rs"]
mod corpus;

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
// Results

type Rows = Vec<Vec<Option<String>>>;

/// The rows of every result of a simple query, as text.
async fn text_rows(client: &Client, sql: &str) -> Result<Rows, Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(String::from))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn sqlstate(error: &Error) -> Option<&str> {
    error.code().map(|code| code.code())
}

fn describe(error: &Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("error {}: {}", db.code().code(), shorten(db.message(), 160)),
        None => format!("error: {error}"),
    }
}

fn assert_rejected<T>(result: Result<T, Error>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: expected a rejection with {INSUFFICIENT_PRIVILEGE}, it ran"),
        Err(e) => assert_eq!(
            sqlstate(&e),
            Some(INSUFFICIENT_PRIVILEGE),
            "{what}: {}",
            describe(&e)
        ),
    }
}

/// One returned value as text, with the name of its column.
struct Cell {
    column: String,
    text: String,
}

fn simple_cells(messages: &[SimpleQueryMessage]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            for (i, column) in row.columns().iter().enumerate() {
                if let Some(text) = row.get(i) {
                    cells.push(Cell {
                        column: column.name().to_string(),
                        text: text.to_string(),
                    });
                }
            }
        }
    }
    cells
}

/// Any value in binary format, kept as its bytes: text inside records, arrays and
/// jsonb stays readable, so the markers can be found in it.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn row_cells(row: &tokio_postgres::Row) -> Vec<Cell> {
    let text = |i: usize, ty: &Type| match *ty {
        Type::INT2 => row.get::<_, Option<i16>>(i).map(|v| v.to_string()),
        Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| v.to_string()),
        Type::INT8 => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
        _ => row
            .get::<_, Option<Raw>>(i)
            .map(|raw| String::from_utf8_lossy(&raw.0).into_owned()),
    };
    row.columns()
        .iter()
        .enumerate()
        .filter_map(|(i, column)| {
            Some(Cell {
                column: column.name().to_string(),
                text: text(i, column.type_())?,
            })
        })
        .collect()
}

/// What in a returned value belongs to another tenant, if anything does.
fn leak_in(cell: &Cell) -> Option<String> {
    if let Some(at) = OTHER_TENANT_MARKERS.iter().find_map(|m| cell.text.find(m)) {
        return Some(format!(
            "{:?} in column {}",
            excerpt(&cell.text, at),
            cell.column
        ));
    }
    let number: i64 = cell.text.trim().parse().ok()?;
    if cell.column == "tenant_id" && number != TENANT {
        return Some(format!("tenant_id {number}"));
    }
    let id_column = cell.column == "id" || cell.column.ends_with("_id");
    (id_column && OTHER_TENANT_IDS.contains(&number))
        .then(|| format!("id {number} in column {}", cell.column))
}

/// Up to 30 characters either side of byte `at`, on one line.
fn excerpt(text: &str, at: usize) -> String {
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(29)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(30)
        .map_or(text.len(), |(i, _)| at + i);
    let dots = |cut: bool| if cut { "..." } else { "" };
    let middle = text[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    format!("{}{middle}{}", dots(start > 0), dots(end < text.len()))
}

/// One line about the values of other tenants among `cells`, if there are any.
fn leaks(cells: &[Cell]) -> Option<String> {
    let found: Vec<String> = cells.iter().filter_map(leak_in).collect();
    let examples: Vec<&str> = found.iter().take(3).map(String::as_str).collect();
    (!found.is_empty()).then(|| {
        format!(
            "returned {} of other tenants, e.g. {}",
            match found.len() {
                1 => "a value".to_string(),
                n => format!("{n} values"),
            },
            examples.join("; ")
        )
    })
}

/// An error message can carry values too (`invalid input syntax: "Bob@t2"`).
fn error_leak(error: &Error) -> Option<String> {
    let db = error.as_db_error()?;
    let text = [Some(db.message()), db.detail(), db.hint(), db.where_()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" / ");
    let at = OTHER_TENANT_MARKERS.iter().find_map(|m| text.find(m))?;
    Some(format!(
        "its error reveals another tenant's data: {:?}",
        excerpt(&text, at)
    ))
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &one_line[..at]),
        None => one_line,
    }
}

// ---------------------------------------------------------------------------
// Running an adversarial entry

/// How a prepared entry's parameters are sent: binary (as tokio-postgres does for
/// typed values) or text (as libpq-based drivers do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamFormat {
    Binary,
    Text,
}

/// A parameter in text format: the server parses it as whatever type it inferred.
#[derive(Debug)]
struct TextParam(String);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

fn bind(param: &Param, ty: &Type, format: ParamFormat) -> Box<dyn ToSql + Sync> {
    let binary = format == ParamFormat::Binary;
    match param {
        Param::Null => Box::new(None::<TextParam>),
        Param::Int(v) if binary && *ty == Type::INT8 => Box::new(*v),
        Param::Int(v) if binary && *ty == Type::INT4 => Box::new(*v as i32),
        Param::Int(v) if binary && *ty == Type::INT2 => Box::new(*v as i16),
        Param::Text(s) if binary && <String as ToSql>::accepts(ty) => Box::new(s.clone()),
        Param::Int(v) => Box::new(TextParam(v.to_string())),
        Param::Text(s) => Box::new(TextParam(s.clone())),
    }
}

async fn run_prepared(
    client: &Client,
    entry: &Adversarial,
    format: ParamFormat,
) -> Result<Vec<Cell>, Error> {
    let statement = client.prepare(&entry.sql).await?;
    let values: Vec<Box<dyn ToSql + Sync>> = entry
        .params
        .iter()
        .zip(statement.params())
        .map(|(param, ty)| bind(param, ty, format))
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v).collect();
    let rows = client.query(&statement, &refs).await?;
    Ok(rows.iter().flat_map(row_cells).collect())
}

async fn run_copy_out(client: &Client, sql: &str) -> Result<Vec<Cell>, Error> {
    let stream = client.copy_out(sql).await?;
    futures_util::pin_mut!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?);
    }
    Ok(vec![Cell {
        column: "COPY".into(),
        text: String::from_utf8_lossy(&data).into_owned(),
    }])
}

async fn run_copy_in(client: &Client, sql: &str, data: &str) -> Result<Vec<Cell>, Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data.to_string())).await?;
    sink.finish().await?;
    Ok(Vec::new())
}

async fn run_entry(
    client: &Client,
    entry: &Adversarial,
    format: ParamFormat,
) -> Result<Vec<Cell>, Error> {
    match entry.protocol {
        Protocol::Simple => Ok(simple_cells(&client.simple_query(&entry.sql).await?)),
        Protocol::Prepared => run_prepared(client, entry, format).await,
        Protocol::CopyOut => run_copy_out(client, &entry.sql).await,
        Protocol::CopyIn => run_copy_in(client, &entry.sql, &entry.copy_data).await,
    }
}

/// What is wrong with an entry's outcome: the expectation, and any leaked value.
fn outcome_problems(expect: Expect, outcome: &Result<Vec<Cell>, Error>) -> Vec<String> {
    let mut problems = Vec::new();
    match (expect, outcome) {
        (Expect::Reject, Ok(_)) => {
            problems.push(format!(
                "expected a rejection ({INSUFFICIENT_PRIVILEGE}), but it ran"
            ));
        }
        (Expect::Reject, Err(e)) if sqlstate(e) != Some(INSUFFICIENT_PRIVILEGE) => {
            problems.push(format!(
                "expected a rejection ({INSUFFICIENT_PRIVILEGE}), got {}",
                describe(e)
            ));
        }
        (Expect::Ok, Err(e)) => problems.push(format!("expected success, got {}", describe(e))),
        _ => {}
    }
    match outcome {
        Ok(cells) => problems.extend(leaks(cells)),
        Err(e) => problems.extend(error_leak(e)),
    }
    problems
}

// ---------------------------------------------------------------------------
// What is on the server

/// md5 of the rows of every (table, tenant); global tables under tenant "-".
type Snapshot = BTreeMap<(String, String), String>;

fn snapshot_sql() -> String {
    let scoped = SCOPED_TABLES.iter().map(|t| {
        format!(
            "SELECT '{t}', tenant_id::text, md5(string_agg(r::text, ',' ORDER BY r::text)) \
             FROM {t} r GROUP BY tenant_id"
        )
    });
    let global = GLOBAL_TABLES.iter().map(|t| {
        format!(
            "SELECT '{t}', '-', coalesce(md5(string_agg(r::text, ',' ORDER BY r::text)), '') \
             FROM {t} r"
        )
    });
    scoped.chain(global).collect::<Vec<_>>().join(" UNION ALL ")
}

async fn snapshot(direct: &Client) -> Result<Snapshot, Error> {
    let rows = direct.query(&snapshot_sql(), &[]).await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Relations, columns, functions, schemas, rules, policies, triggers and comments
/// outside the system schemas: changes when DDL got through.
const SCHEMA_FINGERPRINT: &str = "
SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
    SELECT format('rel %s %s %s %s', c.oid::regclass, c.relkind, c.relacl, c.relrowsecurity)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION ALL
    SELECT format('col %s.%s %s %s', a.attrelid::regclass, a.attname, a.atttypid::regtype, a.attnotnull)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('fn %s %s', p.oid::regprocedure, md5(p.prosrc))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname !~ '^pg_'
    UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE schemaname !~ '^pg_'
    UNION ALL SELECT 'policy ' || policyname FROM pg_policies
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'comment ' || description FROM pg_description WHERE objoid >= 16384
) s (x)";

async fn schema_fingerprint(direct: &Client) -> String {
    direct
        .query_one(SCHEMA_FINGERPRINT, &[])
        .await
        .expect("schema fingerprint")
        .get(0)
}

/// (table, tenant) pairs whose rows differ between two snapshots.
fn changed(before: &Snapshot, after: &Snapshot) -> Vec<(String, String)> {
    let mut keys: Vec<_> = before.keys().chain(after.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| before.get(k) != after.get(k));
    keys
}

fn state_problems(
    expect: Expect,
    before: &Snapshot,
    after: &Result<Snapshot, Error>,
) -> Vec<String> {
    let after = match after {
        Ok(after) => after,
        Err(e) => {
            return vec![format!(
                "the scoped tables cannot be read any more: {}",
                describe(e)
            )]
        }
    };
    let (own, others): (Vec<_>, Vec<_>) = changed(before, after)
        .into_iter()
        .partition(|(_, tenant)| *tenant == TENANT.to_string() || tenant == "-");
    let list = |changes: &[(String, String)]| {
        changes
            .iter()
            .map(|(table, tenant)| format!("{table} of tenant {tenant}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut problems = Vec::new();
    if !others.is_empty() {
        problems.push(format!("changed other tenants' rows: {}", list(&others)));
    }
    if expect == Expect::Reject && !own.is_empty() {
        problems.push(format!(
            "changed rows though it should have been rejected whole: {}",
            list(&own)
        ));
    }
    problems
}

/// Ends every server session but this one: pgwarden's pooled sessions included.
async fn end_server_sessions(direct: &Client) {
    const OTHERS: &str = "FROM pg_stat_activity WHERE datname = current_database() \
                          AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    direct
        .batch_execute(&format!("SELECT pg_terminate_backend(pid) {OTHERS}"))
        .await
        .expect("terminate server sessions");
    for _ in 0..250 {
        let left: i64 = direct
            .query_one(&format!("SELECT count(*) {OTHERS}"), &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pgwarden's server sessions did not end");
}

/// Whether an entry that got through could have changed the identity of pgwarden's
/// pooled server session: `SET ROLE` and `SET SESSION AUTHORIZATION` outlive the
/// client (`RESET ALL` does not undo them) and would run later entries as another
/// role.
fn may_change_identity(entry: &Adversarial) -> bool {
    let sql = entry.sql.to_ascii_lowercase();
    sql.contains("role") || sql.contains("authorization")
}

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
