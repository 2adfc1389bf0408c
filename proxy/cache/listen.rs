//! Invalidations from other pgwarden instances: one tokio-postgres connection per
//! database LISTENs on the primary. While it is down, that database's entries are
//! dropped and nothing of it is stored (an invalidation could be missed).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::catalog::{parse_payload, CHANNEL};
use super::ResultCache;
use crate::protocol::sql_quote::quote_literal;

pub fn spawn(cache: Arc<ResultCache>, database: String, primary_url: String) {
    tokio::spawn(async move {
        loop {
            while cache.is_paused(&database) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let result = listen(&cache, &database, &primary_url).await;
            cache.listener_down(&database);
            match result {
                Ok(()) => {
                    tracing::warn!(%database, "cache LISTEN connection closed; entries dropped")
                }
                Err(e) => {
                    tracing::warn!(%database, error = %e, "cache LISTEN connection lost; entries dropped")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

async fn listen(
    cache: &ResultCache,
    database: &str,
    url: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) =
        crate::pool::connect_background(url, "cache invalidation").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let (outbox, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<String>();
    cache.listener_up(database, outbox);
    tracing::debug!(%database, "cache invalidations: listening");
    let result = loop {
        // Registered before the check, so a pause between the two is not missed.
        let paused = cache.pause_changed.notified();
        tokio::pin!(paused);
        paused.as_mut().enable();
        if cache.is_paused(database) {
            break Ok(());
        }
        tokio::select! {
            _ = paused => {}
            payload = rx.recv() => {
                let Some(payload) = payload else { break Ok(()) };
                let mut parts = payload.splitn(4, '|');
                let (Some(instance), Some(db), _, Some(last)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if db != database || instance == cache.instance.to_string() {
                    continue;
                }
                if matches!(last, "active" | "hello") {
                    cache.on_announcement(database, last);
                    continue;
                }
                if let Some((_, db, invalidation)) = parse_payload(&payload) {
                    cache.invalidate(&db, &invalidation);
                }
            }
            word = outgoing.recv() => {
                let Some(payload) = word else { break Ok(()) };
                let sql = format!("SELECT pg_notify('{CHANNEL}', {})", quote_literal(&payload));
                if let Err(e) = client.batch_execute(&sql).await {
                    break Err(e);
                }
            }
        }
    };
    driver.abort();
    drop(client);
    result
}
