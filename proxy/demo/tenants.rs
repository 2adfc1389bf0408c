//! The demo's tenant guard step: an `invoices` table shared by three tenants, and a
//! session of tenant 1 (role `tenant_app`) trying to read and change the others'
//! rows. The guard runs in rewrite mode; the demo's own role is a bypass role (it
//! plays the migrations) and sets the table up through pgwarden.

use tokio_postgres::{Client, SimpleQueryMessage};

pub const ROLE: &str = "tenant_app";
pub const PASSWORD: &str = "tenant-app-secret";

const SETUP: &str = "
CREATE ROLE tenant_app LOGIN PASSWORD 'tenant-app-secret';
CREATE TABLE invoices (id int PRIMARY KEY, tenant_id int NOT NULL, amount numeric NOT NULL);
INSERT INTO invoices SELECT g, 1 + g % 3, g * 10 FROM generate_series(1, 30) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO tenant_app;";

/// What tenant 1 tries.
const ATTEMPTS: &[&str] = &[
    "SELECT count(*), sum(amount) FROM invoices",
    "SELECT count(*) FROM invoices WHERE tenant_id = 2 OR 1 = 1",
    "SELECT DISTINCT tenant_id FROM (SELECT * FROM invoices UNION ALL SELECT * FROM public.invoices) u",
    "UPDATE invoices SET amount = 0 WHERE tenant_id = 2",
    "INSERT INTO invoices (id, amount) VALUES (100, 5)",
    "INSERT INTO invoices (id, tenant_id, amount) VALUES (101, 2, 5)",
    "SELECT query_to_xml('SELECT * FROM invoices', true, true, '')",
    "DO $$ BEGIN DELETE FROM invoices; END $$",
];

/// Sets up the table (as the bypass role), then runs the attempts as tenant 1.
pub async fn run(
    admin: &Client,
    tenant_url: &str,
    cluster: &crate::cluster::LocalCluster,
) -> Result<(), tokio_postgres::Error> {
    admin.batch_execute(SETUP).await?;
    // The new role must reach the replica before tenant 1's reads can go there.
    let _ = tokio::task::block_in_place(|| {
        cluster.wait_for_replication(std::time::Duration::from_secs(10))
    });
    let (tenant, connection) = tokio_postgres::connect(tenant_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    println!("\ntenant guard (rewrite mode): tenant 1 of 3 tries to reach the others' invoices");
    for sql in ATTEMPTS {
        let outcome = match tenant.simple_query(sql).await {
            Ok(messages) => describe(&messages),
            Err(e) => match e.as_db_error() {
                Some(db) => format!("refused {}: {}", db.code().code(), db.message()),
                None => format!("error: {e}"),
            },
        };
        println!("  {sql:<68} -> {outcome}");
    }
    let per_tenant = admin
        .simple_query(
            "/* pgwarden:primary */ SELECT tenant_id, count(*), sum(amount) FROM invoices GROUP BY 1 ORDER BY 1",
        )
        .await?;
    let rows: Vec<String> = per_tenant
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(format!(
                "tenant {}: {} rows, sum {}",
                r.get(0).unwrap_or(""),
                r.get(1).unwrap_or(""),
                r.get(2).unwrap_or("")
            )),
            _ => None,
        })
        .collect();
    println!(
        "  afterwards, straight from PostgreSQL: {}",
        rows.join("; ")
    );
    Ok(())
}

fn describe(messages: &[SimpleQueryMessage]) -> String {
    let rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            _ => None,
        })
        .collect();
    let affected = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    match (rows.is_empty(), affected) {
        (false, _) => format!("row ({})", rows.join("; ")),
        (true, Some(n)) => format!("{n} rows changed"),
        (true, None) => "ok".into(),
    }
}
