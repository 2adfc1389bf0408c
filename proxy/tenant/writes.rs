//! Rows written to scoped relations must carry the session's tenant: `INSERT` (and
//! MERGE's `WHEN NOT MATCHED THEN INSERT`) rows get the tenant column filled in when
//! they omit it (rewrite mode) and are refused when they give another value; `UPDATE
//! ... SET tenant_id = ...` may only keep the tenant; `ON CONFLICT DO UPDATE` only
//! updates the tenant's own rows.
//!
//! A `$n` parameter in the tenant column cannot be judged from the text: its index
//! is recorded and the value is checked when the statement is bound.

use std::collections::HashSet;

use sqlparser::ast::{
    Assignment, AssignmentTarget, Expr, Ident, Insert, MergeAction, MergeClause, MergeInsertKind,
    ObjectName, OnConflictAction, OnInsert, SelectItem, SetExpr, TableObject,
};

use super::decision::{Rejection, RejectionKind};
use super::parse_query;
use super::policy::{last_ident, placeholder_index, GuardContext, RelationUse};
use super::predicates::pins;
use super::rewrite::and_into;

#[derive(Debug, Default)]
pub struct WriteGuard {
    /// Enforce mode: refuse instead of filling the tenant in.
    pub check_only: bool,
    /// Parameters that must equal the tenant at Bind (1-based).
    pub tenant_params: Vec<usize>,
}

fn foreign(what: impl Into<String>) -> Rejection {
    Rejection::new(RejectionKind::ForeignTenantValue, what)
}

impl WriteGuard {
    /// Accepts a value given for the tenant column: the tenant literal, a parameter
    /// (checked at Bind), or — when filling — `DEFAULT`, replaced by the tenant.
    fn accept_value(
        &mut self,
        ctx: &GuardContext<'_>,
        value: &mut Expr,
        what: &str,
    ) -> Result<(), Rejection> {
        let fill_default = what.starts_with("INSERT") || what.starts_with("MERGE");
        if ctx.is_tenant_literal(value) {
            return Ok(());
        }
        if let Some(n) = placeholder_index(value) {
            self.tenant_params.push(n);
            return Ok(());
        }
        let is_default = matches!(value, Expr::Identifier(Ident { value: v, quote_style: None, .. }) if v.eq_ignore_ascii_case("default"));
        if is_default && fill_default && !self.check_only {
            *value = ctx.tenant_literal();
            return Ok(());
        }
        Err(foreign(format!(
            "{what} gives {} a value other than the session's tenant ({value})",
            ctx.column
        )))
    }

