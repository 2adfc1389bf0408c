//! `auth_query`: the secret of a role that is not listed in the configuration, looked up
//! in PostgreSQL (as PgBouncer does) through `auth.auth_user` on the primary of the
//! database the client asks for, with tokio-postgres. One lookup connection per
//! database, opened on first use and reopened when it breaks.
//!
//! Answers, including "no such role", are cached for `auth.auth_query_cache_ms` in a
//! bounded cache, so a burst of logins (or of guesses) costs one query per role.
//!
//! A role that does not exist, has no password, or whose secret cannot be used is
//! answered with a mock SCRAM verifier derived from the role name and a per-process
//! secret (as PostgreSQL does), so that the client fails at the same step, with the
//! same message, as with a wrong password.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use thiserror::Error;
use tokio_postgres::{Client, NoTls, Statement};

use crate::config::Config;
use crate::protocol::scram::{self, Verifier, DEFAULT_ITERATIONS};

/// What PostgreSQL stores for a role, as far as pgwarden can use it.
#[derive(Debug, Clone)]
pub enum RoleSecret {
    Scram(Verifier),
    /// `md5` + 32 hex digits.
    Md5(String),
    /// No such role (or it cannot log in), no password, or a secret pgwarden cannot
    /// use (plain text): every password is refused.
    Refused,
}

impl RoleSecret {
    /// Reads the secret column of the lookup's row.
    fn from_column(secret: Option<&str>) -> RoleSecret {
        match secret {
            Some(text) if text.starts_with("SCRAM-SHA-256$") => match Verifier::parse(text) {
                Some(verifier) => RoleSecret::Scram(verifier),
                None => RoleSecret::Refused,
            },
            Some(text)
                if text.len() == 35
                    && text.starts_with("md5")
                    && text[3..].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                RoleSecret::Md5(text.to_ascii_lowercase())
            }
            _ => RoleSecret::Refused,
        }
    }
}

#[derive(Debug, Error)]
pub enum LookupError {
    #[error("database {0:?} is not configured")]
    UnknownDatabase(String),
    #[error("timed out after {0} ms")]
    Timeout(u128),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("auth_query returned {0} rows; it must return at most one")]
    TooManyRows(usize),
    #[error("auth_query must return two columns (name, secret); it returned {0}")]
    Columns(usize),
}

/// The lookup service of one configuration.
pub struct AuthQuery {
    query: String,
    timeout: Duration,
    cache: Option<moka::sync::Cache<(String, String), Arc<RoleSecret>>>,
    databases: HashMap<String, LookupConnection>,
}

/// The lookup connection of one database.
struct LookupConnection {
    config: tokio_postgres::Config,
    open: tokio::sync::Mutex<Option<(Arc<Client>, Statement)>>,
}

/// Roles remembered at most (answers and "no such role" alike).
const CACHE_ENTRIES: u64 = 10_000;

