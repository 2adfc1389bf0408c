//! A session's memo of the shapes its last texts had, so a text that repeats one of
//! them with other literals is matched in place ([`ShapePattern::matches`]) instead
//! of having its shape built, hashed and looked up in the shared cache. An
//! application sends few statements, over and over: a handful of shapes covers them.
//!
//! The memo is the session's alone (no lock) and holds shapes of one cache, judged
//! against one catalog, for one database, mode and tenant: when any of them changes
//! it is emptied. Its entries are the cache's own (shared), so it costs a pointer
//! each.

use std::ops::Range;
use std::sync::Arc;

use super::shape_cache::{CachedShape, ShapeScope};
use crate::config::TenancyMode;

/// How many shapes a session keeps: TPC-B's transaction has five statements.
const MEMO_SHAPES: usize = 8;

/// A session's recently used shapes, the most recent first.
#[derive(Debug, Default)]
pub struct ShapeMemo {
    owner: Option<Owner>,
    shapes: Vec<Arc<CachedShape>>,
    /// The literals of the text last matched.
    literals: Vec<Range<usize>>,
}

/// Whose shapes the memo holds.
#[derive(Debug)]
struct Owner {
    cache: u64,
    catalog: u64,
    database: String,
    mode: TenancyMode,
    tenant: Option<String>,
}

impl ShapeMemo {
    /// Makes the memo one of `cache` and `scope`, emptying it when it held
    /// another's shapes.
    pub(super) fn serve(&mut self, cache: u64, scope: ShapeScope<'_>) {
        let same = self.owner.as_ref().is_some_and(|owner| {
            owner.cache == cache
                && owner.catalog == scope.catalog
                && owner.mode == scope.mode
                && owner.database == scope.database
                && owner.tenant.as_deref() == scope.tenant
        });
        if !same {
            self.shapes.clear();
            self.owner = Some(Owner {
                cache,
                catalog: scope.catalog,
                database: scope.database.to_string(),
                mode: scope.mode,
                tenant: scope.tenant.map(str::to_string),
            });
        }
    }

    /// The remembered shape `sql` has, moved to the front; its literals are then
    /// [`ShapeMemo::literals`].
    pub(super) fn find(&mut self, sql: &str) -> Option<Arc<CachedShape>> {
        let at = self
            .shapes
            .iter()
            .position(|cached| cached.pattern.matches(sql, &mut self.literals))?;
        self.shapes[..=at].rotate_right(1);
        Some(self.shapes[0].clone())
    }

    /// The literals of the text [`ShapeMemo::find`] last matched.
    pub(super) fn literals(&self) -> &[Range<usize>] {
        &self.literals
    }

    /// Remembers `cached` in front, forgetting the least recently used beyond
    /// [`MEMO_SHAPES`].
    pub(super) fn remember(&mut self, cached: Arc<CachedShape>) {
        if self.shapes.len() == MEMO_SHAPES {
            self.shapes.pop();
        }
        self.shapes.insert(0, cached);
    }
}
