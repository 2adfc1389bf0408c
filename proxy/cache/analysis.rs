//! What a statement reads and writes, from its sqlparser AST: the relation names and
//! the function names it mentions. Names only: turning them into table OIDs and
//! volatility is the catalog's job (`catalog.rs`), on the session's own server
//! connection, so the session's `search_path` applies.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CascadeOption, CopySource, Expr, ObjectName, Query, Statement, TableFactor, TableSampleKind,
    ValueWithSpan, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::row_key::{read_key, resolve, write_key, BindParameters, KeyPredicate, RowKey};

/// A read that may be cached, pending the catalog's word on its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadNames {
    /// Relation names as written (`orders`, `shop.orders`, `"Odd Name"`).
    pub relations: Vec<String>,
    /// Function names (last part, lower case unless quoted), SQL value functions
    /// (`current_user`, `current_timestamp`) included.
    pub functions: Vec<String>,
    /// The one key it depends on, pending the catalog's word on the column's type.
    pub key: Option<KeyPredicate>,
}

/// Why a statement can never be cached, whatever the catalog says.
pub type NotCacheable = &'static str;

/// What a statement that runs on the primary may change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteNames {
    /// DDL, `GRANT`/`REVOKE`, `CALL`, `DO`, unparseable text: every entry of the
    /// database goes.
    pub everything: bool,
    /// Relations mentioned by data-changing statements (read ones included: more
    /// invalidation than needed, never less).
    pub relations: BTreeSet<String>,
    /// Functions called: one that is `VOLATILE` in `pg_proc` makes it `everything`.
    pub functions: BTreeSet<String>,
    /// `UPDATE`/`DELETE` confined to one key, its value perhaps a parameter still.
    pub keyed: Vec<KeyPredicate>,
    /// Keys with known values (after [`WriteNames::bound`]).
    pub keys: BTreeSet<RowKey>,
}

impl WriteNames {
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.relations.is_empty()
            && self.functions.is_empty()
            && self.keyed.is_empty()
            && self.keys.is_empty()
    }

    /// Bytes the relation and function names take in a memo.
    pub fn names_weight(&self) -> usize {
        self.relations
            .iter()
            .chain(&self.functions)
            .map(|n| n.len() + 32)
            .sum()
    }

    pub fn merge(&mut self, other: &WriteNames) {
        self.everything |= other.everything;
        self.relations.extend(other.relations.iter().cloned());
        self.functions.extend(other.functions.iter().cloned());
        self.keyed.extend(other.keyed.iter().cloned());
        self.keys.extend(other.keys.iter().cloned());
    }

    /// [`WriteNames::merge`] of effects this one may keep: their names are moved, not
    /// copied, and the first statement of a transaction becomes its effects whole.
    pub fn merge_owned(&mut self, mut other: WriteNames) {
        if self.is_empty() {
            std::mem::swap(self, &mut other);
            self.everything |= other.everything;
            return;
        }
        // `extend`, not `append`: `BTreeSet::append` builds a new tree, dearer for the
        // few names of a statement.
        self.everything |= other.everything;
        self.relations.extend(other.relations);
        self.functions.extend(other.functions);
        self.keyed.append(&mut other.keyed);
        self.keys.extend(other.keys);
    }

    /// These effects with their key predicates' values filled in from a `Bind` (or from
    /// literals only, without one). A key whose value is not known, or not canonical,
    /// makes its table change as a whole.
    pub fn bound(&self, bind: Option<(&BindParameters<'_>, &[u32])>) -> WriteNames {
        let mut out = WriteNames {
            everything: self.everything,
            relations: self.relations.clone(),
            functions: self.functions.clone(),
            keyed: Vec::new(),
            keys: self.keys.clone(),
        };
        for predicate in &self.keyed {
            match resolve(predicate, bind) {
                Some(key) => {
                    out.keys.insert(key);
                }
                None => {
                    out.relations.insert(predicate.relation.clone());
                }
            }
        }
        out
    }
}

/// SQL value functions PostgreSQL parses as keywords; the catalog decides about them
/// under the names it knows them by (`current_timestamp` has no `pg_proc` row, so it is
/// not `IMMUTABLE`).
const VALUE_FUNCTIONS: &[&str] = &[
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_schema",
    "current_catalog",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
];

