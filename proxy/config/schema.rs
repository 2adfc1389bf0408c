//! The typed configuration tree and its defaults. Every key is documented in
//! `config/pgwarden.toml`; the defaults here and there must agree.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AdviseConfig, AuthConfig, CacheConfig, ConfigError, Endpoint, Fairness, LimitRule,
    ProtectionConfig, TenancyConfig, TenancyMode,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub auth: AuthConfig,
    pub pool: PoolConfig,
    pub routing: RoutingConfig,
    pub ryw: RywConfig,
    pub stats: StatsConfig,
    pub admin: AdminConfig,
    pub tenancy: TenancyConfig,
    pub advise: AdviseConfig,
    /// Quarantined fingerprints, `/readyz` under overload.
    pub protection: ProtectionConfig,
    /// Concurrency and rate limits (`[[limits]]`).
    pub limits: Vec<LimitRule>,
    pub cache: CacheConfig,
    /// One entry per database name clients connect to.
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub listen: String,
    pub http_listen: String,
    pub max_client_connections: usize,
    /// Close client connections idle (outside a transaction) this long; 0 disables.
    pub idle_client_timeout_ms: u64,
    /// Largest protocol message a client may send.
    pub max_message_bytes: usize,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// A directory to also listen in on a Unix-domain socket, `.s.PGSQL.<port>` with
    /// the port of `listen`, as PostgreSQL and PgBouncer name theirs: clients on this
    /// host connect with `host=<dir>`. Unset: TCP only.
    pub unix_socket_dir: Option<String>,
    /// Graceful shutdown (SIGTERM): clients inside a transaction, batch or COPY get
    /// this long to finish it; then every client left gets 57P01.
    pub shutdown_timeout_ms: u64,
    /// After SIGTERM, `/readyz` answers 503 at once but new clients are still accepted
    /// this long, so a load balancer stops sending them first. 0 = stop at once.
    pub shutdown_readyz_delay_ms: u64,
    /// TCP keepalive on client and server sockets: idle seconds before the first
    /// probe (0 turns keepalive off), seconds between probes, probes before the
    /// connection is dropped (0 = the OS default for either).
    pub tcp_keepalive_idle_secs: u64,
    pub tcp_keepalive_interval_secs: u64,
    pub tcp_keepalive_count: u32,
    /// `TCP_USER_TIMEOUT` on client and server sockets: a connection with bytes sent
    /// and unacknowledged this long is dropped (keepalive does not probe then). 0 = the
    /// OS default (about 15 minutes of retransmissions on Linux).
    pub tcp_user_timeout_ms: u64,
    /// Bind `listen` and `http_listen` with `SO_REUSEPORT`, so a new pgwarden can
    /// start on the same ports while the old one drains (see docs/operations.md).
    pub reuse_port: bool,
    /// Threads that run sessions: 0 = by the machine (one thread with up to 2 cores,
    /// else one per core, work stealing; `threads.rs` says why); 1 = one thread running
    /// everything, with no work stealing (also for one pgwarden process per core sharing
    /// a port with `reuse_port`, see docs/operations.md); more = that many workers.
    pub worker_threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            http_listen: "127.0.0.1:9930".into(),
            max_client_connections: 10_000,
            idle_client_timeout_ms: 0,
            max_message_bytes: 64 * 1024 * 1024,
            tls_cert: None,
            tls_key: None,
            unix_socket_dir: None,
            shutdown_timeout_ms: 30_000,
            shutdown_readyz_delay_ms: 0,
            tcp_keepalive_idle_secs: 60,
            tcp_keepalive_interval_secs: 10,
            tcp_keepalive_count: 6,
            tcp_user_timeout_ms: 120_000,
            reuse_port: false,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Transaction,
    Session,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Server connections per (database, role) and backend.
    pub size: u32,
    pub min_idle: u32,
    /// How long a client waits for a server connection before SQLSTATE 53300.
    pub checkout_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Close server connections idle this long.
    pub idle_timeout_ms: u64,
    /// Check a server connection with an empty query before use when it sat idle this long.
    pub health_check_idle_ms: u64,
    /// Close server connections older than this.
    pub max_lifetime_ms: u64,
    /// Transaction pooling: a client that creates session state (temp table, LISTEN,
    /// SQL PREPARE, session advisory lock, WITH HOLD cursor, a setting that cannot be
    /// replayed) keeps its server connection until that state is gone or it leaves.
    pub pin_session_state: bool,
    /// Pooled prepared statements kept per server connection; past it the least
    /// recently used is closed.
    pub max_prepared_statements: u32,
    /// A client that holds a server connection inside a transaction and sends nothing
    /// for this long is disconnected (25P03) and the server connection closed. 0
    /// disables (PostgreSQL's own default).
    pub idle_in_transaction_timeout_ms: u64,
    /// The same for a client that stopped in the middle of an extended-protocol batch
    /// (messages sent, no `Sync`): the server waits for that `Sync` and serves nobody
    /// else. 0 disables.
    pub idle_in_batch_timeout_ms: u64,
    /// A server that owes an answer and sends nothing for this long is taken as hung
    /// (a stopped process, a black-holed network): its connection is closed and the
    /// client gets 57014 (transaction pooling: the client goes on with another server
    /// connection). 0 disables; set it above your longest silent query.
    pub query_timeout_ms: u64,
    /// When clients wait for a server connection, groups are served in turn.
    pub fairness: Fairness,
    /// Turns per round of a group (tenant, application name) when it waits; default 1.
    pub fairness_weights: BTreeMap<String, u32>,
    /// Waiting clients (all pools) past which new checkouts are refused at once
    /// (53300); 0 = no bound.
    pub max_waiting: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            checkout_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            health_check_idle_ms: 30_000,
            max_lifetime_ms: 3_600_000,
            pin_session_state: true,
            max_prepared_statements: 200,
            idle_in_transaction_timeout_ms: 0,
            idle_in_batch_timeout_ms: 30_000,
            query_timeout_ms: 0,
            fairness: Fairness::Tenant,
            fairness_weights: BTreeMap::new(),
            max_waiting: 0,
        }
    }
}

