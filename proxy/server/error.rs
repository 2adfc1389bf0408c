//! Everything that can end or interrupt a client session, and the one place where it
//! becomes the `ErrorResponse` the client reads.

use thiserror::Error;

use crate::pool::PoolError;
use crate::protocol::startup::StartupError;
use crate::protocol::{ErrorFields, FrameError, SqlState};

#[derive(Debug, Error)]
pub enum SessionError {
    /// The client went away or its socket failed: nobody to tell.
    #[error("client connection: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("client closed the connection")]
    ClientClosed,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection's first bytes: not a startup packet, or one PostgreSQL refuses.
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// `auth_query` could not be run (server down, query or permissions wrong); the
    /// details are in pgwarden's log.
    #[error(
        "could not look up the password of user \"{0}\" (auth.auth_query); see the pgwarden log"
    )]
    AuthLookup(String),
    #[error("no such database \"{0}\" in pgwarden's configuration")]
    UnknownDatabase(String),
    #[error("too many client connections (proxy.max_client_connections = {0})")]
    TooManyClients(usize),
    #[error("client idle longer than proxy.idle_client_timeout_ms ({0} ms)")]
    IdleTimeout(u64),
    #[error("terminating connection: idle in a transaction or an unfinished extended-protocol batch longer than pool.idle_in_transaction_timeout_ms ({0} ms)")]
    IdleInTransaction(u64),
    #[error("database \"{0}\" is being dropped or renamed by another client")]
    DatabaseDraining(String),
    /// PostgreSQL refused a setting from the startup packet.
    #[error("{0}")]
    StartupSetting(String),
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// The server connection failed while serving this client.
    #[error("lost the server connection: {0}")]
    ServerLost(String),
    #[error("terminating connection due to administrator command (pgwarden is shutting down)")]
    Shutdown,
    #[error("no healthy replica and routing.fallback = \"error\"")]
    NoReplica,
    #[error("invalid pgwarden setting: {0}")]
    BadProxySetting(String),
    #[error("user \"{0}\" is not an admin (admin.users)")]
    NotAdmin(String),
    /// The tenant guard refused the statement.
    #[error("{}", .0.message())]
    TenantGuard(crate::tenant::Rejection),
    /// The tenant guard has no catalog to judge with.
    #[error("pgwarden tenant guard is not ready: {0}")]
    TenantGuardUnavailable(String),
    #[error("pgwarden.tenant_id can only change outside a transaction")]
    TenantChangeInTransaction,
    /// A statement the proxy answers itself, sent in a transaction that failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    /// A quarantined fingerprint (`BLOCK QUERY`, `protection.blocked_fingerprints`).
    #[error("statement refused: its fingerprint {0} is quarantined by the pgwarden operator")]
    Quarantined(String),
    /// Over a `[[limits]]` rule after its longest wait.
    #[error("statement refused by pgwarden limit \"{}\" ({}) after waiting {} ms", .0.rule, .0.limit, .0.waited_ms)]
    LimitExceeded(crate::protect::LimitRefusal),
    /// The backend's circuit breaker is open.
    #[error("backend {0} is failing; its circuit breaker is open")]
    CircuitOpen(String),
    /// Not an error: the message was answered by the proxy itself.
    #[error("answered by the proxy")]
    Answered,
}

