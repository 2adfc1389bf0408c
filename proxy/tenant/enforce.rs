//! Enforce and audit modes: statements run unchanged, so each one must prove by
//! itself that it stays inside the tenant. Every scoped relation reference must be
//! pinned by a conjunct `alias.tenant_id = <tenant>`: in the WHERE of its own SELECT
//! (or UPDATE/DELETE), in the ON of the join that brings it in (inner or the nullable
//! side of a left join), or in MERGE's ON for its target. Writes must carry the
//! tenant. A reference in any position the checker does not understand is a
//! violation, so the check fails closed.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FromTable, Ident, JoinConstraint, JoinOperator, Select, Statement, TableFactor,
    TableWithJoins, Visit, Visitor,
};

use super::decision::{Rejection, RejectionKind};
use super::policy::{effective_name, ident_name, last_ident, GuardContext, RelationUse};
use super::predicates::{pins, Pin};
use super::writes::WriteGuard;

pub struct Checker<'a, 'c> {
    ctx: &'a GuardContext<'c>,
    ctes: &'a HashSet<String>,
    /// Scoped references seen anywhere, and those proven pinned.
    seen: usize,
    proven: usize,
    pub writes: WriteGuard,
}

impl<'a, 'c> Checker<'a, 'c> {
    pub fn new(ctx: &'a GuardContext<'c>, ctes: &'a HashSet<String>) -> Checker<'a, 'c> {
        Checker {
            ctx,
            ctes,
            seen: 0,
            proven: 0,
            writes: WriteGuard {
                check_only: true,
                tenant_params: Vec::new(),
            },
        }
    }

    pub fn check(&mut self, statement: &Statement) -> Result<(), Rejection> {
        if let ControlFlow::Break(rejection) = statement.visit(self) {
            return Err(rejection);
        }
        if self.seen > 0 && self.ctx.tenant.is_none() {
            return Err(Rejection::new(
                RejectionKind::NoTenant,
                "a tenant-scoped table",
            ));
        }
        if self.proven < self.seen {
            return Err(Rejection::new(
                RejectionKind::MissingTenantPredicate,
                "a tenant-scoped table in a position the guard cannot check",
            ));
        }
        Ok(())
    }

    fn use_pins(&mut self, found: &[Pin], qualifier: &str, alone: bool) -> bool {
        let pin = found.iter().find(|p| match &p.qualifier {
            Some(q) => q == qualifier,
            None => alone,
        });
        if let Some(pin) = pin {
            if let Some(n) = pin.param {
                self.writes.tenant_params.push(n);
            }
            return true;
        }
        false
    }

