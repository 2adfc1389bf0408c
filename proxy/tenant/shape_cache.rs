//! The tenant guard's shape cache: what was decided for one statement shape (a
//! simple-protocol text with its literals taken out, `shape.rs`), applied again to
//! later texts of the shape with other literals. A shape that passes passes; a shape
//! whose literals pin the tenant passes when they are the session's tenant; a
//! rewritten shape is a template its literals are put back into. A shape is
//! remembered only when deciding it as a prepared statement gives exactly what the
//! full path gave its first text; any text the cache cannot decide exactly takes the
//! full path (parse, walk, print) in `mod.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::shape::{self, Shaped, Template};
use super::shape_memo::ShapeMemo;
use super::shape_pattern::ShapePattern;
use super::{cache_budget, decide, entry_weight, may_be_unknown_yet, policy};
use super::{Decision, GuardContext};
use crate::config::{TenancyConfig, TenancyMode};
use crate::stats::ProcessHashState;

/// The guard's shape cache: a quarter of the guard's cache budget (shapes are few;
/// texts are many), hashed with the seeded process hash. Keys are compared whole, so
/// a collision costs a probe, never another shape's decision.
pub(super) struct ShapeCache {
    entries: moka::sync::Cache<ShapeKey, Arc<CachedShape>, ProcessHashState>,
    counts: ShapeCounts,
    /// The one `Pass` the shape path hands out (no allocation per statement).
    pass: Arc<Decision>,
    /// This cache among the guards the process builds (a configuration change builds
    /// a new one): a session's memo holds shapes of one cache only.
    id: u64,
}

/// A shape in the cache: what a later text must repeat, and what was decided.
#[derive(Debug)]
pub(super) struct CachedShape {
    pub(super) pattern: ShapePattern,
    entry: ShapeEntry,
    /// The catalog it was judged against (`Catalog::id`): used with that one only.
    catalog: u64,
}

/// Which shapes a text is looked up among: those judged against this catalog
/// (`Catalog::id`) for this database, mode and tenant.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShapeScope<'a> {
    pub(super) catalog: u64,
    pub(super) database: &'a str,
    pub(super) mode: TenancyMode,
    pub(super) tenant: Option<&'a str>,
}

/// The ids of shape caches, never given twice in a process.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// What the shape cache says of one text.
pub(super) enum ShapeLookup {
    /// Decided from the cached shape.
    Decided(Arc<Decision>),
    /// A shape not seen yet: decide the text on the full path, then
    /// [`ShapeCache::learn`] from it.
    Learn(Shaped),
    /// The full path decides (no literals, a shape known to need it, or literals the
    /// cached entry cannot take).
    Full,
}

impl ShapeCache {
    pub(super) fn new(config: &TenancyConfig) -> ShapeCache {
        ShapeCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(cache_budget(config) / 4)
                .weigher(shape_weight)
                .build_with_hasher(crate::stats::process_hasher()),
            counts: ShapeCounts::default(),
            pass: Arc::new(Decision::Pass),
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Forgets every shape (the catalog changed: they are no longer used, see
    /// `CachedShape::catalog`); callable from the refresh task.
    pub(super) fn invalidator(&self) -> impl Fn() + Send + Sync + 'static {
        let entries = self.entries.clone();
        move || entries.invalidate_all()
    }

    /// Bytes held now, and the bound.
    pub(super) fn bytes(&self) -> (u64, u64) {
        (
            self.entries.weighted_size(),
            self.entries.policy().max_capacity().unwrap_or(0),
        )
    }

    /// Looks `sql` up by its shape, among the shapes of `scope`: in the session's
    /// `memo` of the shapes its texts had last (matched in place), then in the cache
    /// (the text's shape built and hashed). `ctx` gives the guard context, built only
    /// when a cached entry must read the text's literals.
    pub(super) fn lookup<'c>(
        &self,
        memo: &mut ShapeMemo,
        scope: ShapeScope<'_>,
        ctx: impl Fn() -> GuardContext<'c>,
        sql: &str,
    ) -> ShapeLookup {
        memo.serve(self.id, scope);
        if let Some(cached) = memo.find(sql) {
            self.counts.memo_hits.fetch_add(1, Ordering::Relaxed);
            return self.decide_cached(&cached.entry, &ctx, sql, memo.literals());
        }
        let Some(shaped) = shape_of(&shape_key_prefix(scope), sql) else {
            return ShapeLookup::Full;
        };
        match self
            .entries
            .get(shaped.shape.as_str())
            .filter(|cached| cached.catalog == scope.catalog)
        {
            Some(cached) => {
                let lookup = self.decide_cached(&cached.entry, &ctx, sql, &shaped.literals);
                memo.remember(cached);
                lookup
            }
            None => {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                ShapeLookup::Learn(shaped)
            }
        }
    }

