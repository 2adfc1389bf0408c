//! N+1 advisories against real PostgreSQL: a parent query followed by one child query
//! per row it returned, within one session key (a web app's pooled connections), is
//! reported with the batched query that replaces the burst.

use super::*;
use crate::support::command::{OutputWithin, SHORT_RUN};

const PARENT: &str = "SELECT id FROM posts WHERE author_id = $1 ORDER BY id LIMIT $2";
const CHILD: &str = "SELECT id, body FROM comments WHERE post_id = $1";
const BATCH: &str = "SELECT id, body FROM comments WHERE post_id = ANY($1)";
const OTHER_CHILD: &str = "SELECT count(*) FROM comments WHERE post_id = $1 AND id > 0";

async fn n_plus_one_cluster() -> pgwarden::cluster::LocalCluster {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    t(
        "setup",
        direct.batch_execute(
            "CREATE TABLE posts (id int PRIMARY KEY, author_id int NOT NULL);
             CREATE TABLE comments (id int PRIMARY KEY, post_id int NOT NULL, body text);
             INSERT INTO posts SELECT g, g % 100 FROM generate_series(1, 5000) g;
             INSERT INTO comments SELECT g, 1 + g % 5000, 'c' || g FROM generate_series(1, 20000) g;",
        ),
    )
    .await;
    cluster
}

/// Connections sharing `pgwarden.session_key = key`, as a web app's pool would.
async fn pooled(proxy: &RunningProxy, key: &str, n: usize) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let url = format!(
            "{}?options=-c%20pgwarden.session_key%3D{key}",
            proxy::url(proxy)
        );
        clients.push(t("connect", proxy::connect_url(&url)).await);
    }
    clients
}

/// One request: the parent, then one child per post, spread over the pool.
async fn request(
    clients: &[tokio_postgres::Client],
    author: i32,
    children: i64,
    child: &str,
    unrelated: bool,
) {
    let posts = t("parent", clients[0].query(PARENT, &[&author, &children])).await;
    for (i, post) in posts.iter().enumerate() {
        let id: i32 = post.get(0);
        let client = &clients[i % clients.len()];
        t("child", client.query(child, &[&id])).await;
        if unrelated && i % 2 == 1 {
            let other = [
                "SELECT now()",
                "SELECT count(*) FROM posts",
                "SELECT version()",
            ][i % 3];
            t("unrelated", client.simple_query(other)).await;
        }
    }
}

async fn n_plus_one(proxy: &RunningProxy) -> Vec<Advisory> {
    proxy.runtime.stats.flush().await;
    proxy
        .runtime
        .advisors
        .list()
        .into_iter()
        .filter(|a| a.kind == AdvisoryKind::NPlusOne)
        .collect()
}

