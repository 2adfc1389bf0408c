//! Issue 16: memory stays bounded under many distinct statement texts. 200,000
//! distinct simple-protocol statements (pipelined over a few clients) go through the
//! proxy with small byte bounds; the proxy's own accounting (`SHOW MEMORY`,
//! `/api/memory`, `pgwarden_memory_bytes`) must show every part within its bound.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use support::proxy::{self, PASSWORD, USER};
use tokio_postgres::SimpleQueryMessage;

const STATEMENTS: usize = 200_000;
const CLIENTS: usize = 4;
/// Statements each client keeps in flight.
const PIPELINE: usize = 256;
const TEXT_MAP_BYTES: u64 = 256 * 1024;
const FINGERPRINT_BYTES: u64 = 1024 * 1024;
const CLASSIFIER_BYTES: u64 = 64 * 1024;

/// Runs a simple query with a timeout.
async fn query(client: &tokio_postgres::Client, sql: &str) -> Vec<SimpleQueryMessage> {
    tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `SHOW MEMORY` as part → (bytes, limit).
async fn show_memory(port: u16) -> HashMap<String, (u64, u64)> {
    let url = format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/pgwarden");
    let admin = tokio::time::timeout(Duration::from_secs(10), proxy::connect_url(&url))
        .await
        .expect("admin connect timed out")
        .expect("admin connect");
    let mut parts = HashMap::new();
    for message in query(&admin, "SHOW MEMORY").await {
        if let SimpleQueryMessage::Row(row) = message {
            let number = |i: usize| row.get(i).and_then(|v| v.parse().ok()).unwrap();
            parts.insert(row.get(0).unwrap().to_string(), (number(1), number(2)));
        }
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_texts_stay_within_the_byte_bounds() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.stats.text_map_bytes = TEXT_MAP_BYTES;
        c.stats.max_bytes = FINGERPRINT_BYTES;
        c.routing.classifier_cache_bytes = CLASSIFIER_BYTES;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(
            tokio::time::timeout(Duration::from_secs(10), proxy::connect(&proxy))
                .await
                .expect("connect timed out"),
        );
    }
    let tasks = clients.into_iter().enumerate().map(|(c, client)| {
        tokio::spawn(async move {
            let per_client = STATEMENTS / CLIENTS;
            let from = c * per_client;
            stream::iter(from..from + per_client)
                .map(|n| {
                    let client = &client;
                    async move {
                        // Distinct texts, a handful of fingerprints. Texts that differ
                        // only in literals share one text-map entry (their shape); a
                        // comment is part of the shape but not of the fingerprint, so
                        // the commented half fills the text map with distinct shapes.
                        let sql = if n % 2 == 0 {
                            format!("SELECT {} /* request {n} */ WHERE 1 <> {n}", n % 7)
                        } else {
                            format!("SELECT {} WHERE 1 <> {n}", n % 7)
                        };
                        query(client, &sql).await.len()
                    }
                })
                .buffer_unordered(PIPELINE)
                .fold(0usize, |sum, n| async move { sum + n })
                .await
        })
    });
    for task in tasks {
        assert!(task.await.expect("client task") > 0);
    }
    proxy.runtime.stats.flush().await;

    let parts = show_memory(proxy.port()).await;
    for part in [
        "stats_text_map",
        "stats_fingerprints",
        "classifier_cache",
        "tenant_decisions",
        "ryw_positions",
        "statement_registry",
        "n_plus_one",
    ] {
        let (bytes, limit) = parts[part];
        assert!(limit > 0, "{part} has no bound: {parts:?}");
        assert!(bytes <= limit, "{part}: {bytes} bytes over its {limit}");
    }
    assert_eq!(parts["stats_text_map"].1, TEXT_MAP_BYTES);
    assert_eq!(parts["stats_fingerprints"].1, FINGERPRINT_BYTES);
    assert_eq!(parts["classifier_cache"].1, CLASSIFIER_BYTES);
    // The text map was used (it is full of hashes) and the fingerprints are counted.
    assert!(parts["stats_text_map"].0 > TEXT_MAP_BYTES / 4, "{parts:?}");
    assert!(parts["stats_fingerprints"].0 > 0, "{parts:?}");
    assert!(parts["process_rss"].0 > 0, "{parts:?}");

    let snapshot = proxy.runtime.stats.snapshot();
    let calls: u64 = snapshot.queries.iter().map(|q| q.calls).sum();
    assert_eq!(
        calls + snapshot.dropped_events,
        STATEMENTS as u64,
        "every statement counted or reported dropped"
    );

    // The same numbers over HTTP and as the Prometheus gauge.
    let (status, body) = support::http::get(proxy.http_address, "/api/memory", None).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let text_map = json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["part"] == "stats_text_map")
        .expect("stats_text_map in /api/memory");
    assert_eq!(text_map["limit"], TEXT_MAP_BYTES);
    assert!(text_map["bytes"].as_u64().unwrap() <= TEXT_MAP_BYTES);
    let (status, metrics) = support::http::get(proxy.http_address, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pgwarden_memory_bytes{part=\"stats_text_map\"}"),
        "{metrics}"
    );
}
