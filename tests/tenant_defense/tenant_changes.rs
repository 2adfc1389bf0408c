//! Changing the tenant the way clients really send it: pipelined right behind a
//! statement still running, and as a prepared statement (pgjdbc's
//! `Statement.execute`, asyncpg's `fetch`). Row-level security in audit mode shows
//! which tenant the server was given; the guard's rewrite shows its own.

use super::{add_app_user, APP_USER, SCHEMA};
use crate::support::wire::{
    error_code, first_value, frame, query, ready_status, unnamed_statement, Wire,
};
use crate::support::{self, proxy, within};

use pgwarden::cluster::LocalCluster;
use pgwarden::config::{AuthMethod, Config, TenancyMode};
use pgwarden::RunningProxy;
use support::proxy::{DATABASE, USER};

/// The tenant row-level security lets the session see.
const SHOWN: &str = "SELECT DISTINCT tenant_id FROM orders";
const TO_2: &str = "SET pgwarden.tenant_id = '2'";

/// A cluster with the orders schema, and a proxy in audit mode whose tenant reaches
/// row-level security through `app.tenant_id`.
async fn audited(tweak: impl FnOnce(&mut Config)) -> (LocalCluster, RunningProxy) {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    support::execute(&direct, SCHEMA).await;
    let proxy = proxy::start(&cluster, |c| {
        add_app_user(c);
        c.auth.method = AuthMethod::Trust;
        c.tenancy.mode = TenancyMode::Audit;
        c.tenancy.set_config = Some("app.tenant_id".into());
        tweak(c);
    })
    .await;
    (cluster, proxy)
}

/// A raw client of `proxy` as `user`, starting as tenant 1.
async fn tenant_1(proxy: &RunningProxy, user: &str) -> Wire {
    let options = [("options", "-c pgwarden.tenant_id=1")];
    within("login", Wire::tcp(proxy.port(), user, DATABASE, &options)).await
}

/// The first value `sql` returns, as a simple query.
async fn shown(wire: &mut Wire, sql: &str) -> Option<String> {
    first_value(&within(sql, wire.simple(sql)).await)
}

fn assert_code(answer: &[Vec<u8>], code: Option<&str>) {
    assert_eq!(error_code(answer).as_deref(), code, "{answer:?}");
}

/// A tenant change sent right behind a statement still running (one write, no wait
/// for its answer) waits for it, as PostgreSQL would run them in order, instead of
/// being refused as a change inside a transaction; behind an open transaction it is
/// still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_tenant_change_waits_for_the_statement_before_it() {
    let (_cluster, proxy) = audited(|_| {}).await;
    let mut wire = tenant_1(&proxy, APP_USER).await;

    let mut batch = query("SELECT pg_sleep(0.05)");
    batch.extend(query(TO_2));
    batch.extend(query(SHOWN));
    within("pipeline", wire.send(&batch)).await;
    assert_code(&within("pg_sleep", wire.answer()).await, None);
    assert_code(&within("SET", wire.answer()).await, None);
    let after = within("shown", wire.answer()).await;
    assert_eq!(first_value(&after).as_deref(), Some("2"), "{after:?}");

    let mut batch = query("BEGIN");
    batch.extend(query("SET pgwarden.tenant_id = '3'"));
    batch.extend(query(SHOWN));
    batch.extend(query("ROLLBACK"));
    within("pipeline in a transaction", wire.send(&batch)).await;
    within("BEGIN", wire.answer()).await;
    // Refused as PostgreSQL refuses anything in a transaction: the transaction fails.
    let refused = within("SET", wire.answer()).await;
    assert_code(&refused, Some("25001"));
    assert_eq!(ready_status(&refused), Some(b'E'), "{refused:?}");
    assert_code(&within("shown", wire.answer()).await, Some("25P02"));
    within("ROLLBACK", wire.answer()).await;
    assert_eq!(shown(&mut wire, SHOWN).await.as_deref(), Some("2"));
}

