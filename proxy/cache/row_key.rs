//! Key-scoped invalidation: reads and writes pinned to one value of one integer column.
//!
//! `SELECT ... FROM t WHERE id = 5` depends only on the rows of `t` whose `id` is 5, and
//! `UPDATE t SET x = 1 WHERE id = 7` changes only rows whose `id` was and stays 7. Such a
//! write need not drop the first read's entry. This file finds those predicates in the
//! AST (`id = literal` or `id = $n` at the top of a `WHERE` conjunction, one plain table,
//! nothing that could read or move other rows) and turns their values into one canonical
//! text, so `5`, `'5'` and a binary int4 parameter all name the same key.
//!
//! What the AST cannot know (is the column an integer, is the relation a plain table
//! without triggers or rules) the catalog confirms (`catalog.rs`); when in doubt the
//! statement is table-wide, which is never wrong, only slower.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, Query, SetExpr, Statement, TableFactor,
    TableWithJoins, Value, Visit, Visitor,
};

/// Where a key predicate's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// Canonical decimal text of a literal.
    Literal(String),
    /// `$n`, 0-based.
    Param(usize),
}

/// `relation.column = value`, with `value` perhaps still a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPredicate {
    /// The relation as written (`t`, `shop.t`).
    pub relation: String,
    /// A plain lower-case column name.
    pub column: String,
    pub value: KeyValue,
}

/// A key predicate whose value is known: what an entry depends on, or a write changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub relation: String,
    pub column: String,
    pub value: String,
}

#[cfg(test)]
impl RowKey {
    pub fn new(relation: &str, column: &str, value: &str) -> RowKey {
        RowKey {
            relation: relation.into(),
            column: column.into(),
            value: value.into(),
        }
    }
}

/// The hash of a (column, value) pair, as the invalidation marks keep it. A collision
/// only invalidates more entries than needed. The process's seeded hash: marks are only
/// compared within a process (another instance hashes the change list it is sent).
pub fn key_hash(column: &str, value: &str) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = crate::stats::process_hasher().build_hasher();
    column.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

pub fn column_hash(column: &str) -> u64 {
    key_hash(column, "")
}

/// The canonical text of an integer: what PostgreSQL's int8out would print.
pub fn canonical_int(text: &str) -> Option<String> {
    let n: i64 = text.parse().ok()?;
    let canonical = n.to_string();
    (canonical == text).then_some(canonical)
}

/// A parameter's value as a canonical integer: text format, or binary int2/int4/int8
/// when the declared type is unknown (0: inferred from the integer column) or an
/// integer type.
pub fn param_key(value: &[u8], binary: bool, declared_type: u32) -> Option<String> {
    if !binary {
        return canonical_int(std::str::from_utf8(value).ok()?);
    }
    if !matches!(declared_type, 0 | 20 | 21 | 23) {
        return None;
    }
    let n = match value.len() {
        2 => i64::from(i16::from_be_bytes(value.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(value.try_into().ok()?)),
        8 => i64::from_be_bytes(value.try_into().ok()?),
        _ => return None,
    };
    Some(n.to_string())
}

/// A plain column name (`id`, `t.id`) as PostgreSQL folds it; `None` for anything quoted
/// or unusual (kept out of NOTIFY payloads and catalog literals).
fn column_of(expr: &Expr, relation_alias: &[String]) -> Option<String> {
    let ident = match expr {
        Expr::Identifier(ident) => ident,
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            let qualifier = parts[0].value.to_lowercase();
            if parts[0].quote_style.is_some() || !relation_alias.contains(&qualifier) {
                return None;
            }
            &parts[1]
        }
        Expr::Nested(inner) => return column_of(inner, relation_alias),
        _ => return None,
    };
    if ident.quote_style.is_some() {
        return None;
    }
    let name = ident.value.to_lowercase();
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    plain.then_some(name)
}