#[derive(Default)]
struct Names {
    relations: BTreeSet<String>,
    ctes: BTreeSet<String>,
    functions: BTreeSet<String>,
    locking: bool,
    non_query: bool,
    /// The next relation name visited is a table function's (`FROM f(...)`).
    function_in_from: bool,
    /// A string literal PostgreSQL reads as the current time or day (`'now'`).
    time_literal: bool,
    /// `TABLESAMPLE` without `REPEATABLE`: another sample each time.
    random_sample: bool,
}

/// Words that make a date/time literal the current time or day when it is read
/// (`'now'::timestamptz`, `date 'today'`, `'tomorrow 10:00'`). A literal containing one
/// counts whatever it is compared with or cast to: that errs towards not caching.
const TIME_WORDS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// Whether a literal (or a parameter sent as text) has one of [`TIME_WORDS`] in it.
pub fn names_a_time(literal: &[u8]) -> bool {
    literal.split(|c| !c.is_ascii_alphabetic()).any(|word| {
        TIME_WORDS
            .iter()
            .any(|t| word.eq_ignore_ascii_case(t.as_bytes()))
    })
}

/// A function's name as `pg_proc` spells it: the last part, unquoted or lowercased.
fn function_name(name: &ObjectName) -> Option<String> {
    let last = name.0.last()?.to_string();
    Some(
        match last.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => last.to_lowercase(),
        },
    )
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.locking = true;
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // `FROM generate_series(1, 3)` is a function call, not a table: its
        // volatility decides, as for any other call.
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.functions.extend(function_name(name));
                self.function_in_from = true;
            }
            TableFactor::Function { name, .. } => self.functions.extend(function_name(name)),
            TableFactor::UNNEST { .. } => {
                self.functions.insert("unnest".into());
            }
            _ => {}
        }
        if let TableFactor::Table {
            sample: Some(sample),
            ..
        } = factor
        {
            let (TableSampleKind::BeforeTableAlias(sample)
            | TableSampleKind::AfterTableAlias(sample)) = sample;
            if sample.seed.is_none() {
                self.random_sample = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, value: &ValueWithSpan) -> ControlFlow<()> {
        if value
            .clone()
            .into_string()
            .is_some_and(|s| names_a_time(s.as_bytes()))
        {
            self.time_literal = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.function_in_from) {
            return ControlFlow::Continue(());
        }
        self.relations.insert(relation.to_string());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function) => self.functions.extend(function_name(&function.name)),
            Expr::Identifier(ident) if ident.quote_style.is_none() => {
                let name = ident.value.to_lowercase();
                if VALUE_FUNCTIONS.contains(&name.as_str()) {
                    self.functions.insert(name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if !matches!(statement, Statement::Query(_)) {
            self.non_query = true;
        }
        ControlFlow::Continue(())
    }
}

fn parse(sql: &str) -> Option<Vec<Statement>> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .ok()
        .filter(|s| !s.is_empty())
}

/// The names a read reads, or why it can never be cached.
pub fn read_names(sql: &str) -> Result<ReadNames, NotCacheable> {
    let statements = parse(sql).ok_or("not understood by the parser")?;
    let mut names = Names::default();
    for statement in &statements {
        if !matches!(statement, Statement::Query(_)) {
            return Err("not a read");
        }
        let _ = statement.visit(&mut names);
        // SELECT ... INTO creates a table.
        if statement
            .to_string()
            .to_ascii_uppercase()
            .contains(" INTO ")
        {
            return Err("SELECT INTO");
        }
    }
    if names.non_query {
        return Err("data-modifying CTE");
    }
    if names.locking {
        return Err("locking clause");
    }
    if names.time_literal {
        return Err("a literal read as the current time ('now', 'today', ...)");
    }
    if names.random_sample {
        return Err("TABLESAMPLE without REPEATABLE");
    }
    let relations: Vec<String> = names
        .relations
        .into_iter()
        .filter(|r| !names.ctes.contains(&r.to_lowercase()))
        .collect();
    let key = match statements.as_slice() {
        [only] if relations.len() == 1 => read_key(only),
        _ => None,
    };
    Ok(ReadNames {
        relations,
        functions: names.functions.into_iter().collect(),
        key,
    })
}

/// Statements that change no table, whatever the classifier said about them.
const HARMLESS: &[&str] = &[
    "SET",
    "RESET",
    "SHOW",
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "DEALLOCATE",
    "DISCARD",
    "LISTEN",
    "UNLISTEN",
    "NOTIFY",
    "VACUUM",
    "ANALYZE",
    "CHECKPOINT",
    "FETCH",
    "MOVE",
    "CLOSE",
    "LOCK",
    "PREPARE",
];

/// What a statement sent to the primary may change.
pub fn write_names(sql: &str) -> WriteNames {
    let mut out = WriteNames::default();
    let Some(statements) = parse(sql) else {
        out.everything = !harmless_by_keyword(sql);
        return out;
    };
    for statement in &statements {
        let mut names = Names::default();
        let _ = statement.visit(&mut names);
        match statement {
            Statement::Query(_) if !names.non_query => {
                // A read (perhaps locking): only its function calls may write.
                out.functions.extend(names.functions);
                continue;
            }
            Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => {}
            Statement::Truncate(truncate) => {
                if matches!(truncate.cascade, Some(CascadeOption::Cascade)) {
                    // Also empties every table that references these, at any depth.
                    out.everything = true;
                    continue;
                }
                for target in &truncate.table_names {
                    names.relations.insert(target.name.to_string());
                }
            }
            Statement::Copy { source, to, .. } => {
                if *to {
                    out.functions.extend(names.functions);
                    continue;
                }
                if let CopySource::Table { table_name, .. } = source {
                    names.relations.insert(table_name.to_string());
                }
            }
            other => {
                if !harmless_by_keyword(&other.to_string()) {
                    out.everything = true;
                }
                continue;
            }
        }
        let relations: BTreeSet<String> = names
            .relations
            .into_iter()
            .filter(|r| !names.ctes.contains(&r.to_lowercase()))
            .collect();
        out.functions.extend(names.functions);
        if let Some(key) = write_key(statement) {
            if relations.len() == 1 && relations.contains(&key.relation) {
                out.keyed.push(key);
                continue;
            }
        }
        out.relations.extend(relations);
    }
    out
}

/// Whether a statement the parser could not read changes no table, by its first word.
/// `COMMIT PREPARED` does: it commits a transaction prepared earlier, perhaps by another
/// session, whose writes are not known here.
fn harmless_by_keyword(sql: &str) -> bool {
    let mut words = sql
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    if first == "COMMIT"
        && words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("PREPARED"))
    {
        return false;
    }
    HARMLESS.contains(&first.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_owned_effects_gives_what_merging_copies_does() {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect();
        let key = |value: &str| RowKey::new("acc", "id", value);
        let first = WriteNames {
            relations: names(&["acc", "history"]),
            keys: [key("1")].into(),
            ..WriteNames::default()
        };
        let second = WriteNames {
            everything: true,
            relations: names(&["acc", "tellers"]),
            functions: names(&["my_fn"]),
            keys: [key("1"), key("2")].into(),
            ..WriteNames::default()
        };
        for parts in [
            vec![first.clone()],
            vec![first.clone(), second.clone()],
            vec![second, first],
        ] {
            let (mut copied, mut moved) = (WriteNames::default(), WriteNames::default());
            for part in parts {
                copied.merge(&part);
                moved.merge_owned(part);
            }
            assert_eq!(moved, copied);
        }
    }

    #[test]
    fn reads_of_the_current_time_or_a_random_sample_are_never_cached() {
        for sql in [
            "SELECT 'now'::timestamptz",
            "SELECT timestamptz 'now'",
            "SELECT CAST('Today' AS date)",
            "SELECT * FROM t WHERE at > 'yesterday'",
            "SELECT * FROM t WHERE d = 'tomorrow 10:00'",
            "SELECT count(*) FROM t TABLESAMPLE BERNOULLI (10)",
        ] {
            assert!(read_names(sql).is_err(), "{sql}");
        }
        for sql in [
            "SELECT 'epoch'::timestamptz, 'infinity'::date",
            "SELECT * FROM t WHERE name = 'nowhere'",
            "SELECT count(*) FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (7)",
        ] {
            assert!(read_names(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn functions_in_from_are_calls_not_tables() {
        let r = read_names("SELECT count(*) FROM small, generate_series(1, 3) g").unwrap();
        assert_eq!(r.relations, vec!["small"]);
        assert!(r.functions.contains(&"generate_series".to_string()));
        let r = read_names("SELECT * FROM t, LATERAL \"MyFn\"(t.a) AS f, unnest(t.b)").unwrap();
        assert_eq!(r.relations, vec!["t"]);
        assert!(
            r.functions.contains(&"MyFn".to_string()),
            "{:?}",
            r.functions
        );
        assert!(
            r.functions.contains(&"unnest".to_string()),
            "{:?}",
            r.functions
        );
    }

    #[test]
    fn reads_name_their_tables_and_functions() {
        let r = read_names(
            "/* pgwarden:cache */ WITH x AS (SELECT * FROM shop.orders) SELECT count(*), lower(name), now() FROM x JOIN items i ON true",
        )
        .unwrap();
        assert_eq!(r.relations, vec!["items", "shop.orders"]);
        assert_eq!(r.functions, vec!["count", "lower", "now"]);
        let r = read_names("SELECT current_user, current_timestamp FROM t").unwrap();
        assert!(r.functions.contains(&"current_user".to_string()));
        assert!(r.functions.contains(&"current_timestamp".to_string()));
    }

    #[test]
    fn some_reads_are_never_cached() {
        assert_eq!(
            read_names("SELECT * FROM t FOR UPDATE"),
            Err("locking clause")
        );
        assert_eq!(read_names("UPDATE t SET a = 1"), Err("not a read"));
        assert_eq!(read_names("SELECT * INTO t2 FROM t"), Err("SELECT INTO"));
        assert!(read_names("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").is_err());
        assert!(read_names("SELEC oops").is_err());
    }

    #[test]
    fn writes_name_what_they_change() {
        let w = write_names("UPDATE shop.orders SET total = 1 WHERE id > 2");
        assert!(!w.everything);
        assert!(w.relations.contains("shop.orders"));
        let w = write_names("UPDATE shop.orders SET total = 1 WHERE id = 2");
        assert_eq!(w.keyed[0].relation, "shop.orders");
        let w = write_names("INSERT INTO t (a) VALUES (nextval('s'))");
        assert!(w.relations.contains("t"));
        assert!(w.functions.contains("nextval"));
        assert!(write_names("TRUNCATE a, b").relations.contains("b"));
        assert!(!write_names("TRUNCATE a RESTRICT").everything);
        assert!(write_names("TRUNCATE a CASCADE").everything);
        assert!(write_names("COMMIT PREPARED 'tx'").everything);
        assert!(write_names("commit  prepared 'tx'").everything);
        assert!(!write_names("PREPARE TRANSACTION 'tx'").everything);
        assert!(!write_names("ROLLBACK PREPARED 'tx'").everything);
        assert!(!write_names("COMMIT").everything);
        assert!(write_names("COPY t FROM STDIN").relations.contains("t"));
        assert!(write_names("COPY t TO STDOUT").is_empty());
        assert!(write_names("DELETE FROM \"Odd\" WHERE true")
            .relations
            .contains("\"Odd\""));
        assert!(write_names("ALTER TABLE t ADD COLUMN c int").everything);
        assert!(write_names("REVOKE SELECT ON t FROM bob").everything);
        assert!(write_names("DO $$ BEGIN END $$").everything);
        assert!(write_names("SET search_path = a").is_empty());
        assert!(write_names("BEGIN").is_empty());
        assert!(write_names("SELECT * FROM t FOR UPDATE").is_empty());
        let w = write_names("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert!(w.relations.contains("t"));
    }

    #[test]
    fn keyed_writes_stay_keyed_only_with_a_known_value() {
        let w = write_names("UPDATE a SET x = x + 1 WHERE id = 3; DELETE FROM b WHERE id = $1");
        assert!(w.relations.is_empty());
        assert_eq!(w.keyed.len(), 2);
        let literal_only = w.bound(None);
        assert_eq!(literal_only.keys.len(), 1);
        assert!(
            literal_only.relations.contains("b"),
            "$1 unknown: table-wide"
        );
        let w = write_names("UPDATE a SET x = (SELECT max(y) FROM c) WHERE id = 3");
        assert!(w.keyed.is_empty() && w.relations.contains("a"), "reads c");
        let r = read_names("SELECT * FROM a WHERE id = 3").unwrap();
        assert!(r.key.is_some());
    }
}
