//! The dashboard in a real browser: headless Chromium loads it while a workload runs;
//! the charts and the top-queries table must show that workload. The screenshot is
//! kept as tests/artifacts/dashboard.png.

use crate::support;
use crate::support::command::{OutputWithin, SHORT_RUN};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden::config::{Config, TenancyMode};
use support::proxy::{self, DATABASE};

fn chromium() -> PathBuf {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("headless Chromium is needed for this test: apt-get install -y chromium");
}

fn browse(url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1100",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output_within(SHORT_RUN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_running_workload() {
    let cluster = support::cluster(1);
    let replicas = cluster.replica_urls();
    let proxy = proxy::start(&cluster, move |c: &mut Config| {
        c.databases.get_mut(DATABASE).unwrap().replicas = replicas;
        // Audit mode: the workload's DDL runs, and shows up as violations.
        c.tenancy.mode = TenancyMode::Audit;
    })
    .await;
    let client = proxy::connect(&proxy).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int primary key, total int);
             CREATE TABLE invoices (id int primary key, tenant_id int);
             INSERT INTO orders SELECT g, g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    // Other connections read from the replica: let it replay the schema first.
    tokio::task::block_in_place(|| cluster.wait_for_replication(Duration::from_secs(30))).unwrap();
    // An N+1 loop (a page of orders, then one query per order; four pages) for the
    // Advisories panel.
    let page_of = client
        .prepare("SELECT id FROM orders ORDER BY id LIMIT 6 OFFSET $1")
        .await
        .unwrap();
    let one = client
        .prepare("SELECT total, id FROM orders WHERE id = $1")
        .await
        .unwrap();
    for offset in [0i64, 6, 12, 18] {
        for row in client.query(&page_of, &[&offset]).await.unwrap() {
            client.query(&one, &[&row.get::<_, i32>(0)]).await.unwrap();
        }
    }
    // A workload that keeps running while the browser looks.
    let url = proxy::url(&proxy);
    let workload = tokio::spawn(async move {
        let client = proxy::connect_url(&url).await.unwrap();
        let by_id = client
            .prepare("SELECT total FROM orders WHERE id = $1")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(25);
        let mut i = 0;
        while std::time::Instant::now() < deadline {
            i = i % 500 + 1;
            client.query(&by_id, &[&i]).await.unwrap();
            if i % 50 == 0 {
                client
                    .execute("UPDATE orders SET total = total + 1 WHERE id = $1", &[&i])
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = format!("http://{}/", proxy.http_address);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let dom = tokio::task::block_in_place(|| browse(&page, &["--dump-dom"]));
    let screenshot = tokio::task::block_in_place(|| {
        browse(&page, &[&format!("--screenshot={}", shot.display())])
    });
    workload.abort();

    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        html.contains("select total from orders where id = ?"),
        "top queries table shows the workload: {html}"
    );
    assert!(html.contains("update orders set total = total + ? where id = ?"));
    // The charts drew the workload: points and a non-zero maximum.
    let chart_max = |id: &str| -> f64 {
        let at = html.find(&format!("id=\"{id}\"")).expect("chart canvas");
        let tag = &html[html[..at].rfind('<').unwrap()..at + html[at..].find('>').unwrap()];
        let max = tag
            .split("data-max=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("0");
        max.parse().unwrap_or(0.0)
    };
    assert!(chart_max("c-throughput") > 0.0, "throughput chart is empty");
    assert!(chart_max("c-latency") > 0.0, "latency chart is empty");
    assert!(
        html.contains("statement_not_allowed") && html.contains("Tenant-scoped: public.invoices"),
        "tenant guard panel shows the audited DDL and the scoped table: {html}"
    );
    assert!(
        html.contains("data-kind=\"n_plus_one\"") && html.contains("id = any($1)"),
        "advisories panel shows the N+1 loop: {html}"
    );
    assert!(
        html.contains("replica1"),
        "backends table lists the replica"
    );
    assert!(
        screenshot.status.success(),
        "{}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
