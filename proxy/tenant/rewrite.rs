//! Rewrite mode: every reference to a tenant-scoped relation, wherever it appears
//! (FROM, JOINs of every kind, subqueries in any clause, CTEs, set operations,
//! LATERAL, `UPDATE ... FROM`, `DELETE ... USING`, `MERGE ... USING`, `COPY (...)`),
//! is limited to the session's tenant.
//!
//! The common case, a plain table in a FROM list joined by inner joins or `LEFT JOIN
//! ... ON`, gets `alias.tenant_id = <tenant>` ANDed to the SELECT's WHERE (or, on the
//! nullable side of a LEFT JOIN, to that join's ON): exactly what a careful developer
//! writes, and as cheap for PostgreSQL. Every other reference (RIGHT/FULL joins,
//! NATURAL/USING on a nullable side, nested joins, column alias lists, `UPDATE ...
//! FROM`, `DELETE ... USING`, MERGE sources) becomes `(SELECT * FROM rel WHERE
//! tenant_id = <tenant>) AS alias`, which is correct in any position; PostgreSQL pulls
//! such subqueries up, at a small planning cost. Either way the client's own `OR`s
//! cannot widen the result: the added conjunct sits outside them.
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
    /// Table factors (by address, stable during the walk) limited by a predicate in
    /// `pre_visit_select`: `post_visit_table_factor` leaves them as they are.
    pinned_in_place: HashSet<usize>,
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
        static TEMPLATE: std::sync::OnceLock<Query> = std::sync::OnceLock::new();
        let mut template = TEMPLATE
            .get_or_init(|| parse_query("SELECT * FROM pgw_t WHERE pgw_t = 0"))
            .clone();
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
            pinned_in_place: HashSet::new(),
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
        let qualifier = self.scoped_qualifier(name, alias.as_ref())?;
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
                    and_into(&mut update.selection, self.ctx.pinned(&qualifier));
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
                    and_into(&mut delete.selection, self.ctx.pinned(&qualifier));
                    self.changed = true;
                }
            }
            Statement::Merge(merge) => {
                if let Some(qualifier) = self.take_target(&mut merge.table)? {
                    let on = std::mem::replace(
                        merge.on.as_mut(),
                        Expr::value(sqlparser::ast::Value::Null),
                    );
                    *merge.on = and(on, self.ctx.pinned(&qualifier));
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

    /// The common case, as cheap for PostgreSQL as a hand-written predicate: plain
    /// tables of a FROM item whose joins are all inner or LEFT ... ON get
    /// `alias.tenant_id = T` in the SELECT's WHERE (preserved side) or in their
    /// join's ON (the nullable side of a LEFT JOIN). Everything else (RIGHT/FULL
    /// joins, nested joins, column alias lists) is left to `wrap`.
    fn pin_in_place(
        &mut self,
        item: &mut sqlparser::ast::TableWithJoins,
        where_pins: &mut Vec<Expr>,
    ) -> Result<(), Rejection> {
        use sqlparser::ast::{JoinConstraint, JoinOperator};
        let simple_chain = item.joins.iter().all(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Join(_)
                    | JoinOperator::Inner(_)
                    | JoinOperator::CrossJoin(_)
                    | JoinOperator::Left(JoinConstraint::On(_))
                    | JoinOperator::LeftOuter(JoinConstraint::On(_))
            )
        });
        if !simple_chain {
            return Ok(());
        }
        if let Some(qualifier) = self.pinnable(&item.relation)? {
            where_pins.push(self.ctx.pinned(&qualifier));
            self.mark_pinned(&item.relation);
        }
        for join in &mut item.joins {
            let Some(qualifier) = self.pinnable(&join.relation)? else {
                continue;
            };
            let pin = self.ctx.pinned(&qualifier);
            match &mut join.join_operator {
                JoinOperator::Left(JoinConstraint::On(on))
                | JoinOperator::LeftOuter(JoinConstraint::On(on)) => {
                    let existing = std::mem::replace(on, Expr::value(sqlparser::ast::Value::Null));
                    *on = and(existing, pin);
                }
                _ => where_pins.push(pin),
            }
            self.mark_pinned(&join.relation);
        }
        Ok(())
    }

    /// The qualifier of a plain scoped table that can take a predicate.
    fn pinnable(&self, factor: &TableFactor) -> Result<Option<Ident>, Rejection> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return Ok(None);
        };
        if is_placeholder(name) || alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
            return Ok(None);
        }
        self.scoped_qualifier(name, alias.as_ref())
    }

    /// For a reference to a scoped relation (not a CTE of the same name): the name
    /// its predicate is qualified with, its alias or else its own name.
    fn scoped_qualifier(
        &self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
    ) -> Result<Option<Ident>, Rejection> {
        let (table, only) = effective_name(name, alias);
        if self.is_cte(&table)
            || !matches!(
                self.ctx.relation(&table, self.ctes)?,
                RelationUse::Scoped(_)
            )
        {
            return Ok(None);
        }
        self.require_tenant(&table)?;
        let qualifier = match alias {
            Some(alias) if !only => alias.name.clone(),
            _ => last_ident(&table)
                .cloned()
                .ok_or_else(|| Rejection::new(RejectionKind::Unsupported, table.to_string()))?,
        };
        Ok(Some(qualifier))
    }

    fn mark_pinned(&mut self, factor: &TableFactor) {
        self.pinned_in_place
            .insert(factor as *const TableFactor as usize);
        self.changed = true;
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
        let mut pins = Vec::new();
        for item in &mut select.from {
            if let Err(rejection) = self.pin_in_place(item, &mut pins) {
                return ControlFlow::Break(rejection);
            }
        }
        for pin in pins {
            and_into(&mut select.selection, pin);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Rejection> {
        if self
            .pinned_in_place
            .remove(&(factor as *const TableFactor as usize))
        {
            return ControlFlow::Continue(()); // limited by a predicate already
        }
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

/// `existing AND extra`, where `extra` is a predicate the guard built. `existing` is
/// put in parentheses unless it is itself an `AND` or a comparison: those bind
/// tighter than the added `AND` (their own operands came from the parser, which keeps
/// any parentheses they had). An `OR` and everything else get them, so the client's
/// own `OR`s cannot widen the result. Fewer parentheses keep the printed text free of
/// `(` for the session's look for function calls (`server/opaque_code.rs`).
pub fn and(existing: Expr, extra: Expr) -> Expr {
    let binds_tighter = matches!(
        &existing,
        Expr::BinaryOp {
            op: BinaryOperator::And
                | BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq,
            ..
        }
    );
    let left = if binds_tighter {
        existing
    } else {
        Expr::Nested(Box::new(existing))
    };
    Expr::BinaryOp {
        left: Box::new(left),
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
