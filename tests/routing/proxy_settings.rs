//! `SET pgwarden.route` (and `RESET`) is pgwarden's, wherever the client sends it:
//! inside a transaction, pipelined right behind statements still running, or in a
//! transaction that failed. PostgreSQL never sees it (`primary` is a reserved word
//! there, so it would answer a syntax error), and the answer carries the transaction
//! status the client would see from PostgreSQL.

use super::{wait_replicas_healthy, with_replicas};
use crate::support::wire::{error_code, first_value, frame, query, unnamed_statement, Wire};
use crate::support::{self, proxy, within};

use pgwarden::cluster::LocalCluster;
use pgwarden::config::AuthMethod;
use pgwarden::RunningProxy;
use support::proxy::{DATABASE, USER};

/// A proxy in front of `cluster` with its replica healthy, and a raw client of it.
async fn proxy_with_replica(cluster: &LocalCluster) -> (RunningProxy, Wire) {
    let proxy = proxy::start(cluster, |c| {
        with_replicas(cluster)(c);
        c.auth.method = AuthMethod::Trust;
    })
    .await;
    wait_replicas_healthy(&proxy).await;
    let wire = within("login", Wire::tcp(proxy.port(), USER, DATABASE, &[])).await;
    (proxy, wire)
}

/// The command tag and the `ReadyForQuery` status of one answer.
fn tag_and_status(answer: &[Vec<u8>]) -> (Option<String>, u8) {
    let tag = answer
        .iter()
        .find(|f| f[0] == b'C')
        .map(|f| String::from_utf8_lossy(&f[5..f.len() - 1]).into_owned());
    let status = answer.last().expect("an answer")[5];
    (tag, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_setting_is_answered_by_pgwarden_in_and_between_transactions() {
    let cluster = support::cluster(1);
    let (_proxy, mut wire) = proxy_with_replica(&cluster).await;
    let on_replica = "SELECT pg_is_in_recovery()";

    // Inside a transaction: answered in place, the transaction goes on, and the
    // setting holds for the transactions after it.
    assert_eq!(
        tag_and_status(&within("BEGIN", wire.simple("BEGIN")).await).1,
        b'T'
    );
    let set = within("SET", wire.simple("SET pgwarden.route = primary")).await;
    assert_eq!(error_code(&set), None, "{set:?}");
    assert_eq!(tag_and_status(&set), (Some("SET".into()), b'T'));
    let commit = within("COMMIT", wire.simple("COMMIT")).await;
    assert_eq!(tag_and_status(&commit), (Some("COMMIT".into()), b'I'));
    let read = within("read", wire.simple(on_replica)).await;
    assert_eq!(
        first_value(&read).as_deref(),
        Some("f"),
        "pinned to the primary"
    );

    // Pipelined behind a transaction's first statements, in one write: the answers
    // come in order, with the status each statement left.
    let mut batch = query("BEGIN");
    batch.extend(query("SELECT pg_sleep(0.05)"));
    batch.extend(query("RESET pgwarden.route"));
    batch.extend(query("COMMIT"));
    within("pipeline", wire.send(&batch)).await;
    let begin = within("BEGIN", wire.answer()).await;
    assert_eq!(tag_and_status(&begin).1, b'T');
    let sleep = within("pg_sleep", wire.answer()).await;
    assert_eq!(error_code(&sleep), None, "{sleep:?}");
    let reset = within("RESET", wire.answer()).await;
    assert_eq!(tag_and_status(&reset), (Some("RESET".into()), b'T'));
    let commit = within("COMMIT", wire.answer()).await;
    assert_eq!(tag_and_status(&commit), (Some("COMMIT".into()), b'I'));
    let read = within("read", wire.simple(on_replica)).await;
    assert_eq!(first_value(&read).as_deref(), Some("t"), "back to auto");

    // In a failed transaction, refused as PostgreSQL refuses every statement there.
    within("BEGIN", wire.simple("BEGIN")).await;
    let failed = within("1/0", wire.simple("SELECT 1/0")).await;
    assert_eq!(error_code(&failed).as_deref(), Some("22012"));
    let refused = within("SET", wire.simple("SET pgwarden.route = primary")).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("25P02"),
        "{refused:?}"
    );
    assert_eq!(tag_and_status(&refused).1, b'E');
    let rollback = within("ROLLBACK", wire.simple("ROLLBACK")).await;
    assert_eq!(tag_and_status(&rollback), (Some("ROLLBACK".into()), b'I'));
    let read = within("read", wire.simple(on_replica)).await;
    assert_eq!(
        first_value(&read).as_deref(),
        Some("t"),
        "the refused SET did nothing"
    );
}

/// Through the extended protocol (JDBC, asyncpg's `fetch`): PostgreSQL runs a harmless
/// stand-in, so every answer is its own, and the setting applies when the statement is
/// bound, a prepared one again at each execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_setting_works_through_prepared_statements() {
    let cluster = support::cluster(1);
    let (_proxy, mut wire) = proxy_with_replica(&cluster).await;
    let on_replica = "SELECT pg_is_in_recovery()";
    let read = |answer: Vec<Vec<u8>>| first_value(&answer);

    let unnamed = "SET pgwarden.route = primary";
    let set = within(unnamed, wire.extended("", Some(unnamed), &[], false, 0)).await;
    assert_eq!(error_code(&set), None, "{set:?}");
    assert_eq!(tag_and_status(&set), (Some("SET".into()), b'I'));
    let answer = within("read", wire.extended("", Some(on_replica), &[], false, 0)).await;
    assert_eq!(read(answer).as_deref(), Some("f"), "pinned to the primary");

    // A named statement, prepared once and executed again later.
    let to_auto = "RESET pgwarden.route";
    let reset = within(
        to_auto,
        wire.extended("to_auto", Some(to_auto), &[], false, 0),
    )
    .await;
    assert_eq!(tag_and_status(&reset), (Some("RESET".into()), b'I'));
    assert_eq!(
        read(within("read", wire.simple(on_replica)).await).as_deref(),
        Some("t")
    );
    within("pin", wire.simple("SET pgwarden.route = primary")).await;
    assert_eq!(
        read(within("read", wire.simple(on_replica)).await).as_deref(),
        Some("f")
    );
    let again = within(
        "to_auto again",
        wire.extended("to_auto", None, &[], false, 0),
    )
    .await;
    assert_eq!(error_code(&again), None, "{again:?}");
    assert_eq!(
        read(within("read", wire.simple(on_replica)).await).as_deref(),
        Some("t")
    );

    // A value pgwarden does not take is refused at Parse, as the simple protocol does.
    let bad = "SET pgwarden.route = sideways";
    let refused = within(bad, wire.extended("", Some(bad), &[], false, 0)).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("22023"),
        "{refused:?}"
    );
    assert_eq!(
        read(within("read", wire.simple(on_replica)).await).as_deref(),
        Some("t")
    );
}

