//! Single flight against real PostgreSQL: concurrent misses of one key run one query,
//! and when a write overtakes the leader, its followers share the next flight.

use super::*;

/// `n` clients log in, then all send `sql` at once; each task returns the first value.
fn clients_running(
    proxy: &RunningProxy,
    n: usize,
    sql: &'static str,
) -> Vec<tokio::task::JoinHandle<Option<String>>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    (0..n)
        .map(|_| {
            let port = proxy.port();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut c = within("login", Wire::tcp(port, USER, DATABASE, &[])).await;
                within("all clients logged in", barrier.wait()).await;
                first_value(&within("query", c.simple(sql)).await)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_run_one_query() {
    let cluster = cluster(0, &["shared_preload_libraries = 'pg_stat_statements'"]);
    setup(
        &cluster,
        "CREATE EXTENSION pg_stat_statements; CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 2000000) g;",
    )
    .await;
    let proxy = start(&cluster, |c| c.pool.size = 60).await;
    let sql = "/* pgwarden:cache */ SELECT count(*), sum(id) FROM big WHERE id % 7 = 3";
    let tasks = clients_running(&proxy, 50, sql);
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap());
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]) && values[0].is_some());
    let mut d = direct(&cluster).await;
    let calls = simple_value(
        &mut d,
        "SELECT sum(calls)::text FROM pg_stat_statements WHERE query LIKE '%sum(id) FROM big%'",
    )
    .await;
    assert_eq!(
        calls.as_deref(),
        Some("1"),
        "50 concurrent misses, one query"
    );
}

/// A write that commits while a miss is in flight makes the leader's result unusable.
/// Its followers then run the query once more, together, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_overtaken_flight_share_the_next_one() {
    const CLIENTS: usize = 10;
    let cluster = cluster(0, &["shared_preload_libraries = 'pg_stat_statements'"]);
    setup(
        &cluster,
        "CREATE EXTENSION pg_stat_statements; CREATE TABLE small (id int); INSERT INTO small VALUES (1);
         CREATE TABLE big AS SELECT g AS n FROM generate_series(1, 3000000) g;",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.pool.size = 20;
        // Both flights fit in the followers' wait.
        c.cache.flight_wait_ms = 60_000;
    })
    .await;
    // A scan of the big table for each row of the small one: a query that runs long
    // enough for a write to the small table to commit meanwhile.
    let sql = "/* pgwarden:cache */ SELECT count(*) FROM small, big WHERE big.n % 7 <> small.id";
    let tasks = clients_running(&proxy, CLIENTS, sql);
    // Once the leader's query runs on the server, a write to the small table commits
    // through pgwarden.
    let mut d = direct(&cluster).await;
    let running = "SELECT count(*)::text FROM pg_stat_activity WHERE state = 'active' \
                   AND query LIKE '%FROM small, big%' AND pid <> pg_backend_pid()";
    within("the leader's query starts", async {
        while simple_value(&mut d, running).await.as_deref() != Some("1") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut writer = wire(&proxy).await;
    simple_value(&mut writer, "INSERT INTO small VALUES (2)").await;
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap().expect("a count"));
    }
    // n in 1..=3,000,000 with n % 7 <> 1 (before the write), plus those with n % 7 <> 2.
    let rows: u64 = 3_000_000;
    let with_remainder = |r: u64| (rows + 7 - r) / 7;
    let old = rows - with_remainder(1);
    let new = old + rows - with_remainder(2);
    let olds = values.iter().filter(|v| **v == old.to_string()).count();
    let news = values.iter().filter(|v| **v == new.to_string()).count();
    assert_eq!(
        (olds, news),
        (1, CLIENTS - 1),
        "the leader sees the table before the write, its followers after: {values:?}"
    );
    let calls = simple_value(
        &mut d,
        "SELECT sum(calls)::text FROM pg_stat_statements WHERE query LIKE '%FROM small, big%' \
         AND query NOT LIKE '%pg_stat_activity%'",
    )
    .await;
    assert_eq!(
        calls.as_deref(),
        Some("2"),
        "the overtaken flight, then one more for all its followers"
    );
}
