//! Which relations a condition pins to the session's tenant: the conjuncts of the
//! form `alias.tenant_id = <tenant>` (or `= $n`, checked at Bind). Only top-level
//! `AND` chains count; anything under `OR`/`NOT` proves nothing.

use sqlparser::ast::{BinaryOperator, Expr};

use super::policy::{ident_name, placeholder_index, GuardContext};

/// One conjunct pinning the tenant column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The qualifier (`o` in `o.tenant_id`), None for a bare `tenant_id`.
    pub qualifier: Option<String>,
    /// The parameter compared with, when it is `$n` rather than a literal.
    pub param: Option<usize>,
}

pub fn pins(ctx: &GuardContext<'_>, expr: &Expr) -> Vec<Pin> {
    let mut found = Vec::new();
    collect(ctx, expr, &mut found);
    found
}

fn collect(ctx: &GuardContext<'_>, expr: &Expr, found: &mut Vec<Pin>) {
    match expr {
        Expr::Nested(inner) => collect(ctx, inner, found),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            collect(ctx, left, found);
            collect(ctx, right, found);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            for (column, value) in [(left, right), (right, left)] {
                if let Some(qualifier) = tenant_column(ctx, column) {
                    if ctx.is_tenant_literal(value) {
                        found.push(Pin {
                            qualifier,
                            param: None,
                        });
                    } else if let Some(n) = placeholder_index(value) {
                        found.push(Pin {
                            qualifier,
                            param: Some(n),
                        });
                    }
                }
            }
        }
        _ => {}
    }
}

/// `Some(None)` for `tenant_id`, `Some(Some("o"))` for `o.tenant_id`.
fn tenant_column(ctx: &GuardContext<'_>, expr: &Expr) -> Option<Option<String>> {
    match expr {
        Expr::Nested(inner) => tenant_column(ctx, inner),
        Expr::Identifier(ident) if ctx.is_tenant_column(ident) => Some(None),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let column = parts.last()?;
            let qualifier = &parts[parts.len() - 2];
            ctx.is_tenant_column(column)
                .then(|| Some(ident_name(qualifier)))
        }
        _ => None,
    }
}
