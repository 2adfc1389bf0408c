//! The tenant guard: no tenant session reads or changes another tenant's rows.
//!
//! This room owns deciding, for one statement string and one tenant, whether it may
//! run as is, must run rewritten, or must be refused — from the sqlparser AST and a
//! catalog of which relations are tenant-scoped. It never touches sockets; the
//! session (`server/tenancy.rs`) applies its decisions. It fails closed: whatever it
//! cannot prove safe is refused with SQLSTATE 42501.
//!
//! - `catalog`/`refresh`: scoped relations, schemas and functions, kept current.
//! - `policy`: the shared rules (names, functions, statement kinds, settings).
//! - `rewrite` (mode `rewrite`) and `enforce` (modes `enforce`, `audit`): the walks.
//! - `writes`: the tenant column of written rows; `predicates`: tenant conjuncts.
//! - `bind`: parameters checked at Bind; `violations`: what was refused, counted.

mod bind;
pub mod catalog;
mod decide;
mod decision;
mod enforce;
pub(crate) mod policy;
mod predicates;
mod refresh;
mod rewrite;
mod sample;
mod violations;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlparser::ast::{Query, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use bind::params_are_tenant;
pub use catalog::Catalog;
pub use decision::{Decision, Rejection, RejectionKind};
pub use policy::GuardContext;
pub use refresh::CatalogHandle;
#[doc(hidden)]
pub use sample::sample_catalog;
pub use violations::{ViolationRow, Violations};

use crate::config::{Config, TenancyConfig, TenancyMode};

/// Parses a query the guard wrote itself (templates); they always parse.
fn parse_query(sql: &str) -> Query {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(mut statements) => match statements.pop() {
            Some(Statement::Query(query)) => *query,
            _ => unreachable!("template {sql:?} is a query"),
        },
        Err(e) => unreachable!("template {sql:?} parses: {e}"),
    }
}

/// Decides `sql` for `tenant` against `catalog` (no caching); used by tests and by
/// [`TenantGuard::decide`].
pub fn decide(
    config: &TenancyConfig,
    catalog: &Catalog,
    mode: TenancyMode,
    tenant: Option<&str>,
    sql: &str,
) -> Decision {
    let safe_functions: HashSet<String> = config
        .safe_functions
        .iter()
        .map(|f| f.to_lowercase())
        .collect();
    decide_with(config, &safe_functions, catalog, mode, tenant, sql)
}

fn decide_with(
    config: &TenancyConfig,
    safe_functions: &HashSet<String>,
    catalog: &Catalog,
    mode: TenancyMode,
    tenant: Option<&str>,
    sql: &str,
) -> Decision {
    let ctx = GuardContext {
        catalog,
        column: &config.column,
        value_type: config.value_type,
        safe_functions,
        set_config: config.set_config.as_deref(),
        tenant,
    };
    decide::decide(&ctx, mode, sql)
}

/// Bytes a cached decision costs beyond its texts (key, `Arc`, moka bookkeeping).
const DECISION_ENTRY_BYTES: usize = 160;