fn value_of(expr: &Expr) -> Option<KeyValue> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => canonical_int(n).map(KeyValue::Literal),
            Value::SingleQuotedString(s) => canonical_int(s).map(KeyValue::Literal),
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(KeyValue::Param)
            }
            _ => None,
        },
        Expr::Nested(inner) => value_of(inner),
        _ => None,
    }
}

/// The `column = value` terms at the top of a `WHERE` conjunction.
fn equalities(selection: &Expr, aliases: &[String], out: &mut Vec<(String, KeyValue)>) {
    match selection {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            equalities(left, aliases, out);
            equalities(right, aliases, out);
        }
        Expr::Nested(inner) => equalities(inner, aliases, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let pair = match (column_of(left, aliases), value_of(right)) {
                (Some(c), Some(v)) => Some((c, v)),
                _ => column_of(right, aliases).zip(value_of(left)),
            };
            out.extend(pair);
        }
        _ => {}
    }
}

/// The one plain table a statement reads or writes, with the names it may be called by.
fn single_table(from: &[TableWithJoins]) -> Option<(String, Vec<String>)> {
    let [only] = from else { return None };
    if !only.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name, alias, args, ..
    } = &only.relation
    else {
        return None;
    };
    if args.is_some() {
        return None;
    }
    let relation = name.to_string();
    let mut aliases = vec![relation.to_lowercase()];
    if let Some(last) = name.0.last() {
        aliases.push(last.to_string().to_lowercase());
    }
    if let Some(alias) = alias {
        if !alias.columns.is_empty() {
            return None;
        }
        aliases = vec![alias.name.value.to_lowercase()];
    }
    Some((relation, aliases))
}

/// Counts nested queries (subqueries, CTEs): a keyed statement has none beyond its own.
#[derive(Default)]
struct QueryCount(usize);

impl Visitor for QueryCount {
    type Break = ();
    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.0 += 1;
        ControlFlow::Continue(())
    }
}

fn queries_in(statement: &Statement) -> usize {
    let mut count = QueryCount::default();
    let _ = statement.visit(&mut count);
    count.0
}

fn first_key(table: (String, Vec<String>), selection: Option<&Expr>) -> Option<KeyPredicate> {
    let (relation, aliases) = table;
    let mut found = Vec::new();
    equalities(selection?, &aliases, &mut found);
    let (column, value) = found.into_iter().next()?;
    Some(KeyPredicate {
        relation,
        column,
        value,
    })
}

/// The key a read depends on: one plain table, no joins, no subqueries, no CTEs, no set
/// operations, and `column = value` in its `WHERE` conjunction.
pub fn read_key(statement: &Statement) -> Option<KeyPredicate> {
    let Statement::Query(query) = statement else {
        return None;
    };
    if query.with.is_some() || queries_in(statement) != 1 {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    first_key(single_table(&select.from)?, select.selection.as_ref())
}

/// The key an `UPDATE` or `DELETE` is confined to: one plain table, no `FROM`/`USING`,
/// `column = value` in its `WHERE` conjunction, and (for `UPDATE`) that column not
/// assigned. Subqueries only read, so they may appear.
pub fn write_key(statement: &Statement) -> Option<KeyPredicate> {
    match statement {
        Statement::Update(update) => {
            if update.from.is_some() || update.limit.is_some() {
                return None;
            }
            let table = single_table(std::slice::from_ref(&update.table))?;
            let key = first_key(table, update.selection.as_ref())?;
            // The column as PostgreSQL names it: `"id"` and `ID` are both `id`.
            let assigns_key = update.assignments.iter().any(|a| match &a.target {
                AssignmentTarget::ColumnName(name) => {
                    match name.0.last().and_then(|last| last.as_ident()) {
                        Some(ident) if ident.quote_style.is_some() => ident.value == key.column,
                        Some(ident) => ident.value.to_lowercase() == key.column,
                        None => true,
                    }
                }
                AssignmentTarget::Tuple(_) => true,
            });
            (!assigns_key).then_some(key)
        }
        Statement::Delete(delete) => {
            if delete.using.is_some() || !delete.tables.is_empty() || delete.limit.is_some() {
                return None;
            }
            let from = match &delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
            };
            first_key(single_table(from)?, delete.selection.as_ref())
        }
        _ => None,
    }
}