    /// What a cached entry decides for `sql`, whose literals are at `literals`.
    fn decide_cached<'c>(
        &self,
        entry: &ShapeEntry,
        ctx: &impl Fn() -> GuardContext<'c>,
        sql: &str,
        literals: &[std::ops::Range<usize>],
    ) -> ShapeLookup {
        let hit = |decision: Arc<Decision>| {
            self.counts.hits.fetch_add(1, Ordering::Relaxed);
            ShapeLookup::Decided(decision)
        };
        match entry {
            ShapeEntry::Pass => return hit(self.pass.clone()),
            ShapeEntry::PassIfTenant(places) => {
                if literals_are_tenant(&ctx(), sql, literals, places) {
                    return hit(self.pass.clone());
                }
            }
            ShapeEntry::Rewritten { template, pinned } => {
                if !pinned.is_empty() && literals_are_tenant(&ctx(), sql, literals, pinned) {
                    return hit(self.pass.clone());
                }
                if let Some(text) = template.apply(sql, literals) {
                    return hit(Arc::new(Decision::Rewritten {
                        sql: text,
                        tenant_params: Vec::new(),
                    }));
                }
            }
            ShapeEntry::Full => {}
        }
        self.counts.full.fetch_add(1, Ordering::Relaxed);
        ShapeLookup::Full
    }

    /// Remembers what the full path decided for the first text of a shape (see
    /// [`learn_shape`]).
    pub(super) fn learn(
        &self,
        memo: &mut ShapeMemo,
        scope: ShapeScope<'_>,
        ctx: &GuardContext<'_>,
        sql: &str,
        shaped: Shaped,
        decision: &Decision,
    ) {
        if let Some(entry) = learn_shape(ctx, scope.mode, sql, &shaped, decision) {
            let cached = Arc::new(CachedShape {
                pattern: ShapePattern::of(sql, &shaped),
                entry,
                catalog: scope.catalog,
            });
            self.entries
                .insert(Arc::from(shaped.shape.as_str()), cached.clone());
            memo.remember(cached);
        }
    }

    /// (hits, misses, full-path texts).
    pub(super) fn counts(&self) -> (u64, u64, u64) {
        (
            self.counts.hits.load(Ordering::Relaxed),
            self.counts.misses.load(Ordering::Relaxed),
            self.counts.full.load(Ordering::Relaxed),
        )
    }

    /// How many texts were matched to a shape in their session's memo (counted among
    /// the hits or the full-path texts too).
    pub(super) fn memo_hits(&self) -> u64 {
        self.counts.memo_hits.load(Ordering::Relaxed)
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
fn shape_key_prefix(scope: ShapeScope<'_>) -> String {
    let ShapeScope {
        database,
        mode,
        tenant,
        ..
    } = scope;
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

fn shape_weight(key: &ShapeKey, cached: &Arc<CachedShape>) -> u32 {
    let value = cached.pattern.bytes()
        + match &cached.entry {
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
pub(super) fn same_text(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let parse = |sql: &str| Parser::parse_sql(&PostgreSqlDialect {}, sql).ok();
    crate::route::hint(a) == crate::route::hint(b) && parse(a).is_some_and(|a| Some(a) == parse(b))
}

/// The shape of `sql` when the shape path may be tried for it.
fn shape_of(key_prefix: &str, sql: &str) -> Option<Shaped> {
    let shaped = shape::split_after(key_prefix, sql)?;
    // A routing hint is looked for in the whole text, literals included; the shape
    // path applies only when the shape's hint is the text's.
    (crate::route::hint(sql) == crate::route::hint(shaped.shape_text())).then_some(shaped)
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
    /// Matched in the session's memo, without building the shape.
    memo_hits: AtomicU64,
}
