//! What a reload (SIGHUP to the real binary) changes for clients already connected.
//! Sessions read some settings from flags the reload sets beside the configuration
//! (whether `[[limits]]` has a rule, whether the result cache looks only at hinted
//! statements), so a reload must reach those flags, not only the configuration.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::process::ProxyProcess;
use crate::support::within;

const RELOADED: &str = "\
[cache]
rules = [\"reload_items\"]

[[limits]]
name = \"reports-rate\"
application_name = \"reports\"
rate_per_second = 0.5
burst = 1
max_wait_ms = 0
";

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = within("login", tokio_postgres::connect(url, tokio_postgres::NoTls))
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    tokio::spawn(connection);
    client
}

async fn cache_hits(process: &ProxyProcess) -> u64 {
    let (_, body) = within(
        "GET /api/cache",
        support::http::get(process.http, "/api/cache", None),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("/api/cache is JSON");
    json["hits"].as_u64().expect("hits")
}

/// Waits until the process's log shows `count` reloads.
async fn wait_for_reloads(process: &ProxyProcess, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process.log().matches("configuration reloaded").count() < count {
        assert!(Instant::now() < deadline, "no reload:\n{}", process.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_brings_new_limits_and_cache_rules_to_connected_clients() {
    let cluster = support::cluster(0);
    let process = ProxyProcess::start(&cluster, "", &[]);
    let app = connect(&process.url()).await;
    let reports = connect(&format!("{}?application_name=reports", process.url())).await;
    within(
        "setup",
        app.batch_execute(
            "CREATE TABLE reload_items (id int primary key);
             INSERT INTO reload_items SELECT generate_series(1, 10);",
        ),
    )
    .await
    .unwrap();
    let count = "SELECT count(*) FROM reload_items";

    // Before: no rule limits the reports, and the unhinted read is never cached.
    for _ in 0..3 {
        within("reports before", reports.simple_query("SELECT 1"))
            .await
            .unwrap();
        within("read before", app.simple_query(count))
            .await
            .unwrap();
    }
    assert_eq!(cache_hits(&process).await, 0, "cached without a rule");

    process.write_config(RELOADED);
    process.signal(libc::SIGHUP);
    wait_for_reloads(&process, 1).await;

    // After, on the same sessions: the rate rule refuses the second statement at
    // once, and the table's reads are answered from the cache (once its invalidation
    // channel is up, which the reload does not wait for).
    within("first report", reports.simple_query("SELECT 1"))
        .await
        .unwrap();
    let refused = within("second report", reports.simple_query("SELECT 1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("53400"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache_hits(&process).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the rule from the reload never cached:\n{}",
            process.log()
        );
        within("read after", app.simple_query(count)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // And back: without the rules, nothing is refused or newly cached.
    process.write_config("");
    process.signal(libc::SIGHUP);
    wait_for_reloads(&process, 2).await;
    let hits = cache_hits(&process).await;
    for _ in 0..3 {
        within("reports again", reports.simple_query("SELECT 1"))
            .await
            .unwrap();
        within("read again", app.simple_query(count)).await.unwrap();
    }
    assert_eq!(
        cache_hits(&process).await,
        hits,
        "cached after the rule went"
    );
}
