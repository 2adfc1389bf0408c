//! The `[tenancy]` section: how the tenant guard knows a session's tenant, which
//! tables are tenant-scoped, and what it does with statements that could reach
//! another tenant's rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What the guard does with a tenant session's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenancyMode {
    /// No guard.
    Off,
    /// Statements run unchanged; those that could reach another tenant are logged and counted.
    Audit,
    /// Statements run unchanged; those that could reach another tenant are rejected.
    Enforce,
    /// Every scoped table reference is limited to the session's tenant.
    Rewrite,
}

impl TenancyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TenancyMode::Off => "off",
            TenancyMode::Audit => "audit",
            TenancyMode::Enforce => "enforce",
            TenancyMode::Rewrite => "rewrite",
        }
    }
}

/// The SQL type of tenant values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantValueType {
    Integer,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancyConfig {
    /// Default mode for every database; `databases.<name>.tenancy_mode` overrides it.
    pub mode: TenancyMode,
    /// The column that holds the tenant in every scoped table.
    pub column: String,
    pub value_type: TenantValueType,
    /// Tables scoped even though the catalog scan does not find the column in them
    /// (`table` or `schema.table`).
    pub tables: Vec<String>,
    /// Tables never scoped, even with the tenant column (shared reference data).
    pub exempt_tables: Vec<String>,
    /// Roles the guard leaves alone (migrations, admin jobs).
    pub bypass_roles: Vec<String>,
    /// Roles whose sessions always belong to one tenant: role name → tenant.
    pub roles: BTreeMap<String, String>,
    /// Functions outside `pg_catalog` that tenant sessions may call because they read
    /// no scoped table (or scope it themselves).
    pub safe_functions: Vec<String>,
    /// When set (e.g. `app.tenant_id`), pgwarden sets this server setting to the
    /// session's tenant in every transaction, for row-level security policies.
    pub set_config: Option<String>,
    /// How often the catalog of scoped tables is reloaded (DDL through pgwarden also
    /// reloads it).
    pub refresh_interval_ms: u64,
    /// Statement texts whose guarded form is remembered per tenant.
    pub cache_entries: u64,
    /// Bytes the decision cache may take (texts and rewritten texts included).
    pub cache_bytes: u64,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            mode: TenancyMode::Off,
            column: "tenant_id".into(),
            value_type: TenantValueType::Integer,
            tables: Vec::new(),
            exempt_tables: Vec::new(),
            bypass_roles: Vec::new(),
            roles: BTreeMap::new(),
            safe_functions: Vec::new(),
            set_config: None,
            refresh_interval_ms: 60_000,
            cache_entries: 10_000,
            cache_bytes: 8 << 20,
        }
    }
}

impl TenancyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.column.trim().is_empty() {
            return Err(ConfigError::invalid("tenancy.column", "must not be empty"));
        }
        if self.refresh_interval_ms < 100 {
            return Err(ConfigError::invalid(
                "tenancy.refresh_interval_ms",
                "must be at least 100",
            ));
        }
        if let Some(name) = &self.set_config {
            let valid = name.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            });
            if !valid {
                return Err(ConfigError::invalid(
                    "tenancy.set_config",
                    format!("expected a custom setting name like app.tenant_id, got {name:?}"),
                ));
            }
        }
        for (role, tenant) in &self.roles {
            self.check_tenant_value(tenant)
                .map_err(|why| ConfigError::invalid(format!("tenancy.roles.{role}"), why))?;
        }
        Ok(())
    }

    /// Whether `value` is a valid tenant for `value_type`.
    pub fn check_tenant_value(&self, value: &str) -> Result<(), String> {
        if value.is_empty() {
            return Err("a tenant must not be empty".into());
        }
        if self.value_type == TenantValueType::Integer && value.trim().parse::<i64>().is_err() {
            return Err(format!(
                "tenants are integers (tenancy.value_type), got {value:?}"
            ));
        }
        Ok(())
    }
}
