//! The process-wide state every session shares: the current configuration (swapped
//! atomically on reload), client credentials, the `auth_query` lookups and the
//! pass-through secrets of the roles they serve, TLS, the pool registry and the cancel
//! registry. Sessions read a snapshot (`Arc<Config>`) once per decision; nothing here
//! is locked across an `.await`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config, ConfigError};
use crate::pool::scram_passthrough::PassthroughStore;
use crate::pool::{PoolKey, PoolRegistry, PoolSettings, ServerPool, ServerTarget};
use crate::route::{Routing, SharedPositions};
use crate::server::auth_query::AuthQuery;
use crate::server::cancel::CancelRegistry;
use crate::server::credentials::Credentials;
use crate::server::SessionError;
use crate::stats::StatsRecorder;
use crate::tenant::{TenantGuard, Violations};

/// Where a reload reads configuration from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The TOML file (if any) plus `PGWARDEN_*` variables, as at start-up.
    FileAndEnvironment(Option<PathBuf>),
    /// Given in memory by an embedding program: a reload keeps it as it is.
    Fixed,
}

pub struct Runtime {
    config: ArcSwap<Config>,
    /// `cache.mode = "hinted"` with no `cache.rules`: a statement without the cache
    /// hint is passed over on this flag, without loading `config`.
    cache_hints_only: AtomicBool,
    credentials: ArcSwap<Credentials>,
    /// Lookups of roles not in the configuration; `None` when `auth.auth_user` is unset.
    auth_query: ArcSwapOption<AuthQuery>,
    /// What `auth_query` roles' clients proved, for their pools to log in with. Kept
    /// across reloads: it belongs to the roles, not to the configuration.
    pub passthrough: PassthroughStore,
    tls: ArcSwapOption<TlsAcceptor>,
    source: ConfigSource,
    pub pools: PoolRegistry,
    pub cancels: Arc<CancelRegistry>,
    routing: ArcSwap<Routing>,
    positions: Arc<SharedPositions>,
    tenancy: ArcSwap<TenantGuard>,
    /// Tenant guard violations; kept across reloads.
    pub violations: Arc<Violations>,
    pub stats: StatsRecorder,
    /// Index and N+1 advisories.
    pub advisors: Arc<crate::advise::Advisors>,
    /// Quarantined fingerprints and `[[limits]]` rules.
    pub protection: crate::protect::Protection,
    /// The result cache (see `cache/`); built at start, kept across reloads.
    pub cache: Arc<crate::cache::ResultCache>,
    /// Each database's `pg_catalog` function names (`server/opaque_code.rs`).
    pub session_safe_functions: crate::server::opaque_code::SessionSafeRegistry,
    /// `PAUSE` from the admin console: new transactions wait while true.
    paused: tokio::sync::watch::Sender<bool>,
    /// `paused` again, read without the watch channel's lock by every checkout.
    paused_now: AtomicBool,
    /// Graceful shutdown: the phase `/readyz`, the listener and the sessions observe.
    pub shutdown: crate::server::shutdown::Shutdown,
    pub started_at: std::time::SystemTime,
    clients: AtomicUsize,
    /// The most clients connected at once since [`Runtime::take_client_peak`] last
    /// ran: a burst shorter than the memory trimmer's tick still counts.
    clients_peak: AtomicUsize,
}

