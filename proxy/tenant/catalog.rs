//! What the guard knows about one database: every relation (and whether it is
//! tenant-scoped), schemas, and function names, read from PostgreSQL's catalog.
//!
//! A relation is scoped when it has the tenant column or is listed in
//! `tenancy.tables`, unless listed in `tenancy.exempt_tables`. A view or materialized
//! view that reads a scoped relation but has no tenant column cannot be limited to a
//! tenant: references to it are refused.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::Client;

use crate::config::TenancyConfig;

/// Catalog ids, never given twice in a process.
static NEXT_CATALOG_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Has the tenant column: limited to the session's tenant.
    Scoped,
    /// Reads scoped relations but has no tenant column.
    Unguardable,
    /// Shared by all tenants.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub schema: String,
    pub name: String,
    pub scope: Scope,
    /// Column names in order (kept for scoped relations, for positional INSERTs).
    pub columns: Vec<String>,
}

/// What a name in a statement refers to.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Found(&'a RelationInfo),
    Unknown,
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// This load among the process's catalogs (0: empty, never loaded). What the
    /// guard decides is remembered with the id of the catalog it decided against and
    /// used only with that catalog, so no decision outlives its catalog.
    id: u64,
    relations: HashMap<(String, String), RelationInfo>,
    /// Relation name → schemas that have a relation of that name.
    by_name: HashMap<String, Vec<String>>,
    pub schemas: HashSet<String>,
    /// Functions in `pg_catalog` and `information_schema`.
    pub builtin_functions: HashSet<String>,
    /// Functions in every other schema, by name and by `schema.name`.
    pub user_functions: HashSet<String>,
}

/// One row of the relation scan.
pub struct RelationRow {
    pub schema: String,
    pub name: String,
    pub has_column: bool,
    pub columns: Vec<String>,
}

impl Catalog {
    /// Builds the catalog from scan results. `depends` lists (view, relation it reads)
    /// pairs, both as (schema, name).
    pub fn build(
        config: &TenancyConfig,
        rows: Vec<RelationRow>,
        depends: Vec<((String, String), (String, String))>,
        schemas: HashSet<String>,
        functions: Vec<(String, String)>,
    ) -> Catalog {
        let listed = |list: &[String], schema: &str, name: &str| {
            list.iter().any(|entry| {
                let entry = entry.trim().to_lowercase();
                match entry.split_once('.') {
                    Some((s, n)) => s == schema.to_lowercase() && n == name.to_lowercase(),
                    None => entry == name.to_lowercase(),
                }
            })
        };
        let mut relations = HashMap::new();
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            let exempt = listed(&config.exempt_tables, &row.schema, &row.name);
            let scoped =
                !exempt && (row.has_column || listed(&config.tables, &row.schema, &row.name));
            by_name
                .entry(row.name.clone())
                .or_default()
                .push(row.schema.clone());
            let key = (row.schema.clone(), row.name.clone());
            relations.insert(
                key,
                RelationInfo {
                    scope: if scoped { Scope::Scoped } else { Scope::Global },
                    columns: if scoped { row.columns } else { Vec::new() },
                    schema: row.schema,
                    name: row.name,
                },
            );
        }
        // Views over scoped relations (transitively) without the column are unguardable.
        let mut changed = true;
        while changed {
            changed = false;
            for (view, source) in &depends {
                let source_reads_tenants = relations
                    .get(source)
                    .is_some_and(|r| r.scope != Scope::Global);
                let Some(info) = relations.get_mut(view) else {
                    continue;
                };
                if source_reads_tenants
                    && info.scope == Scope::Global
                    && !listed(&config.exempt_tables, &info.schema, &info.name)
                {
                    info.scope = Scope::Unguardable;
                    changed = true;
                }
            }
        }
        let mut builtin_functions = HashSet::new();
        let mut user_functions = HashSet::new();
        for (schema, name) in functions {
            if schema == "pg_catalog" || schema == "information_schema" {
                builtin_functions.insert(name);
            } else {
                user_functions.insert(format!("{schema}.{name}"));
                user_functions.insert(name);
            }
        }
        Catalog {
            id: NEXT_CATALOG_ID.fetch_add(1, Ordering::Relaxed),
            relations,
            by_name,
            schemas,
            builtin_functions,
            user_functions,
        }
    }

    /// This load's id: decisions made against it are used with it only.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether `other` knows the same relations, schemas and functions (whatever
    /// their ids): a load that finds the same catalog changes nothing.
    pub fn same_contents(&self, other: &Catalog) -> bool {
        self.relations == other.relations
            && self.by_name == other.by_name
            && self.schemas == other.schemas
            && self.builtin_functions == other.builtin_functions
            && self.user_functions == other.user_functions
    }

    /// Finds a relation. An unqualified name matches every schema that has it; the
    /// most restrictive match wins (unguardable, then scoped), so the answer does
    /// not depend on `search_path`.
    pub fn lookup(&self, schema: Option<&str>, name: &str) -> Lookup<'_> {
        if let Some(schema) = schema {
            return match self.relations.get(&(schema.to_string(), name.to_string())) {
                Some(info) => Lookup::Found(info),
                None => Lookup::Unknown,
            };
        }
        let Some(schemas) = self.by_name.get(name) else {
            return Lookup::Unknown;
        };
        let candidates = schemas
            .iter()
            .filter_map(|s| self.relations.get(&(s.clone(), name.to_string())));
        candidates
            .max_by_key(|info| match info.scope {
                Scope::Unguardable => 2,
                Scope::Scoped => 1,
                Scope::Global => 0,
            })
            .map_or(Lookup::Unknown, Lookup::Found)
    }

    pub fn scoped_relations(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .relations
            .values()
            .filter(|r| r.scope == Scope::Scoped)
            .map(|r| format!("{}.{}", r.schema, r.name))
            .collect();
        names.sort();
        names
    }

    pub fn unguardable_relations(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .relations
            .values()
            .filter(|r| r.scope == Scope::Unguardable)
            .map(|r| format!("{}.{}", r.schema, r.name))
            .collect();
        names.sort();
        names
    }
}

