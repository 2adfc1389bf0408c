//! Server connections and the bb8 pools that hold them.
//!
//! This room owns connecting to PostgreSQL, logging in with postgres-protocol
//! (SCRAM-SHA-256, md5, cleartext, trust; `auth_query` roles with the keys their
//! clients proved, see `scram_passthrough`), remembering what the server told us
//! (`ParameterStatus`, `BackendKeyData`), deciding when a pooled connection is still
//! usable, the registry of pools per (database, role, backend), the warm stack of
//! just-returned connections in front of bb8 (`warm_stack`), and the fair waiting
//! line in front of each pool (`fair_gate`: turns between groups of clients, load
//! shedding). It does not know about clients, routing or SQL; a client's group is a
//! string the session gives.

pub mod background;
mod coarse_clock;
mod connect;
mod connector;
mod error;
pub mod fair_gate;
mod fair_gate_expiry;
mod pooled;
mod prepared;
mod registry;
pub mod scram_passthrough;
mod server_connection;
mod server_stream;
mod warm_stack;

pub use background::{connect_background, BACKGROUND_APPLICATION_PREFIX};
pub use coarse_clock::CoarseInstant;
pub use connect::ServerTarget;
pub use connector::ServerConnector;
pub use error::PoolError;
pub use fair_gate::{GatePolicy, WaitingTotal};
pub use pooled::PooledServer;
pub use prepared::PreparedStatements;
pub use registry::{PoolKey, PoolRegistry, PoolSettings, PoolStats, ServerPool};
pub use server_connection::{nonstandard_strings_in, BackendKey, ServerConnection};
pub use server_stream::{is_socket_path, ServerStream};