/// The parameters of a `Bind` (after its portal and statement names).
pub struct BindParameters<'a> {
    formats: Vec<i16>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> BindParameters<'a> {
    pub fn parse(rest: &'a [u8]) -> Option<BindParameters<'a>> {
        let mut at = rest;
        let take_i16 = |at: &mut &[u8]| -> Option<i16> {
            let (head, tail) = at.split_at_checked(2)?;
            *at = tail;
            Some(i16::from_be_bytes([head[0], head[1]]))
        };
        let format_count = usize::try_from(take_i16(&mut at)?).ok()?;
        let mut formats = Vec::with_capacity(format_count);
        for _ in 0..format_count {
            formats.push(take_i16(&mut at)?);
        }
        let count = usize::try_from(take_i16(&mut at)?).ok()?;
        let mut values = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let (len, tail) = at.split_at_checked(4)?;
            at = tail;
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if len < 0 {
                values.push(None);
                continue;
            }
            let (value, tail) = at.split_at_checked(usize::try_from(len).ok()?)?;
            at = tail;
            values.push(Some(value));
        }
        Some(BindParameters { formats, values })
    }

    /// Parameters sent as text, with these values.
    pub fn text(values: Vec<&'a [u8]>) -> BindParameters<'a> {
        BindParameters {
            formats: Vec::new(),
            values: values.into_iter().map(Some).collect(),
        }
    }

    /// Whether parameter `n` is sent in binary (no format code: text; one: for all).
    fn is_binary(&self, n: usize) -> bool {
        match self.formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(n) == Some(&1),
        }
    }

    /// Whether some parameter sent as text satisfies `test`.
    pub fn any_text(&self, test: impl Fn(&[u8]) -> bool) -> bool {
        self.values
            .iter()
            .enumerate()
            .any(|(n, value)| !self.is_binary(n) && value.is_some_and(&test))
    }

    /// Parameter `n` as a canonical integer key, given the statement's declared types.
    pub fn key(&self, n: usize, declared_types: &[u32]) -> Option<String> {
        let value = (*self.values.get(n)?)?;
        if self.formats.len() > 1 && n >= self.formats.len() {
            return None; // no format code for it: a malformed Bind
        }
        param_key(
            value,
            self.is_binary(n),
            declared_types.get(n).copied().unwrap_or(0),
        )
    }
}