    /// `SET tenant_id = ...` may only keep the tenant.
    pub fn check_assignments(
        &mut self,
        ctx: &GuardContext<'_>,
        assignments: &[Assignment],
    ) -> Result<(), Rejection> {
        for assignment in assignments {
            match &assignment.target {
                AssignmentTarget::ColumnName(column) if is_tenant(ctx, column) => {
                    let mut value = assignment.value.clone();
                    self.accept_value(ctx, &mut value, "UPDATE")?;
                }
                AssignmentTarget::Tuple(columns) if columns.iter().any(|c| is_tenant(ctx, c)) => {
                    return Err(foreign(format!(
                        "UPDATE sets {} in a column tuple",
                        ctx.column
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Guards an INSERT into a scoped relation. Returns true when the text changed.
    pub fn guard_insert(
        &mut self,
        ctx: &GuardContext<'_>,
        ctes: &HashSet<String>,
        insert: &mut Insert,
    ) -> Result<bool, Rejection> {
        let TableObject::TableName(name) = &insert.table else {
            return Err(Rejection::new(
                RejectionKind::Unsupported,
                "INSERT into a table function",
            ));
        };
        let info = match ctx.relation(name, ctes)? {
            RelationUse::Scoped(info) => info,
            _ => return Ok(false),
        };
        if ctx.tenant.is_none() {
            return Err(Rejection::new(RejectionKind::NoTenant, name.to_string()));
        }
        let table = name.to_string();
        let mut changed = false;
        if insert.columns.is_empty() {
            let width = match insert.source.as_deref().map(|q| q.body.as_ref()) {
                Some(SetExpr::Values(values)) => values
                    .rows
                    .iter()
                    .map(|r| r.content.len())
                    .max()
                    .unwrap_or(0),
                None => 0,
                Some(_) => {
                    return Err(Rejection::new(
                        RejectionKind::Unsupported,
                        format!(
                        "INSERT INTO {table} SELECT ... without a column list (name the columns)"
                    ),
                    ))
                }
            };
            if width > info.columns.len() {
                return Err(foreign(format!(
                    "INSERT INTO {table} has more values than columns"
                )));
            }
            insert.columns = info.columns[..width]
                .iter()
                .map(|c| ObjectName::from(vec![Ident::with_quote('"', c)]))
                .collect();
            changed = width > 0;
        }
        let position = insert.columns.iter().position(|c| is_tenant(ctx, c));
        let column = || ObjectName::from(vec![Ident::with_quote('"', ctx.column)]);
        match insert.source.as_mut() {
            None => {
                if self.check_only {
                    return Err(foreign(format!("INSERT INTO {table} DEFAULT VALUES does not give {}", ctx.column)));
                }
                let literal = ctx.tenant_literal();
                insert.source = Some(Box::new(parse_query(&format!("VALUES ({literal})"))));
                insert.columns = vec![column()];
                changed = true;
            }
            Some(query) => match (query.body.as_mut(), position) {
                (SetExpr::Values(values), Some(k)) => {
                    for row in &mut values.rows {
                        let value = row.content.get_mut(k).ok_or_else(|| {
                            foreign(format!("INSERT INTO {table} has a row without {}", ctx.column))
                        })?;
                        let before = value.clone();
                        self.accept_value(ctx, value, &format!("INSERT INTO {table}"))?;
                        changed |= *value != before;
                    }
                }
                (SetExpr::Values(values), None) => {
                    if self.check_only {
                        return Err(foreign(format!("INSERT INTO {table} does not give {}", ctx.column)));
                    }
                    for row in &mut values.rows {
                        row.content.push(ctx.tenant_literal());
                    }
                    insert.columns.push(column());
                    changed = true;
                }
                (SetExpr::Select(select), Some(k)) => {
                    let value = match select.projection.get_mut(k) {
                        Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) => e,
                        _ => {
                            return Err(foreign(format!(
                                "INSERT INTO {table} SELECT ... gives {} a value the guard cannot check",
                                ctx.column
                            )))
                        }
                    };
                    let mut checked = value.clone();
                    self.accept_value(ctx, &mut checked, &format!("INSERT INTO {table} SELECT"))?;
                    *value = checked;
                }
                (_, Some(_)) => {
                    return Err(foreign(format!(
                        "INSERT INTO {table} ... gives {} a value the guard cannot check (omit the column)",
                        ctx.column
                    )))
                }
                (_, None) => {
                    if self.check_only {
                        return Err(foreign(format!("INSERT INTO {table} does not give {}", ctx.column)));
                    }
                    // INSERT ... SELECT without the column: select the tenant as well.
                    let mut wrapper = parse_query("SELECT pgw_src.*, 0 FROM (SELECT 1) AS pgw_src");
                    if let SetExpr::Select(outer) = wrapper.body.as_mut() {
                        outer.projection[1] = SelectItem::UnnamedExpr(ctx.tenant_literal());
                        if let sqlparser::ast::TableFactor::Derived { subquery, .. } =
                            &mut outer.from[0].relation
                        {
                            *subquery = query.clone();
                        }
                    }
                    **query = wrapper;
                    insert.columns.push(column());
                    changed = true;
                }
            },
        }
        if let Some(on) = insert.on.as_mut() {
            let qualifier = match &insert.table_alias {
                Some(alias) => alias.alias.clone(),
                None => last_ident(name)
                    .cloned()
                    .unwrap_or_else(|| Ident::new(&info.name)),
            };
            match on {
                OnInsert::OnConflict(conflict) => {
                    if let OnConflictAction::DoUpdate(update) = &mut conflict.action {
                        self.check_assignments(ctx, &update.assignments)?;
                        if self.check_only {
                            let own = qualifier.value.to_lowercase();
                            let pinned = update.selection.as_ref().is_some_and(|s| {
                                pins(ctx, s)
                                    .iter()
                                    .any(|p| p.qualifier.as_deref() == Some(own.as_str()))
                            });
                            if !pinned {
                                return Err(Rejection::new(
                                    RejectionKind::MissingTenantPredicate,
                                    format!("ON CONFLICT DO UPDATE of {table}"),
                                ));
                            }
                        } else {
                            and_into(&mut update.selection, ctx.pinned(&qualifier));
                            changed = true;
                        }
                    }
                }
                _ => {
                    return Err(Rejection::new(
                        RejectionKind::Unsupported,
                        "ON DUPLICATE KEY UPDATE",
                    ))
                }
            }
        }
        Ok(changed)
    }

    /// MERGE's actions: inserts carry the tenant, updates keep it.
    pub fn guard_merge_clauses(
        &mut self,
        ctx: &GuardContext<'_>,
        clauses: &mut [MergeClause],
    ) -> Result<(), Rejection> {
        for clause in clauses {
            match &mut clause.action {
                MergeAction::Insert(insert) => {
                    let MergeInsertKind::Values(values) = &mut insert.kind else {
                        return Err(foreign("MERGE ... INSERT ROW".to_string()));
                    };
                    match insert.columns.iter().position(|c| is_tenant(ctx, c)) {
                        Some(k) => {
                            for row in &mut values.rows {
                                let value = row.content.get_mut(k).ok_or_else(|| {
                                    foreign("MERGE ... INSERT row without the tenant".to_string())
                                })?;
                                self.accept_value(ctx, value, "MERGE ... INSERT")?;
                            }
                        }
                        None if self.check_only || insert.columns.is_empty() => {
                            return Err(foreign(format!(
                                "MERGE ... INSERT does not name {}",
                                ctx.column
                            )))
                        }
                        None => {
                            for row in &mut values.rows {
                                row.content.push(ctx.tenant_literal());
                            }
                            insert
                                .columns
                                .push(ObjectName::from(vec![Ident::with_quote('"', ctx.column)]));
                        }
                    }
                }
                MergeAction::Update(update) => {
                    let sqlparser::ast::MergeUpdateKind::Set(assignments) = &update.kind else {
                        return Err(foreign("MERGE ... UPDATE without SET".to_string()));
                    };
                    self.check_assignments(ctx, assignments)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn is_tenant(ctx: &GuardContext<'_>, column: &ObjectName) -> bool {
    last_ident(column).is_some_and(|ident| ctx.is_tenant_column(ident))
}
