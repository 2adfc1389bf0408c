//! From a decoded `StartupMessage` to a ready session: who the client is, which
//! database, authentication (against the configuration, or `auth_query` for roles not
//! in it), and the `ParameterStatus`/`BackendKeyData`/`ReadyForQuery` sequence a
//! PostgreSQL client expects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::auth::{authenticate, authenticate_looked_up};
use super::handshake::{Opened, LOGIN_TIMEOUT};
use super::pooled_state::PooledState;
use super::responses::ResponseQueue;
use super::routing::SessionRouting;
use super::session::{ClientIdentity, PendingSettings, Session};
use super::settings::SessionSettings;
use super::statements::ClientStatements;
use super::tenancy::TenantSession;
use super::SessionError;
use crate::protocol::backend;
use crate::protocol::startup::parse_options;
use crate::protocol::tag::TransactionStatus;
use crate::runtime::Runtime;

/// Startup parameters that are about the connection, not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Authenticates the client and builds its session. Errors are reported by the caller.
pub async fn log_in(
    runtime: Arc<Runtime>,
    opened: Opened,
) -> Result<Session, (Opened, SessionError)> {
    let Opened { mut stream, params } = opened;
    match tokio::time::timeout(LOGIN_TIMEOUT, log_in_inner(&runtime, &mut stream, &params)).await {
        Ok(Ok((identity, mut settings, proxy_options, out, mut announced))) => {
            let identity = Arc::new(identity);
            let config = runtime.config();
            let tenancy = match TenantSession::for_login(
                &config,
                &identity.database,
                &identity.user,
                &proxy_options,
                &mut settings,
            ) {
                Ok(tenancy) => tenancy,
                Err(e) => return Err((Opened { stream, params }, e)),
            };
            let mode = config.pool_mode_for(&identity.database);
            let pool = match runtime.pool(&identity.database, &identity.user, 0) {
                Ok(pool) => pool,
                Err(e) => return Err((Opened { stream, params }, e)),
            };
            let keep_server = mode == crate::config::PoolMode::Session;
            let server =
                match apply_startup_settings(&pool, &settings, &mut announced, keep_server).await {
                    Ok(server) => server,
                    Err(e) => return Err((Opened { stream, params }, e)),
                };
            let cancel = runtime.cancels.register(
                super::cancel::ClientInfo {
                    identity: identity.clone(),
                    tls: stream.is_tls(),
                    connected_at: std::time::SystemTime::now(),
                },
                // Session pooling: the client's backend is one real PostgreSQL backend,
                // so it gets that backend's pid (pg_terminate_backend works with it).
                server.as_ref().map(|s| s.key.pid),
            );
            if let Some(server) = &server {
                cancel.slot.attach(&server.address, server.key);
            }
            let mut to_client = out;
            for (name, value) in &announced.values {
                backend::parameter_status(&mut to_client, name, value);
            }
            backend::backend_key_data(&mut to_client, cancel.pid, cancel.secret);
            backend::ready_for_query(&mut to_client, TransactionStatus::Idle);
            if let Err(e) = stream.write_all(&to_client).await {
                return Err((Opened { stream, params }, SessionError::ClientIo(e)));
            }
            let idle = config.proxy.idle_client_timeout_ms;
            let routing = if mode == crate::config::PoolMode::Transaction {
                let routes = runtime.routing();
                routes.topology(&identity.database).map(|topology| {
                    Box::new(SessionRouting::new(
                        routes.clone(),
                        topology,
                        &config,
                        &proxy_options,
                        &identity.user,
                    ))
                })
            } else {
                None
            };
            let safe_functions = runtime.session_safe_functions.get(&identity.database);
            Ok(Session {
                runtime: runtime.clone(),
                backend: 0,
                failed_backend: None,
                routing,
                setting_statements: Vec::new(),
                tenancy: tenancy.map(Box::new),
                batch_open: false,
                executed_in_batch: false,
                stats: runtime.stats.enabled.then(|| {
                    let key = proxy_options
                        .iter()
                        .find(|(name, _)| name == "pgwarden.session_key")
                        .map(|(_, value)| value.as_str());
                    super::statistics::SessionStats::new(key)
                }),
                client: stream,
                identity,
                mode,
                pool,
                server,
                client_buf: BytesMut::new(),
                to_client: BytesMut::new(),
                to_server: BytesMut::new(),
                responses: ResponseQueue::default(),
                statements: ClientStatements::default(),
                settings,
                pending_settings: PendingSettings::default(),
                cancel,
                status: TransactionStatus::Idle,
                skip_until_sync: false,
                query_scan: Default::default(),
                class_memo: Default::default(),
                max_message: config.proxy.max_message_bytes,
                idle_timeout: (idle > 0).then(|| Duration::from_millis(idle)),
                idle_in_transaction_timeout: millis(config.pool.idle_in_transaction_timeout_ms),
                idle_in_batch_timeout: millis(config.pool.idle_in_batch_timeout_ms),
                query_timeout: millis(config.pool.query_timeout_ms),
                server_said_fatal: false,
                lost: None,
                draining_database: None,
                protection: super::protection::SessionProtection::new(&config, &proxy_options),
                caching: (config.cache.mode != crate::config::CacheMode::Off)
                    .then(super::caching::SessionCache::default),
                shutdown: runtime.shutdown.session(),
                streamed: Default::default(),
                cut_message: false,
                pooled: PooledState::new(
                    config.pool.pin_session_state,
                    config.pool.max_prepared_statements as usize,
                    safe_functions,
                ),
            })
        }
        Ok(Err(e)) => Err((Opened { stream, params }, e)),
        Err(_) => Err((
            Opened { stream, params },
            SessionError::Protocol("login took longer than 15 s".into()),
        )),
    }
}

