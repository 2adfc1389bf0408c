//! Pools by (database, role, backend), created on first use.
//!
//! The map is behind a std `RwLock` that is only ever held to clone an `Arc`, never
//! across an `.await`. A reload replaces entries whose settings changed; sessions that
//! still hold the old pool finish their transactions on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bb8::RunError;

use super::fair_gate::{FairGate, GatePermit, GatePolicy, GateRefusal, WaitingTotal};
use super::warm_stack::{Lent, WarmStack};
use super::{PoolError, PooledServer, ServerConnector, ServerTarget};

/// Which pool: the database clients name, the role they log in as, and the backend
/// (0 = primary, 1.. = replicas in configuration order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    pub backend: usize,
}

/// Sizing of one pool, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: u32,
    pub min_idle: u32,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub health_check_idle: Duration,
    /// Turns between groups of waiting clients, and load shedding; `None` (fairness
    /// off, no `max_waiting`) leaves waiting to bb8's own FIFO line.
    pub gate: Option<GatePolicy>,
}

/// Counters kept per pool for the admin console and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub checkouts: AtomicU64,
    pub checkout_wait_us: AtomicU64,
    pub checkout_timeouts: AtomicU64,
    pub connect_errors: AtomicU64,
}

/// One bb8 pool plus what pgwarden learned about its server.
pub struct ServerPool {
    pub key: PoolKey,
    pub target: Arc<ServerTarget>,
    pub settings: PoolSettings,
    pool: bb8::Pool<ServerConnector>,
    /// Connections returned most recently, parked in front of bb8 (`warm_stack.rs`).
    warm: Arc<WarmStack>,
    /// The fair waiting line: one permit per server connection.
    gate: Option<Arc<FairGate>>,
    /// `ParameterStatus` of the first server connection, replayed to logging-in clients.
    /// Learned from the first connection checked out. A burst of logins on a cold
    /// pool waits for one checkout instead of each taking a connection to read them.
    server_parameters: tokio::sync::OnceCell<Vec<(String, String)>>,
    pub stats: PoolStats,
    /// Statement definitions some server of this pool has prepared successfully; a
    /// client's `Parse` of one of them is answered without taking a server.
    known_statements: moka::sync::Cache<u64, ()>,
    /// The most recent failure to open a server connection, so a client that waited
    /// in vain learns why (server down) instead of just "timed out".
    last_connect_error: Arc<Mutex<Option<ConnectFailure>>>,
}

/// The last failure to open a server connection.
#[derive(Debug, Clone)]
struct ConnectFailure {
    at: Instant,
    message: String,
    /// The server refused this role's login (it is up; other roles may log in).
    login_rejected: bool,
}

impl ConnectFailure {
    fn to_error(&self) -> PoolError {
        if self.login_rejected {
            PoolError::LoginRejected(self.message.clone())
        } else {
            PoolError::Unreachable(self.message.clone())
        }
    }
}

/// Receives bb8's errors (which it does not hand to the waiting client): failures to
/// open a connection, and failed checks of pooled ones. Only the former say anything
/// about the server; a pooled connection that went bad (terminated by an admin, cut by
/// a firewall) is simply replaced, so it must not make clients fail fast.
#[derive(Debug, Clone)]
struct ConnectErrorSink(Arc<Mutex<Option<ConnectFailure>>>);

impl bb8::ErrorSink<PoolError> for ConnectErrorSink {
    fn sink(&self, error: PoolError) {
        if let PoolError::Unhealthy(reason) = &error {
            tracing::info!(reason = %reason, "closed a pooled server connection that went bad");
            return;
        }
        tracing::warn!(error = %error, "server connection failed");
        let login_rejected = matches!(&error, PoolError::Rejected { code, .. } if code.starts_with("28") || code == "3D000")
            || matches!(&error, PoolError::Passthrough { .. });
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(ConnectFailure {
            at: Instant::now(),
            message: error.to_string(),
            login_rejected,
        });
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(self.clone())
    }
}