impl SessionError {
    /// The `ErrorResponse` to send, if the client can still receive one.
    pub fn to_error_fields(&self) -> Option<ErrorFields> {
        let message = self.to_string();
        Some(match self {
            SessionError::ClientIo(_) | SessionError::ClientClosed => return None,
            SessionError::Frame(_) | SessionError::Protocol(_) => {
                ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, message)
            }
            SessionError::Startup(e) => match e {
                _ if e.is_silent() => return None,
                StartupError::UnsupportedProtocol { .. } => {
                    ErrorFields::fatal(SqlState::FEATURE_NOT_SUPPORTED, message)
                }
                StartupError::NoUser => ErrorFields::fatal(SqlState::INVALID_AUTHORIZATION, message),
                _ => ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, message),
            },
            SessionError::AuthFailed(_) => ErrorFields::fatal(SqlState::INVALID_PASSWORD, message),
            SessionError::AuthLookup(_) => ErrorFields::fatal(SqlState::CONNECTION_FAILURE, message),
            SessionError::UnknownDatabase(_) => {
                ErrorFields::fatal(SqlState::INVALID_CATALOG_NAME, message)
                    .with_hint("add it under [databases.NAME] or set PGWARDEN_PRIMARY_URL")
            }
            SessionError::TooManyClients(_) => {
                ErrorFields::fatal(SqlState::TOO_MANY_CONNECTIONS, message)
            }
            SessionError::IdleTimeout(_) => {
                ErrorFields::fatal(SqlState::IDLE_SESSION_TIMEOUT, message)
            }
            SessionError::DatabaseDraining(_) => {
                ErrorFields::error(SqlState::CANNOT_CONNECT_NOW, message)
                    .with_hint("retry once the DROP/ALTER DATABASE has finished")
            }
            SessionError::StartupSetting(_) => {
                ErrorFields::fatal(SqlState::INVALID_PARAMETER_VALUE, message)
            }
            SessionError::IdleInTransaction(_) => {
                ErrorFields::fatal(SqlState::IDLE_IN_TRANSACTION_TIMEOUT, message)
            }
            SessionError::Pool(PoolError::CheckoutTimeout(_)) => {
                ErrorFields::error(SqlState::TOO_MANY_CONNECTIONS, message).with_hint(
                    "all server connections are busy; raise pool.size or pool.checkout_timeout_ms",
                )
            }
            SessionError::Pool(PoolError::Overloaded(_)) => {
                ErrorFields::error(SqlState::TOO_MANY_CONNECTIONS, message).with_hint(
                    "pgwarden sheds load instead of queueing more clients; retry later, \
                     or raise pool.max_waiting / pool.size",
                )
            }
            SessionError::CircuitOpen(_) => ErrorFields::error(SqlState::CANNOT_CONNECT_NOW, message)
                .with_hint("pgwarden stopped sending it requests after repeated failures and probes it again shortly; retry in a few seconds (protection.circuit_open_ms)"),
            SessionError::Quarantined(id) => {
                ErrorFields::error(SqlState::INSUFFICIENT_PRIVILEGE, message).with_hint(format!(
                    "an operator ran BLOCK QUERY {id} (or listed it in protection.blocked_fingerprints); \
                     UNBLOCK QUERY {id} on the admin console lifts it"
                ))
            }
            SessionError::LimitExceeded(refusal) => {
                let code = match refusal.kind {
                    crate::protect::LimitKind::Concurrency => SqlState::TOO_MANY_CONNECTIONS,
                    crate::protect::LimitKind::Rate => SqlState::CONFIGURATION_LIMIT_EXCEEDED,
                };
                ErrorFields::error(code, message).with_hint(format!(
                    "the [[limits]] rule \"{}\" bounds these statements; retry later or change the rule (SHOW LIMITS)",
                    refusal.rule
                ))
            }
            SessionError::Pool(PoolError::LoginRejected(_)) => {
                ErrorFields::error(SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH, message).with_hint(
                    "pgwarden logs in to PostgreSQL with the password from its configuration, \
                     or, for roles found with auth.auth_query, with the keys of the role's last client login",
                )
            }
            SessionError::Pool(PoolError::Passthrough { .. }) => {
                ErrorFields::error(SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH, message).with_hint(
                    "roles found with auth.auth_query are logged in with the keys of the role's last client login",
                )
            }
            SessionError::Pool(PoolError::Rejected { code, .. }) if code.starts_with("28") => {
                ErrorFields::error(SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH, message).with_hint(
                    "pgwarden logs in to PostgreSQL with the password from its configuration",
                )
            }
            SessionError::Pool(_) => ErrorFields::error(SqlState::CONNECTION_FAILURE, message),
            SessionError::ServerLost(_) => {
                ErrorFields::fatal(SqlState::CONNECTION_FAILURE, message)
            }
            SessionError::Shutdown => ErrorFields::fatal(SqlState::ADMIN_SHUTDOWN, message),
            SessionError::NoReplica => ErrorFields::error(SqlState::CONNECTION_FAILURE, message)
                .with_hint("set routing.fallback = \"primary\" to read from the primary instead"),
            SessionError::BadProxySetting(_) => {
                ErrorFields::error(SqlState::INVALID_PARAMETER_VALUE, message)
                    .with_hint("pgwarden.route takes primary, replica or auto; pgwarden.tenant_id takes a tenant (an integer when tenancy.value_type = \"integer\")")
            }
            SessionError::TenantGuard(rejection) => {
                ErrorFields::error(SqlState::INSUFFICIENT_PRIVILEGE, message)
                    .with_hint(rejection.hint())
            }
            SessionError::TenantGuardUnavailable(_) => {
                ErrorFields::error(SqlState::CANNOT_CONNECT_NOW, message)
                    .with_hint("the guard reads the catalog from the primary at start; retry shortly")
            }
            SessionError::TenantChangeInTransaction => {
                ErrorFields::error(SqlState::ACTIVE_SQL_TRANSACTION, message)
                    .with_hint("COMMIT or ROLLBACK first")
            }
            SessionError::TransactionAborted => {
                ErrorFields::error(SqlState::IN_FAILED_SQL_TRANSACTION, message)
            }
            SessionError::Answered => return None,
            SessionError::NotAdmin(_) => {
                ErrorFields::fatal(SqlState::INSUFFICIENT_PRIVILEGE, message)
            }
        })
    }

    /// Whether the session can go on after reporting this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            SessionError::Pool(_)
                | SessionError::DatabaseDraining(_)
                | SessionError::NoReplica
                | SessionError::BadProxySetting(_)
                | SessionError::TenantGuard(_)
                | SessionError::TenantGuardUnavailable(_)
                | SessionError::TenantChangeInTransaction
                | SessionError::TransactionAborted
                | SessionError::Quarantined(_)
                | SessionError::CircuitOpen(_)
                | SessionError::LimitExceeded(_)
        )
    }
}
