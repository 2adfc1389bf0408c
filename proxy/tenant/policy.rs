//! The rules both guard walks share: what a name refers to, which functions and
//! statements a tenant session may use, which settings it may change, and how a
//! value is recognised as "the session's tenant".

use std::collections::HashSet;

use sqlparser::ast::{
    BinaryOperator, CopySource, CopyTarget, Expr, Ident, ObjectName, ObjectNamePart, Reset, Set,
    Statement, TableAlias, Value,
};

use super::catalog::{Catalog, Lookup, RelationInfo, Scope};
use super::decision::{Rejection, RejectionKind};
use crate::config::TenantValueType;

/// Everything a walk needs to judge one statement.
pub struct GuardContext<'a> {
    pub catalog: &'a Catalog,
    /// The tenant column, as PostgreSQL stores its name.
    pub column: &'a str,
    pub value_type: TenantValueType,
    pub safe_functions: &'a HashSet<String>,
    pub set_config: Option<&'a str>,
    /// The session's tenant; None makes every scoped reference a rejection.
    pub tenant: Option<&'a str>,
}

/// Names that are SQL syntax rather than `pg_proc` entries.
const SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "grouping",
    "row",
    "array",
];

/// System views that show other sessions' statement texts (literals included) or
/// sampled column values of every tenant (`pg_stats`' most common values).
const OTHER_SESSIONS_VIEWS: &[&str] = &[
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_prepared_statements",
    "pg_locks",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
];

/// Built-in functions that run SQL given as text, read whole tables by name,
/// change settings, or reach outside the database.
fn dangerous_builtin(name: &str) -> bool {
    name.contains("_to_xml")
        || name.starts_with("query_to_")
        || name.starts_with("dblink")
        || name.starts_with("pg_read_")
        || name.starts_with("pg_ls_")
        || name.starts_with("pg_file_")
        || name.starts_with("pg_logical_slot")
        || matches!(
            name,
            "ts_stat" | "set_config" | "lo_import" | "lo_export" | "pg_stat_file"
        )
}

/// An identifier as PostgreSQL resolves it: unquoted names fold to lower case.
pub fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The parts of a dotted name; None when a part is not a plain identifier.
pub fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident_name(ident)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// The last identifier of a name (the relation or column itself).
pub fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(ident) => Some(ident),
        ObjectNamePart::Function(_) => None,
    }
}

/// The relation a table factor names. sqlparser reads `FROM ONLY orders` as the
/// relation `ONLY` with the alias `orders`: that is the relation `orders`, with
/// `only` set.
pub fn effective_name(name: &ObjectName, alias: Option<&TableAlias>) -> (ObjectName, bool) {
    if let (Some(ident), Some(alias)) = (last_ident(name), alias) {
        let only = name.0.len() == 1
            && ident.quote_style.is_none()
            && ident.value.eq_ignore_ascii_case("only")
            && !alias.explicit
            && alias.columns.is_empty();
        if only {
            return (ObjectName::from(vec![alias.name.clone()]), true);
        }
    }
    (name.clone(), false)
}

/// What a relation name in a statement refers to, for the guard.
pub enum RelationUse<'a> {
    Scoped(&'a RelationInfo),
    Global,
    /// A name of a CTE of the statement.
    CommonTableExpression,
}

