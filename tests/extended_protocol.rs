//! Simple and extended protocol through the proxy with tokio-postgres: prepared
//! statements reused across transactions by more clients than server connections,
//! binary and text formats, pipelining, errors mid-transaction.

use crate::support;

use support::proxy;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_transaction_pooling() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 5).await;
    let setup = proxy::connect(&proxy).await;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id int primary key, balance bigint not null);
             INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();

    // 50 clients, 5 server connections: every client prepares once and then executes
    // its statements in 20 transactions, landing on whichever server the pool hands it.
    let mut tasks = Vec::new();
    for id in 1..=50i32 {
        let url = proxy::url(&proxy);
        tasks.push(tokio::spawn(async move {
            let mut client = proxy::connect_url(&url).await.unwrap();
            let add = client
                .prepare_typed(
                    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                    &[Type::INT8, Type::INT4],
                )
                .await
                .unwrap();
            let read = client
                .prepare("SELECT balance FROM accounts WHERE id = $1")
                .await
                .unwrap();
            for round in 1..=20i64 {
                let tx = client.transaction().await.unwrap();
                tx.execute(&add, &[&round, &id]).await.unwrap();
                let balance: i64 = tx.query_one(&read, &[&id]).await.unwrap().get(0);
                assert_eq!(balance, round * (round + 1) / 2);
                tx.commit().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: i64 = setup
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 50 * 210);
    let (open, _) = proxy.runtime.pools.all()[0].state();
    assert!(open <= 5, "pool grew past its size: {open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_text_formats_round_trip() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |_| {}).await;
    let client = proxy::connect(&proxy).await;
    // Extended protocol: tokio-postgres uses binary results for these types.
    let row = client
        .query_one(
            "SELECT $1::int8, $2::float8, $3::text, $4::bytea, $5::bool, $6::text::numeric::text, now()::timestamptz IS NOT NULL",
            &[&i64::MIN, &1.5f64, &"zażółć", &vec![0u8, 255, 10], &true, &"12.50"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::MIN);
    assert_eq!(row.get::<_, f64>(1), 1.5);
    assert_eq!(row.get::<_, &str>(2), "zażółć");
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 255, 10]);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, &str>(5), "12.50");
    // Simple protocol: text format.
    let messages = client
        .simple_query("SELECT 1::int AS one, 'a''b' AS quoted, NULL::text AS nothing")
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.get("one"), Some("1"));
    assert_eq!(row.get("quoted"), Some("a'b"));
    assert_eq!(row.get("nothing"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_transaction_then_rollback_and_continue() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 1).await;
    let client = proxy::connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let err = client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02", "in failed transaction");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Extended-protocol error outside a transaction, then normal use.
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    let err = client.prepare("SELEC nonsense").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the rolled back insert is gone");
    // Another client on the single server connection sees a clean, idle server.
    let other = proxy::connect(&proxy).await;
    let row = other
        .query_one("SELECT pg_current_xact_id_if_assigned() IS NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_keep_their_order() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let client = proxy::connect(&proxy).await;
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures: Vec<_> = (0..200i32)
        .map(|i| {
            let client = &client;
            let statement = &statement;
            async move {
                let row = client.query_one(statement, &[&i]).await.unwrap();
                (i, row.get::<_, i32>(0))
            }
        })
        .collect();
    for (i, doubled) in futures_util::future::join_all(futures).await {
        assert_eq!(doubled, i * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_and_redefining_statements() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.pool.size = 2).await;
    let client = proxy::connect(&proxy).await;
    for round in 0..30i32 {
        // tokio-postgres closes a statement when it is dropped.
        let statement = client
            .prepare(&format!("SELECT {round} + $1::int"))
            .await
            .unwrap();
        let value: i32 = client.query_one(&statement, &[&1]).await.unwrap().get(0);
        assert_eq!(value, round + 1);
    }
}
