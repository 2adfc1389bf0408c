//! Read or write: what a statement may do, decided from its sqlparser AST.
//!
//! Reads may go to a replica. Everything else goes to the primary: writes, DDL,
//! `SELECT ... FOR UPDATE/SHARE`, `SELECT INTO`, data-modifying CTEs, calls to functions
//! not known to be read-only (`nextval`, `pg_advisory_lock`, user functions), and any
//! statement the parser does not understand.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// What one statement string (possibly several statements) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementClass {
    /// Only reads: may run on a replica.
    Read,
    /// Must run on the primary.
    Write,
    /// `BEGIN`/`START TRANSACTION`; `read_only` when it says `READ ONLY` (and not
    /// `SERIALIZABLE`). Also a string that begins such a transaction and then only
    /// reads, ends or marks it (`BEGIN READ ONLY; SELECT ...; COMMIT`).
    Begin { read_only: bool },
    /// Transaction and session control: `COMMIT`/`END`, `ROLLBACK`/`ABORT` (also `TO
    /// SAVEPOINT`), `SAVEPOINT`, `RELEASE`, `SET`/`RESET` of server settings, `DISCARD`,
    /// and multi-statement strings made only of those, `BEGIN`s and reads (`BEGIN;
    /// SELECT ...; COMMIT`). They run on the primary (or where their transaction is)
    /// and change no data, so a transaction that only read, or a session that only set
    /// something, does not count as writing. (`COMMIT PREPARED` and `PREPARE
    /// TRANSACTION` do not parse, and stay writes.)
    Control,
    /// `SET pgwarden.route = ...` and friends, handled by the proxy.
    ProxySetting { name: String, value: String },
}

/// What a prepared statement does to data, as routing needs to remember it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAccess {
    /// Only reads: may run on a replica.
    Reads,
    /// Changes no data but must run where its transaction is (`BEGIN`, `COMMIT`, ...).
    WritesNothing,
    /// Starts a `READ ONLY` transaction (changes no data): it may start on a replica,
    /// and its transaction then stays there.
    BeginsReadOnly,
    /// May write (also: anything not known, and every statement when routing is off).
    MayWrite,
}

impl StatementClass {
    pub fn data_access(&self) -> DataAccess {
        match self {
            StatementClass::Read => DataAccess::Reads,
            StatementClass::Begin { read_only: true } => DataAccess::BeginsReadOnly,
            StatementClass::Begin { read_only: false }
            | StatementClass::Control
            | StatementClass::ProxySetting { .. } => DataAccess::WritesNothing,
            StatementClass::Write => DataAccess::MayWrite,
        }
    }
}

/// A routing hint written in a comment: `/* pgwarden:primary */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// What every hint starts with.
const HINT_MARK: &str = "pgwarden:";

/// The search for [`HINT_MARK`], prebuilt once (a `str::contains` builds its searcher
/// on every call, and the tenant guard asks twice per statement).
static HINT_MARK_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(HINT_MARK));

/// The hint in `sql`, if any: `pgwarden:primary` wins over `pgwarden:replica`
/// wherever each is, as before either was looked for.
pub fn hint(sql: &str) -> Option<Hint> {
    let bytes = sql.as_bytes();
    let mut replica = false;
    let mut from = 0;
    while let Some(at) = HINT_MARK_FINDER.find(&bytes[from..]) {
        let after = &bytes[from + at + HINT_MARK.len()..];
        if after.starts_with(b"primary") {
            return Some(Hint::Primary);
        }
        replica |= after.starts_with(b"replica");
        from += at + 1;
    }
    replica.then_some(Hint::Replica)
}

/// Functions that only read, beyond the user's `routing.read_only_functions`.
const BUILTIN_READ_ONLY: &[&str] = &[
    // aggregates and window functions
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "stddev",
    "variance",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // scalar
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "lower",
    "upper",
    "length",
    "char_length",
    "substring",
    "substr",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "position",
    "strpos",
    "split_part",
    "format",
    "md5",
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "exp",
    "ln",
    "log",
    "sign",
    "now",
    "current_date",
    "current_timestamp",
    "localtimestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "clock_timestamp",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_interval",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "array_length",
    "cardinality",
    "unnest",
    "array_to_string",
    "string_to_array",
    "generate_series",
    "jsonb_build_object",
    "json_build_object",
    "jsonb_build_array",
    "json_build_array",
    "to_json",
    "to_jsonb",
    "jsonb_array_elements",
    "jsonb_each",
    "jsonb_extract_path_text",
    "regexp_replace",
    "regexp_matches",
    "exists",
    "inet_server_port",
    "inet_server_addr",
    "pg_is_in_recovery",
    "pg_backend_pid",
    "version",
    "current_setting",
    "current_user",
    "session_user",
    "current_database",
    "current_schema",
    "pg_last_wal_replay_lsn",
    "pg_sleep",
    "random",
];

