//! What can go wrong between pgwarden and a PostgreSQL server.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("server {address} rejected login: {message} (SQLSTATE {code})")]
    Rejected {
        address: String,
        code: String,
        message: String,
    },
    #[error("server {address} asked for a password but none is configured for user {user}")]
    NoPassword { address: String, user: String },
    /// Logging in as an `auth_query` role with the secret its clients proved failed.
    #[error(
        "cannot log in to {address} as {user} with the keys of the role's client login: {message}"
    )]
    Passthrough {
        address: String,
        user: String,
        message: String,
    },
    #[error("server {address} asked for unsupported authentication: {0}", .method)]
    UnsupportedAuth { address: String, method: String },
    #[error("protocol error talking to {address}: {message}")]
    Protocol { address: String, message: String },
    #[error("i/o error with {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("no server connection available within {0} ms")]
    CheckoutTimeout(u64),
    /// Load shedding: too many clients wait already; refused without waiting.
    #[error("pgwarden is overloaded: {0}")]
    Overloaded(String),
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server is up but refused this role's login (e.g. a role not yet replicated).
    #[error("{0}")]
    LoginRejected(String),
    /// A server connection that was open went bad (failed its check, closed, or
    /// answered an internal query with an error). Never a failure to connect.
    #[error("server connection is not healthy: {0}")]
    Unhealthy(String),
    /// The server refused a statement the proxy ran for a client (its startup
    /// settings): the server's own error, for the client.
    #[error("{message}")]
    Refused { code: String, message: String },
}