impl ServerPool {
    fn new(
        key: PoolKey,
        target: ServerTarget,
        settings: PoolSettings,
        total: Arc<WaitingTotal>,
    ) -> ServerPool {
        let target = Arc::new(target);
        let connector = ServerConnector {
            target: target.clone(),
            connect_timeout: settings.connect_timeout,
            health_check_idle: settings.health_check_idle,
        };
        let last_connect_error = Arc::new(Mutex::new(None));
        let pool = bb8::Pool::builder()
            .max_size(settings.size)
            .min_idle(Some(settings.min_idle).filter(|n| *n > 0))
            .connection_timeout(settings.checkout_timeout)
            .idle_timeout(Some(settings.idle_timeout))
            .max_lifetime(Some(settings.max_lifetime))
            .test_on_check_out(true)
            .retry_connection(false)
            .error_sink(Box::new(ConnectErrorSink(last_connect_error.clone())))
            .build_unchecked(connector);
        let gate = settings
            .gate
            .clone()
            .map(|policy| FairGate::new(settings.size, settings.checkout_timeout, policy, total));
        let warm = WarmStack::new(
            settings.size,
            settings.health_check_idle,
            settings.max_lifetime,
        );
        ServerPool {
            key,
            target,
            settings,
            pool,
            warm,
            gate,
            server_parameters: tokio::sync::OnceCell::new(),
            stats: PoolStats::default(),
            known_statements: moka::sync::Cache::new(100_000),
            last_connect_error,
        }
    }

    /// Checks a server connection out, waiting at most the configured checkout timeout.
    pub async fn checkout(&self) -> Result<PooledServer, PoolError> {
        self.checkout_as("").await
    }

    /// A connection parked warm, at once, when one is there and the gate has a free
    /// place: the plain path's checkout, without a future. `None`: use [`checkout_as`].
    ///
    /// [`checkout_as`]: ServerPool::checkout_as
    pub fn checkout_now(&self) -> Option<PooledServer> {
        if self.warm.len() == 0 {
            return None;
        }
        let permit = match &self.gate {
            None => None,
            Some(gate) => Some(gate.try_acquire()?),
        };
        let connection = self.warm.take()?;
        Some(self.lend(connection, permit))
    }

    /// A connection handed to a client: counted, and parked warm when it comes back.
    fn lend(&self, connection: Lent, permit: Option<GatePermit>) -> PooledServer {
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        PooledServer::new(connection, self.warm.clone(), permit)
    }

    /// Checks a server connection out for a client of `group`: when the pool is
    /// saturated, groups are served in turn (see `fair_gate`).
    pub async fn checkout_as(&self, group: &str) -> Result<PooledServer, PoolError> {
        let started = Instant::now();
        let deadline = started + self.settings.checkout_timeout;
        let permit = match &self.gate {
            None => None,
            Some(gate) => match gate.try_acquire() {
                Some(permit) => Some(permit),
                None => match gate.acquire(group, deadline).await {
                    Ok(permit) => Some(permit),
                    Err(GateRefusal::Overloaded(reason)) => {
                        return Err(PoolError::Overloaded(reason))
                    }
                    Err(GateRefusal::TimedOut) => return Err(self.timed_out(started)),
                },
            },
        };
        // A client that waited at the gate usually got the permit of one that just
        // gave its server back to the warm stack: that server is here, and the bb8
        // checkout's large future (boxed) is not needed.
        if let Some(connection) = self.warm.take() {
            return Ok(self.lend(connection, permit));
        }
        Box::pin(self.checkout_with(permit, started, deadline)).await
    }

    fn timed_out(&self, started: Instant) -> PoolError {
        self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .checkout_wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(failure) = self.recent_connect_error(started, self.settings.checkout_timeout) {
            return failure.to_error();
        }
        PoolError::CheckoutTimeout(self.settings.checkout_timeout.as_millis() as u64)
    }

