//! Rewrite mode: every reference to a tenant-scoped relation, wherever it appears
//! (FROM, JOINs of every kind, subqueries in any clause, CTEs, set operations,
//! LATERAL, `UPDATE ... FROM`, `DELETE ... USING`, `MERGE ... USING`, `COPY (...)`),
//! becomes `(SELECT * FROM rel WHERE tenant_id = <tenant>) AS alias`.
//!
//! Replacing the relation by a filtered derived table, instead of adding a predicate
//! to the surrounding WHERE, is what makes the rewrite correct in every position: on
//! the nullable side of an outer join, under `NATURAL`/`USING` joins, inside `OR`s
//! the client wrote, and in nested joins. PostgreSQL pulls such subqueries up into the
//! outer query, so the plan is the same as for a hand-written predicate.
//!
//! Targets of `UPDATE`, `DELETE` and `MERGE` cannot be derived tables; they get the
//! predicate on their alias in WHERE (or in MERGE's ON). `INSERT` rows get the tenant
//! filled in or checked; see `writes`.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, Ident, ObjectName, Query, SetExpr, Statement, TableAlias,
    TableFactor, VisitMut, VisitorMut, With,
};

use super::decision::{Rejection, RejectionKind};
use super::parse_query;
use super::policy::{
    effective_name, ident_name, last_ident, name_parts, GuardContext, RelationUse,
};
use super::writes::WriteGuard;

/// Stands in for a DML target while the rest of the statement is walked.
const TARGET_PLACEHOLDER: &str = "pgwarden_dml_target";

pub struct Rewriter<'a, 'c> {
    ctx: &'a GuardContext<'c>,
    ctes: &'a HashSet<String>,
    /// DML targets taken out of their statement, restored after the walk.
    targets: Vec<Option<TableFactor>>,
    /// CTE names visible at this point of the walk, innermost last.
    scopes: Vec<HashSet<String>>,
    /// WITH clauses taken out of their query while its body is walked.
    withs: Vec<Option<With>>,
    /// `schema.table` references wrapped without an alias: column references
    /// qualified with the schema must lose it.
    qualified: Vec<(String, String)>,
    /// `SELECT * FROM pgw_t WHERE "tenant_id" = <tenant>`, cloned per reference.
    template: Query,
    pub changed: bool,
    pub writes: WriteGuard,
}

impl<'a, 'c> Rewriter<'a, 'c> {
    pub fn new(ctx: &'a GuardContext<'c>, ctes: &'a HashSet<String>) -> Rewriter<'a, 'c> {
        let mut template = parse_query("SELECT * FROM pgw_t WHERE pgw_t = 0");
        if let SetExpr::Select(select) = template.body.as_mut() {
            select.selection = Some(Expr::BinaryOp {
                left: Box::new(Expr::Identifier(Ident::with_quote('"', ctx.column))),
                op: BinaryOperator::Eq,
                right: Box::new(ctx.tenant_literal()),
            });
        }
        Rewriter {
            ctx,
            ctes,
            targets: Vec::new(),
            scopes: Vec::new(),
            withs: Vec::new(),
            qualified: Vec::new(),
            template,
            changed: false,
            writes: WriteGuard::default(),
        }
    }

    /// Rewrites one statement in place.
    pub fn rewrite(&mut self, statement: &mut Statement) -> Result<(), Rejection> {
        if let ControlFlow::Break(rejection) = statement.visit(self) {
            return Err(rejection);
        }
        if !self.qualified.is_empty() {
            let mut fix = DropSchemaQualifiers(std::mem::take(&mut self.qualified));
            let _ = statement.visit(&mut fix);
        }
        Ok(())
    }

    /// Whether an unqualified name is a CTE visible here (CTEs shadow tables).
    fn is_cte(&self, name: &ObjectName) -> bool {
        name.0.len() == 1
            && last_ident(name)
                .is_some_and(|i| self.scopes.iter().any(|s| s.contains(&ident_name(i))))
    }

    fn require_tenant(&self, what: &ObjectName) -> Result<(), Rejection> {
        if self.ctx.tenant.is_none() {
            return Err(Rejection::new(RejectionKind::NoTenant, what.to_string()));
        }
        Ok(())
    }

    /// `alias.tenant_id = <tenant>`.
    fn pinned(&self, qualifier: &Ident) -> Expr {
        Expr::BinaryOp {
            left: Box::new(Expr::CompoundIdentifier(vec![
                qualifier.clone(),
                Ident::with_quote('"', self.ctx.column),
            ])),
            op: BinaryOperator::Eq,
            right: Box::new(self.ctx.tenant_literal()),
        }
    }

