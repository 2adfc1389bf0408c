//! Confirming a candidate with hypopg: create the index hypothetically (in this
//! backend's memory only; nothing is built or written), plan the statement again, read
//! the estimated size, and reset. One candidate at a time, so each is judged alone,
//! and the winner is the cheapest plan (fewer columns win near-ties).

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

/// The candidate whose hypothetical index gives the cheapest plan.
pub struct Winner {
    pub columns: Vec<String>,
    pub cost: f64,
    pub estimated_bytes: Option<u64>,
}

/// Tries each key alone while `explains` stays under `budget` (each try is an
/// EXPLAIN); a key PostgreSQL refuses is skipped.
pub async fn cheapest(
    client: &Client,
    (schema, table): (&str, &str),
    keys: &[Vec<String>],
    sql: &str,
    (explains, budget): (&mut u32, u32),
) -> Result<Option<Winner>, AdviseError> {
    let mut winner: Option<Winner> = None;
    for key in keys {
        if *explains >= budget {
            break;
        }
        *explains += 1;
        let confirmed = match plan_with_index(client, schema, table, key, sql).await {
            Ok(confirmed) => confirmed,
            Err(AdviseError::Query { source, .. }) if source.as_db_error().is_some() => continue,
            Err(e) => return Err(e),
        };
        let cost = confirmed.plan.total_cost;
        let better = winner.as_ref().is_none_or(|w| {
            cost < w.cost * 0.98 || (cost <= w.cost && key.len() < w.columns.len())
        });
        if better {
            winner = Some(Winner {
                columns: key.clone(),
                cost,
                estimated_bytes: confirmed.estimated_bytes,
            });
        }
    }
    Ok(winner)
}