/// Decides read/write per statement text.
#[derive(Debug, Clone)]
pub struct Classifier {
    read_only_functions: HashSet<String>,
}

impl Classifier {
    pub fn new(extra_read_only_functions: &[String]) -> Classifier {
        let mut read_only_functions: HashSet<String> =
            BUILTIN_READ_ONLY.iter().map(|f| f.to_string()).collect();
        read_only_functions.extend(extra_read_only_functions.iter().map(|f| f.to_lowercase()));
        Classifier {
            read_only_functions,
        }
    }

    /// Classifies a (possibly multi-statement) string. Unparseable text is a write.
    pub fn classify(&self, sql: &str) -> StatementClass {
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(statements) if !statements.is_empty() => statements,
            _ => return StatementClass::Write,
        };
        if statements.len() == 1 {
            return self.classify_one(&statements[0]);
        }
        // Several statements run as one implicit transaction: a replica only if every
        // part is a plain read, or if a read-only transaction begins first and the rest
        // only read or end or mark it (`BEGIN READ ONLY; SELECT ...; COMMIT`: a
        // read-only `BEGIN`, as a lone one would be); the primary, writing nothing, if
        // the others only begin, end or mark a transaction (`BEGIN; SELECT ...;
        // COMMIT`).
        let mut all_read = true;
        let mut read_only_transaction = false;
        for (at, statement) in statements.iter().enumerate() {
            match self.classify_one(statement) {
                StatementClass::Read => {}
                StatementClass::Begin { read_only } => {
                    read_only_transaction = at == 0 && read_only;
                    all_read = false;
                }
                StatementClass::Control => all_read = false,
                _ => return StatementClass::Write,
            }
        }
        if all_read {
            StatementClass::Read
        } else if read_only_transaction {
            StatementClass::Begin { read_only: true }
        } else {
            StatementClass::Control
        }
    }

    fn classify_one(&self, statement: &Statement) -> StatementClass {
        match statement {
            Statement::Query(query) => {
                if self.query_is_read_only(query) {
                    StatementClass::Read
                } else {
                    StatementClass::Write
                }
            }
            // A hot standby refuses serializable mode ("cannot use serializable mode
            // in a hot standby"): such a transaction stays on the primary.
            Statement::StartTransaction { modes, .. } => StatementClass::Begin {
                read_only: modes.contains(&TransactionMode::AccessMode(
                    TransactionAccessMode::ReadOnly,
                )) && !modes.contains(&TransactionMode::IsolationLevel(
                    TransactionIsolationLevel::Serializable,
                )),
            },
            Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Discard { .. } => StatementClass::Control,
            Statement::Reset(reset) => proxy_reset(reset).unwrap_or(StatementClass::Control),
            Statement::Set(set) => proxy_setting(set).unwrap_or(StatementClass::Control),
            _ => StatementClass::Write,
        }
    }

    fn query_is_read_only(&self, query: &Query) -> bool {
        let mut check = ReadOnlyCheck {
            functions: &self.read_only_functions,
        };
        query.visit(&mut check).is_continue()
    }
}

/// Walks a query and breaks at the first thing a replica cannot run.
struct ReadOnlyCheck<'a> {
    functions: &'a HashSet<String>,
}