/// Counts a connected client; the count drops when this is dropped.
pub struct ClientSlot {
    runtime: Arc<Runtime>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.runtime.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the shared state and starts background tasks (lag monitors); call it
    /// inside a tokio runtime.
    pub fn new(config: Config, source: ConfigSource) -> Result<Arc<Runtime>, ConfigError> {
        let tls = build_tls(&config)?;
        if !config.pool.pin_session_state {
            tracing::warn!("pool.pin_session_state = false: temp tables, LISTEN, SQL PREPARE, advisory locks and WITH HOLD cursors created under transaction pooling stay on shared server connections, where other clients see them");
        }
        let positions = Arc::new(SharedPositions::default());
        let routing = Routing::start(&config, positions.clone());
        let violations = Arc::new(Violations::default());
        let tenancy = TenantGuard::start(&config, violations.clone());
        crate::admin::metrics::install();
        let advisors = Arc::new(crate::advise::Advisors::default());
        let memory = Arc::new(crate::stats::MemoryGauges::default());
        let detector = crate::advise::n_plus_one::Detector::new(
            config.advise.n_plus_one.clone(),
            advisors.n_plus_one.clone(),
            memory.clone(),
        );
        let stats = StatsRecorder::start_observed(
            &crate::config::StatsConfig {
                max_fingerprints: config.stats.max_fingerprints.max(10),
                ..config.stats.clone()
            },
            crate::config::SessionThreads::on_this_machine(config.proxy.worker_threads)
                .0
                .threads(),
            memory,
            Some(Box::new(detector)),
        );
        let protection = crate::protect::Protection::new(&config);
        let cache = crate::cache::ResultCache::start(&config);
        Ok(Arc::new(Runtime {
            protection,
            cache,
            session_safe_functions: Default::default(),
            routing: ArcSwap::from_pointee(routing),
            positions,
            tenancy: ArcSwap::from_pointee(tenancy),
            violations,
            stats,
            advisors,
            paused: tokio::sync::watch::Sender::new(false),
            paused_now: AtomicBool::new(false),
            shutdown: Default::default(),
            started_at: std::time::SystemTime::now(),
            credentials: ArcSwap::from_pointee(Credentials::from_config(&config)),
            auth_query: ArcSwapOption::from(AuthQuery::from_config(&config).map(Arc::new)),
            passthrough: PassthroughStore::default(),
            cache_hints_only: AtomicBool::new(cache_hints_only(&config)),
            config: ArcSwap::from_pointee(config),
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            source,
            pools: PoolRegistry::default(),
            cancels: Arc::new(CancelRegistry::default()),
            clients: AtomicUsize::new(0),
            clients_peak: AtomicUsize::new(0),
        }))
    }

    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    pub fn tenancy(&self) -> Arc<TenantGuard> {
        self.tenancy.load_full()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the result cache looks only at statements with its hint
    /// (`cache.mode = "hinted"` and no `cache.rules`).
    pub fn cache_hints_only(&self) -> bool {
        self.cache_hints_only.load(Ordering::Relaxed)
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.load_full()
    }

    /// The `auth_query` lookups, when `auth.auth_user` is set.
    pub fn auth_query(&self) -> Option<Arc<AuthQuery>> {
        self.auth_query.load_full()
    }

    pub fn tls(&self) -> Option<Arc<TlsAcceptor>> {
        self.tls.load_full()
    }

    /// `PAUSE` (true) and `RESUME` (false) from the admin console.
    pub fn set_paused(&self, paused: bool) {
        self.paused_now.store(paused, Ordering::Release);
        self.paused.send_replace(paused);
    }

    /// Whether new transactions must wait ([`Runtime::wait_unpaused`]).
    pub fn is_paused(&self) -> bool {
        self.paused_now.load(Ordering::Acquire)
    }

    /// Waits while the admin console has paused the proxy.
    pub async fn wait_unpaused(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// The most clients connected at once since the last call (at least as many as
    /// now), and starts the next period from now.
    pub fn take_client_peak(&self) -> usize {
        let now = self.client_count();
        self.clients_peak.swap(now, Ordering::Relaxed).max(now)
    }

    /// Admits one more client, or refuses past `proxy.max_client_connections`.
    pub fn admit_client(self: &Arc<Self>) -> Result<ClientSlot, SessionError> {
        let max = self.config.load().proxy.max_client_connections;
        let previous = self.clients.fetch_add(1, Ordering::Relaxed);
        self.clients_peak.fetch_max(previous + 1, Ordering::Relaxed);
        let slot = ClientSlot {
            runtime: self.clone(),
        };
        if previous >= max {
            return Err(SessionError::TooManyClients(max));
        }
        Ok(slot)
    }

    /// Re-reads the configuration file and environment and swaps it in. Pools whose
    /// settings changed are rebuilt on next use; transactions in flight finish on the
    /// pool they started on.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = match &self.source {
            ConfigSource::FileAndEnvironment(path) => config::load(path.as_deref())?,
            ConfigSource::Fixed => {
                tracing::info!("configuration was given in memory; nothing to reload");
                return Ok(());
            }
        };
        let tls = build_tls(&fresh)?;
        let old = self.config.load_full();
        let pools_changed = serde_json::to_value(&old.databases).ok()
            != serde_json::to_value(&fresh.databases).ok()
            || serde_json::to_value(&old.pool).ok() != serde_json::to_value(&fresh.pool).ok()
            || serde_json::to_value(&old.auth).ok() != serde_json::to_value(&fresh.auth).ok();
        self.credentials
            .store(Arc::new(Credentials::from_config(&fresh)));
        self.tls.store(tls.map(Arc::new));
        let routing_changed = pools_changed
            || serde_json::to_value(&old.routing).ok() != serde_json::to_value(&fresh.routing).ok()
            || serde_json::to_value(&old.ryw).ok() != serde_json::to_value(&fresh.ryw).ok();
        if routing_changed {
            self.routing
                .store(Arc::new(Routing::start(&fresh, self.positions.clone())));
        }
        let tenancy_changed = pools_changed
            || serde_json::to_value(&old.tenancy).ok() != serde_json::to_value(&fresh.tenancy).ok();
        if tenancy_changed {
            self.tenancy.store(Arc::new(TenantGuard::start(
                &fresh,
                self.violations.clone(),
            )));
        }
        if pools_changed {
            // Its connections and cache belong to the old auth/databases settings.
            self.auth_query
                .store(AuthQuery::from_config(&fresh).map(Arc::new));
        }
        self.protection.reload(&fresh);
        self.cache_hints_only
            .store(cache_hints_only(&fresh), Ordering::Relaxed);
        self.config.store(Arc::new(fresh));
        if pools_changed {
            self.pools.clear();
        }
        tracing::info!(pools_rebuilt = pools_changed, "configuration reloaded");
        Ok(())
    }