    /// Takes a DML target out of the statement (so the walk does not turn it into a
    /// derived table); returns the qualifier for its predicate when it is scoped.
    fn take_target(&mut self, factor: &mut TableFactor) -> Result<Option<Ident>, Rejection> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return Err(Rejection::new(
                RejectionKind::Unsupported,
                format!("a write to {factor}"),
            ));
        };
        let (lookup, _) = effective_name(name, alias.as_ref());
        let scoped = !self.is_cte(&lookup)
            && matches!(
                self.ctx.relation(&lookup, self.ctes)?,
                RelationUse::Scoped(_)
            );
        let qualifier = match scoped {
            true => {
                self.require_tenant(name)?;
                let qualifier = match alias {
                    Some(alias) => alias.name.clone(),
                    None => last_ident(name).cloned().ok_or_else(|| {
                        Rejection::new(RejectionKind::Unsupported, name.to_string())
                    })?,
                };
                Some(qualifier)
            }
            false => None,
        };
        let original = std::mem::replace(factor, placeholder());
        self.targets.push(Some(original));
        Ok(qualifier)
    }

    fn guard_statement(&mut self, statement: &mut Statement) -> Result<(), Rejection> {
        self.ctx.check_utility(statement)?;
        match statement {
            Statement::Update(update) => {
                if !update.table.joins.is_empty() {
                    return Err(Rejection::new(
                        RejectionKind::Unsupported,
                        "UPDATE with joined targets",
                    ));
                }
                if let Some(qualifier) = self.take_target(&mut update.table.relation)? {
                    self.writes
                        .check_assignments(self.ctx, &update.assignments)?;
                    and_into(&mut update.selection, self.pinned(&qualifier));
                    self.changed = true;
                }
            }
            Statement::Delete(delete) => {
                let from = match &mut delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
                };
                if !delete.tables.is_empty() || from.len() != 1 || !from[0].joins.is_empty() {
                    return Err(Rejection::new(
                        RejectionKind::Unsupported,
                        "DELETE from several tables",
                    ));
                }
                if let Some(qualifier) = self.take_target(&mut from[0].relation)? {
                    and_into(&mut delete.selection, self.pinned(&qualifier));
                    self.changed = true;
                }
            }
            Statement::Merge(merge) => {
                if let Some(qualifier) = self.take_target(&mut merge.table)? {
                    let on = std::mem::replace(
                        merge.on.as_mut(),
                        Expr::value(sqlparser::ast::Value::Null),
                    );
                    *merge.on = and(on, self.pinned(&qualifier));
                    self.writes
                        .guard_merge_clauses(self.ctx, &mut merge.clauses)?;
                    self.changed = true;
                }
            }
            Statement::Insert(insert) => {
                if self.writes.guard_insert(self.ctx, self.ctes, insert)? {
                    self.changed = true;
                }
                self.targets.push(None);
            }
            _ => self.targets.push(None),
        }
        Ok(())
    }

    fn restore_target(statement: &mut Statement, original: TableFactor) {
        match statement {
            Statement::Update(update) => update.table.relation = original,
            Statement::Delete(delete) => match &mut delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                    from[0].relation = original
                }
            },
            Statement::Merge(merge) => merge.table = original,
            _ => {}
        }
    }

    /// `rel [AS alias]` → `(SELECT * FROM rel WHERE tenant_id = T) AS alias`.
    fn wrap(&mut self, factor: &mut TableFactor) {
        let mut inner = std::mem::replace(factor, placeholder());
        let TableFactor::Table { name, alias, .. } = &mut inner else {
            unreachable!("only tables are wrapped");
        };
        let (table, only) = effective_name(name, alias.as_ref());
        let table_ident = last_ident(&table)
            .cloned()
            .unwrap_or_else(|| Ident::new("pgw_t"));
        let alias = if only {
            // `ONLY t` (parsed as t's alias): keep ONLY inside, name the result t.
            *name = ObjectName::from(vec![Ident::new(format!("ONLY {table_ident}"))]);
            *alias = None;
            None
        } else {
            alias.take()
        };
        let alias = alias.unwrap_or_else(|| {
            if table.0.len() > 1 {
                let parts = name_parts(&table).unwrap_or_default();
                if parts.len() >= 2 {
                    let n = parts.len();
                    self.qualified
                        .push((parts[n - 2].clone(), parts[n - 1].clone()));
                }
            }
            TableAlias {
                explicit: true,
                name: table_ident,
                columns: Vec::new(),
                at: None,
            }
        });
        let mut query = self.template.clone();
        if let SetExpr::Select(select) = query.body.as_mut() {
            select.from[0].relation = inner;
        }
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(query),
            alias: Some(alias),
            sample: None,
        };
        self.changed = true;
    }
}

impl VisitorMut for Rewriter<'_, '_> {
    type Break = Rejection;