    /// With a place in the pool: the connection itself (idle, or opened now).
    async fn checkout_with(
        &self,
        permit: Option<GatePermit>,
        started: Instant,
        deadline: Instant,
    ) -> Result<PooledServer, PoolError> {
        // A connect error from before this checkout is not reason enough to fail it: the
        // server may be back (a restart just finished). Only an attempt failing while
        // this client waits fails it fast (below).
        // While this checkout is in bb8, returned connections go to bb8, not the warm
        // stack; one parked just before is taken here.
        let _in_bb8 = self.warm.enter_bb8();
        if let Some(connection) = self.warm.take() {
            return Ok(self.lend(connection, permit));
        }
        let waiting = self.pool.get_owned();
        tokio::pin!(waiting);
        // Fast path: an idle connection is there; no timer needed.
        let ready = futures_util::FutureExt::now_or_never(&mut waiting);
        let result = if let Some(result) = ready {
            result
        } else {
            loop {
                tokio::select! {
                    result = &mut waiting => break result,
                    _ = tokio::time::sleep_until(deadline.into()) => break Err(RunError::TimedOut),
                    _ = tokio::time::sleep(Duration::from_millis(25)) => {
                        // bb8 keeps connect errors to itself; if opening a connection failed
                        // while we wait and none exists, the server is down: say so now.
                        if self.pool.state().connections == 0 {
                            if let Some(failure) = self.connect_error_since(started) {
                                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                                return Err(failure.to_error());
                            }
                        }
                    }
                }
            }
        };
        self.stats
            .checkout_wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(server) => {
                if self.server_parameters.get().is_none() {
                    let _ = self.server_parameters.set(server.parameters.clone());
                }
                Ok(self.lend(server, permit))
            }
            Err(RunError::TimedOut) => {
                self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(failure) =
                    self.recent_connect_error(started, self.settings.checkout_timeout)
                {
                    return Err(failure.to_error());
                }
                Err(PoolError::CheckoutTimeout(
                    self.settings.checkout_timeout.as_millis() as u64,
                ))
            }
            Err(RunError::User(e)) => {
                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Server parameters to announce to clients; checks out a connection once to learn them.
    pub async fn server_parameters(&self) -> Result<Vec<(String, String)>, PoolError> {
        self.server_parameters
            .get_or_try_init(|| async {
                let server = self.checkout().await?;
                Ok(server.parameters.clone())
            })
            .await
            .cloned()
    }

    fn connect_error_since(&self, since: Instant) -> Option<ConnectFailure> {
        let last = self
            .last_connect_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.as_ref().filter(|f| f.at >= since).cloned()
    }

    fn recent_connect_error(&self, now: Instant, window: Duration) -> Option<ConnectFailure> {
        let last = self
            .last_connect_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|f| now.saturating_duration_since(f.at) <= window || f.at >= now)
            .cloned()
    }

    pub fn remember_statement(&self, id: u64) {
        self.known_statements.insert(id, ());
    }

    pub fn knows_statement(&self, id: u64) -> bool {
        self.known_statements.contains_key(&id)
    }

    /// (connections open, idle) right now.
    pub fn state(&self) -> (u32, u32) {
        let state = self.pool.state();
        let warm = u32::try_from(self.warm.len()).unwrap_or(u32::MAX);
        (state.connections, state.idle_connections + warm)
    }

    /// Waiting clients per group, for `SHOW POOLS` and `/api/pools`.
    pub fn waiting_by_group(&self) -> Vec<(String, usize)> {
        self.gate
            .as_ref()
            .map(|g| g.waiting_by_group())
            .unwrap_or_default()
    }

    /// Clients waiting for a server connection of this pool.
    pub fn waiting(&self) -> usize {
        self.gate.as_ref().map_or(0, |g| g.waiting())
    }

    /// At shutdown: says `Terminate` to every idle server connection and closes it, so
    /// PostgreSQL logs a clean disconnection rather than an unexpected EOF.
    pub async fn terminate_idle(&self) {
        self.warm.drain();
        for _ in 0..self.settings.size {
            if self.pool.state().idle_connections == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), self.pool.get()).await {
                Ok(Ok(mut server)) => {
                    let _ = tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::io::AsyncWriteExt::write_all(&mut server.stream, b"X\0\0\0\x04"),
                    )
                    .await;
                    server.mark_broken();
                }
                _ => break,
            }
        }
    }

    /// Closes the connections idle in this pool right now.
    pub async fn close_idle(&self) {
        self.warm.drain();
        for _ in 0..self.settings.size {
            if self.pool.state().idle_connections == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), self.pool.get()).await {
                Ok(Ok(mut server)) => server.mark_broken(),
                _ => break,
            }
        }
    }
}

