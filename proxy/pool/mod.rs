//! Server connections and the bb8 pools that hold them.
//!
//! This room owns connecting to PostgreSQL, logging in with postgres-protocol
//! (SCRAM-SHA-256, md5, cleartext, trust; `auth_query` roles with the keys their
//! clients proved, see `scram_passthrough`), remembering what the server told us
//! (`ParameterStatus`, `BackendKeyData`), deciding when a pooled connection is still
//! usable, and the registry of pools per (database, role, backend). It does not know
//! about clients, routing or SQL.

pub mod background;
mod connect;
mod connector;
mod error;
mod prepared;
mod registry;
pub mod scram_passthrough;
mod server_connection;

pub use background::{connect_background, BACKGROUND_APPLICATION_PREFIX};
pub use connect::ServerTarget;
pub use connector::ServerConnector;
pub use error::PoolError;
pub use prepared::PreparedStatements;
pub use registry::{PoolKey, PoolRegistry, PoolSettings, PoolStats, ServerPool};
pub use server_connection::{BackendKey, ServerConnection};

/// A server connection checked out of its pool; it returns there when dropped.
pub type PooledServer = bb8::PooledConnection<'static, ServerConnector>;
