//! Index and N+1 advisories against real PostgreSQL (with hypopg where the test says
//! so). Advisor rounds are triggered directly (`Advisors::run_round`) instead of
//! waiting for the interval; plans are checked with EXPLAIN, never with timing. The
//! N+1 tests live in `advisories/n_plus_one.rs`.

use crate::support;
use crate::support::command::{OutputWithin, LONG_RUN, SHORT_RUN};

#[path = "advisories/n_plus_one.rs"]
mod n_plus_one;

use std::collections::BTreeMap;
use std::future::Future;

use pgwarden::advise::{Advisory, AdvisoryKind, RoundReport};
use pgwarden::RunningProxy;
use support::{proxy, within};

/// Every client call is bounded ([`within`]) and must succeed.
async fn t<T, E: std::fmt::Debug>(what: &str, future: impl Future<Output = Result<T, E>>) -> T {
    within(what, future)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

async fn start(cluster: &pgwarden::cluster::LocalCluster, min_rows: u64) -> RunningProxy {
    proxy::start(cluster, |c| {
        c.pool.size = 4;
        // Rounds only when the test asks.
        c.advise.interval_ms = 3_600_000;
        c.advise.min_table_rows = min_rows;
    })
    .await
}

/// One index-advisor round over what the proxy saw so far: its report per database,
/// none with errors.
async fn round_reports(proxy: &RunningProxy) -> BTreeMap<String, RoundReport> {
    proxy.runtime.stats.flush().await;
    let snapshot = proxy.runtime.stats.snapshot();
    let reports = within(
        "advisor round",
        proxy
            .runtime
            .advisors
            .run_round(&proxy.runtime.config(), &snapshot),
    )
    .await;
    for report in reports.values() {
        assert!(
            report.errors.is_empty(),
            "round errors: {:?}",
            report.errors
        );
    }
    reports
}

/// One index-advisor round; the advisories afterwards.
async fn round(proxy: &RunningProxy) -> Vec<Advisory> {
    round_reports(proxy).await;
    proxy.runtime.advisors.list()
}

fn id_of(sql: &str) -> String {
    format!("{:016x}", pgwarden::stats::fingerprint::fingerprint(sql).0)
}

fn helps(advisory: &Advisory, sql: &str) -> bool {
    let id = id_of(sql);
    advisory.fingerprints.iter().any(|f| f.id == id)
}

fn index_advice(list: &[Advisory]) -> Vec<&Advisory> {
    list.iter()
        .filter(|a| a.kind == AdvisoryKind::Index)
        .collect()
}

const BY_U: &str = "SELECT id, payload FROM big WHERE u = $1";
const BY_INDEXED: &str = "SELECT id, payload FROM big WHERE indexed_col = $1";
const COMPOSITE: &str = "SELECT id FROM big WHERE a = $1 AND b > $2 ORDER BY c";
const SMALL: &str = "SELECT id FROM small WHERE v = $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_advice_with_hypopg() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    t(
        "setup",
        direct.batch_execute(
            "CREATE EXTENSION hypopg;
             CREATE TABLE big (id int PRIMARY KEY, u int, a int, b int, c int, indexed_col int, payload text);
             INSERT INTO big SELECT g, g % 5000, g % 50, (g * 7919) % 100000, g % 977, g, 'p' || g
               FROM generate_series(1, 200000) g;
             CREATE INDEX big_indexed ON big (indexed_col);
             CREATE TABLE small (id int PRIMARY KEY, v int);
             INSERT INTO small SELECT g, g % 10 FROM generate_series(1, 100) g;
             ANALYZE big; ANALYZE small;",
        ),
    )
    .await;
    let proxy = start(&cluster, 10_000).await;
    let client = proxy::connect(&proxy).await;
    for sql in [BY_U, BY_INDEXED, SMALL] {
        let statement = t("prepare", client.prepare(sql)).await;
        for i in 0..8i32 {
            t("query", client.query(&statement, &[&i])).await;
        }
    }
    let composite = t("prepare", client.prepare(COMPOSITE)).await;
    for i in 0..4i32 {
        t("composite", client.query(&composite, &[&i, &99_000i32])).await;
    }

    let list = round(&proxy).await;
    let advice = index_advice(&list);
    let by_u: Vec<_> = advice.iter().filter(|a| helps(a, BY_U)).collect();
    assert_eq!(by_u.len(), 1, "one advisory for u: {list:#?}");
    let by_u = by_u[0];
    assert_eq!(by_u.columns, vec!["u"]);
    assert_eq!(by_u.table.as_deref(), Some("public.big"));
    assert_eq!(
        by_u.ddl.as_deref(),
        Some("CREATE INDEX CONCURRENTLY ON public.big (u)")
    );
    assert!(by_u.confirmed, "hypopg is installed: {by_u:#?}");
    let details = by_u.index.as_ref().unwrap();
    let (before, after) = (details.cost_before.unwrap(), details.cost_after.unwrap());
    assert!(after <= before * 0.5, "cost {before} -> {after}");
    assert!(details.estimated_bytes.unwrap_or(0) > 0, "{details:?}");
    assert!(details.table_writes_per_second.is_some());
    assert!(by_u.score > 0.0 && by_u.fingerprints[0].share > 0.0);

    // The composite predicate: equality column first, then the range column.
    let composite_advice: Vec<_> = advice.iter().filter(|a| helps(a, COMPOSITE)).collect();
    assert_eq!(composite_advice.len(), 1, "{list:#?}");
    assert_eq!(composite_advice[0].columns, vec!["a", "b"], "{list:#?}");

    // Indexed column and small table: nothing.
    assert!(!advice.iter().any(|a| helps(a, BY_INDEXED)), "{list:#?}");
    assert!(!advice.iter().any(|a| helps(a, SMALL)), "{list:#?}");
    assert!(
        !list
            .iter()
            .any(|a| a.table.as_deref() == Some("public.small")),
        "{list:#?}"
    );

    // The other surfaces show the same advisories.
    let (status, body) = support::http::get(proxy.http_address, "/api/advisories", None).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ddl"] == "CREATE INDEX CONCURRENTLY ON public.big (u)")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(entry["kind"], "index");
    assert_eq!(entry["table"], "public.big");
    assert_eq!(entry["confirmed"], true);
    assert!(entry["score"].as_f64().unwrap() > 0.0);
    assert!(!entry["fingerprints"].as_array().unwrap().is_empty());
    let (_, metrics) = support::http::get(proxy.http_address, "/metrics", None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgwarden_advisories{kind=\"index\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Follow the advice: the advisory goes, and the plan uses the index.
    t(
        "create index",
        direct.batch_execute(by_u.ddl.as_deref().unwrap()),
    )
    .await;
    let list = round(&proxy).await;
    assert!(
        !index_advice(&list).iter().any(|a| a.columns == vec!["u"]),
        "{list:#?}"
    );
    let plan: Vec<String> = t(
        "explain",
        direct.query("EXPLAIN SELECT id, payload FROM big WHERE u = 42", &[]),
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan") || plan.contains("Bitmap Index Scan"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_duplicate_and_unconfirmed_advice_without_hypopg() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    t(
        "setup",
        direct.batch_execute(
            "CREATE TABLE side (id int PRIMARY KEY, x int, y int, z int);
             INSERT INTO side SELECT g, g % 100, g % 7, g % 1000 FROM generate_series(1, 20000) g;
             CREATE INDEX side_x ON side (x);
             CREATE INDEX side_x_y ON side (x, y);
             CREATE INDEX side_y_unused ON side (y);
             CREATE TABLE untouched (id int PRIMARY KEY, k int);
             CREATE INDEX untouched_k ON untouched (k);
             ANALYZE side;",
        ),
    )
    .await;
    let proxy = start(&cluster, 1_000).await;
    let client = proxy::connect(&proxy).await;
    let by_z = t(
        "prepare",
        client.prepare("SELECT id FROM side WHERE z = $1"),
    )
    .await;
    for i in 0..5i32 {
        t("query", client.query(&by_z, &[&i])).await;
    }
    let list = round(&proxy).await;

    let z: Vec<_> = index_advice(&list)
        .into_iter()
        .filter(|a| a.columns == vec!["z"])
        .collect();
    assert_eq!(z.len(), 1, "{list:#?}");
    assert!(!z[0].confirmed, "no hypopg: unconfirmed: {:#?}", z[0]);
    assert_eq!(
        z[0].ddl.as_deref(),
        Some("CREATE INDEX CONCURRENTLY ON public.side (z)")
    );
    assert!(z[0].index.as_ref().unwrap().cost_after.is_none());

    let named = |kind: AdvisoryKind, name: &str| {
        list.iter().find(|a| {
            a.kind == kind && a.index.as_ref().and_then(|i| i.index_name.as_deref()) == Some(name)
        })
    };
    let unused = named(AdvisoryKind::UnusedIndex, "side_y_unused")
        .unwrap_or_else(|| panic!("side_y_unused not flagged: {list:#?}"));
    assert_eq!(
        unused.ddl.as_deref(),
        Some("DROP INDEX CONCURRENTLY public.side_y_unused")
    );
    // A table no statement reads is not the workload's: its index is not judged.
    assert!(
        named(AdvisoryKind::UnusedIndex, "untouched_k").is_none(),
        "{list:#?}"
    );
    // The primary key is never "unused".
    assert!(
        named(AdvisoryKind::UnusedIndex, "side_pkey").is_none(),
        "{list:#?}"
    );
    let duplicate = named(AdvisoryKind::DuplicateIndex, "side_x")
        .unwrap_or_else(|| panic!("side_x not flagged as redundant: {list:#?}"));
    assert_eq!(
        duplicate.index.as_ref().unwrap().covered_by.as_deref(),
        Some("side_x_y")
    );
    assert_eq!(
        duplicate.ddl.as_deref(),
        Some("DROP INDEX CONCURRENTLY public.side_x")
    );
    assert!(
        named(AdvisoryKind::DuplicateIndex, "side_x_y").is_none(),
        "{list:#?}"
    );
}

// ---- the advisor's own load ----

/// 1,000 distinct fingerprints: each round plans at most `advise.explain_budget`
/// statements, and the advisor's statements take a small share of server time
/// (pg_stat_statements). Prints the numbers bench/runs/2026-11-30-advisories.md quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisor_load_is_bounded_by_its_budget() {
    let cluster = support::cluster_with(pgwarden::cluster::ClusterSpec {
        extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
        ..Default::default()
    });
    let direct = proxy::connect_direct(&cluster).await;
    t(
        "setup",
        direct.batch_execute(
            "CREATE EXTENSION pg_stat_statements; CREATE EXTENSION hypopg;
             CREATE TABLE items (id int PRIMARY KEY, k0 int, k1 int, k2 int, k3 int, k4 int,
                                 k5 int, k6 int, k7 int, k8 int, k9 int);
             INSERT INTO items SELECT g, g % 101, g % 103, g % 107, g % 109, g % 113,
                                      g % 127, g % 131, g % 137, g % 139, g % 149
               FROM generate_series(1, 20000) g;
             ANALYZE items;
             SELECT pg_stat_statements_reset();",
        ),
    )
    .await;
    let budget = 20;
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 4;
        c.advise.interval_ms = 3_600_000;
        c.advise.explain_budget = budget;
        c.stats.max_fingerprints = 5_000;
    })
    .await;
    let client = proxy::connect(&proxy).await;
    for i in 0..1000 {
        // Distinct aliases make distinct fingerprints.
        let sql = format!(
            "SELECT id AS a{i} FROM items WHERE k{} = {}",
            i % 10,
            i % 97
        );
        t("workload", client.simple_query(&sql)).await;
    }
    proxy.runtime.stats.flush().await;
    assert!(proxy.runtime.stats.snapshot().queries.len() >= 1000);
    let mut explains = Vec::new();
    let mut elapsed = Vec::new();
    for _ in 0..3 {
        round(&proxy).await;
        let report = proxy.runtime.advisors.last_round()["app"].clone();
        assert!(report.explains <= budget, "{report:?}");
        explains.push(report.explains);
        elapsed.push(report.elapsed_ms);
    }
    // Later rounds plan other fingerprints (the least recently planned first).
    assert!(explains.iter().all(|e| *e == budget), "{explains:?}");
    let row = t(
        "pg_stat_statements",
        direct.query_one(
            "SELECT coalesce(sum(total_exec_time + total_plan_time) FILTER (WHERE query LIKE '%AS a%FROM items%' AND query NOT ILIKE 'EXPLAIN%' AND query NOT ILIKE 'PREPARE%'), 0)::float8,
                    coalesce(sum(total_exec_time + total_plan_time) FILTER (WHERE query ILIKE 'EXPLAIN%' OR query ILIKE 'PREPARE%' OR query ILIKE 'DEALLOCATE%' OR query ILIKE '%hypopg%' OR query ILIKE '%pg_catalog%' OR query ILIKE '%pg_class%' OR query ILIKE '%pg_index%' OR query ILIKE '%pg_stat_user%' OR query ILIKE '%pg_extension%' OR query ILIKE 'BEGIN READ ONLY' OR query ILIKE 'SET LOCAL plan_cache_mode%'), 0)::float8,
                    count(*) FILTER (WHERE query ILIKE 'EXPLAIN%')
             FROM pg_stat_statements",
            &[],
        ),
    )
    .await;
    let (workload_ms, advisor_ms, explain_texts): (f64, f64, i64) =
        (row.get(0), row.get(1), row.get(2));
    println!(
        "advisor load: 1000 fingerprints; EXPLAINs per round {explains:?} (budget {budget}); round wall time ms {elapsed:.1?}; server time: workload {workload_ms:.1} ms, advisor {advisor_ms:.1} ms over 3 rounds ({:.1}% of the sum); distinct EXPLAIN texts {explain_texts}",
        100.0 * advisor_ms / (workload_ms + advisor_ms).max(1e-9)
    );
    assert!(workload_ms > 0.0 && advisor_ms > 0.0);
}