impl GuardContext<'_> {
    /// Resolves a relation name, refusing unknown names and unguardable views.
    pub fn relation(
        &self,
        name: &ObjectName,
        cte_names: &HashSet<String>,
    ) -> Result<RelationUse<'_>, Rejection> {
        let parts = name_parts(name)
            .ok_or_else(|| Rejection::new(RejectionKind::Unsupported, name.to_string()))?;
        let (schema, relation) = match parts.as_slice() {
            [relation] => (None, relation.as_str()),
            [schema, relation] | [_, schema, relation] => {
                (Some(schema.as_str()), relation.as_str())
            }
            _ => {
                return Err(Rejection::new(
                    RejectionKind::UnknownRelation,
                    name.to_string(),
                ))
            }
        };
        if OTHER_SESSIONS_VIEWS.contains(&relation) && !cte_names.contains(relation) {
            return Err(Rejection::new(
                RejectionKind::StatementNotAllowed,
                format!("reading {relation} (it shows other sessions' statements or other tenants' values)"),
            ));
        }
        match self.catalog.lookup(schema, relation) {
            Lookup::Found(info) => match info.scope {
                Scope::Scoped => Ok(RelationUse::Scoped(info)),
                Scope::Global => Ok(RelationUse::Global),
                Scope::Unguardable => Err(Rejection::new(
                    RejectionKind::UnguardableView,
                    format!("{}.{}", info.schema, info.name),
                )),
            },
            Lookup::Unknown if schema.is_none() && cte_names.contains(relation) => {
                Ok(RelationUse::CommonTableExpression)
            }
            Lookup::Unknown => Err(Rejection::new(
                RejectionKind::UnknownRelation,
                name.to_string(),
            )),
        }
    }

    /// Refuses calls to functions that could read other tenants' rows.
    pub fn check_function(&self, name: &ObjectName) -> Result<(), Rejection> {
        let refuse = || Rejection::new(RejectionKind::FunctionNotAllowed, name.to_string());
        let parts = name_parts(name).ok_or_else(refuse)?;
        let (schema, function) = match parts.as_slice() {
            [function] => (None, function.as_str()),
            [schema, function] => (Some(schema.as_str()), function.as_str()),
            _ => return Err(refuse()),
        };
        let qualified = schema.map(|s| format!("{s}.{function}"));
        if self.safe_functions.contains(function)
            || qualified
                .as_ref()
                .is_some_and(|q| self.safe_functions.contains(q))
        {
            return Ok(());
        }
        if dangerous_builtin(function) {
            return Err(refuse());
        }
        let builtin = self.catalog.builtin_functions.contains(function)
            || SYNTAX_FUNCTIONS.contains(&function);
        match schema {
            Some("pg_catalog") if builtin => Ok(()),
            Some(_) => Err(refuse()),
            None if self.catalog.user_functions.contains(function) => Err(refuse()),
            None if builtin => Ok(()),
            None => Err(refuse()),
        }
    }

    /// The tenant as a SQL literal of the configured type.
    pub fn tenant_literal(&self) -> Expr {
        let tenant = self.tenant.unwrap_or("0");
        match self.value_type {
            TenantValueType::Integer => {
                Expr::value(Value::Number(tenant.trim().to_string(), false))
            }
            TenantValueType::Text => Expr::value(Value::SingleQuotedString(tenant.to_string())),
        }
    }

    /// `qualifier."tenant_id" = <tenant>`.
    pub fn pinned(&self, qualifier: &Ident) -> Expr {
        Expr::BinaryOp {
            left: Box::new(Expr::CompoundIdentifier(vec![
                qualifier.clone(),
                Ident::with_quote('"', self.column),
            ])),
            op: BinaryOperator::Eq,
            right: Box::new(self.tenant_literal()),
        }
    }

    /// Whether `expr` is a literal equal to the session's tenant.
    pub fn is_tenant_literal(&self, expr: &Expr) -> bool {
        let Some(tenant) = self.tenant else {
            return false;
        };
        match expr {
            Expr::Nested(inner) => self.is_tenant_literal(inner),
            Expr::Cast { expr, .. } => self.is_tenant_literal(expr),
            Expr::Value(value) => {
                let text = match &value.value {
                    Value::Number(n, _) => n.as_str(),
                    Value::SingleQuotedString(s) => s.as_str(),
                    _ => return false,
                };
                same_tenant(self.value_type, text, tenant)
            }
            _ => false,
        }
    }

    /// Whether `name` (a column reference's last part) is the tenant column.
    pub fn is_tenant_column(&self, ident: &Ident) -> bool {
        ident_name(ident) == self.column
    }

    /// Checks a statement kind that is not DML: allowed as is, or refused.
    pub fn check_utility(&self, statement: &Statement) -> Result<(), Rejection> {
        let refuse = |what: &str| Err(Rejection::new(RejectionKind::StatementNotAllowed, what));
        match statement {
            Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_)
            | Statement::Explain { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::Discard { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Deallocate { .. } => Ok(()),
            Statement::Set(set) => self.check_set(set),
            Statement::Reset(reset) => match &reset.reset {
                Reset::ALL => Ok(()),
                Reset::SessionAuthorization => Err(Rejection::new(
                    RejectionKind::SettingNotAllowed,
                    "RESET SESSION AUTHORIZATION",
                )),
                Reset::ConfigurationParameter(name) => self.check_setting_name(name),
            },
            Statement::Declare { stmts } => {
                if stmts.iter().any(|d| d.hold == Some(true)) {
                    return refuse("DECLARE ... WITH HOLD (the cursor outlives the transaction and the pooled connection)");
                }
                if stmts.iter().any(|d| d.for_query.is_none()) {
                    return refuse("DECLARE without a query");
                }
                Ok(())
            }
            Statement::Copy { source, to, target, .. } => {
                if !matches!(target, CopyTarget::Stdin | CopyTarget::Stdout) {
                    return refuse("COPY to or from a server file or program");
                }
                match source {
                    CopySource::Query(_) if *to => Ok(()),
                    CopySource::Query(_) => refuse("COPY FROM a query"),
                    CopySource::Table { table_name, .. } => {
                        match self.relation(table_name, &HashSet::new())? {
                            RelationUse::Global => Ok(()),
                            _ => Err(Rejection::new(
                                RejectionKind::CopyOfScopedTable,
                                table_name.to_string(),
                            )),
                        }
                    }
                }
            }
            Statement::Prepare { .. } | Statement::Execute { .. } => refuse(
                "SQL-level PREPARE/EXECUTE (shared by every client of a pooled connection; use protocol-level prepared statements)",
            ),
            other => refuse(&statement_kind(other)),
        }
    }

    fn check_set(&self, set: &Set) -> Result<(), Rejection> {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => self.check_assignment(variable, values),
            Set::MultipleAssignments { assignments } => {
                for assignment in assignments {
                    self.check_assignment(
                        &assignment.name,
                        std::slice::from_ref(&assignment.value),
                    )?;
                }
                Ok(())
            }
            Set::SetRole { .. } => {
                Err(Rejection::new(RejectionKind::SettingNotAllowed, "SET ROLE"))
            }
            Set::SetSessionAuthorization(_) => Err(Rejection::new(
                RejectionKind::SettingNotAllowed,
                "SET SESSION AUTHORIZATION",
            )),
            Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => Ok(()),
            Set::SetTransaction { .. } => Ok(()),
            other => Err(Rejection::new(
                RejectionKind::SettingNotAllowed,
                other.to_string(),
            )),
        }
    }

    fn check_assignment(&self, variable: &ObjectName, values: &[Expr]) -> Result<(), Rejection> {
        self.check_setting_name(variable)?;
        let name = name_parts(variable).unwrap_or_default().join(".");
        if name == "search_path" {
            for value in values {
                let listed = match value {
                    Expr::Identifier(ident) => vec![ident_name(ident)],
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => s
                            .split(',')
                            .map(|p| p.trim().trim_matches('"').to_string())
                            .collect(),
                        _ => vec![v.to_string()],
                    },
                    other => vec![other.to_string()],
                };
                for schema in listed {
                    if schema != "$user" && !self.catalog.schemas.contains(&schema) {
                        return Err(Rejection::new(
                            RejectionKind::SettingNotAllowed,
                            format!("SET search_path to unknown schema {schema:?}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_setting_name(&self, variable: &ObjectName) -> Result<(), Rejection> {
        let name = name_parts(variable).unwrap_or_default().join(".");
        let refused = matches!(name.as_str(), "role" | "session_authorization")
            || changes_string_syntax(&name)
            || self
                .set_config
                .is_some_and(|rls| rls.eq_ignore_ascii_case(&name));
        if refused {
            return Err(Rejection::new(
                RejectionKind::SettingNotAllowed,
                format!("changing {name}"),
            ));
        }
        Ok(())
    }
}

/// Settings that change how PostgreSQL reads string literals. The guard reads `'\'`
/// as a string holding a backslash, as PostgreSQL does with its default
/// `standard_conforming_strings = on`; with it off, PostgreSQL reads `\'` as a quote
/// and `SELECT '\', ' UNION SELECT ... --'` would run SQL the guard took for a string.
/// A guarded session may not change them (neither with `SET` nor at startup).
pub const STRING_SYNTAX_SETTINGS: [&str; 2] = ["standard_conforming_strings", "backslash_quote"];

fn changes_string_syntax(setting: &str) -> bool {
    STRING_SYNTAX_SETTINGS
        .iter()
        .any(|name| setting.eq_ignore_ascii_case(name))
}

/// Compares tenant values: numerically for integers, exactly for text.
pub fn same_tenant(value_type: TenantValueType, value: &str, tenant: &str) -> bool {
    match value_type {
        TenantValueType::Integer => {
            match (value.trim().parse::<i64>(), tenant.trim().parse::<i64>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        TenantValueType::Text => value == tenant,
    }
}

/// `$3` → 3 (also under a cast: `$3::bigint`).
pub fn placeholder_index(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => placeholder_index(inner),
        Expr::Value(value) => match &value.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A short name for a statement kind, for messages.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let kind = words.join(" ").to_uppercase();
    if kind.starts_with("CREATE")
        || kind.starts_with("ALTER")
        || kind.starts_with("DROP")
        || kind.starts_with("TRUNCATE")
        || kind.starts_with("COMMENT")
        || kind.starts_with("GRANT")
        || kind.starts_with("REVOKE")
    {
        format!("DDL ({kind})")
    } else {
        kind
    }
}
