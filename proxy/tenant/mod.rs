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
mod shape;
mod violations;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
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

use shape::{Shaped, Template};

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

/// What the shape cache remembers about one statement shape.
#[derive(Debug)]
enum ShapeEntry {
    /// Every text of this shape runs as it is.
    Pass,
    /// Every text of this shape runs as it is when its literals at these (1-based)
    /// places are the session's tenant: the shape pins the tenant with them, as a
    /// prepared statement's parameters checked at Bind would. Other texts of the shape
    /// take the full path.
    PassIfTenant(Box<[usize]>),
    /// Every text of this shape runs as the template with its literals put back,
    /// but for a read whose literals at `pinned` (1-based; none when empty) are the
    /// session's tenant: it runs as it is (see [`ShapeEntry::PassIfTenant`]).
    Rewritten {
        template: Template,
        pinned: Box<[usize]>,
    },
    /// Texts of this shape take the full path (parse, walk, print).
    Full,
}

/// The start of a shape cache key: database, mode and tenant, each length-prefixed
/// so that no two keys run into each other. The shape follows in the same string
/// ([`shape::split_after`]), so a lookup allocates nothing more.
fn shape_key_prefix(database: &str, mode: TenancyMode, tenant: Option<&str>) -> String {
    fn field(prefix: &mut String, text: &str) {
        prefix.push_str(itoa::Buffer::new().format(text.len()));
        prefix.push(':');
        prefix.push_str(text);
    }
    let mut prefix = String::with_capacity(database.len() + tenant.map_or(0, str::len) + 16);
    field(&mut prefix, database);
    field(&mut prefix, mode.as_str());
    match tenant {
        Some(tenant) => field(&mut prefix, tenant),
        None => prefix.push('-'),
    }
    prefix
}

/// A shape cache key: [`shape_key_prefix`], then the shape.
type ShapeKey = Arc<str>;

fn shape_weight(key: &ShapeKey, entry: &Arc<ShapeEntry>) -> u32 {
    let value = match entry.as_ref() {
        ShapeEntry::Rewritten { template, pinned } => {
            template.bytes() + std::mem::size_of_val(pinned.as_ref())
        }
        ShapeEntry::PassIfTenant(places) => std::mem::size_of_val(places.as_ref()),
        ShapeEntry::Pass | ShapeEntry::Full => 0,
    };
    entry_weight("", None, key, value)
}

/// What the shape cache learns from the first text of a shape: the shape is judged
/// as a prepared statement would be (literals as parameters), and its decision is
/// used for later texts only when it is Pass or Rewritten without parameters the
/// tenant must be bound to, and when it gives exactly the full path's decision for
/// this text. A text that passes because literals pin the tenant (`WHERE tenant_id =
/// 7`) passes again when the same literals are the tenant (the enforce walk of the
/// shape names them as tenant parameters). None: learn nothing (the catalog may not
/// know a relation yet).
fn learn_shape(
    ctx: &GuardContext<'_>,
    mode: TenancyMode,
    sql: &str,
    shaped: &Shaped,
    full: &Decision,
) -> Option<ShapeEntry> {
    if !shape::spans_are_literal_tokens(sql, &shaped.literals) {
        return Some(ShapeEntry::Full);
    }
    let Some(by_shape) = decide::decide_shape(ctx, mode, shaped.shape_text()) else {
        return Some(ShapeEntry::Full);
    };
    Some(match (&by_shape, full) {
        (Decision::Reject(rejection), _) if may_be_unknown_yet(rejection) => return None,
        (Decision::Pass, Decision::Pass) => ShapeEntry::Pass,
        (_, Decision::Pass) => {
            let by_enforce_walk = match (mode, by_shape) {
                (TenancyMode::Enforce | TenancyMode::Audit, walked) => Some(walked),
                _ => decide::decide_shape(ctx, TenancyMode::Enforce, shaped.shape_text()),
            };
            match by_enforce_walk {
                Some(Decision::PassWithParams { tenant_params })
                    if literals_are_tenant(ctx, sql, &shaped.literals, &tenant_params) =>
                {
                    ShapeEntry::PassIfTenant(tenant_params.into_boxed_slice())
                }
                _ => ShapeEntry::Full,
            }
        }
        (
            Decision::Rewritten {
                sql: template,
                tenant_params,
            },
            Decision::Rewritten {
                sql: expected,
                tenant_params: expected_params,
            },
        ) if tenant_params.is_empty() && expected_params.is_empty() => {
            match Template::new(template, shaped.literals.len()) {
                Some(template)
                    if template
                        .apply(sql, &shaped.literals)
                        .is_some_and(|applied| same_text(&applied, expected)) =>
                {
                    ShapeEntry::Rewritten {
                        template,
                        pinned: decide::pinned_read_places(ctx, shaped.shape_text())
                            .unwrap_or_default()
                            .into_boxed_slice(),
                    }
                }
                _ => ShapeEntry::Full,
            }
        }
        _ => ShapeEntry::Full,
    })
}

