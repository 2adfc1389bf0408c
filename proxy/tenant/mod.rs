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
//! - `shape` and `shape_cache`: decisions kept per statement shape (literals aside),
//!   applied again to later texts with other literals; `shape_pattern` and
//!   `shape_memo`: a session's last shapes, matched in place.

mod bind;
pub mod catalog;
mod decide;
mod decision;
mod enforce;
pub(crate) mod policy;
mod predicates;
mod refresh;
mod rewrite;
mod rewritten_sql;
mod sample;
pub(crate) mod shape;
mod shape_cache;
mod shape_memo;
mod shape_pattern;
mod violations;
mod writes;

use std::collections::HashSet;
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
pub use rewritten_sql::RewrittenSql;
#[doc(hidden)]
pub use sample::sample_catalog;
pub use violations::{ViolationRow, Violations};

use shape_cache::{same_text, ShapeCache, ShapeLookup, ShapeScope};
pub use shape_memo::ShapeMemo;

use crate::config::{Config, TenancyConfig, TenancyMode};
use crate::stats::ProcessHashState;

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
    decide::decide(
        &guard_context(config, safe_functions, catalog, tenant),
        mode,
        sql,
    )
}

fn guard_context<'a>(
    config: &'a TenancyConfig,
    safe_functions: &'a HashSet<String>,
    catalog: &'a Catalog,
    tenant: Option<&'a str>,
) -> GuardContext<'a> {
    GuardContext {
        catalog,
        column: &config.column,
        value_type: config.value_type,
        safe_functions,
        set_config: config.set_config.as_deref(),
        tenant,
    }
}

/// Refusals that may go away once the catalog reloads: not remembered.
fn may_be_unknown_yet(rejection: &Rejection) -> bool {
    rejection.kind == RejectionKind::UnknownRelation
        || rejection.kind == RejectionKind::FunctionNotAllowed
}

/// Byte ranges of the literals the shape cache replaces in `sql`, if it applies to
/// it (tests vary them).
#[doc(hidden)]
pub fn shape_literals(sql: &str) -> Option<Vec<std::ops::Range<usize>>> {
    shape::split(sql).map(|shaped| shaped.literals)
}

/// Whether two texts the guard would send are the same statements (tests).
#[doc(hidden)]
pub fn same_statements(a: &str, b: &str) -> bool {
    same_text(a, b)
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
    entry_weight(&key.database, key.tenant.as_deref(), &key.sql, value)
}