impl PoolConfig {
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Reads go to the primary when no replica can take them.
    Primary,
    /// Reads fail with SQLSTATE 08006 when no replica is healthy.
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Send autocommit reads (and READ ONLY transactions) to replicas.
    pub enabled: bool,
    /// What reads do when no replica is healthy.
    pub fallback: Fallback,
    /// Replicas further behind than this many WAL bytes get no reads (0 = no limit).
    pub max_lag_bytes: u64,
    /// Replicas further behind than this get no reads (0 = no limit).
    pub max_lag_ms: u64,
    /// How often the lag monitor polls every backend.
    pub lag_poll_ms: u64,
    /// Functions (besides built-in read-only ones) that may run on a replica.
    pub read_only_functions: Vec<String>,
    /// Statement texts whose classification is remembered.
    pub classifier_cache_entries: u64,
    /// Bytes the classification cache may take (texts included).
    pub classifier_cache_bytes: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            enabled: true,
            fallback: Fallback::Primary,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 10_000,
            lag_poll_ms: 100,
            read_only_functions: Vec::new(),
            classifier_cache_entries: 10_000,
            classifier_cache_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RywScope {
    /// No read-your-writes: reads go to any replica within the lag limits.
    Off,
    /// A client connection reads its own writes.
    Connection,
    /// Connections with the same `pgwarden.session_key` read each other's writes.
    SessionKey,
    /// Connections of the same tenant (`pgwarden.tenant_id`) read each other's writes.
    Tenant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RywConfig {
    pub scope: RywScope,
    /// Wait up to this long for a replica to replay a session's last write before
    /// sending the read to the primary instead (0 = go to the primary at once).
    pub max_wait_ms: u64,
    /// Share write positions with other pgwarden instances via LISTEN/NOTIFY.
    pub share_between_instances: bool,
}

impl Default for RywConfig {
    fn default() -> Self {
        RywConfig {
            scope: RywScope::Connection,
            max_wait_ms: 0,
            share_between_instances: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Fingerprint and count every statement.
    pub enabled: bool,
    /// Fingerprints kept; past it the least costly are evicted.
    pub max_fingerprints: usize,
    /// Show one sample statement with its literal values in outputs.
    pub show_parameters: bool,
    /// Bytes the fingerprints (counters, histograms, texts) may take; past it the
    /// least costly are evicted.
    pub max_bytes: u64,
    /// Bytes of the map from exact statement text (a 64-bit hash of it) to fingerprint.
    pub text_map_bytes: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            enabled: true,
            max_fingerprints: 5_000,
            show_parameters: false,
            max_bytes: 32 << 20,
            text_map_bytes: 2 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Users allowed on the admin console (database `pgwarden`). Empty: the users
    /// named in the databases' primary URLs.
    pub users: Vec<String>,
    /// When set, the HTTP API and dashboard require `Authorization: Bearer <token>`.
    pub http_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host:port/db` of the primary.
    pub primary: String,
    /// Streaming replicas, same URL form.
    pub replicas: Vec<String>,
    /// Overrides `pool.mode` for this database.
    pub pool_mode: Option<PoolMode>,
    /// Overrides `pool.size` for this database.
    pub pool_size: Option<u32>,
    /// The database name on the server, when it differs from the name clients use.
    pub server_database: Option<String>,
    /// Overrides `tenancy.mode` for this database.
    pub tenancy_mode: Option<TenancyMode>,
}

impl DatabaseConfig {
    pub fn primary_endpoint(&self, name: &str) -> Result<Endpoint, ConfigError> {
        Endpoint::parse(&format!("databases.{name}.primary"), &self.primary)
    }
    pub fn replica_endpoints(&self, name: &str) -> Result<Vec<Endpoint>, ConfigError> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, url)| Endpoint::parse(&format!("databases.{name}.replicas[{i}]"), url))
            .collect()
    }
}

impl Config {
    pub fn pool_mode_for(&self, database: &str) -> PoolMode {
        self.databases
            .get(database)
            .and_then(|d| d.pool_mode)
            .unwrap_or(self.pool.mode)
    }

    pub fn pool_size_for(&self, database: &str) -> u32 {
        self.databases
            .get(database)
            .and_then(|d| d.pool_size)
            .unwrap_or(self.pool.size)
    }

    pub fn tenancy_mode_for(&self, database: &str) -> TenancyMode {
        self.databases
            .get(database)
            .and_then(|d| d.tenancy_mode)
            .unwrap_or(self.tenancy.mode)
    }

    /// Whether `user` may use the admin console.
    pub fn is_admin(&self, user: &str) -> bool {
        if !self.admin.users.is_empty() {
            return self.admin.users.iter().any(|u| u == user);
        }
        self.databases.iter().any(|(name, db)| {
            db.primary_endpoint(name)
                .is_ok_and(|e| e.user.as_deref() == Some(user))
        })
    }

    /// Checks what serde cannot: URLs parse, numbers are in range, TLS files come in pairs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_socket_addr("proxy.listen", &self.proxy.listen)?;
        parse_socket_addr("proxy.http_listen", &self.proxy.http_listen)?;
        if self.proxy.max_client_connections == 0 {
            return Err(ConfigError::invalid(
                "proxy.max_client_connections",
                "must be at least 1",
            ));
        }
        if self.proxy.max_message_bytes < 1024 {
            return Err(ConfigError::invalid(
                "proxy.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if self.proxy.tls_cert.is_some() != self.proxy.tls_key.is_some() {
            return Err(ConfigError::invalid(
                "proxy.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        if let Some(directory) = &self.proxy.unix_socket_dir {
            if !directory.starts_with('/') {
                return Err(ConfigError::invalid(
                    "proxy.unix_socket_dir",
                    "must be an absolute path",
                ));
            }
            if self.proxy.reuse_port {
                return Err(ConfigError::invalid(
                    "proxy.unix_socket_dir",
                    "cannot be shared between processes: not with proxy.reuse_port",
                ));
            }
        }
        if self.pool.size == 0 {
            return Err(ConfigError::invalid("pool.size", "must be at least 1"));
        }
        if self.pool.min_idle > self.pool.size {
            return Err(ConfigError::invalid(
                "pool.min_idle",
                "must not exceed pool.size",
            ));
        }
        if self.pool.max_prepared_statements == 0 {
            return Err(ConfigError::invalid(
                "pool.max_prepared_statements",
                "must be at least 1",
            ));
        }
        if self.pool.checkout_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "pool.checkout_timeout_ms",
                "must be at least 1",
            ));
        }
        for (name, db) in &self.databases {
            if db.primary.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("databases.{name}.primary"),
                    "is required",
                ));
            }
            db.primary_endpoint(name)?;
            db.replica_endpoints(name)?;
            if db.pool_size == Some(0) {
                return Err(ConfigError::invalid(
                    format!("databases.{name}.pool_size"),
                    "must be at least 1",
                ));
            }
        }
        self.tenancy.validate()?;
        self.advise.validate()?;
        super::protection::validate(&self.protection, &self.limits)?;
        self.cache.validate()?;
        self.validate_auth()
    }
}

fn parse_socket_addr(key: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::invalid(key, format!("expected HOST:PORT, got {text:?}")))
}
