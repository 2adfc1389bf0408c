//! Connections pgwarden opens for its own background work (lag polling, the tenant
//! catalog, read-your-writes notifications, `auth_query`), as opposed to the pooled
//! connections that serve clients. Each carries `application_name = 'pgwarden
//! <purpose>'`, so that `pg_stat_activity` tells them apart from client work and an
//! operator can see what each is for.

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, NoTls, Socket};

/// The `application_name` prefix of every background connection.
pub const BACKGROUND_APPLICATION_PREFIX: &str = "pgwarden ";

/// Connects to `url` for `purpose` (a word or two: "lag monitor").
pub async fn connect_background(
    url: &str,
    purpose: &str,
) -> Result<(Client, Connection<Socket, NoTlsStream>), tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(format!("{BACKGROUND_APPLICATION_PREFIX}{purpose}"));
    config.connect(NoTls).await
}