/// All pools of the process.
#[derive(Default)]
pub struct PoolRegistry {
    pools: RwLock<HashMap<PoolKey, Arc<ServerPool>>>,
    /// Databases a client is dropping or renaming right now: no new checkouts.
    draining: Mutex<std::collections::HashSet<String>>,
    /// `draining`'s length, read without the lock by every checkout (almost always 0).
    draining_count: AtomicUsize,
    /// Clients waiting in every pool's gate, and load-shedding counts.
    pub waiting: Arc<WaitingTotal>,
    /// Moves each time the pools are forgotten ([`PoolRegistry::clear`]), so a session
    /// that kept a pool at hand knows to look it up again.
    generation: AtomicU64,
}

impl PoolRegistry {
    /// The pool for `key`, made by `make` on first use.
    pub fn get_or_create(
        &self,
        key: &PoolKey,
        make: impl FnOnce() -> (ServerTarget, PoolSettings),
    ) -> Arc<ServerPool> {
        if let Some(pool) = self.read().get(key) {
            return pool.clone();
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                let (target, settings) = make();
                Arc::new(ServerPool::new(
                    key.clone(),
                    target,
                    settings,
                    self.waiting.clone(),
                ))
            })
            .clone()
    }

    /// Forgets every pool (after a reload changed servers or sizes). Sessions holding a
    /// pool keep using it until they are done; its connections close when it is dropped.
    pub fn clear(&self) {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools.clear();
        // Moved after the pools are gone: whoever read the old generation and then
        // found an old pool is told again on its next look.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Which set of pools is current (see [`PoolRegistry::clear`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Before `DROP DATABASE name` / `ALTER DATABASE name RENAME ...`: refuses new
    /// checkouts for `name` and closes its idle server connections, which PostgreSQL
    /// would otherwise count as "other users" of the database.
    pub async fn start_draining(&self, database: &str) {
        {
            let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
            draining.insert(database.to_string());
            self.draining_count.store(draining.len(), Ordering::Release);
        }
        let pools: Vec<_> = self
            .read()
            .values()
            .filter(|p| p.key.database == database)
            .cloned()
            .collect();
        for pool in pools {
            pool.close_idle().await;
        }
    }

    /// The statement that dropped or renamed `database` has finished.
    pub fn stop_draining(&self, database: &str) {
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.remove(database);
        self.draining_count.store(draining.len(), Ordering::Release);
    }

    pub fn is_draining(&self, database: &str) -> bool {
        if self.draining_count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.contains(database)
    }

    /// At shutdown, once no client holds a server connection: closes every idle one
    /// with `Terminate`.
    pub async fn terminate_all(&self) {
        for pool in self.all() {
            pool.terminate_idle().await;
        }
    }

    /// A snapshot of every pool, for the admin console and metrics.
    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        let mut pools: Vec<_> = self.read().values().cloned().collect();
        pools.sort_by(|a, b| {
            (&a.key.database, &a.key.user, a.key.backend).cmp(&(
                &b.key.database,
                &b.key.user,
                b.key.backend,
            ))
        });
        pools
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PoolKey, Arc<ServerPool>>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner())
    }
}