/// Bytes a memo entry holds: its key's database, tenant and text, the value's own
/// bytes, and a fixed overhead.
fn entry_weight(database: &str, tenant: Option<&str>, text: &str, value: usize) -> u32 {
    let bytes =
        database.len() + tenant.map_or(0, str::len) + text.len() + value + DECISION_ENTRY_BYTES;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The bytes of both caches: bounded by `cache_bytes` and (through the average
/// entry) by `cache_entries`.
fn cache_budget(config: &TenancyConfig) -> u64 {
    let by_entries = config
        .cache_entries
        .max(1)
        .saturating_mul(DECISION_ENTRY_BYTES as u64 + 256);
    config.cache_bytes.min(by_entries).max(2)
}

/// The decision cache (exact texts): three quarters of the budget. Both caches hash
/// with the seeded process hash (a hit is hashed on every statement); keys are compared
/// whole, so a collision costs a probe, never another text's decision.
fn decision_cache(
    config: &TenancyConfig,
) -> moka::sync::Cache<DecisionKey, Arc<Decision>, ProcessHashState> {
    let budget = cache_budget(config);
    moka::sync::Cache::builder()
        .max_capacity(budget - budget / 4)
        .weigher(decision_weight)
        .build_with_hasher(crate::stats::process_hasher())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    /// The catalog decided against ([`Catalog::id`]).
    catalog: u64,
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
    catalogs: crate::stats::ProcessMap<String, Arc<CatalogHandle>>,
    decisions: moka::sync::Cache<DecisionKey, Arc<Decision>, ProcessHashState>,
    shapes: ShapeCache,
    pub violations: Arc<Violations>,
}

impl TenantGuard {
    /// Builds the guard and starts catalog refresh for every database whose mode is
    /// not `off`. Must run inside a tokio runtime when any database is guarded.
    pub fn start(config: &Config, violations: Arc<Violations>) -> TenantGuard {
        let decisions = decision_cache(&config.tenancy);
        let shapes = ShapeCache::new(&config.tenancy);
        let mut catalogs = crate::stats::ProcessMap::default();
        for (name, db) in &config.databases {
            if config.tenancy_mode_for(name) == TenancyMode::Off {
                continue;
            }
            let handle = CatalogHandle::new();
            let cache: moka::sync::Cache<DecisionKey, Arc<Decision>, ProcessHashState> =
                decisions.clone();
            let forget_shapes = shapes.invalidator();
            refresh::spawn(
                handle.clone(),
                db.primary.clone(),
                config.tenancy.clone(),
                move || {
                    cache.invalidate_all();
                    forget_shapes();
                },
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
            shapes,
            violations,
        }
    }

    /// Bytes the decision and shape caches hold now, and their bound.
    pub fn cache_bytes(&self) -> (u64, u64) {
        let (shape_bytes, shape_bound) = self.shapes.bytes();
        (
            self.decisions.weighted_size() + shape_bytes,
            self.decisions.policy().max_capacity().unwrap_or(0) + shape_bound,
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
    /// same tenant since the catalog last changed, or when a text of the same shape
    /// (literals aside) was.
    pub async fn decide(
        &self,
        memo: &mut ShapeMemo,
        database: &str,
        mode: TenancyMode,
        tenant: Option<&str>,
        sql: &str,
    ) -> Result<Arc<Decision>, String> {
        let handle = self
            .catalogs
            .get(database)
            .ok_or_else(|| format!("database {database} has no tenant catalog"))?;
        let catalog = handle.ready(Duration::from_secs(10)).await?;
        match self.decide_on(memo, &catalog, database, mode, tenant, sql) {
            Ok(decision) => Ok(decision),
            Err(unknown) => {
                // Perhaps created a moment ago (by another connection): decide again on
                // a catalog loaded after this statement arrived.
                match handle.refreshed(Duration::from_secs(2)).await {
                    Some(fresh) => Ok(self
                        .decide_on(memo, &fresh, database, mode, tenant, sql)
                        .unwrap_or_else(|unknown| unknown)),
                    None => Ok(unknown), // not remembered: the next load may know it
                }
            }
        }
    }

    /// A guard with no databases and no catalog refresh, for deciding against a
    /// given catalog with [`TenantGuard::decide_on`] (tests).
    #[doc(hidden)]
    pub fn detached(config: &TenancyConfig) -> TenantGuard {
        TenantGuard {
            config: config.clone(),
            safe_functions: config
                .safe_functions
                .iter()
                .map(|f| f.to_lowercase())
                .collect(),
            catalogs: Default::default(),
            decisions: decision_cache(config),
            shapes: ShapeCache::new(config),
            violations: Arc::new(Violations::default()),
        }
    }

    /// The decision for `sql` against `catalog`, through the session's `memo` of
    /// shapes and both caches. `Err` is a refusal naming a relation or function the
    /// catalog may not know yet: it is not remembered.
    #[doc(hidden)]
    pub fn decide_on(
        &self,
        memo: &mut ShapeMemo,
        catalog: &Catalog,
        database: &str,
        mode: TenancyMode,
        tenant: Option<&str>,
        sql: &str,
    ) -> Result<Arc<Decision>, Arc<Decision>> {
        // The shape path first: a text with literals whose shape was judged before.
        let ctx = || guard_context(&self.config, &self.safe_functions, catalog, tenant);
        let scope = ShapeScope {
            catalog: catalog.id(),
            database,
            mode,
            tenant,
        };
        let learn = match self.shapes.lookup(memo, scope, ctx, sql) {
            ShapeLookup::Decided(decision) => return Ok(decision),
            ShapeLookup::Learn(shaped) => Some(shaped),
            ShapeLookup::Full => None,
        };
        let key = DecisionKey {
            catalog: catalog.id(),
            database: database.into(),
            mode,
            tenant: tenant.map(Arc::from),
            sql: sql.into(),
        };
        if let Some(decision) = self.decisions.get(&key) {
            return Ok(decision);
        }
        let decision = Arc::new(decide_with(
            &self.config,
            &self.safe_functions,
            catalog,
            mode,
            tenant,
            sql,
        ));
        if matches!(decision.as_ref(), Decision::Reject(rejection) if may_be_unknown_yet(rejection))
        {
            return Err(decision);
        }
        if let Some(shaped) = learn {
            self.shapes
                .learn(memo, scope, &ctx(), sql, shaped, &decision);
        }
        self.decisions.insert(key, decision.clone());
        Ok(decision)
    }

    /// Shape cache counts: (hits, misses, full-path texts).
    pub fn shape_counts(&self) -> (u64, u64, u64) {
        self.shapes.counts()
    }

    /// How many texts were matched in their session's memo of shapes (each also
    /// counted in [`TenantGuard::shape_counts`]).
    pub fn shape_memo_hits(&self) -> u64 {
        self.shapes.memo_hits()
    }
}

#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod tests;
