//! What a statement filters, joins and sorts on, read from its SQL (sqlparser): the
//! columns of equality (`=`, `IN`, `= ANY`), range (`<`, `>`, `BETWEEN`), join
//! (`a.x = b.y`) and `ORDER BY` predicates, with the qualifier they were written with.
//! Only top-level `AND` chains count: an `OR` is not something one btree serves.

use sqlparser::ast::{
    BinaryOperator, Expr, JoinConstraint, JoinOperator, OrderByKind, Query, SetExpr, Statement,
    TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::tenant::policy::{ident_name, last_ident};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Equality,
    Range,
    Join,
    Sort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnUse {
    /// `o` in `o.customer_id`; None for a bare column.
    pub qualifier: Option<String>,
    pub column: String,
    pub kind: Use,
}

/// A relation in FROM: the name it is referred to by, and its table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub reference: String,
    pub table: String,
}

#[derive(Debug, Default, Clone)]
pub struct Predicates {
    pub relations: Vec<Relation>,
    pub columns: Vec<ColumnUse>,
}

impl Predicates {
    /// The columns of `table` (referred to as `alias`) used as `kind`, in statement
    /// order, once each. A bare column counts when `has_column` says the table has it.
    pub fn of(
        &self,
        alias: &str,
        table: &str,
        kind: Use,
        has_column: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.columns.iter().filter(|c| c.kind == kind) {
            let mine = match &c.qualifier {
                Some(q) => q == alias || q == table,
                None => has_column(&c.column),
            };
            if mine && !out.contains(&c.column) {
                out.push(c.column.clone());
            }
        }
        out
    }
}

/// The predicates of a single read; None when it does not parse.
pub fn of_sql(sql: &str) -> Option<Predicates> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    let mut found = Predicates::default();
    query_predicates(query, &mut found);
    Some(found)
}

/// The tables a statement reads (for "tables the workload uses").
pub fn tables_of_sql(sql: &str) -> Vec<String> {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Vec::new();
    };
    let mut found = Predicates::default();
    for statement in &statements {
        if let Statement::Query(query) = statement {
            query_predicates(query, &mut found);
        }
    }
    found.relations.into_iter().map(|r| r.table).collect()
}

fn query_predicates(query: &Query, found: &mut Predicates) {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            let mut inner = Predicates::default();
            query_predicates(&cte.query, &mut inner);
            found.relations.extend(inner.relations);
        }
    }
    set_predicates(&query.body, found);
    if let Some(order_by) = &query.order_by {
        if let OrderByKind::Expressions(list) = &order_by.kind {
            for item in list {
                if let Some((qualifier, column)) = column_of(&item.expr) {
                    found.columns.push(ColumnUse {
                        qualifier,
                        column,
                        kind: Use::Sort,
                    });
                }
            }
        }
    }
}

fn set_predicates(body: &SetExpr, found: &mut Predicates) {
    match body {
        SetExpr::Select(select) => {
            for from in &select.from {
                relation(&from.relation, found);
                for join in &from.joins {
                    relation(&join.relation, found);
                    let constraint = match &join.join_operator {
                        JoinOperator::Join(c)
                        | JoinOperator::Inner(c)
                        | JoinOperator::Left(c)
                        | JoinOperator::LeftOuter(c)
                        | JoinOperator::Right(c)
                        | JoinOperator::RightOuter(c)
                        | JoinOperator::FullOuter(c) => Some(c),
                        _ => None,
                    };
                    if let Some(JoinConstraint::On(on)) = constraint {
                        conjuncts(on, found);
                    }
                }
            }
            if let Some(selection) = &select.selection {
                conjuncts(selection, found);
            }
        }
        SetExpr::Query(query) => query_predicates(query, found),
        SetExpr::SetOperation { left, right, .. } => {
            set_predicates(left, found);
            set_predicates(right, found);
        }
        _ => {}
    }
}

fn relation(factor: &TableFactor, found: &mut Predicates) {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            if let Some(table) = last_ident(name).map(ident_name) {
                let reference = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_else(|| table.clone());
                found.relations.push(Relation { reference, table });
            }
        }
        TableFactor::Derived { subquery, .. } => {
            let mut inner = Predicates::default();
            query_predicates(subquery, &mut inner);
            found.relations.extend(inner.relations);
        }
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            relation(&table_with_joins.relation, found);
            for join in &table_with_joins.joins {
                relation(&join.relation, found);
            }
        }
        _ => {}
    }
}

fn conjuncts(expr: &Expr, found: &mut Predicates) {
    let mut push = |(qualifier, column): (Option<String>, String), kind| {
        found.columns.push(ColumnUse {
            qualifier,
            column,
            kind,
        })
    };
    match expr {
        Expr::Nested(inner) => conjuncts(inner, found),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, found);
            conjuncts(right, found);
        }
        Expr::BinaryOp { left, op, right } => {
            let kind = match op {
                BinaryOperator::Eq => Use::Equality,
                BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => Use::Range,
                _ => return,
            };
            match (column_of(left), column_of(right)) {
                (Some(a), Some(b)) if kind == Use::Equality => {
                    push(a, Use::Join);
                    push(b, Use::Join);
                }
                (Some(a), None) if is_value(right) => push(a, kind),
                (None, Some(b)) if is_value(left) => push(b, kind),
                _ => {}
            }
        }
        Expr::Between {
            expr,
            negated: false,
            ..
        } => {
            if let Some(c) = column_of(expr) {
                push(c, Use::Range);
            }
        }
        Expr::InList {
            expr,
            negated: false,
            ..
        } => {
            if let Some(c) = column_of(expr) {
                push(c, Use::Equality);
            }
        }
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            ..
        } => {
            if let Some(c) = column_of(left) {
                push(c, Use::Equality);
            }
        }
        _ => {}
    }
}

/// A constant or parameter (what a btree can look up), not another column.
fn is_value(expr: &Expr) -> bool {
    match expr {
        Expr::Value(_) | Expr::TypedString { .. } => true,
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => is_value(inner),
        Expr::Cast { expr, .. } => is_value(expr),
        Expr::Function(_) => true,
        _ => false,
    }
}

fn column_of(expr: &Expr) -> Option<(Option<String>, String)> {
    match expr {
        Expr::Nested(inner) => column_of(inner),
        Expr::Identifier(ident) => Some((None, ident_name(ident))),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => Some((
            Some(ident_name(&parts[parts.len() - 2])),
            ident_name(parts.last()?),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_range_join_and_sort_columns() {
        let p = of_sql(
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id
             WHERE o.status = $1 AND o.created_at > $2 AND c.region IN (1, 2) ORDER BY o.total",
        )
        .unwrap();
        let any = |_: &str| false;
        assert_eq!(p.of("o", "orders", Use::Equality, any), vec!["status"]);
        assert_eq!(p.of("o", "orders", Use::Range, any), vec!["created_at"]);
        assert_eq!(p.of("o", "orders", Use::Join, any), vec!["customer_id"]);
        assert_eq!(p.of("o", "orders", Use::Sort, any), vec!["total"]);
        assert_eq!(p.of("c", "customers", Use::Equality, any), vec!["region"]);
        let bare = of_sql("SELECT * FROM t WHERE a = 1 OR b = 2").unwrap();
        assert!(
            bare.columns.is_empty(),
            "OR is not a conjunct: {:?}",
            bare.columns
        );
        assert_eq!(
            tables_of_sql("select * from a join b on a.x = b.y"),
            vec!["a", "b"]
        );
    }
}