    fn pre_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<Rejection> {
        match self.guard_statement(statement) {
            Ok(()) => ControlFlow::Continue(()),
            Err(rejection) => ControlFlow::Break(rejection),
        }
    }

    fn post_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<Rejection> {
        if let Some(Some(original)) = self.targets.pop() {
            Self::restore_target(statement, original);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Rejection> {
        // `TABLE orders` is `SELECT * FROM orders`: make it so, then walk it.
        if let SetExpr::Table(table) = query.body.as_ref() {
            let text = table.to_string();
            let name = text.trim_start_matches("TABLE").trim();
            let select = parse_query(&format!("SELECT * FROM {name}"));
            query.body = select.body;
        }
        // CTEs: each body sees the CTEs before it (and itself when RECURSIVE), the
        // query sees them all. Walk the bodies here with exactly those in scope; the
        // WITH is put back after the rest of the query has been walked.
        let mut with = query.with.take();
        let mut visible = HashSet::new();
        if let Some(with) = with.as_mut() {
            for cte in &mut with.cte_tables {
                let name = ident_name(&cte.alias.name);
                if with.recursive {
                    visible.insert(name.clone());
                }
                self.scopes.push(visible.clone());
                let walked = cte.query.visit(self);
                self.scopes.pop();
                walked?;
                visible.insert(name);
            }
        }
        self.scopes.push(visible);
        self.withs.push(with);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<Rejection> {
        self.scopes.pop();
        query.with = self.withs.pop().flatten();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut sqlparser::ast::Select) -> ControlFlow<Rejection> {
        if select.into.is_some() {
            return ControlFlow::Break(Rejection::new(
                RejectionKind::StatementNotAllowed,
                "SELECT ... INTO (creates a table)",
            ));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Rejection> {
        let result = match &*factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => self.ctx.check_function(name).map(|_| false),
            TableFactor::Table { name, .. } if is_placeholder(name) => Ok(false),
            TableFactor::Table { name, alias, .. } => {
                let (lookup, _) = effective_name(name, alias.as_ref());
                if self.is_cte(&lookup) {
                    Ok(false)
                } else {
                    match self.ctx.relation(&lookup, self.ctes) {
                        Ok(RelationUse::Scoped(_)) => self.require_tenant(&lookup).map(|_| true),
                        Ok(_) => Ok(false),
                        Err(rejection) => Err(rejection),
                    }
                }
            }
            TableFactor::Function { name, .. } => self.ctx.check_function(name).map(|_| false),
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::TableFunction { .. } => Ok(false),
            other => Err(Rejection::new(
                RejectionKind::Unsupported,
                other.to_string(),
            )),
        };
        match result {
            Ok(true) => {
                self.wrap(factor);
                ControlFlow::Continue(())
            }
            Ok(false) => ControlFlow::Continue(()),
            Err(rejection) => ControlFlow::Break(rejection),
        }
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Rejection> {
        if let Expr::Function(function) = expr {
            if let Err(rejection) = self.ctx.check_function(&function.name) {
                return ControlFlow::Break(rejection);
            }
        }
        ControlFlow::Continue(())
    }
}

fn placeholder() -> TableFactor {
    TableFactor::Table {
        name: ObjectName::from(vec![Ident::new(TARGET_PLACEHOLDER)]),
        alias: None,
        args: None,
        with_hints: Vec::new(),
        version: None,
        with_ordinality: false,
        partitions: Vec::new(),
        json_path: None,
        sample: None,
        index_hints: Vec::new(),
    }
}

fn is_placeholder(name: &ObjectName) -> bool {
    name.0.len() == 1 && last_ident(name).is_some_and(|i| i.value == TARGET_PLACEHOLDER)
}

/// `(existing) AND extra`.
pub fn and(existing: Expr, extra: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(Expr::Nested(Box::new(existing))),
        op: BinaryOperator::And,
        right: Box::new(extra),
    }
}

pub fn and_into(slot: &mut Option<Expr>, extra: Expr) {
    *slot = Some(match slot.take() {
        Some(existing) => and(existing, extra),
        None => extra,
    });
}

/// `public.orders.id` → `orders.id` once `public.orders` became `(...) AS orders`.
struct DropSchemaQualifiers(Vec<(String, String)>);

impl VisitorMut for DropSchemaQualifiers {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::CompoundIdentifier(parts) = expr {
            let n = parts.len();
            if n >= 3 {
                let schema = ident_name(&parts[n - 3]);
                let table = ident_name(&parts[n - 2]);
                if self.0.iter().any(|(s, t)| *s == schema && *t == table) {
                    parts.drain(..n - 2);
                }
            }
        }
        ControlFlow::Continue(())
    }
}
