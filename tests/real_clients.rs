//! psql scripts and pgbench through the proxy.

use crate::support;
use crate::support::command::{OutputWithin, LONG_RUN, SHORT_RUN};

use std::process::Command;

use support::proxy::{self, DATABASE, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_with_transactions_copy_and_errors() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        r#"
CREATE TABLE items (id serial primary key, name text not null, price numeric(10,2));
BEGIN;
INSERT INTO items (name, price) VALUES ('apple', 1.10), ('pear', 2.20);
SAVEPOINT s1;
INSERT INTO items (name, price) VALUES (NULL, 0);
ROLLBACK TO SAVEPOINT s1;
COMMIT;
\copy items (name, price) from stdin
cherry	3.30
plum	4.40
\.
SELECT name || '=' || price FROM items ORDER BY id;
\copy (SELECT name FROM items ORDER BY id) to stdout
SELECT count(*) AS n FROM items \gset
\echo total :n
"#,
    )
    .unwrap();
    let output = Command::new(support::psql_path())
        .args(["-X", "-A", "-t", "-f"])
        .arg(&script)
        .arg(format!(
            "host=127.0.0.1 port={} user={USER} dbname={DATABASE}",
            proxy.port()
        ))
        .env("PGPASSWORD", PASSWORD)
        .output_within(SHORT_RUN);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("apple=1.10\npear=2.20\ncherry=3.30\nplum=4.40"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("apple\npear\ncherry\nplum"), "{stdout}");
    assert!(stdout.contains("total 4"), "{stdout}");
    assert!(stderr.contains("null value in column \"name\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_in_transaction_mode_has_no_errors() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 4).await;
    let pgbench = support::pgbench_path();
    let conn = |port: u16| {
        vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            USER.into(),
        ]
    };
    let init = Command::new(&pgbench)
        .args(conn(cluster.primary().port))
        .args(["-i", "-s", "1", "-q", DATABASE])
        .env("PGPASSWORD", PASSWORD)
        .output_within(SHORT_RUN);
    assert!(init.status.success(), "{init:?}");
    for mode in ["prepared", "extended", "simple"] {
        let run = Command::new(&pgbench)
            .args(conn(proxy.port()))
            .args([
                "-c",
                "16",
                "-j",
                "2",
                "-t",
                "100",
                "-M",
                mode,
                "--no-vacuum",
                DATABASE,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output_within(LONG_RUN);
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "mode {mode}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("number of transactions actually processed: 1600/1600"),
            "mode {mode}: {stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "mode {mode}: {stdout}"
        );
    }
}
