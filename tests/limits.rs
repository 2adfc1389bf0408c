//! Limits users rely on: max client connections, waiting for a server connection,
//! idle client timeout, and a backend that is down.

use crate::support;

use std::time::{Duration, Instant};

use support::proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_get_53300() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.proxy.max_client_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(proxy::connect(&proxy).await);
    }
    let err = proxy::connect_err(&proxy::url(&proxy)).await;
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    drop(held.pop());
    // A slot frees up once a client leaves.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proxy::connect_url(&proxy::url(&proxy)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_busy_pool_times_out_with_53300() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        c.pool.size = 1;
        c.pool.checkout_timeout_ms = 300;
    })
    .await;
    let holder = proxy::connect(&proxy).await;
    holder.batch_execute("BEGIN; SELECT 1;").await.unwrap();
    let waiter = proxy::connect(&proxy).await;
    let err = waiter.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "53300", "{err}");
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "53300", "{err}");
    // The waiter's connection survives and works once the server is free.
    holder.batch_execute("COMMIT").await.unwrap();
    let one: i32 = waiter.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_with_57p05() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.proxy.idle_client_timeout_ms = 300).await;
    let (client, connection) = tokio_postgres::connect(&proxy::url(&proxy), tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed by the proxy")
        .unwrap();
    let err = ended.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P05"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_gives_a_clear_error() {
    let cluster = support::cluster(0);
    let config = proxy::config_for(&cluster, |c| {
        let db = c.databases.values_mut().next().unwrap();
        let free = support::free_port();
        db.primary = db.primary.replace(
            &format!(":{}/", cluster.primary().port),
            &format!(":{free}/"),
        );
    });
    let proxy = pgwarden::RunningProxy::start(config).await.unwrap();
    let err = proxy::connect_err(&proxy::url(&proxy)).await;
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("cannot connect"), "{message}");
}
