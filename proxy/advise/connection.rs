//! The advisor's own connections (tokio-postgres), never a pooled client connection:
//! what it prepares and the hypothetical indexes it makes live and die here. One per
//! node it needs, opened lazily in a round and closed at its end (or on an error).

use std::time::Duration;

use tokio_postgres::Client;

use super::error::AdviseError;

/// Every statement the advisor sends is bounded by this.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NodeConnection {
    pub url: String,
    client: Option<Client>,
}

impl NodeConnection {
    pub fn new(url: String) -> NodeConnection {
        NodeConnection { url, client: None }
    }

    /// The open connection, connecting first when needed.
    pub async fn client(&mut self) -> Result<&Client, AdviseError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let address = crate::config::redact_url(&self.url);
            let connecting = crate::pool::connect_background(&self.url, "advisor");
            let (client, connection) = tokio::time::timeout(STATEMENT_TIMEOUT, connecting)
                .await
                .map_err(|_| AdviseError::Timeout("connecting"))?
                .map_err(|source| AdviseError::Connect { address, source })?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            // Bounded server-side too.
            client
                .batch_execute("SET statement_timeout = '10s'")
                .await
                .map_err(AdviseError::query("setting up the advisor connection"))?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// The connection when it is open.
    pub fn current(&self) -> Option<&Client> {
        self.client.as_ref().filter(|c| !c.is_closed())
    }

    /// Forgets (and so closes) the connection: after an error, and at the end of a
    /// round. The next use opens a new one.
    pub fn reset(&mut self) {
        self.client = None;
    }
}

/// Runs `future` with the advisor's statement timeout.
pub async fn bounded<T>(
    what: &'static str,
    future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, AdviseError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, future)
        .await
        .map_err(|_| AdviseError::Timeout(what))?
        .map_err(AdviseError::query(what))
}