impl AuthQuery {
    /// The service for `config`, or `None` when `auth.auth_user` is unset.
    pub fn from_config(config: &Config) -> Option<AuthQuery> {
        let auth_user = config.auth.auth_user.as_ref()?;
        let mut databases = HashMap::new();
        for (name, db) in &config.databases {
            let Ok(endpoint) = db.primary_endpoint(name) else {
                continue; // validated at load
            };
            let mut pg = tokio_postgres::Config::new();
            pg.host(&endpoint.host)
                .port(endpoint.port)
                .user(auth_user)
                .dbname(
                    db.server_database
                        .clone()
                        .or(endpoint.database.clone())
                        .unwrap_or_else(|| name.clone()),
                )
                .application_name("pgwarden auth_query")
                .connect_timeout(config.pool.connect_timeout());
            if let Some(password) = config.server_password_for(name, auth_user) {
                pg.password(password);
            }
            databases.insert(
                name.clone(),
                LookupConnection {
                    config: pg,
                    open: tokio::sync::Mutex::new(None),
                },
            );
        }
        let ttl = config.auth.auth_query_cache_ms;
        Some(AuthQuery {
            query: config.auth.auth_query.clone(),
            timeout: config.pool.connect_timeout(),
            cache: (ttl > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(CACHE_ENTRIES)
                    .time_to_live(Duration::from_millis(ttl))
                    .build()
            }),
            databases,
        })
    }

    /// The secret of `role` on `database`'s primary, from the cache or PostgreSQL.
    pub async fn lookup(&self, database: &str, role: &str) -> Result<Arc<RoleSecret>, LookupError> {
        let key = (database.to_string(), role.to_string());
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok(hit);
        }
        let connection = self
            .databases
            .get(database)
            .ok_or_else(|| LookupError::UnknownDatabase(database.to_string()))?;
        let secret = tokio::time::timeout(self.timeout, connection.query(&self.query, role))
            .await
            .map_err(|_| LookupError::Timeout(self.timeout.as_millis()))??;
        let secret = Arc::new(secret);
        if let Some(cache) = &self.cache {
            cache.insert(key, secret.clone());
        }
        Ok(secret)
    }
}

impl LookupConnection {
    async fn query(&self, query: &str, role: &str) -> Result<RoleSecret, LookupError> {
        let (client, statement) = {
            let mut open = self.open.lock().await;
            match &*open {
                Some((client, statement)) if !client.is_closed() => {
                    (client.clone(), statement.clone())
                }
                _ => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "auth_query connection ended");
                        }
                    });
                    let statement = client.prepare(query).await?;
                    let client = Arc::new(client);
                    *open = Some((client.clone(), statement.clone()));
                    (client, statement)
                }
            }
        };
        if statement.columns().len() != 2 {
            return Err(LookupError::Columns(statement.columns().len()));
        }
        let rows = match client.query(&statement, &[&role]).await {
            Ok(rows) => rows,
            Err(e) => {
                // Reconnect (and prepare again) next time.
                *self.open.lock().await = None;
                return Err(e.into());
            }
        };
        match rows.as_slice() {
            [] => Ok(RoleSecret::Refused),
            [row] => Ok(RoleSecret::from_column(row.try_get::<_, Option<&str>>(1)?)),
            more => Err(LookupError::TooManyRows(more.len())),
        }
    }
}

/// A verifier no password matches, the same for a role name every time within a
/// process (a prober sees a stable salt, as for a real role), different across
/// processes and roles.
pub fn mock_verifier(role: &str) -> Verifier {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    let derive = |label: &[u8]| {
        let mut message = label.to_vec();
        message.extend_from_slice(role.as_bytes());
        scram::hmac(secret, &message)
    };
    Verifier {
        salt: derive(b"salt\0")[..16].to_vec(),
        iterations: DEFAULT_ITERATIONS,
        stored_key: derive(b"stored\0"),
        server_key: derive(b"server\0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_the_lookup() {
        let verifier = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=:6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert!(matches!(
            RoleSecret::from_column(Some(verifier)),
            RoleSecret::Scram(v) if v.iterations == 4096
        ));
        assert!(matches!(
            RoleSecret::from_column(Some("md5AB0123456789abcdef0123456789abcd")),
            RoleSecret::Md5(h) if h == "md5ab0123456789abcdef0123456789abcd"
        ));
        for refused in [
            None,
            Some(""),
            Some("plain text"),
            Some("SCRAM-SHA-256$broken"),
        ] {
            assert!(matches!(
                RoleSecret::from_column(refused),
                RoleSecret::Refused
            ));
        }
    }

    #[test]
    fn mock_verifiers_are_stable_per_role() {
        assert_eq!(mock_verifier("mallory"), mock_verifier("mallory"));
        assert_ne!(mock_verifier("mallory").salt, mock_verifier("eve").salt);
        assert_eq!(mock_verifier("eve").salt.len(), 16);
    }
}