impl Visitor for ReadOnlyCheck<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            return ControlFlow::Break(()); // FOR UPDATE / SHARE
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                if !matches!(
                    *cte.query.body,
                    SetExpr::Select(_)
                        | SetExpr::Query(_)
                        | SetExpr::SetOperation { .. }
                        | SetExpr::Values(_)
                        | SetExpr::Table(_)
                ) {
                    return ControlFlow::Break(()); // WITH x AS (DELETE ...)
                }
            }
        }
        if matches!(
            *query.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &sqlparser::ast::Select) -> ControlFlow<()> {
        if select.into.is_some() {
            return ControlFlow::Break(()); // SELECT ... INTO creates a table
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        // Any statement nested inside a query is DML.
        ControlFlow::Break(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            if !self.functions.contains(&function_name(&function.name)) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// `FROM f(...)` calls `f` as surely as `SELECT f(...)` does.
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let called = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => Some(function_name(name)),
            _ => None,
        };
        match called {
            Some(name) if !self.functions.contains(&name) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn function_name(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| part.to_string().trim_matches('"').to_lowercase())
        .collect();
    match parts.as_slice() {
        [schema, name] if schema == "pg_catalog" => name.clone(),
        _ => parts.join("."),
    }
}

/// The `pgwarden.*` setting (name, value) a lone `SET` or `RESET` makes (`RESET`
/// gives an empty value), whatever the session's routing: pgwarden keeps these itself.
pub fn proxy_setting_of(sql: &str) -> Option<(String, String)> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let class = match statements.as_slice() {
        [Statement::Set(set)] => proxy_setting(set),
        [Statement::Reset(reset)] => proxy_reset(reset),
        _ => None,
    };
    match class? {
        StatementClass::ProxySetting { name, value } => Some((name, value)),
        _ => None,
    }
}

/// `RESET pgwarden.x`: the proxy setting back to its default (an empty value).
fn proxy_reset(reset: &sqlparser::ast::ResetStatement) -> Option<StatementClass> {
    let sqlparser::ast::Reset::ConfigurationParameter(name) = &reset.reset else {
        return None;
    };
    let name = name.to_string().to_lowercase();
    name.starts_with("pgwarden.")
        .then_some(StatementClass::ProxySetting {
            name,
            value: String::new(),
        })
}

fn proxy_setting(set: &sqlparser::ast::Set) -> Option<StatementClass> {
    let text = set.to_string();
    let rest = text
        .strip_prefix("SET ")
        .map(|r| r.strip_prefix("SESSION ").unwrap_or(r))?;
    let (name, value) = rest.split_once(" = ").or_else(|| rest.split_once(" TO "))?;
    let name = name.trim().to_lowercase();
    if !name.starts_with("pgwarden.") {
        return None;
    }
    let value = value
        .trim()
        .trim_matches('\'')
        .trim_matches('"')
        .to_string();
    Some(StatementClass::ProxySetting { name, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> StatementClass {
        Classifier::new(&["my_report".to_string()]).classify(sql)
    }

    #[test]
    fn table_of_cases() {
        use StatementClass::*;
        let cases: &[(&str, StatementClass)] = &[
            ("SELECT 1", Read),
            ("select * from orders where id = $1", Read),
            ("SELECT count(*), max(total) FROM orders o JOIN customers c ON c.id = o.customer_id", Read),
            ("WITH t AS (SELECT 1 AS x) SELECT x FROM t", Read),
            ("SELECT a FROM t UNION SELECT b FROM u", Read),
            ("SELECT my_report(3)", Read),
            ("SELECT now(), inet_server_port()", Read),
            ("INSERT INTO t VALUES (1)", Write),
            ("UPDATE t SET a = 1", Write),
            ("DELETE FROM t", Write),
            ("CREATE TABLE x (a int)", Write),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Write),
            ("WITH u AS (UPDATE t SET a = 2 RETURNING a) SELECT count(*) FROM u", Write),
            ("SELECT * FROM t FOR UPDATE", Write),
            ("SELECT * FROM t FOR SHARE", Write),
            ("SELECT * FROM t FOR NO KEY UPDATE", Write),
            ("SELECT nextval('s')", Write),
            ("SELECT setval('s', 10)", Write),
            ("SELECT pg_advisory_lock(1)", Write),
            ("SELECT some_user_function(1)", Write),
            ("SELECT * FROM some_user_function(1)", Write),
            ("SELECT * FROM t, LATERAL some_user_function(t.a) f", Write),
            ("SELECT * FROM generate_series(1, 3) g, unnest(ARRAY[1]) u", Read),
            ("SELECT * FROM my_report(3)", Read),
            ("SELECT * INTO TEMP t2 FROM t", Write),
            ("SELECT 1; INSERT INTO t VALUES (1)", Write),
            ("SELECT 1; SELECT 2", Read),
            ("BEGIN", Begin { read_only: false }),
            ("BEGIN READ ONLY", Begin { read_only: true }),
            ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Begin { read_only: true }),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Begin { read_only: false }),
            ("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE", Begin { read_only: false }),
            ("COMMIT", Control),
            ("END", Control),
            ("commit and chain", Control),
            ("ROLLBACK", Control),
            ("ABORT", Control),
            ("ROLLBACK TO SAVEPOINT s", Control),
            ("SAVEPOINT s", Control),
            ("RELEASE SAVEPOINT s", Control),
            ("RELEASE s", Control),
            ("COMMIT PREPARED 'x'", Write),
            ("ROLLBACK PREPARED 'x'", Write),
            ("PREPARE TRANSACTION 'x'", Write),
            ("BEGIN; SELECT 1; COMMIT", Control),
            ("BEGIN READ ONLY; SELECT 1; COMMIT", Begin { read_only: true }),
            ("BEGIN READ ONLY; SELECT 1", Begin { read_only: true }),
            ("START TRANSACTION READ ONLY; SELECT 1; SAVEPOINT a; SELECT 2; RELEASE a; END", Begin { read_only: true }),
            ("BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN; SELECT 2", Control),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT 1; COMMIT", Control),
            ("SELECT 1; BEGIN READ ONLY; SELECT 2; COMMIT", Control),
            ("BEGIN READ ONLY; SELECT nextval('s'); COMMIT", Write),
            ("BEGIN; SELECT 1; SELECT nextval('s'); COMMIT", Write),
            ("BEGIN; INSERT INTO t VALUES (1); COMMIT", Write),
            ("SELECT 1; SET pgwarden.route = primary", Write),
            ("SET work_mem = '4MB'; INSERT INTO t VALUES (1)", Write),
            ("this is not sql", Write),
            ("VACUUM t", Write),
            ("SET pgwarden.route = primary", ProxySetting { name: "pgwarden.route".into(), value: "primary".into() }),
            ("SET pgwarden.session_key TO 'user-7'", ProxySetting { name: "pgwarden.session_key".into(), value: "user-7".into() }),
            ("RESET pgwarden.route", ProxySetting { name: "pgwarden.route".into(), value: String::new() }),
            ("RESET search_path", Control),
            ("SET work_mem = '4MB'", Control),
            ("SET LOCAL statement_timeout = 0", Control),
            ("SET TIME ZONE 'UTC'", Control),
            ("RESET work_mem", Control),
            ("RESET ALL", Control),
            ("DISCARD ALL", Control),
            ("SET work_mem = '4MB'; SELECT 1", Control),
            ("SELECT set_config('work_mem', '4MB', false)", Write),
        ];
        for (sql, expected) in cases {
            assert_eq!(&class(sql), expected, "{sql}");
        }
    }

    #[test]
    fn hints_in_comments() {
        assert_eq!(hint("/* pgwarden:primary */ SELECT 1"), Some(Hint::Primary));
        assert_eq!(hint("SELECT 1 -- pgwarden:replica"), Some(Hint::Replica));
        assert_eq!(hint("SELECT 1"), None);
    }

    /// The search for the mark answers as a plain search for each whole hint would, on
    /// texts built from pieces of marks (repeated, nested, cut short, both hints).
    #[test]
    fn hints_match_a_search_for_each_whole_hint() {
        let by_contains = |sql: &str| {
            if sql.contains("pgwarden:primary") {
                Some(Hint::Primary)
            } else if sql.contains("pgwarden:replica") {
                Some(Hint::Replica)
            } else {
                None
            }
        };
        let pieces = [
            "pgwarden:",
            "primary",
            "replica",
            "pgwarden",
            ":",
            "prim",
            "x",
            " ",
            "*/",
            "pgwarden:pgwarden:",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let sql = format!("{a}{b}{c}{d}");
                        assert_eq!(hint(&sql), by_contains(&sql), "{sql}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 10_000);
    }

    #[test]
    fn proxy_settings_without_routing() {
        let setting = |name: &str, value: &str| Some((name.to_string(), value.to_string()));
        assert_eq!(
            proxy_setting_of("SET pgwarden.route = primary"),
            setting("pgwarden.route", "primary")
        );
        assert_eq!(
            proxy_setting_of("set pgwarden.session_key to 'GET /orders'"),
            setting("pgwarden.session_key", "GET /orders")
        );
        assert_eq!(
            proxy_setting_of("RESET pgwarden.session_key"),
            setting("pgwarden.session_key", "")
        );
        assert_eq!(proxy_setting_of("SET work_mem = '4MB'"), None);
        assert_eq!(
            proxy_setting_of("SET pgwarden.route = primary; SELECT 1"),
            None
        );
        assert_eq!(proxy_setting_of("SELECT 'pgwarden.route'"), None);
    }
}