/// `SET pgwarden.tenant_id` as a prepared statement changes the tenant for the guard
/// and for row-level security, as the simple query does; a statement prepared once
/// changes it again at each execution, and inside a transaction it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_tenant_change_changes_the_tenant() {
    let (cluster, audit) = audited(|_| {}).await;
    let mut wire = tenant_1(&audit, APP_USER).await;
    let set = within(TO_2, wire.extended("", Some(TO_2), &[], false, 0)).await;
    assert_code(&set, None);
    assert_eq!(shown(&mut wire, SHOWN).await.as_deref(), Some("2"));
    let to_3 = "SET pgwarden.tenant_id = '3'";
    within(to_3, wire.extended("to_3", Some(to_3), &[], false, 0)).await;
    let rows = within(SHOWN, wire.extended("", Some(SHOWN), &[], false, 0)).await;
    assert_eq!(first_value(&rows).as_deref(), Some("3"), "{rows:?}");
    within("SET 1", wire.simple("SET pgwarden.tenant_id = '1'")).await;
    let again = within("to_3 again", wire.extended("to_3", None, &[], false, 0)).await;
    assert_code(&again, None);
    assert_eq!(shown(&mut wire, SHOWN).await.as_deref(), Some("3"));
    within("BEGIN", wire.simple("BEGIN")).await;
    let in_transaction = wire.extended("", Some(TO_2), &[], false, 0);
    let refused = within("to_2 in a transaction", in_transaction).await;
    assert_code(&refused, Some("25001"));
    assert_eq!(ready_status(&refused), Some(b'E'), "{refused:?}");
    within("ROLLBACK", wire.simple("ROLLBACK")).await;
    assert_eq!(shown(&mut wire, SHOWN).await.as_deref(), Some("3"));
    // Behind a statement executed in the same batch (pgjdbc sends its BEGIN so when
    // autocommit is off): inside that batch's transaction, refused too.
    let mut batch = Vec::new();
    for sql in ["BEGIN", TO_2] {
        batch.extend(unnamed_statement(sql));
    }
    batch.extend(frame(b'S', &[]));
    within("BEGIN and to_2 in one batch", wire.send(&batch)).await;
    let refused = within("the batch's answer", wire.answer()).await;
    assert_code(&refused, Some("25001"));
    assert_eq!(ready_status(&refused), Some(b'E'), "{refused:?}");
    within("ROLLBACK", wire.simple("ROLLBACK")).await;
    assert_eq!(shown(&mut wire, SHOWN).await.as_deref(), Some("3"));

    // Rewrite mode, a role row-level security does not limit: the guard's own
    // rewrite follows the new tenant.
    let rewrite = proxy::start(&cluster, |c| {
        c.auth.method = AuthMethod::Trust;
        c.tenancy.mode = TenancyMode::Rewrite;
    })
    .await;
    let mut wire = tenant_1(&rewrite, USER).await;
    assert_code(
        &within(TO_2, wire.extended("", Some(TO_2), &[], false, 0)).await,
        None,
    );
    let rows = within(SHOWN, wire.extended("", Some(SHOWN), &[], false, 0)).await;
    assert_eq!(first_value(&rows).as_deref(), Some("2"), "{rows:?}");
}

/// The stand-in a prepared tenant change runs sets `app.tenant_id` on the server
/// connection itself. With one connection for two clients, the other client (still
/// tenant 1) never sees it, and the changed client keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_tenant_change_stays_with_its_client_on_a_shared_connection() {
    let (_cluster, proxy) = audited(|c| c.pool.size = 1).await;
    let mut changed = tenant_1(&proxy, APP_USER).await;
    let mut other = tenant_1(&proxy, APP_USER).await;
    assert_code(
        &within(TO_2, changed.extended("", Some(TO_2), &[], false, 0)).await,
        None,
    );
    for _ in 0..3 {
        assert_eq!(shown(&mut other, SHOWN).await.as_deref(), Some("1"));
        assert_eq!(shown(&mut changed, SHOWN).await.as_deref(), Some("2"));
        let rows = within(SHOWN, other.extended("", Some(SHOWN), &[], false, 0)).await;
        assert_eq!(first_value(&rows).as_deref(), Some("1"), "{rows:?}");
    }
}
