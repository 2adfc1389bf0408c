//! What the guard decided about one statement string, and why it refused one.

use std::fmt;

use super::rewritten_sql::RewrittenSql;

/// Why a statement was refused (or, in audit mode, counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// What exactly, e.g. the table or function name.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// A scoped table is used but the session has no tenant.
    NoTenant,
    /// The SQL parser does not understand the text.
    Unparseable,
    /// A statement kind tenant sessions may not run (DDL, DO, PREPARE, ...).
    StatementNotAllowed,
    /// A function that is not known to be safe.
    FunctionNotAllowed,
    /// A relation the catalog does not know (yet).
    UnknownRelation,
    /// A view over scoped tables without the tenant column.
    UnguardableView,
    /// COPY of a scoped table.
    CopyOfScopedTable,
    /// A row written with another tenant (or a value the guard cannot check).
    ForeignTenantValue,
    /// SET ROLE, SET SESSION AUTHORIZATION, the RLS setting, unknown search_path.
    SettingNotAllowed,
    /// Enforce/audit: a scoped reference without a predicate pinning the tenant.
    MissingTenantPredicate,
    /// A statement shape the guard cannot make safe.
    Unsupported,
    /// A prepared statement used after the session's tenant changed.
    PreparedForOtherTenant,
    /// The server connection reads string literals with `standard_conforming_strings`
    /// off, not as the guard lexed them.
    NonstandardStrings,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::NoTenant => "no_tenant",
            RejectionKind::Unparseable => "unparseable",
            RejectionKind::StatementNotAllowed => "statement_not_allowed",
            RejectionKind::FunctionNotAllowed => "function_not_allowed",
            RejectionKind::UnknownRelation => "unknown_relation",
            RejectionKind::UnguardableView => "unguardable_view",
            RejectionKind::CopyOfScopedTable => "copy_of_scoped_table",
            RejectionKind::ForeignTenantValue => "foreign_tenant_value",
            RejectionKind::SettingNotAllowed => "setting_not_allowed",
            RejectionKind::MissingTenantPredicate => "missing_tenant_predicate",
            RejectionKind::Unsupported => "unsupported",
            RejectionKind::PreparedForOtherTenant => "prepared_for_other_tenant",
            RejectionKind::NonstandardStrings => "nonstandard_strings",
        }
    }
}

impl Rejection {
    pub fn new(kind: RejectionKind, detail: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            detail: detail.into(),
        }
    }

    /// The error message: what was refused and why.
    pub fn message(&self) -> String {
        let what = &self.detail;
        match self.kind {
            RejectionKind::NoTenant => {
                format!("tenant guard: {what} is tenant-scoped and this session has no tenant")
            }
            RejectionKind::Unparseable => {
                format!(
                    "tenant guard: cannot parse the statement, so cannot prove it safe ({what})"
                )
            }
            RejectionKind::StatementNotAllowed => {
                format!("tenant guard: {what} is not allowed in tenant sessions")
            }
            RejectionKind::FunctionNotAllowed => {
                format!("tenant guard: function {what} could read other tenants' rows")
            }
            RejectionKind::UnknownRelation => {
                format!("tenant guard: relation {what} is not in the guard's catalog")
            }
            RejectionKind::UnguardableView => format!(
                "tenant guard: view {what} reads tenant-scoped tables but has no tenant column"
            ),
            RejectionKind::CopyOfScopedTable => {
                format!("tenant guard: COPY of tenant-scoped table {what}")
            }
            RejectionKind::ForeignTenantValue => {
                format!("tenant guard: {what}")
            }
            RejectionKind::SettingNotAllowed => {
                format!("tenant guard: {what} is not allowed in tenant sessions")
            }
            RejectionKind::MissingTenantPredicate => {
                format!("tenant guard: {what} is not limited to the session's tenant")
            }
            RejectionKind::Unsupported => {
                format!("tenant guard: {what} cannot be limited to one tenant")
            }
            RejectionKind::PreparedForOtherTenant => {
                format!("tenant guard: prepared statement {what} was prepared for another tenant")
            }
            RejectionKind::NonstandardStrings => format!(
                "tenant guard: the server session has standard_conforming_strings = off, so it would not read {what} as the guard did"
            ),
        }
    }

    /// How to allow what was refused.
    pub fn hint(&self) -> &'static str {
        match self.kind {
            RejectionKind::NoTenant => "set the tenant with the startup option pgwarden.tenant_id (options=-c pgwarden.tenant_id=42), SET pgwarden.tenant_id = '42', or map the role in [tenancy.roles]",
            RejectionKind::Unparseable | RejectionKind::StatementNotAllowed | RejectionKind::Unsupported => {
                "run it as a role listed in tenancy.bypass_roles (migrations, admin jobs), or rewrite it as plain SELECT/INSERT/UPDATE/DELETE"
            }
            RejectionKind::FunctionNotAllowed => {
                "list the function in tenancy.safe_functions if it reads no tenant-scoped table, or call it from a bypass role"
            }
            RejectionKind::UnknownRelation => {
                "the catalog reloads every tenancy.refresh_interval_ms and after DDL through pgwarden; retry shortly, or list the table in tenancy.tables / tenancy.exempt_tables"
            }
            RejectionKind::UnguardableView => {
                "add the tenant column to the view, or list it in tenancy.exempt_tables if it is meant to be shared"
            }
            RejectionKind::CopyOfScopedTable => "use COPY (SELECT ... FROM table) TO STDOUT, or INSERT",
            RejectionKind::ForeignTenantValue => {
                "omit the tenant column (pgwarden fills it in) or give the session's own tenant"
            }
            RejectionKind::SettingNotAllowed => {
                "roles, session authorization and the row-level security setting are fixed for tenant sessions; search_path may only name existing schemas"
            }
            RejectionKind::MissingTenantPredicate => {
                "add tenant_id = <your tenant> for every tenant-scoped table (in the ON clause of outer joins), or use tenancy mode \"rewrite\""
            }
            RejectionKind::PreparedForOtherTenant => "prepare the statement again after changing pgwarden.tenant_id",
            RejectionKind::NonstandardStrings => {
                "remove standard_conforming_strings = off from the role, database or server settings (ALTER ROLE/DATABASE ... RESET standard_conforming_strings); guarded sessions need it on"
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// The guard's verdict on one statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the text as it is.
    Pass,
    /// Run this text instead. `tenant_params` lists the (1-based) parameters that must
    /// equal the session's tenant when the statement is bound.
    Rewritten {
        sql: RewrittenSql,
        tenant_params: Vec<usize>,
    },
    /// Run as it is, but the parameters listed must equal the tenant at Bind.
    PassWithParams { tenant_params: Vec<usize> },
    /// Refuse (enforce/rewrite), or count and run (audit).
    Reject(Rejection),
}

impl Decision {
    pub fn tenant_params(&self) -> &[usize] {
        match self {
            Decision::Rewritten { tenant_params, .. }
            | Decision::PassWithParams { tenant_params } => tenant_params,
            _ => &[],
        }
    }
}
