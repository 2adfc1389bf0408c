//! Read-your-writes positions shared by many client connections: the latest commit
//! LSN per key (`pgwarden.session_key` or the tenant), kept in a bounded cache and
//! exchanged between pgwarden instances with `LISTEN/NOTIFY pgwarden_ryw` on the
//! primary (payload `database|key|lsn`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::topology::{parse_lsn, Lsn};

pub const CHANNEL: &str = "pgwarden_ryw";

/// Bytes the positions may take (keys included).
pub const POSITIONS_MAX_BYTES: u64 = 16 << 20;
/// Bytes one position costs beyond its key text (the LSN, moka bookkeeping).
const POSITION_ENTRY_BYTES: u32 = 96;

/// Last write position per (database, key); entries expire after an hour without writes.
/// Bounded by bytes ([`POSITIONS_MAX_BYTES`]).
pub struct SharedPositions {
    positions: moka::sync::Cache<String, Lsn>,
}

impl Default for SharedPositions {
    fn default() -> Self {
        SharedPositions {
            positions: moka::sync::Cache::builder()
                .max_capacity(POSITIONS_MAX_BYTES)
                .weigher(|slot: &String, _: &Lsn| {
                    u32::try_from(slot.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(POSITION_ENTRY_BYTES)
                })
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl SharedPositions {
    fn slot(database: &str, key: &str) -> String {
        format!("{database}|{key}")
    }

    pub fn observe(&self, database: &str, key: &str, lsn: Lsn) {
        let slot = Self::slot(database, key);
        let current = self.positions.get(&slot).unwrap_or(0);
        if lsn > current {
            self.positions.insert(slot, lsn);
        }
    }

    /// Bytes the positions hold now.
    pub fn bytes(&self) -> u64 {
        self.positions.weighted_size()
    }

    pub fn get(&self, database: &str, key: &str) -> Option<Lsn> {
        self.positions.get(&Self::slot(database, key))
    }

    /// Applies a NOTIFY payload from another instance.
    pub fn apply_payload(&self, payload: &str) {
        let mut parts = payload.rsplitn(2, '|');
        let (Some(lsn), Some(slot)) = (parts.next(), parts.next()) else {
            return;
        };
        if let (Some((database, key)), Some(lsn)) = (slot.split_once('|'), parse_lsn(lsn)) {
            self.observe(database, key, lsn);
        }
    }
}

/// Listens for other instances' positions until the process ends; reconnects on error.
pub fn spawn_listener(positions: Arc<SharedPositions>, primary_url: String) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&positions, &primary_url).await {
                tracing::debug!(error = %e, "read-your-writes listener reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(positions: &SharedPositions, url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) =
        crate::pool::connect_background(url, "positions listener").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    while let Some(payload) = rx.recv().await {
        positions.apply_payload(&payload);
    }
    driver.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_position_per_key() {
        let p = SharedPositions::default();
        p.observe("app", "user-1", 100);
        p.observe("app", "user-1", 50);
        assert_eq!(p.get("app", "user-1"), Some(100));
        p.apply_payload("app|user|with|bars|0/C8");
        assert_eq!(p.get("app", "user|with|bars"), Some(200));
        p.apply_payload("garbage");
        assert_eq!(p.get("shop", "user-1"), None);
    }
}