    /// A DML target: scoped targets need a pin in `condition`.
    fn check_target(
        &mut self,
        factor: &TableFactor,
        condition: Option<&Expr>,
    ) -> Result<(), Rejection> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err(Rejection::new(
                RejectionKind::Unsupported,
                factor.to_string(),
            ));
        };
        let (name, _) = effective_name(name, alias.as_ref());
        let name = &name;
        if let RelationUse::Scoped(_) = self.ctx.relation(name, self.ctes)? {
            let qualifier = qualifier_of(name, alias.as_ref().map(|a| &a.name));
            let found = condition.map(|c| pins(self.ctx, c)).unwrap_or_default();
            if !self.use_pins(&found, &qualifier, true) {
                return Err(Rejection::new(
                    RejectionKind::MissingTenantPredicate,
                    name.to_string(),
                ));
            }
            self.proven += 1;
        }
        Ok(())
    }

    fn check_statement(&mut self, statement: &Statement) -> Result<(), Rejection> {
        self.ctx.check_utility(statement)?;
        match statement {
            Statement::Update(update) => {
                self.check_target(&update.table.relation, update.selection.as_ref())?;
                self.writes
                    .check_assignments(self.ctx, &update.assignments)?;
            }
            Statement::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
                };
                for table in from {
                    self.check_target(&table.relation, delete.selection.as_ref())?;
                }
            }
            Statement::Merge(merge) => {
                self.check_target(&merge.table, Some(&merge.on))?;
                let mut clauses = merge.clauses.clone();
                self.writes.guard_merge_clauses(self.ctx, &mut clauses)?;
            }
            Statement::Insert(insert) => {
                let mut insert = insert.clone();
                self.writes.guard_insert(self.ctx, self.ctes, &mut insert)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Proves the scoped relations of one FROM item.
    fn check_from_item(&mut self, item: &TableWithJoins, where_pins: &[Pin], alone: bool) {
        let all_inner = item.joins.iter().all(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            )
        });
        let mut inner_on: Vec<Pin> = Vec::new();
        if all_inner {
            for join in &item.joins {
                if let Some(on) = on_condition(&join.join_operator) {
                    inner_on.extend(pins(self.ctx, on));
                }
            }
        }
        let mut shared = where_pins.to_vec();
        shared.extend(inner_on);
        self.check_factor(&item.relation, &shared, alone);
        for join in &item.joins {
            let mut own = shared.clone();
            if let JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Join(c)
            | JoinOperator::Inner(c) = &join.join_operator
            {
                if let JoinConstraint::On(on) = c {
                    own.extend(pins(self.ctx, on));
                }
            }
            self.check_factor(&join.relation, &own, false);
        }
    }

    fn check_factor(&mut self, factor: &TableFactor, found: &[Pin], alone: bool) {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let (name, _) = effective_name(name, alias.as_ref());
                if let Ok(RelationUse::Scoped(_)) = self.ctx.relation(&name, self.ctes) {
                    let qualifier = qualifier_of(&name, alias.as_ref().map(|a| &a.name));
                    if self.use_pins(found, &qualifier, alone) {
                        self.proven += 1;
                    }
                }
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.check_from_item(table_with_joins, found, false),
            _ => {}
        }
    }
}

impl Visitor for Checker<'_, '_> {
    type Break = Rejection;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Rejection> {
        match self.check_statement(statement) {
            Ok(()) => ControlFlow::Continue(()),
            Err(rejection) => ControlFlow::Break(rejection),
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Rejection> {
        if select.into.is_some() {
            return ControlFlow::Break(Rejection::new(
                RejectionKind::StatementNotAllowed,
                "SELECT ... INTO (creates a table)",
            ));
        }
        let where_pins = select
            .selection
            .as_ref()
            .map(|s| pins(self.ctx, s))
            .unwrap_or_default();
        let alone = select.from.len() == 1 && select.from[0].joins.is_empty();
        for item in &select.from {
            self.check_from_item(item, &where_pins, alone);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Rejection> {
        let result = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => self.ctx.check_function(name),
            TableFactor::Table { name, alias, .. } => match self
                .ctx
                .relation(&effective_name(name, alias.as_ref()).0, self.ctes)
            {
                Ok(RelationUse::Scoped(_)) => {
                    self.seen += 1;
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(rejection) => Err(rejection),
            },
            TableFactor::Function { name, .. } => self.ctx.check_function(name),
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::TableFunction { .. } => Ok(()),
            other => Err(Rejection::new(
                RejectionKind::Unsupported,
                other.to_string(),
            )),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(rejection) => ControlFlow::Break(rejection),
        }
    }

    fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<Rejection> {
        if let sqlparser::ast::SetExpr::Table(table) = query.body.as_ref() {
            return ControlFlow::Break(Rejection::new(
                RejectionKind::MissingTenantPredicate,
                table.to_string(),
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Rejection> {
        if let Expr::Function(function) = expr {
            if let Err(rejection) = self.ctx.check_function(&function.name) {
                return ControlFlow::Break(rejection);
            }
        }
        ControlFlow::Continue(())
    }
}

fn on_condition(operator: &JoinOperator) -> Option<&Expr> {
    match operator {
        JoinOperator::Join(JoinConstraint::On(on))
        | JoinOperator::Inner(JoinConstraint::On(on)) => Some(on),
        _ => None,
    }
}

/// How a relation is referred to in its query: its alias, or its own name.
fn qualifier_of(name: &sqlparser::ast::ObjectName, alias: Option<&Ident>) -> String {
    match alias {
        Some(alias) => ident_name(alias),
        None => last_ident(name).map(ident_name).unwrap_or_default(),
    }
}
