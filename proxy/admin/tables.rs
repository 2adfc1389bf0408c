//! The tables behind `SHOW ...` and `/api/...`: one function per table, rows of text.
//! Column names follow PgBouncer where the concept is the same.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use crate::runtime::Runtime;

/// A result set: column names and text rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Rows as JSON objects (column → value).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        self.columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| (c.to_string(), serde_json::Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

fn backend_label(index: usize) -> String {
    if index == 0 {
        "primary".into()
    } else {
        format!("replica{index}")
    }
}

pub fn pools(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "database",
        "user",
        "backend",
        "server",
        "pool_mode",
        "size",
        "sv_active",
        "sv_idle",
        "cl_active",
        "checkouts",
        "avg_wait_us",
        "checkout_timeouts",
        "connect_errors",
        "cl_waiting",
        "waiting_by_group",
    ]);
    let config = runtime.config();
    let clients = runtime.cancels.clients();
    for pool in runtime.pools.all() {
        let (open, idle) = pool.state();
        let checkouts = pool.stats.checkouts.load(Ordering::Relaxed);
        let active_clients = clients
            .iter()
            .filter(|c| {
                c.server
                    .as_ref()
                    .is_some_and(|(a, _)| *a == pool.target.address)
            })
            .count();
        table.rows.push(vec![
            pool.key.database.clone(),
            pool.key.user.clone(),
            backend_label(pool.key.backend),
            pool.target.address.clone(),
            format!("{:?}", config.pool_mode_for(&pool.key.database)).to_lowercase(),
            pool.settings.size.to_string(),
            (open - idle).to_string(),
            idle.to_string(),
            active_clients.to_string(),
            checkouts.to_string(),
            (pool.stats.checkout_wait_us.load(Ordering::Relaxed) / checkouts.max(1)).to_string(),
            pool.stats
                .checkout_timeouts
                .load(Ordering::Relaxed)
                .to_string(),
            pool.stats
                .connect_errors
                .load(Ordering::Relaxed)
                .to_string(),
            pool.waiting().to_string(),
            super::protection::waiting_groups(&pool.waiting_by_group()),
        ]);
    }
    table
}

pub fn servers(runtime: &Runtime) -> Table {
    let mut table = Table::new(&["database", "user", "backend", "addr", "state", "count"]);
    for pool in runtime.pools.all() {
        let (open, idle) = pool.state();
        for (state, count) in [("active", open - idle), ("idle", idle)] {
            table.rows.push(vec![
                pool.key.database.clone(),
                pool.key.user.clone(),
                backend_label(pool.key.backend),
                pool.target.address.clone(),
                state.into(),
                count.to_string(),
            ]);
        }
    }
    table
}

pub fn clients(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "pid",
        "user",
        "database",
        "addr",
        "application_name",
        "tls",
        "state",
        "server",
        "pinned",
        "connect_time",
    ]);
    for client in runtime.cancels.clients() {
        let since = client
            .info
            .connected_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        table.rows.push(vec![
            client.pid.to_string(),
            client.info.identity.user.clone(),
            client.info.identity.database.clone(),
            client.info.identity.peer.clone(),
            client.info.identity.application_name.clone(),
            client.info.tls.to_string(),
            if client.server.is_some() {
                "active"
            } else {
                "idle"
            }
            .into(),
            client
                .server
                .as_ref()
                .map(|(a, pid)| format!("{a} pid {pid}"))
                .unwrap_or_default(),
            client.pinned.clone(),
            since.to_string(),
        ]);
    }
    table
}

pub fn databases(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "name",
        "host",
        "port",
        "database",
        "pool_mode",
        "pool_size",
        "replicas",
    ]);
    let config = runtime.config();
    for (name, db) in &config.databases {
        let Ok(primary) = db.primary_endpoint(name) else {
            continue;
        };
        table.rows.push(vec![
            name.clone(),
            primary.host.clone(),
            primary.port.to_string(),
            db.server_database
                .clone()
                .or(primary.database.clone())
                .unwrap_or_else(|| name.clone()),
            format!("{:?}", config.pool_mode_for(name)).to_lowercase(),
            config.pool_size_for(name).to_string(),
            db.replicas.len().to_string(),
        ]);
    }
    table
}

