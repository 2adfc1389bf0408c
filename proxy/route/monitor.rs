//! The lag monitor: a background task per database that polls the primary's WAL
//! position and each replica's replay position with tokio-postgres, marks replicas
//! that stop answering as unhealthy (and healthy again when they answer), feeds
//! the lag numbers replica selection uses, and reports each poll to the backend's
//! circuit breaker (its polls are the half-open probes).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::topology::{parse_lsn, Topology};

/// Starts monitoring; the task ends when `topology` is dropped elsewhere and only the
/// monitor still holds it.
pub fn spawn(topology: Arc<Topology>, urls: Vec<String>, interval: Duration) {
    tokio::spawn(async move {
        let mut clients: Vec<Option<Client>> = urls.iter().map(|_| None).collect();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if Arc::strong_count(&topology) == 1 {
                return; // configuration reloaded: a new monitor took over
            }
            let timeout = interval.max(Duration::from_millis(500)) * 2;
            for (index, url) in urls.iter().enumerate() {
                let result =
                    tokio::time::timeout(timeout, poll(&mut clients[index], url, index)).await;
                let backend = &topology.backends[index];
                match result {
                    Ok(Ok(lsn)) => {
                        // A successful poll is also the circuit's half-open probe.
                        backend.circuit.record_success(&backend.address);
                        if index == 0 {
                            topology.record_primary_lsn(lsn);
                        } else {
                            topology.record_replica(index, lsn);
                        }
                    }
                    Ok(Err(e)) => {
                        clients[index] = None;
                        tracing::debug!(backend = index, error = %e, "lag poll failed");
                        topology.record_failure(index);
                        topology.mark_unhealthy(index);
                    }
                    Err(_) => {
                        clients[index] = None;
                        topology.record_failure(index);
                        topology.mark_unhealthy(index);
                    }
                }
            }
        }
    });
}

async fn poll(client: &mut Option<Client>, url: &str, index: usize) -> Result<u64, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (fresh, connection) = crate::pool::connect_background(url, "lag monitor")
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *client = Some(fresh);
    }
    let client = client.as_ref().expect("connected above");
    let sql = if index == 0 {
        "SELECT pg_current_wal_insert_lsn()::text"
    } else {
        "SELECT COALESCE(pg_last_wal_replay_lsn(), '0/0')::text WHERE pg_is_in_recovery()"
    };
    let rows = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .ok_or("not in recovery (promoted?)")?;
    parse_lsn(&text).ok_or_else(|| format!("bad LSN {text:?}"))
}
