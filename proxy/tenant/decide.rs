//! From statement text to a [`Decision`]: parse, walk every statement in the
//! string with the mode's walker, and print the rewritten text when it changed.
//! A string is judged as a whole: one refused part refuses all of it.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Query, Statement, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::decision::{Decision, Rejection, RejectionKind};
use super::enforce::Checker;
use super::policy::{ident_name, GuardContext};
use super::rewrite::Rewriter;
use crate::config::TenancyMode;

pub fn decide(ctx: &GuardContext<'_>, mode: TenancyMode, sql: &str) -> Decision {
    let mut statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => statements,
        Err(_) if first_word_is(sql, "do") => {
            return Decision::Reject(Rejection::new(
                RejectionKind::StatementNotAllowed,
                "DO (an anonymous code block can run any SQL)",
            ))
        }
        Err(error) => {
            return Decision::Reject(Rejection::new(
                RejectionKind::Unparseable,
                error.to_string(),
            ))
        }
    };
    judge(ctx, mode, sql, &mut statements)
}

/// Judges a statement shape (a simple-protocol text with its literals replaced by
/// `$1..$n`) as a prepared statement with those parameters would be judged. None
/// unless it is one SELECT, INSERT, UPDATE, DELETE or MERGE: what can be prepared,
/// so what the guard already judges without knowing the values.
pub fn decide_shape(ctx: &GuardContext<'_>, mode: TenancyMode, shape: &str) -> Option<Decision> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, shape).ok()?;
    let preparable = matches!(
        statements.as_slice(),
        [Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_)]
    );
    preparable.then(|| judge(ctx, mode, shape, &mut statements))
}

fn judge(
    ctx: &GuardContext<'_>,
    mode: TenancyMode,
    sql: &str,
    statements: &mut [Statement],
) -> Decision {
    if statements.is_empty() {
        return Decision::Pass;
    }
    let ctes = cte_names(statements);
    match mode {
        TenancyMode::Off => Decision::Pass,
        TenancyMode::Rewrite => {
            // Reads the enforce walk proves pinned to the tenant already return only the
            // tenant's rows: they run as the client wrote them, which spares PostgreSQL
            // planning the guard's derived tables. Writes are rewritten as before (the
            // rewrite names the tenant column of an INSERT instead of trusting the
            // catalog's column order), and so is a read whose proof needs parameters
            // checked at Bind, so that a foreign value still finds no rows.
            if statements.iter().all(only_reads)
                && matches!(check(ctx, &ctes, statements), Ok(Decision::Pass))
            {
                return Decision::Pass;
            }
            let mut rewriter = Rewriter::new(ctx, &ctes);
            for statement in statements.iter_mut() {
                if let Err(rejection) = rewriter.rewrite(statement) {
                    return Decision::Reject(rejection);
                }
            }
            let tenant_params = std::mem::take(&mut rewriter.writes.tenant_params);
            if !rewriter.changed {
                return pass(tenant_params);
            }
            let mut text = String::new();
            if let Some(hint) = routing_hint(sql) {
                text.push_str(hint);
                text.push(' ');
            }
            let printed: Vec<String> = statements.iter().map(Statement::to_string).collect();
            text.push_str(&printed.join("; "));
            Decision::Rewritten {
                sql: text.into(),
                tenant_params,
            }
        }
        TenancyMode::Enforce | TenancyMode::Audit => {
            check(ctx, &ctes, statements).unwrap_or_else(Decision::Reject)
        }
    }
}

/// For a shape that is one read (see [`decide_shape`]): the parameters that pin it
/// to the tenant, when the enforce walk passes it with them, so that in rewrite mode
/// a text of the shape with the tenant there runs as written. None otherwise.
pub fn pinned_read_places(ctx: &GuardContext<'_>, shape: &str) -> Option<Vec<usize>> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, shape).ok()?;
    let [statement] = statements.as_slice() else {
        return None;
    };
    if !only_reads(statement) {
        return None;
    }
    match check(ctx, &cte_names(&statements), &statements) {
        Ok(Decision::PassWithParams { tenant_params }) => Some(tenant_params),
        _ => None,
    }
}

/// Whether `statement` is a query with no statement inside it (no data-modifying
/// `WITH`).
fn only_reads(statement: &Statement) -> bool {
    struct CountStatements(usize);
    impl Visitor for CountStatements {
        type Break = ();
        fn pre_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
            self.0 += 1;
            ControlFlow::Continue(())
        }
    }
    let mut count = CountStatements(0);
    let _ = statement.visit(&mut count);
    matches!(statement, Statement::Query(_)) && count.0 == 1
}

/// The enforce walk over every statement: Pass (perhaps with parameters to check at
/// Bind), or the first refusal.
fn check(
    ctx: &GuardContext<'_>,
    ctes: &HashSet<String>,
    statements: &[Statement],
) -> Result<Decision, Rejection> {
    let mut checker = Checker::new(ctx, ctes);
    for statement in statements {
        checker.check(statement)?;
    }
    Ok(pass(std::mem::take(&mut checker.writes.tenant_params)))
}

/// Whether the first word of the text (after comments) is `word`.
fn first_word_is(sql: &str, word: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

fn pass(tenant_params: Vec<usize>) -> Decision {
    if tenant_params.is_empty() {
        Decision::Pass
    } else {
        Decision::PassWithParams { tenant_params }
    }
}

/// Routing hints live in comments, which printing drops: keep them.
fn routing_hint(sql: &str) -> Option<&'static str> {
    match crate::route::hint(sql)? {
        crate::route::Hint::Primary => Some("/* pgwarden:primary */"),
        crate::route::Hint::Replica => Some("/* pgwarden:replica */"),
    }
}

/// Every CTE name defined anywhere in the statements.
fn cte_names(statements: &[Statement]) -> HashSet<String> {
    struct Collect(HashSet<String>);
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.0.insert(ident_name(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut collect = Collect(HashSet::new());
    for statement in statements {
        let _ = statement.visit(&mut collect);
    }
    collect.0
}
