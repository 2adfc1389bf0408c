//! The tenant guard's tables: `SHOW TENANCY` (violations per database, tenant,
//! fingerprint and reason), `SHOW TENANCY TABLES` (what each guarded database
//! scopes), and `/api/tenancy` for the dashboard.

use super::tables::Table;
use crate::config::TenancyMode;
use crate::runtime::Runtime;

pub fn violations(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "database",
        "tenant",
        "action",
        "kind",
        "count",
        "fingerprint",
        "last_reason",
    ]);
    for row in runtime.violations.snapshot() {
        table.rows.push(vec![
            row.database,
            row.tenant,
            row.action.to_string(),
            row.kind.to_string(),
            row.count.to_string(),
            row.fingerprint,
            row.last_reason,
        ]);
    }
    table
}

pub fn scoped_tables(runtime: &Runtime) -> Table {
    let mut table = Table::new(&["database", "mode", "catalog_loads", "scope", "relation"]);
    let config = runtime.config();
    let guard = runtime.tenancy();
    for name in config.databases.keys() {
        let mode = config.tenancy_mode_for(name);
        if mode == TenancyMode::Off {
            continue;
        }
        let Some(handle) = guard.catalog_handle(name) else {
            continue;
        };
        let loads = handle.generation().to_string();
        let Some(catalog) = handle.current() else {
            table.rows.push(vec![
                name.clone(),
                mode.as_str().into(),
                loads,
                "(catalog not loaded)".into(),
                String::new(),
            ]);
            continue;
        };
        let lists = [
            ("scoped", catalog.scoped_relations()),
            ("unguardable", catalog.unguardable_relations()),
        ];
        for (scope, relations) in lists {
            for relation in relations {
                table.rows.push(vec![
                    name.clone(),
                    mode.as_str().into(),
                    loads.clone(),
                    scope.into(),
                    relation,
                ]);
            }
        }
    }
    table
}

/// `/api/tenancy`: both tables.
pub fn json(runtime: &Runtime) -> serde_json::Value {
    serde_json::json!({
        "violations": runtime.violations.snapshot(),
        "tables": scoped_tables(runtime).to_json(),
    })
}