pub fn backends(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "database",
        "backend",
        "addr",
        "healthy",
        "lag_bytes",
        "lag_ms",
        "in_flight",
        "routed",
        "errors",
        "circuit",
    ]);
    let routing = runtime.routing();
    for topology in routing.topologies() {
        for backend in &topology.backends {
            let lag = |v: u64| {
                if v == u64::MAX {
                    "unknown".to_string()
                } else {
                    v.to_string()
                }
            };
            table.rows.push(vec![
                topology.database.clone(),
                backend_label(backend.index),
                backend.address.clone(),
                backend.healthy.load(Ordering::Relaxed).to_string(),
                if backend.is_primary() {
                    "0".into()
                } else {
                    lag(backend.lag_bytes.load(Ordering::Relaxed))
                },
                if backend.is_primary() {
                    "0".into()
                } else {
                    lag(backend.lag_ms.load(Ordering::Relaxed))
                },
                backend.in_flight.load(Ordering::Relaxed).to_string(),
                backend.routed.load(Ordering::Relaxed).to_string(),
                backend.errors.load(Ordering::Relaxed).to_string(),
                backend.circuit.state().as_str().to_string(),
            ]);
        }
    }
    table
}

pub fn queries(runtime: &Runtime, limit: usize) -> Table {
    let mut table = Table::new(&[
        "id",
        "query",
        "calls",
        "errors",
        "rows",
        "total_ms",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "primary_calls",
        "replica_calls",
        "cache_hits",
        "sample",
        "blocked",
    ]);
    let snapshot = runtime.stats.snapshot();
    for q in snapshot.queries.iter().take(limit) {
        table.rows.push(vec![
            q.id.clone(),
            q.query.clone(),
            q.calls.to_string(),
            q.errors.to_string(),
            q.rows.to_string(),
            format!("{:.3}", q.total_ms),
            format!("{:.3}", q.mean_ms),
            format!("{:.3}", q.p50_ms),
            format!("{:.3}", q.p95_ms),
            format!("{:.3}", q.p99_ms),
            format!("{:.3}", q.max_ms),
            q.primary_calls.to_string(),
            q.replica_calls.to_string(),
            q.cache_hits.to_string(),
            q.sample.clone().unwrap_or_default(),
            super::protection::is_blocked(runtime, &q.id).to_string(),
        ]);
    }
    table
}

pub fn config(runtime: &Runtime) -> Table {
    let mut table = Table::new(&["key", "value"]);
    let value = crate::config::redacted(&runtime.config());
    flatten("", &value, &mut table.rows);
    table
}

fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        other => {
            let lower = prefix.to_ascii_lowercase();
            let secret = lower.contains("password")
                || lower.contains("token")
                || lower.ends_with("primary")
                || lower.contains("replicas")
                || lower.contains("users");
            let text = if secret {
                redact(other)
            } else {
                match other {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                }
            };
            rows.push(vec![prefix.to_string(), text]);
        }
    }
}

/// Shows URLs without their passwords and hides secrets.
fn redact(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if text.contains("://") {
        let re = |s: &str| match url::Url::parse(s) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => s.to_string(),
        };
        return text
            .split(',')
            .map(|part| re(part.trim_matches(|c| c == '[' || c == ']' || c == '"')))
            .collect::<Vec<_>>()
            .join(",");
    }
    if text == "null" || text == "[]" {
        text
    } else {
        "***".into()
    }
}

pub fn version() -> Table {
    let mut table = Table::new(&["version"]);
    table
        .rows
        .push(vec![format!("pgwarden {}", env!("CARGO_PKG_VERSION"))]);
    table
}