    /// The pool serving `user` on `database`'s backend number `backend`
    /// (0 = primary, n = replica n).
    pub fn pool(
        &self,
        database: &str,
        user: &str,
        backend: usize,
    ) -> Result<Arc<ServerPool>, SessionError> {
        let config = self.config.load();
        let db = config
            .databases
            .get(database)
            .ok_or_else(|| SessionError::UnknownDatabase(database.to_string()))?;
        let key = PoolKey {
            database: database.to_string(),
            user: user.to_string(),
            backend,
        };
        Ok(self.pools.get_or_create(&key, || {
            let endpoint = if backend == 0 {
                db.primary_endpoint(database)
            } else {
                db.replica_endpoints(database)
                    .map(|mut list| list.swap_remove((backend - 1).min(list.len() - 1)))
            }
            .expect("validated at load");
            let password = config.server_password(user, Some(&endpoint));
            // A role without a configured password, served through auth_query: its
            // pools log in with what its clients proved.
            let passthrough = (password.is_none() && config.auth.auth_query_enabled())
                .then(|| self.passthrough.slot(database, user));
            let address = endpoint.address();
            let target = ServerTarget {
                shared_address: Arc::from(address.as_str()),
                address,
                user: user.to_string(),
                password,
                passthrough,
                keepalive: crate::server::keepalive::settings(&config.proxy),
                database: db
                    .server_database
                    .clone()
                    .or(endpoint.database.clone())
                    .unwrap_or_else(|| database.to_string()),
            };
            let pool = &config.pool;
            let settings = PoolSettings {
                size: config.pool_size_for(database),
                min_idle: pool.min_idle,
                checkout_timeout: pool.checkout_timeout(),
                connect_timeout: pool.connect_timeout(),
                idle_timeout: Duration::from_millis(pool.idle_timeout_ms.max(1_000)),
                max_lifetime: Duration::from_millis(pool.max_lifetime_ms.max(1_000)),
                health_check_idle: Duration::from_millis(pool.health_check_idle_ms),
                // Fairness off and no bound on waiting: bb8's own FIFO line, no gate.
                gate: (pool.fairness != crate::config::Fairness::Off || pool.max_waiting > 0).then(
                    || crate::pool::GatePolicy {
                        max_waiting: pool.max_waiting,
                        weights: pool.fairness_weights.clone(),
                    },
                ),
            };
            (target, settings)
        }))
    }
}

fn build_tls(config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
    match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(cert), Some(key)) => crate::server::tls::acceptor(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// `cache.mode = "hinted"` without `cache.rules`.
fn cache_hints_only(config: &Config) -> bool {
    config.cache.mode == crate::config::CacheMode::Hinted && config.cache.rules.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_peak_counts_a_burst_that_came_and_went() {
        let runtime = Runtime::new(Config::default(), ConfigSource::Fixed).unwrap();
        let burst: Vec<_> = (0..3).map(|_| runtime.admit_client().unwrap()).collect();
        let stays = runtime.admit_client().unwrap();
        drop(burst);
        assert_eq!(runtime.client_count(), 1);
        assert_eq!(runtime.take_client_peak(), 4, "the burst, never sampled");
        // The next period starts from the clients connected now.
        assert_eq!(runtime.take_client_peak(), 1);
        drop(stays);
        assert_eq!(runtime.take_client_peak(), 1);
        assert_eq!(runtime.take_client_peak(), 0);
    }
}