/// A timeout in milliseconds; 0 disables it.
fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The `ParameterStatus` values a client is told at login.
struct Announced {
    values: BTreeMap<String, String>,
    /// The client asked for a reported parameter (`DateStyle`, `client_encoding`, ...)
    /// with another value: only the server can say how it spells the result.
    needs_server: bool,
}

/// Applies the client's startup settings on a server connection, as PostgreSQL applies
/// them at its own startup: the server's `ParameterStatus` replies (its normalized
/// spelling, `UTF8` for `utf-8`) become what the client is told, and a setting the
/// server refuses refuses the login with the server's error. With `keep`, the
/// connection is returned for the session (session pooling); otherwise it goes back
/// to the pool already configured for this client.
async fn apply_startup_settings(
    pool: &crate::pool::ServerPool,
    settings: &SessionSettings,
    announced: &mut Announced,
    keep: bool,
) -> Result<Option<crate::pool::PooledServer>, SessionError> {
    if !keep && (settings.hash() == 0 || !announced.needs_server) {
        // Nothing to normalize: the settings are applied with the first transaction.
        return Ok(None);
    }
    let mut server = pool.checkout().await?;
    if server.settings_hash != settings.hash() {
        match server.run_reporting(&settings.replay_sql()).await {
            Ok(reported) => {
                for (name, value) in reported {
                    if let Some(current) = announced.values.get_mut(&name) {
                        *current = value;
                    }
                }
                server.settings_hash = settings.hash();
            }
            Err(e) => {
                server.mark_broken();
                return Err(SessionError::StartupSetting(e.to_string()));
            }
        }
    }
    Ok(keep.then_some(server))
}

async fn log_in_inner(
    runtime: &Arc<Runtime>,
    stream: &mut super::stream::ClientStream,
    params: &BTreeMap<String, String>,
) -> Result<
    (
        ClientIdentity,
        SessionSettings,
        Vec<(String, String)>,
        BytesMut,
        Announced,
    ),
    SessionError,
> {
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| SessionError::Protocol("no user name in startup packet".into()))?;
    if params.contains_key("replication") {
        return Err(SessionError::Protocol(
            "replication connections are not proxied; connect to PostgreSQL directly".into(),
        ));
    }
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| user.clone());
    let config = runtime.config();
    let credentials = runtime.credentials();
    let mut out = BytesMut::with_capacity(512);
    let secret = credentials.get(&user);
    match runtime.auth_query().filter(|_| secret.is_none()) {
        Some(lookups) => {
            // A role not in the configuration: its secret is looked up on the primary
            // of the database it asks for, so that database must be known first.
            if !config.databases.contains_key(&database) {
                return Err(SessionError::UnknownDatabase(database));
            }
            let passthrough = authenticate_looked_up(
                stream,
                &lookups,
                config.auth.method,
                &database,
                &user,
                &mut out,
            )
            .await?;
            runtime.passthrough.slot(&database, &user).set(passthrough);
        }
        None => authenticate(stream, config.auth.method, &user, secret, &mut out).await?,
    }
    if !config.databases.contains_key(&database) {
        return Err(SessionError::UnknownDatabase(database));
    }

    let pool = runtime.pool(&database, &user, 0)?;
    let server_parameters = pool.server_parameters().await?;

    // Client settings: startup parameters and `options -c name=value` pairs that differ
    // from what the server connection already has.
    let mut requested: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(options) = params.get("options") {
        requested.extend(parse_options(options));
    }
    let mut settings = SessionSettings::default();
    let mut proxy_options = Vec::new();
    let mut announced_needs_server = false;
    let mut announced: BTreeMap<String, String> = server_parameters.into_iter().collect();
    for (name, value) in &requested {
        if name.starts_with("pgwarden.") {
            // Proxy-level settings, never sent to PostgreSQL.
            proxy_options.push((name.clone(), value.clone()));
            continue;
        }
        let current = announced
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(k, v)| (k.clone(), v.clone()));
        // The client is told the server's own spelling, once the server applied it
        // (apply_startup_settings), never the client's.
        match current {
            Some((_, v)) if v == *value => {}
            // Echoed by the server exactly as given: no need to ask it.
            Some((key, _)) if key == "application_name" => {
                settings.set_value(name, value);
                announced.insert(key, value.clone());
            }
            Some(_) => {
                settings.set_value(name, value);
                announced_needs_server = true;
            }
            None => settings.set_value(name, value),
        }
    }
    let identity = ClientIdentity {
        application_name: params.get("application_name").cloned().unwrap_or_default(),
        peer: stream.peer().to_string(),
        user,
        database,
    };
    let announced = Announced {
        values: announced,
        needs_server: announced_needs_server,
    };
    Ok((identity, settings, proxy_options, out, announced))
}
