//! Protection on the admin side: `SHOW LIMITS` (rules, their counters, refusals per
//! group and fingerprint, shed clients), `BLOCK QUERY` / `UNBLOCK QUERY`, the waiting
//! line per group for `SHOW POOLS`, the overload state for `/readyz`, and metrics
//! (including `pgwarden_backend_circuit_state`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tables::Table;
use crate::config::parse_fingerprint_id;
use crate::protocol::{ErrorFields, SqlState};
use crate::runtime::Runtime;

/// `SHOW LIMITS`: one row per rule, then refusals per group and per fingerprint,
/// quarantined fingerprints, and clients shed by the pools.
pub fn limits(runtime: &Runtime) -> Table {
    let mut table = Table::new(&[
        "kind", "name", "matches", "limit", "running", "admitted", "delayed", "refused",
    ]);
    let limits = runtime.protection.limits();
    for state in &limits.rules {
        let rule = &state.rule;
        let matches: Vec<String> = [
            ("tenant", &rule.tenant),
            ("role", &rule.role),
            ("database", &rule.database),
            ("application_name", &rule.application_name),
            ("fingerprint", &rule.fingerprint),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        let limit = format!(
            "max_concurrent={} rate_per_second={} burst={} max_wait_ms={}",
            rule.max_concurrent,
            rule.rate_per_second,
            rule.burst.max(1),
            rule.max_wait_ms
        );
        let c = &state.counters;
        table.rows.push(vec![
            "rule".into(),
            rule.name.clone(),
            matches.join(" "),
            limit,
            state.running().to_string(),
            c.admitted.load(Ordering::Relaxed).to_string(),
            c.delayed.load(Ordering::Relaxed).to_string(),
            c.refused.load(Ordering::Relaxed).to_string(),
        ]);
    }
    let groups = limits
        .refused_by_group
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (group, refused) in groups {
        table.rows.push(refusal_row("group", group, refused));
    }
    let ids = limits
        .refused_by_fingerprint
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (id, refused) in ids {
        table
            .rows
            .push(refusal_row("fingerprint", format!("{id:016x}"), refused));
    }
    for (id, refused) in runtime.protection.quarantine.list() {
        table
            .rows
            .push(refusal_row("quarantined", format!("{id:016x}"), refused));
    }
    let shed = runtime.pools.waiting.shed.load(Ordering::Relaxed);
    table
        .rows
        .push(refusal_row("shed", "pool.max_waiting".into(), shed));
    table
}

fn refusal_row(kind: &str, name: String, refused: u64) -> Vec<String> {
    vec![
        kind.into(),
        name,
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        refused.to_string(),
    ]
}

/// `BLOCK QUERY <id>` / `UNBLOCK QUERY <id>`.
pub fn block(runtime: &Runtime, id: &str, blocked: bool) -> Result<String, ErrorFields> {
    let Some(parsed) = parse_fingerprint_id(id) else {
        return Err(ErrorFields::error(
            SqlState::INVALID_PARAMETER_VALUE,
            format!("not a fingerprint id: {id}"),
        )
        .with_hint("use the id column of SHOW QUERIES (16 hex digits)"));
    };
    if blocked {
        runtime.protection.quarantine.block(parsed);
        tracing::warn!(fingerprint = %format!("{parsed:016x}"), "fingerprint quarantined (BLOCK QUERY)");
        Ok("BLOCK".into())
    } else {
        runtime.protection.quarantine.unblock(parsed);
        tracing::info!(fingerprint = %format!("{parsed:016x}"), "fingerprint released (UNBLOCK QUERY)");
        Ok("UNBLOCK".into())
    }
}

/// Whether a fingerprint id (as `SHOW QUERIES` prints it) is quarantined.
pub fn is_blocked(runtime: &Runtime, id: &str) -> bool {
    parse_fingerprint_id(id).is_some_and(|id| runtime.protection.quarantine.is_blocked(id))
}

/// `group=n group=n` of one pool's waiting clients (`-` for clients with no group).
pub fn waiting_groups(groups: &[(String, usize)]) -> String {
    groups
        .iter()
        .map(|(g, n)| format!("{}={n}", if g.is_empty() { "-" } else { g }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/readyz` says "overloaded" (with `protection.readyz_overloaded`) while the pools
/// shed clients or `pool.max_waiting` clients wait.
pub fn overloaded(runtime: &Runtime) -> Option<String> {
    let config = runtime.config();
    if !config.protection.readyz_overloaded {
        return None;
    }
    let total = &runtime.pools.waiting;
    let waiting = total.waiting.load(Ordering::Relaxed);
    let max = config.pool.max_waiting;
    if max > 0 && waiting >= max {
        return Some(format!(
            "overloaded: {waiting} clients wait (pool.max_waiting = {max})"
        ));
    }
    total
        .shed_within(Duration::from_secs(1))
        .then(|| "overloaded: clients were refused in the last second".to_string())
}

/// Protection metrics, set when `/metrics` is scraped.
pub fn record_metrics(runtime: &Runtime) {
    let total = &runtime.pools.waiting;
    metrics::gauge!("pgwarden_waiting_clients").set(total.waiting.load(Ordering::Relaxed) as f64);
    metrics::counter!("pgwarden_shed_clients_total").absolute(total.shed.load(Ordering::Relaxed));
    for state in &runtime.protection.limits().rules {
        let name = state.rule.name.clone();
        let c = &state.counters;
        metrics::counter!("pgwarden_limit_admitted_total", "rule" => name.clone())
            .absolute(c.admitted.load(Ordering::Relaxed));
        metrics::counter!("pgwarden_limit_delayed_total", "rule" => name.clone())
            .absolute(c.delayed.load(Ordering::Relaxed));
        metrics::gauge!("pgwarden_limit_running", "rule" => name).set(f64::from(state.running()));
    }
    metrics::gauge!("pgwarden_quarantined_fingerprints")
        .set(runtime.protection.quarantine.list().len() as f64);
    for topology in runtime.routing().topologies() {
        for backend in &topology.backends {
            let labels = [
                ("database", topology.database.clone()),
                ("backend", backend.address.clone()),
            ];
            // 0 closed, 1 half-open, 2 open.
            metrics::gauge!("pgwarden_backend_circuit_state", &labels)
                .set(f64::from(backend.circuit.state() as u8));
        }
    }
}