/// Declared parameter types from a `Parse` definition (query, NUL, count, OIDs).
pub fn declared_types(definition: &[u8]) -> Vec<u32> {
    let Some((_, types)) = crate::protocol::extended::cstr(definition) else {
        return Vec::new();
    };
    types
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Resolves a predicate's value: a literal as it is, a parameter from the `Bind`.
pub fn resolve(
    predicate: &KeyPredicate,
    bind: Option<(&BindParameters<'_>, &[u32])>,
) -> Option<RowKey> {
    let value = match &predicate.value {
        KeyValue::Literal(v) => v.clone(),
        KeyValue::Param(n) => {
            let (params, types) = bind?;
            params.key(*n, types)?
        }
    };
    Some(RowKey {
        relation: predicate.relation.clone(),
        column: predicate.column.clone(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn one(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0)
    }

    fn lit(relation: &str, column: &str, v: &str) -> Option<KeyPredicate> {
        Some(KeyPredicate {
            relation: relation.into(),
            column: column.into(),
            value: KeyValue::Literal(v.into()),
        })
    }

    #[test]
    fn reads_pinned_to_one_key() {
        assert_eq!(
            read_key(&one(
                "SELECT aid, abalance FROM pgbench_accounts WHERE aid = 5"
            )),
            lit("pgbench_accounts", "aid", "5")
        );
        assert_eq!(
            read_key(&one(
                "SELECT * FROM shop.t x WHERE x.flag AND (x.id = '12')"
            )),
            lit("shop.t", "id", "12")
        );
        assert_eq!(
            read_key(&one("SELECT * FROM t WHERE $2 = id AND a > 1")).map(|k| k.value),
            Some(KeyValue::Param(1))
        );
        for not_keyed in [
            "SELECT * FROM t WHERE id = 5 OR id = 6",
            "SELECT * FROM t WHERE id = 05",
            "SELECT * FROM t WHERE id = 5.0",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u) AND id = 5",
            "SELECT * FROM t JOIN u ON true WHERE t.id = 5",
            "SELECT * FROM t WHERE \"Id\" = 5",
            "SELECT * FROM t WHERE u.id = 5",
            "WITH c AS (SELECT 1) SELECT * FROM t WHERE id = 5",
            "SELECT * FROM t WHERE id = 5 UNION SELECT * FROM t WHERE id = 6",
            "SELECT * FROM f(1) WHERE id = 5",
            "SELECT * FROM t WHERE id = $1::numeric",
        ] {
            assert_eq!(read_key(&one(not_keyed)), None, "{not_keyed}");
        }
    }

    #[test]
    fn writes_confined_to_one_key() {
        assert_eq!(
            write_key(&one(
                "UPDATE pgbench_accounts SET abalance = abalance + -3 WHERE aid = 17"
            )),
            lit("pgbench_accounts", "aid", "17")
        );
        assert_eq!(
            write_key(&one("DELETE FROM t WHERE id = $1")).map(|k| k.value),
            Some(KeyValue::Param(0))
        );
        for not_keyed in [
            "UPDATE t SET id = 6 WHERE id = 5",
            "UPDATE t SET \"id\" = 6 WHERE id = 5",
            "UPDATE t SET ID = 6 WHERE id = 5",
            "UPDATE t x SET id = 6 WHERE x.id = 5",
            "UPDATE t SET (a, id) = (1, 2) WHERE id = 5",
            "UPDATE t SET a = 1 FROM u WHERE t.id = 5",
            "UPDATE t SET a = 1 WHERE id > 5",
            "DELETE FROM t USING u WHERE t.id = 5",
            "INSERT INTO t (id) VALUES (5)",
        ] {
            assert_eq!(write_key(&one(not_keyed)), None, "{not_keyed}");
        }
    }

    #[test]
    fn values_have_one_spelling() {
        assert_eq!(canonical_int("42").as_deref(), Some("42"));
        assert_eq!(canonical_int("-7").as_deref(), Some("-7"));
        for odd in ["042", "+4", " 4", "4.0", "1e3", "99999999999999999999"] {
            assert_eq!(canonical_int(odd), None, "{odd}");
        }
        assert_eq!(param_key(b"42", false, 0).as_deref(), Some("42"));
        assert_eq!(
            param_key(&42i32.to_be_bytes(), true, 0).as_deref(),
            Some("42")
        );
        assert_eq!(
            param_key(&(-2i64).to_be_bytes(), true, 20).as_deref(),
            Some("-2")
        );
        assert_eq!(param_key(&42i32.to_be_bytes(), true, 700), None, "float4");
        assert_eq!(param_key(&[0, 1, 2], true, 0), None);
    }

    #[test]
    fn bind_parameters_are_read() {
        // formats: 1 (binary for all); 2 params: int4 7, NULL
        let mut rest = vec![0, 1, 0, 1, 0, 2];
        rest.extend_from_slice(&4i32.to_be_bytes());
        rest.extend_from_slice(&7i32.to_be_bytes());
        rest.extend_from_slice(&(-1i32).to_be_bytes());
        rest.extend_from_slice(&[0, 0]);
        let params = BindParameters::parse(&rest).unwrap();
        assert_eq!(params.key(0, &[]).as_deref(), Some("7"));
        assert_eq!(params.key(1, &[]), None);
        assert_eq!(params.key(2, &[]), None);
        let mut def = b"SELECT $1\0".to_vec();
        def.extend_from_slice(&[0, 1, 0, 0, 0, 23]);
        assert_eq!(declared_types(&def), vec![23]);
    }
}