fn assert_pair(advisory: &Advisory, child: &str, burst: f64) {
    let details = advisory.n_plus_one.as_ref().unwrap();
    assert_eq!(details.child, id_of(child), "{advisory:#?}");
    assert_eq!(details.parent, id_of(PARENT), "{advisory:#?}");
    assert_eq!(details.column.as_deref(), Some("post_id"), "{advisory:#?}");
    assert!(
        details.rewrite.contains("post_id = any($1)"),
        "{advisory:#?}"
    );
    assert!((details.burst_size - burst).abs() < 1e-9, "{advisory:#?}");
    assert!(
        details.time_lost_ms > 0.0 && details.child_ms > 0.0,
        "{advisory:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_plus_one_advice() {
    let cluster = n_plus_one_cluster().await;

    // An ORM-like loop over pooled connections sharing a session key: exactly one.
    let proxy = start(&cluster, 10_000).await;
    let clients = pooled(&proxy, "user-1", 3).await;
    for r in 0..50 {
        request(&clients, r % 100, 20, CHILD, false).await;
    }
    let found = n_plus_one(&proxy).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_pair(&found[0], CHILD, 20.0);
    assert!(
        found[0].n_plus_one.as_ref().unwrap().requests >= 45,
        "{found:#?}"
    );
    let (_, body) = support::http::get(proxy.http_address, "/api/advisories", None).await;
    assert!(body.contains("\"kind\":\"n_plus_one\""), "{body}");
    // The console and the command line show it too.
    let console = t(
        "admin console",
        proxy::connect_url(&format!(
            "postgres://{}:{}@127.0.0.1:{}/pgwarden",
            proxy::USER,
            proxy::PASSWORD,
            proxy.port()
        )),
    )
    .await;
    let rows: Vec<_> = t("SHOW ADVISORIES", console.simple_query("SHOW ADVISORIES"))
        .await
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("kind"), Some("n_plus_one"));
    assert!(rows[0].get("action").unwrap().contains("post_id = any($1)"));
    let address = proxy.http_address.to_string();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["advise", "--url", &address])
            .output_within(SHORT_RUN)
    });
    let cli = t("pgwarden advise", async {
        cli.await.map_err(|e| e.to_string())
    })
    .await;
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let table_row = printed
        .lines()
        .find(|l| l.starts_with("1  n_plus_one"))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        table_row.contains("comments") && table_row.contains("post_id = any($1)"),
        "{printed}"
    );
    drop(clients);
    drop(proxy);

    // A batched `= ANY($1)` query, and a loop of 3, are not N+1; a real loop in the
    // same proxy still is (so the check can fail).
    let proxy = start(&cluster, 10_000).await;
    let clients = pooled(&proxy, "user-2", 2).await;
    for r in 0..10 {
        let posts = t("parent", clients[0].query(PARENT, &[&r, &20i64])).await;
        let ids: Vec<i32> = posts.iter().map(|p| p.get(0)).collect();
        t("batch", clients[1].query(BATCH, &[&ids])).await;
        request(&clients, r, 3, CHILD, false).await;
    }
    let quiet = n_plus_one(&proxy).await;
    assert!(quiet.is_empty(), "{quiet:#?}");
    for r in 0..5 {
        request(&clients, r, 6, OTHER_CHILD, false).await;
    }
    let found = n_plus_one(&proxy).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_pair(&found[0], OTHER_CHILD, 6.0);
    drop(clients);
    drop(proxy);

    // Two sessions interleaved statement by statement are not confused: each loop has
    // 8 children (one merged session would show 16, and loops of 3 would add to 6).
    let proxy = start(&cluster, 10_000).await;
    let a = pooled(&proxy, "user-a", 1).await;
    let b = pooled(&proxy, "user-b", 1).await;
    for (children, child) in [(3i64, OTHER_CHILD), (8, CHILD)] {
        for r in 0..6 {
            let pa = t("parent a", a[0].query(PARENT, &[&r, &children])).await;
            let pb = t("parent b", b[0].query(PARENT, &[&(r + 50), &children])).await;
            for (x, y) in pa.iter().zip(pb.iter()) {
                t("child a", a[0].query(child, &[&x.get::<_, i32>(0)])).await;
                t("child b", b[0].query(child, &[&y.get::<_, i32>(0)])).await;
            }
        }
    }
    let found = n_plus_one(&proxy).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_pair(&found[0], CHILD, 8.0);
    drop((a, b));
    drop(proxy);

    // Unrelated statements between the children do not hide the loop.
    let proxy = start(&cluster, 10_000).await;
    let clients = pooled(&proxy, "user-3", 2).await;
    for r in 0..6 {
        request(&clients, r, 10, CHILD, true).await;
    }
    let found = n_plus_one(&proxy).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_pair(&found[0], CHILD, 10.0);
    drop(clients);
    drop(proxy);

    // The key set with `SET pgwarden.session_key` (as a web app does per request), on
    // a database without replicas: the pool is one session again (connections alone
    // would see bursts of 7 or 6).
    let proxy = start(&cluster, 10_000).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = within("connect", proxy::connect(&proxy)).await;
        support::execute(&client, "SET pgwarden.session_key = 'GET /authors/:id'").await;
        clients.push(client);
    }
    for r in 0..10 {
        request(&clients, r, 20, CHILD, false).await;
    }
    let found = n_plus_one(&proxy).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_pair(&found[0], CHILD, 20.0);
}