/// pgbench's TPC-B tables with `pgbench_accounts` read by `abalance`: which
/// advisories come out. Run by hand (it runs pgbench for a while):
/// `cargo test --test integration -- --ignored --nocapture tpcb`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn tpcb_with_abalance_reads() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    t("hypopg", direct.batch_execute("CREATE EXTENSION hypopg")).await;
    let proxy = start(&cluster, 10_000).await;
    let url = proxy::url(&proxy);
    let pgbench = |args: &[&str]| {
        let output = std::process::Command::new(support::pgbench_path())
            .args(args)
            .arg(&url)
            .output_within(LONG_RUN);
        assert!(
            output.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let direct_url = cluster.primary_url();
    let init = std::process::Command::new(support::pgbench_path())
        .args(["-i", "-s", "2", "-q", &direct_url])
        .output_within(SHORT_RUN);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("abalance.sql");
    std::fs::write(
        &script,
        "\\set b random(-5000, 5000)\nSELECT aid, abalance FROM pgbench_accounts WHERE abalance = :b;\n",
    )
    .unwrap();
    let script = script.display().to_string();
    for mode in ["simple", "prepared"] {
        let out = pgbench(&[
            "-n",
            "-c",
            "4",
            "-T",
            "10",
            "-M",
            mode,
            "-b",
            "tpcb-like@9",
            "-f",
            &format!("{script}@1"),
        ]);
        println!(
            "pgbench -M {mode}: {}",
            out.lines()
                .filter(|l| l.starts_with("tps"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let list = round(&proxy).await;
    println!("{}", pgwarden::advise::render::text(&list));
    for a in &list {
        println!("{}", serde_json::to_string(a).unwrap());
    }
}

/// The planner folds `repeat('x', 2 MiB)` into the plan as the 2 MiB value itself. The
/// advisor skips such a statement without parsing its plan, and the round goes on to
/// advise the next one. (Without `FROM` it would not be planned at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_holding_a_folded_large_constant_is_skipped() {
    const LARGE_CONSTANT: &str = "SELECT repeat('x', 2 * 1024 * 1024) FROM wide WHERE id = 1";
    const WIDE_BY_U: &str = "SELECT id, payload FROM wide WHERE u = $1";
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    t(
        "setup",
        direct.batch_execute(
            "CREATE TABLE wide (id int PRIMARY KEY, u int, payload text);
             INSERT INTO wide SELECT g, g % 5000, 'p' || g FROM generate_series(1, 50000) g;
             ANALYZE wide;",
        ),
    )
    .await;
    let proxy = start(&cluster, 10_000).await;
    let client = proxy::connect(&proxy).await;
    for _ in 0..6 {
        t("large constant", client.simple_query(LARGE_CONSTANT)).await;
    }
    let by_u = t("prepare", client.prepare(WIDE_BY_U)).await;
    for i in 0..8i32 {
        t("query", client.query(&by_u, &[&i])).await;
    }

    let reports = round_reports(&proxy).await;
    let report = reports.values().next().expect("a round report");
    assert_eq!(report.oversized_plans, 1, "{report:?}");
    let list = proxy.runtime.advisors.list();
    assert!(
        index_advice(&list).iter().any(|a| helps(a, WIDE_BY_U)),
        "{list:#?}"
    );
}
