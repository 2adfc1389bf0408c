//! `cache.wal_invalidation`: writes that bypass pgwarden. One instance per database
//! (the holder of an advisory lock) reads a temporary logical slot with
//! `test_decoding` every `cache.wal_poll_ms` and broadcasts the changed tables with
//! NOTIFY, like a write through pgwarden. When the slot cannot be used
//! (`wal_level` is not `logical`, no permission), it says so in `SHOW CACHE` and the
//! log, and the TTL stays the only backstop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::catalog::CHANNEL;
use super::ResultCache;
use crate::protocol::sql_quote::quote_literal;

/// Advisory lock key of the slot reader (per database: the server's own namespace).
const LOCK_KEY: i64 = 0x7067_7764_6361_6368; // "pgwdcach"

pub fn spawn(cache: Arc<ResultCache>, database: String, url: String, every: Duration) {
    tokio::spawn(async move {
        loop {
            match read_slot(&cache, &database, &url, every).await {
                Ok(()) => {}
                Err(e) => {
                    let status = format!("unusable: {e}; TTL is the backstop");
                    tracing::warn!(%database, "cache.wal_invalidation {status}");
                    cache.set_wal_status(&database, &status);
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

async fn read_slot(
    cache: &ResultCache,
    database: &str,
    url: &str,
    every: Duration,
) -> Result<(), String> {
    let (client, connection) = crate::pool::connect_background(url, "cache slot reader")
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if level != "logical" {
            return Err(format!("wal_level is {level}, not logical"));
        }
        loop {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if got {
                break;
            }
            cache.set_wal_status(database, "standby: another instance reads the slot");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let slot = format!("pgwarden_cache_{}", cache.instance % 1_000_000_007);
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'test_decoding', true)",
                &[&slot],
            )
            .await
            .map_err(|e| e.to_string())?;
        cache.set_wal_status(database, &format!("reading slot {slot}"));
        tracing::info!(%database, %slot, "cache.wal_invalidation: reading a logical slot");
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let rows = client
                .query(
                    "SELECT data FROM pg_logical_slot_get_changes($1, NULL, 10000, 'include-xids', '0', 'skip-empty-xacts', '1')",
                    &[&slot],
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut tables = BTreeSet::new();
            for row in &rows {
                let data: &str = row.get(0);
                if let Some(name) = changed_table(data) {
                    tables.insert(name.to_string());
                }
            }
            if tables.is_empty() {
                continue;
            }
            // Resolve and broadcast on the primary: every instance (this one included,
            // through its own LISTEN) invalidates.
            let names: Vec<String> = tables.iter().map(|t| quote_literal(t)).collect();
            let sql = format!(
                "SELECT pg_notify('{CHANNEL}', {prefix} || pg_current_wal_insert_lsn()::text || '|' || \
                 coalesce((SELECT string_agg(to_regclass(n)::oid::text, ',') FROM unnest(ARRAY[{names}]::text[]) n \
                 WHERE to_regclass(n) IS NOT NULL), ''))",
                prefix = quote_literal(&format!("0|{database}|")),
                names = names.join(",")
            );
            client.batch_execute(&sql).await.map_err(|e| e.to_string())?;
        }
    }
    .await;
    driver.abort();
    result
}

/// `table public.t: INSERT: id[integer]:1` → `public.t` (already quoted as needed).
fn changed_table(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("table ")?;
    let end = rest.find(": ")?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_test_decoding_lines() {
        assert_eq!(
            super::changed_table("table public.items: UPDATE: id[integer]:1"),
            Some("public.items")
        );
        assert_eq!(super::changed_table("BEGIN"), None);
    }
}
