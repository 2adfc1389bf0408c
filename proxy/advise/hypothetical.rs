//! Confirming a candidate with hypopg: create the index hypothetically (in this
//! backend's memory only; nothing is built or written), plan the statement again, read
//! the estimated size, and reset. One candidate at a time, so each is judged alone.

use tokio_postgres::Client;

use super::candidates::hypothetical_ddl;
use super::connection::bounded;
use super::error::AdviseError;
use super::plan::{explain, Plan};

pub struct Confirmed {
    pub plan: Plan,
    pub estimated_bytes: Option<u64>,
}

/// The plan of `sql` with a hypothetical index on `columns` of `schema.table`.
pub async fn plan_with_index(
    client: &Client,
    schema: &str,
    table: &str,
    columns: &[String],
    sql: &str,
) -> Result<Confirmed, AdviseError> {
    let ddl = hypothetical_ddl(schema, table, columns);
    let created = bounded(
        "hypopg_create_index",
        client.query_one(
            "SELECT indexrelid::oid FROM hypopg_create_index($1)",
            &[&ddl],
        ),
    )
    .await;
    let result = async {
        let oid: u32 = created?.get(0);
        let plan = explain(client, sql).await?;
        let size = bounded(
            "hypopg_relation_size",
            client.query_one("SELECT hypopg_relation_size($1)::int8", &[&oid]),
        )
        .await
        .ok()
        .and_then(|row| u64::try_from(row.get::<_, i64>(0)).ok());
        Ok(Confirmed {
            plan,
            estimated_bytes: size,
        })
    }
    .await;
    let _ = bounded(
        "hypopg_reset",
        client.batch_execute("SELECT hypopg_reset()"),
    )
    .await;
    result
}
