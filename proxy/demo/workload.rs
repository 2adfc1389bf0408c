//! The demo's workload: a small shop schema, writes, autocommit reads, a transaction,
//! prepared statements reused across transactions, and an N+1 burst. Each statement is
//! paired with `inet_server_port()` so the report shows which server answered.

use std::collections::BTreeMap;

use crate::cluster::LocalCluster;

/// Where statements ran, by workload step, in workload order.
pub struct Report {
    /// (step, server label → count)
    served: Vec<(&'static str, BTreeMap<String, u32>)>,
}

impl Report {
    fn record(&mut self, step: &'static str, server: String) {
        let index = match self.served.iter().position(|(s, _)| *s == step) {
            Some(index) => index,
            None => {
                self.served.push((step, BTreeMap::new()));
                self.served.len() - 1
            }
        };
        *self.served[index].1.entry(server).or_default() += 1;
    }

    pub fn print(&self) {
        println!("where statements ran (server answering each statement):");
        println!("  {:<54} served by", "workload step");
        for (step, servers) in &self.served {
            let list: Vec<String> = servers.iter().map(|(s, n)| format!("{s} x{n}")).collect();
            println!("  {:<54} {}", step, list.join(", "));
        }
    }
}

pub async fn run(url: &str, cluster: &LocalCluster) -> Result<Report, tokio_postgres::Error> {
    let primary_port = cluster.primary().port;
    let label = |port: i32| {
        if port == i32::from(primary_port) {
            format!("primary:{port}")
        } else {
            format!("replica:{port}")
        }
    };
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let mut report = Report { served: Vec::new() };

    client
        .batch_execute(
            "CREATE TABLE customers (id serial primary key, name text not null);
             CREATE TABLE orders (id serial primary key, customer_id int not null, total numeric not null);",
        )
        .await?;
    println!("workload: schema created, writing 20 customers with 5 orders each ...");
    for c in 1..=20 {
        let row = client
            .query_one(
                "WITH c AS (INSERT INTO customers (name) VALUES ($1) RETURNING id)
                 SELECT id, inet_server_port() FROM c",
                &[&format!("customer {c}")],
            )
            .await?;
        report.record("INSERT customers (write)", label(row.get(1)));
        let id: i32 = row.get(0);
        for o in 1..=5 {
            let row = client
                .query_one(
                    "WITH o AS (INSERT INTO orders (customer_id, total) VALUES ($1, $2::text::numeric) RETURNING 1)
                     SELECT inet_server_port() FROM o",
                    &[&id, &format!("{}.50", o * 10)],
                )
                .await?;
            report.record("INSERT orders (write)", label(row.get(0)));
        }
    }

    // Read-your-writes: a read right after this connection's writes must see them, so
    // it runs on the primary until the replica has replayed them.
    for _ in 0..5 {
        let row = client
            .query_one("SELECT count(*), inet_server_port() FROM customers", &[])
            .await?;
        report.record(
            "read right after own writes (read-your-writes)",
            label(row.get(1)),
        );
    }
    // Once the replica has replayed the writes, reads go there again, from this
    // connection and from one that never wrote.
    cluster_caught_up(&client).await?;
    let (fresh, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for _ in 0..5 {
        let row = fresh
            .query_one("SELECT count(*), inet_server_port() FROM customers", &[])
            .await?;
        report.record(
            "same read from another connection, replica caught up",
            label(row.get(1)),
        );
    }

    let top = client
        .prepare(
            "SELECT c.name, sum(o.total)::text, inet_server_port()
             FROM customers c JOIN orders o ON o.customer_id = c.id
             GROUP BY c.name ORDER BY sum(o.total) DESC LIMIT 3",
        )
        .await?;
    for _ in 0..10 {
        for row in client.query(&top, &[]).await? {
            report.record("SELECT top customers (autocommit read)", label(row.get(2)));
        }
    }

    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "UPDATE orders SET total = total + 1 WHERE id = 1 RETURNING inet_server_port()",
            &[],
        )
        .await?;
    report.record("UPDATE in a transaction", label(row.get(0)));
    let row = tx
        .query_one("SELECT count(*), inet_server_port() FROM orders", &[])
        .await?;
    report.record("SELECT in the same transaction", label(row.get(1)));
    tx.commit().await?;

    // The N+1 pattern: one parent query (a page of customers), then one child query
    // per parent row; four pages, as four web requests would.
    let page = client
        .prepare("SELECT id, inet_server_port() FROM customers ORDER BY id LIMIT 5 OFFSET $1")
        .await?;
    let child = client
        .prepare("SELECT count(*), inet_server_port() FROM orders WHERE customer_id = $1")
        .await?;
    for offset in [0i64, 5, 10, 15] {
        for customer in client.query(&page, &[&offset]).await? {
            report.record("N+1 parent: SELECT customers", label(customer.get(1)));
            let id: i32 = customer.get(0);
            let row = client.query_one(&child, &[&id]).await?;
            report.record("N+1 child: SELECT orders per customer", label(row.get(1)));
        }
    }
    Ok(report)
}

/// Waits (bounded) until this connection's reads are served by a replica again.
async fn cluster_caught_up(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        if row.get::<_, bool>(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