/// Whether the literals of `sql` at `places` (1-based, as the shape's parameters)
/// are each the session's tenant, read as [`params_are_tenant`] reads a text
/// parameter: a number as written, a string without its quotes. A string with a
/// quote inside is not taken apart here: it is not the tenant (the full path judges
/// it).
fn literals_are_tenant(
    ctx: &GuardContext<'_>,
    sql: &str,
    literals: &[std::ops::Range<usize>],
    places: &[usize],
) -> bool {
    let Some(tenant) = ctx.tenant else {
        return false;
    };
    !places.is_empty()
        && places.iter().all(|&place| {
            let Some(literal) = place.checked_sub(1).and_then(|i| literals.get(i)) else {
                return false;
            };
            let text = &sql[literal.clone()];
            let value = match text.strip_prefix('\'') {
                Some(quoted) => match quoted.strip_suffix('\'') {
                    Some(inner) if !inner.contains('\'') => inner,
                    _ => return false,
                },
                None => text,
            };
            policy::same_tenant(ctx.value_type, value, tenant)
        })
}

/// Whether two texts the guard would send are the same statements: equal, or
/// parsed to equal statements with the same routing hint.
fn same_text(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let parse = |sql: &str| Parser::parse_sql(&PostgreSqlDialect {}, sql).ok();
    crate::route::hint(a) == crate::route::hint(b) && parse(a).is_some_and(|a| Some(a) == parse(b))
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

/// The shape of `sql` when the shape path may be tried for it.
fn shape_of(key_prefix: &str, sql: &str) -> Option<Shaped> {
    let shaped = shape::split_after(key_prefix, sql)?;
    // A routing hint is looked for in the whole text, literals included; the shape
    // path applies only when the shape's hint is the text's.
    (crate::route::hint(sql) == crate::route::hint(shaped.shape_text())).then_some(shaped)
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

/// The shape cache: the other quarter (shapes are few; texts are many).
fn shape_cache(
    config: &TenancyConfig,
) -> moka::sync::Cache<ShapeKey, Arc<ShapeEntry>, ProcessHashState> {
    moka::sync::Cache::builder()
        .max_capacity(cache_budget(config) / 4)
        .weigher(shape_weight)
        .build_with_hasher(crate::stats::process_hasher())
}

/// How the shape cache served statement texts with literals.
#[derive(Debug, Default)]
struct ShapeCounts {
    /// Decided from a cached shape (Pass or template).
    hits: AtomicU64,
    /// First text of a shape: decided on the full path, and the shape judged.
    misses: AtomicU64,
    /// Shape known to need the full path, or a template that did not apply.
    full: AtomicU64,
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
    decisions: moka::sync::Cache<DecisionKey, Arc<Decision>, ProcessHashState>,
    shapes: moka::sync::Cache<ShapeKey, Arc<ShapeEntry>, ProcessHashState>,
    shape_counts: ShapeCounts,
    /// The one `Pass` the shape path hands out (no allocation per statement).
    pass: Arc<Decision>,
    pub violations: Arc<Violations>,
}

impl TenantGuard {
    /// Builds the guard and starts catalog refresh for every database whose mode is
    /// not `off`. Must run inside a tokio runtime when any database is guarded.
    pub fn start(config: &Config, violations: Arc<Violations>) -> TenantGuard {
        let decisions = decision_cache(&config.tenancy);
        let shapes = shape_cache(&config.tenancy);
        let mut catalogs = HashMap::new();
        for (name, db) in &config.databases {
            if config.tenancy_mode_for(name) == TenancyMode::Off {
                continue;
            }
            let handle = CatalogHandle::new();
            let cache: moka::sync::Cache<DecisionKey, Arc<Decision>, ProcessHashState> =
                decisions.clone();
            let shape_cache = shapes.clone();
            refresh::spawn(
                handle.clone(),
                db.primary.clone(),
                config.tenancy.clone(),
                move || {
                    cache.invalidate_all();
                    shape_cache.invalidate_all();
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
            shape_counts: ShapeCounts::default(),
            pass: Arc::new(Decision::Pass),
            violations,
        }
    }

    /// Bytes the decision and shape caches hold now, and their bound.
    pub fn cache_bytes(&self) -> (u64, u64) {
        (
            self.decisions.weighted_size() + self.shapes.weighted_size(),
            self.decisions.policy().max_capacity().unwrap_or(0)
                + self.shapes.policy().max_capacity().unwrap_or(0),
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
        match self.decide_on(&catalog, database, mode, tenant, sql) {
            Ok(decision) => Ok(decision),
            Err(unknown) => {
                // Perhaps created a moment ago (by another connection): decide again on
                // a catalog loaded after this statement arrived.
                match handle.refreshed(Duration::from_secs(2)).await {
                    Some(fresh) => Ok(self
                        .decide_on(&fresh, database, mode, tenant, sql)
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
            catalogs: HashMap::new(),
            decisions: decision_cache(config),
            shapes: shape_cache(config),
            shape_counts: ShapeCounts::default(),
            pass: Arc::new(Decision::Pass),
            violations: Arc::new(Violations::default()),
        }
    }

    /// The decision for `sql` against `catalog`, through both caches. `Err` is a
    /// refusal naming a relation or function the catalog may not know yet: it is
    /// not remembered.
    #[doc(hidden)]
    pub fn decide_on(
        &self,
        catalog: &Catalog,
        database: &str,
        mode: TenancyMode,
        tenant: Option<&str>,
        sql: &str,
    ) -> Result<Arc<Decision>, Arc<Decision>> {
        // The shape path first: a text with literals whose shape was judged before.
        let mut learn = None;
        if let Some(shaped) = shape_of(&shape_key_prefix(database, mode, tenant), sql) {
            match self.shapes.get(shaped.shape.as_str()).as_deref() {
                Some(ShapeEntry::Pass) => {
                    self.shape_counts.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.pass.clone());
                }
                Some(ShapeEntry::PassIfTenant(places)) => {
                    let ctx = guard_context(&self.config, &self.safe_functions, catalog, tenant);
                    if literals_are_tenant(&ctx, sql, &shaped.literals, places) {
                        self.shape_counts.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(self.pass.clone());
                    }
                    self.shape_counts.full.fetch_add(1, Ordering::Relaxed);
                }
                Some(ShapeEntry::Rewritten { template, pinned }) => {
                    if !pinned.is_empty() {
                        let ctx =
                            guard_context(&self.config, &self.safe_functions, catalog, tenant);
                        if literals_are_tenant(&ctx, sql, &shaped.literals, pinned) {
                            self.shape_counts.hits.fetch_add(1, Ordering::Relaxed);
                            return Ok(self.pass.clone());
                        }
                    }
                    if let Some(text) = template.apply(sql, &shaped.literals) {
                        self.shape_counts.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(Arc::new(Decision::Rewritten {
                            sql: text,
                            tenant_params: Vec::new(),
                        }));
                    }
                    self.shape_counts.full.fetch_add(1, Ordering::Relaxed);
                }
                Some(ShapeEntry::Full) => {
                    self.shape_counts.full.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.shape_counts.misses.fetch_add(1, Ordering::Relaxed);
                    learn = Some(shaped);
                }
            }
        }
        let key = DecisionKey {
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
            let ctx = guard_context(&self.config, &self.safe_functions, catalog, tenant);
            if let Some(entry) = learn_shape(&ctx, mode, sql, &shaped, &decision) {
                self.shapes
                    .insert(Arc::from(shaped.shape.as_str()), Arc::new(entry));
            }
        }
        self.decisions.insert(key, decision.clone());
        Ok(decision)
    }

    /// Shape cache counts: (hits, misses, full-path texts).
    pub fn shape_counts(&self) -> (u64, u64, u64) {
        (
            self.shape_counts.hits.load(Ordering::Relaxed),
            self.shape_counts.misses.load(Ordering::Relaxed),
            self.shape_counts.full.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
