//! The demo's advisors step: a 100,000-row `events` table read by a column nothing
//! indexes, then the advisories pgwarden found in it and in the workload's N+1 page
//! loop, printed as `pgwarden advise` prints them.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::advise::{render, AdvisoryKind};
use crate::RunningProxy;

const EVENTS: &str = "
CREATE TABLE events (id bigserial PRIMARY KEY, customer_id int NOT NULL, kind text NOT NULL,
                     created_at timestamptz NOT NULL);
INSERT INTO events (customer_id, kind, created_at)
SELECT g % 1000, 'kind ' || g % 20, now() - g * interval '1 second'
FROM generate_series(1, 100000) g;
ANALYZE events;";

/// Installs hypopg when its files exist; says whether it did.
pub async fn install_hypopg(client: &Client) -> bool {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        .await
        .is_ok()
}

/// The statements the advisors learn from.
pub async fn workload(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(EVENTS).await?;
    let latest = client
        .prepare(
            "SELECT id, kind FROM events WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 10",
        )
        .await?;
    for customer in 0..30 {
        client.query(&latest, &[&customer]).await?;
    }
    Ok(())
}

/// Waits (bounded) for an index and an N+1 advisory, then prints every advisory.
pub async fn print(proxy: &RunningProxy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let advisors = &proxy.runtime.advisors;
    let found = |kind| advisors.list().iter().any(|a| a.kind == kind);
    while Instant::now() < deadline
        && !(found(AdvisoryKind::Index) && found(AdvisoryKind::NPlusOne))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("\nadvisories (SHOW ADVISORIES, /api/advisories, `pgwarden advise`):");
    for line in render::text(&advisors.list()).lines() {
        if line.is_empty() {
            println!();
        } else {
            println!("  {line}");
        }
    }
}