/// Bytes one cached decision holds: its key's texts, the rewritten text or rejection
/// detail, and a fixed overhead.
fn decision_weight(key: &DecisionKey, decision: &Arc<Decision>) -> u32 {
    let value = match decision.as_ref() {
        Decision::Pass => 0,
        Decision::Rewritten { sql, tenant_params } => {
            sql.len() + tenant_params.len() * std::mem::size_of::<usize>()
        }
        Decision::PassWithParams { tenant_params } => {
            tenant_params.len() * std::mem::size_of::<usize>()
        }
        Decision::Reject(rejection) => rejection.detail.len(),
    };
    let bytes = key.database.len()
        + key.tenant.as_ref().map_or(0, |t| t.len())
        + key.sql.len()
        + value
        + DECISION_ENTRY_BYTES;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The decision cache, bounded by bytes and (through the average entry) by
/// `cache_entries`.
fn decision_cache(config: &TenancyConfig) -> moka::sync::Cache<DecisionKey, Arc<Decision>> {
    let by_entries = config
        .cache_entries
        .max(1)
        .saturating_mul(DECISION_ENTRY_BYTES as u64 + 256);
    moka::sync::Cache::builder()
        .max_capacity(config.cache_bytes.min(by_entries).max(1))
        .weigher(decision_weight)
        .build()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    database: Arc<str>,
    mode: TenancyMode,
    tenant: Option<Arc<str>>,
    sql: Arc<str>,
}

/// The guard of the process: one catalog per guarded database, a cache of
/// decisions, and the violation counts. Rebuilt when the configuration changes.
pub struct TenantGuard {
    pub config: TenancyConfig,
    safe_functions: HashSet<String>,
    catalogs: HashMap<String, Arc<CatalogHandle>>,
    decisions: moka::sync::Cache<DecisionKey, Arc<Decision>>,
    pub violations: Arc<Violations>,
}

impl TenantGuard {
    /// Builds the guard and starts catalog refresh for every database whose mode is
    /// not `off`. Must run inside a tokio runtime when any database is guarded.
    pub fn start(config: &Config, violations: Arc<Violations>) -> TenantGuard {
        let decisions = decision_cache(&config.tenancy);
        let mut catalogs = HashMap::new();
        for (name, db) in &config.databases {
            if config.tenancy_mode_for(name) == TenancyMode::Off {
                continue;
            }
            let handle = CatalogHandle::new();
            let cache: moka::sync::Cache<DecisionKey, Arc<Decision>> = decisions.clone();
            refresh::spawn(
                handle.clone(),
                db.primary.clone(),
                config.tenancy.clone(),
                move || cache.invalidate_all(),
            );
            catalogs.insert(name.clone(), handle);
        }
        TenantGuard {
            config: config.tenancy.clone(),
            safe_functions: config
                .tenancy
                .safe_functions
                .iter()
                .map(|f| f.to_lowercase())
                .collect(),
            catalogs,
            decisions,
            violations,
        }
    }

    /// Bytes the decision cache holds now, and its bound.
    pub fn cache_bytes(&self) -> (u64, u64) {
        (
            self.decisions.weighted_size(),
            self.decisions.policy().max_capacity().unwrap_or(0),
        )
    }

    pub fn catalog_handle(&self, database: &str) -> Option<&Arc<CatalogHandle>> {
        self.catalogs.get(database)
    }

    pub fn request_refresh(&self, database: &str) {
        if let Some(handle) = self.catalogs.get(database) {
            handle.request_refresh();
        }
    }

    /// The decision for `sql`, from cache when the same text was judged for the
    /// same tenant since the catalog last changed.
    pub async fn decide(
        &self,
        database: &str,
        mode: TenancyMode,
        tenant: Option<&str>,
        sql: &str,
    ) -> Result<Arc<Decision>, String> {
        let handle = self
            .catalogs
            .get(database)
            .ok_or_else(|| format!("database {database} has no tenant catalog"))?;
        let mut catalog = handle.ready(Duration::from_secs(10)).await?;
        let key = DecisionKey {
            database: database.into(),
            mode,
            tenant: tenant.map(Arc::from),
            sql: sql.into(),
        };
        if let Some(decision) = self.decisions.get(&key) {
            return Ok(decision);
        }
        let decide = |catalog: &Catalog| {
            Arc::new(decide_with(
                &self.config,
                &self.safe_functions,
                catalog,
                mode,
                tenant,
                sql,
            ))
        };
        let mut decision = decide(&catalog);
        let unknown = |decision: &Decision| {
            matches!(decision, Decision::Reject(rejection)
                if rejection.kind == RejectionKind::UnknownRelation
                    || rejection.kind == RejectionKind::FunctionNotAllowed)
        };
        if unknown(&decision) {
            // Perhaps created a moment ago (by another connection): decide again on a
            // catalog loaded after this statement arrived.
            if let Some(fresh) = handle.refreshed(Duration::from_secs(2)).await {
                catalog = fresh;
                decision = decide(&catalog);
            }
            if unknown(&decision) {
                return Ok(decision); // not remembered: the next load may know it
            }
        }
        self.decisions.insert(key, decision.clone());
        Ok(decision)
    }
}

#[cfg(test)]
mod tests;