const RELATIONS_SQL: &str = "
SELECT n.nspname::text, c.relname::text,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = $1 AND a.attnum > 0
                 AND NOT a.attisdropped) AS has_column,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname <> 'pg_toast' AND n.nspname NOT LIKE 'pg_temp%'";

const DEPENDS_SQL: &str = "
SELECT DISTINCT vn.nspname::text, v.relname::text, tn.nspname::text, t.relname::text
FROM pg_rewrite r
JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
                 AND d.refclassid = 'pg_class'::regclass
JOIN pg_class v ON v.oid = r.ev_class
JOIN pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.refobjid <> r.ev_class";

const FUNCTIONS_SQL: &str = "
SELECT DISTINCT n.nspname::text, p.proname::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace";

/// Reads the catalog through an open connection.
pub async fn load(
    client: &Client,
    config: &TenancyConfig,
) -> Result<Catalog, tokio_postgres::Error> {
    let rows = client
        .query(RELATIONS_SQL, &[&config.column])
        .await?
        .into_iter()
        .map(|row| RelationRow {
            schema: row.get(0),
            name: row.get(1),
            has_column: row.get(2),
            columns: row.get(3),
        })
        .collect();
    let depends = client
        .query(DEPENDS_SQL, &[])
        .await?
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect();
    let schemas = client
        .query("SELECT nspname::text FROM pg_namespace", &[])
        .await?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    let functions = client
        .query(FUNCTIONS_SQL, &[])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(Catalog::build(config, rows, depends, schemas, functions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(schema: &str, name: &str, has_column: bool) -> RelationRow {
        RelationRow {
            schema: schema.into(),
            name: name.into(),
            has_column,
            columns: vec!["id".into(), "tenant_id".into()],
        }
    }

    #[test]
    fn scope_comes_from_column_lists_and_views() {
        let config = TenancyConfig {
            tables: vec!["legacy".into()],
            exempt_tables: vec!["public.countries".into()],
            ..TenancyConfig::default()
        };
        let catalog = Catalog::build(
            &config,
            vec![
                row("public", "orders", true),
                row("public", "products", false),
                row("public", "legacy", false),
                row("public", "countries", true),
                row("public", "order_summary", false),
                row("public", "order_view", true),
                row("reports", "orders", false),
            ],
            vec![
                (
                    ("public".into(), "order_summary".into()),
                    ("public".into(), "orders".into()),
                ),
                (
                    ("public".into(), "order_view".into()),
                    ("public".into(), "orders".into()),
                ),
            ],
            HashSet::from(["public".to_string()]),
            vec![
                ("pg_catalog".into(), "count".into()),
                ("public".into(), "leak".into()),
            ],
        );
        let scope = |schema: Option<&str>, name: &str| match catalog.lookup(schema, name) {
            Lookup::Found(info) => Some(info.scope),
            Lookup::Unknown => None,
        };
        assert_eq!(scope(None, "orders"), Some(Scope::Scoped));
        assert_eq!(scope(Some("reports"), "orders"), Some(Scope::Global));
        assert_eq!(scope(None, "products"), Some(Scope::Global));
        assert_eq!(scope(None, "legacy"), Some(Scope::Scoped));
        assert_eq!(scope(None, "countries"), Some(Scope::Global));
        assert_eq!(scope(None, "order_summary"), Some(Scope::Unguardable));
        assert_eq!(scope(None, "order_view"), Some(Scope::Scoped));
        assert_eq!(scope(None, "nothing"), None);
        assert!(catalog.user_functions.contains("leak"));
        assert!(catalog.builtin_functions.contains("count"));
    }
}
