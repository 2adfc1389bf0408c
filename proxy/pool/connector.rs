//! The bb8 `ManageConnection` for server connections: connect, validate, discard.

use std::sync::Arc;
use std::time::Duration;

use super::{PoolError, ServerConnection, ServerTarget};

/// Creates and checks the server connections of one pool.
#[derive(Debug, Clone)]
pub struct ServerConnector {
    pub target: Arc<ServerTarget>,
    pub connect_timeout: Duration,
    /// A connection idle longer than this is checked with an empty query on checkout.
    pub health_check_idle: Duration,
}

impl bb8::ManageConnection for ServerConnector {
    /// Boxed: a checkout moves the lent connection about ten times (out of bb8 or the
    /// warm stack, into the session, back), and a `ServerConnection` is some 300
    /// bytes; a box moves as a pointer.
    type Connection = Box<ServerConnection>;
    type Error = PoolError;

    async fn connect(&self) -> Result<Box<ServerConnection>, PoolError> {
        let connection = self.target.connect(self.connect_timeout).await?;
        tracing::debug!(server = %self.target.address, pid = connection.key.pid, "server connection opened");
        Ok(Box::new(connection))
    }

    /// Every failure here is `PoolError::Unhealthy`: the pool's error sink tells those
    /// apart from failures to connect.
    async fn is_valid(&self, connection: &mut Box<ServerConnection>) -> Result<(), PoolError> {
        if !connection.is_quiet_while_idle() {
            return Err(PoolError::Unhealthy(
                "server sent data or closed while idle (restarting?)".into(),
            ));
        }
        if connection.last_used.elapsed() < self.health_check_idle {
            return Ok(());
        }
        match tokio::time::timeout(self.connect_timeout, connection.run_internal("")).await {
            Ok(Ok(())) => {
                connection.last_used = super::CoarseInstant::now();
                Ok(())
            }
            // Whatever failed, this is one connection gone bad, not a server that
            // cannot be reached: the pool opens a fresh one.
            Ok(Err(e)) => Err(PoolError::Unhealthy(format!("health check failed: {e}"))),
            Err(_) => Err(PoolError::Unhealthy("health check timed out".into())),
        }
    }

    fn has_broken(&self, connection: &mut Box<ServerConnection>) -> bool {
        connection.broken
    }
}