/// Without replicas, `SET pgwarden.route` is still pgwarden's (PostgreSQL would answer
/// a syntax error for `primary`), through either protocol; `pgwarden.tenant_id`, with
/// no guard and no routing to keep it, stays PostgreSQL's setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_settings_are_answered_without_replicas_too() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |_| {}).await;
    let client = within("connect", proxy::connect(&proxy)).await;
    support::execute(&client, "SET pgwarden.route = primary").await;
    let prepared = "SET pgwarden.route = primary";
    within(prepared, client.execute(prepared, &[]))
        .await
        .unwrap_or_else(|e| panic!("{prepared}: {e}"));
    support::execute(&client, "RESET pgwarden.route").await;
    support::execute(&client, "SET pgwarden.session_key = 'k'").await;
    let refused = within(
        "bad value",
        client.batch_execute("SET pgwarden.route = sideways"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("22023"), "{refused}");
    support::execute(&client, "SET pgwarden.tenant_id = '5'").await;
    let row = within(
        "current_setting",
        client.query_one("SELECT current_setting('pgwarden.tenant_id')", &[]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, String>(0), "5");
}

/// A value pgwarden refuses is an error like PostgreSQL's own: inside a transaction
/// it fails the transaction (status `E`, then 25P02), and inside an extended batch it
/// undoes what the batch already ran, as its implicit transaction fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_setting_fails_the_transaction_it_is_in() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(&direct, "CREATE TABLE refused_marks (n int)").await;
    let proxy = proxy::start(&cluster, |c| c.auth.method = AuthMethod::Trust).await;
    let mut wire = within("login", Wire::tcp(proxy.port(), USER, DATABASE, &[])).await;
    let bad = "SET pgwarden.route = sideways";

    within("BEGIN", wire.simple("BEGIN")).await;
    within(
        "INSERT",
        wire.simple("INSERT INTO refused_marks VALUES (1)"),
    )
    .await;
    let refused = within("bad SET", wire.simple(bad)).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("22023"),
        "{refused:?}"
    );
    assert_eq!(tag_and_status(&refused).1, b'E');
    let after = within("SELECT", wire.simple("SELECT 1")).await;
    assert_eq!(error_code(&after).as_deref(), Some("25P02"), "{after:?}");
    let rollback = within("ROLLBACK", wire.simple("ROLLBACK")).await;
    assert_eq!(tag_and_status(&rollback), (Some("ROLLBACK".into()), b'I'));

    let mut batch = unnamed_statement("INSERT INTO refused_marks VALUES (2)");
    batch.extend(unnamed_statement(bad));
    batch.extend(unnamed_statement("INSERT INTO refused_marks VALUES (3)"));
    batch.extend(frame(b'S', &[]));
    within("batch", wire.send(&batch)).await;
    let answer = within("the batch's answer", wire.answer()).await;
    assert_eq!(error_code(&answer).as_deref(), Some("22023"), "{answer:?}");
    assert_eq!(tag_and_status(&answer).1, b'I');
    let still = within("next", wire.simple("SELECT 1")).await;
    assert_eq!(first_value(&still).as_deref(), Some("1"), "{still:?}");

    let count = within(
        "count",
        direct.query_one("SELECT count(*) FROM refused_marks", &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        count.get::<_, i64>(0),
        0,
        "nothing of either transaction stayed"
    );
}
