//! The session's side of routing: which backend a message needs, read-your-writes
//! bookkeeping, the values of proxy-level settings (`SET pgwarden.route`,
//! `pgwarden.session_key`; how they are recognised is `proxy_settings.rs`), and the
//! invisible retry of an autocommit read whose replica failed before answering.
//! Decisions come from the `route` room; this file applies them to one client.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::routing_class::ParseClass;
use super::session::Session;
use super::SessionError;
use crate::config::{Fallback, RywScope};
use crate::pool::ServerPool;
use crate::protocol::tag::TransactionStatus;
use crate::route::{Hint, Lsn, ReplicaChoice, Routing, StatementClass, Topology};

/// `SET pgwarden.route = ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    Auto,
    Primary,
    Replica,
}

fn route_mode(value: &str) -> Option<RouteMode> {
    match value.to_ascii_lowercase().as_str() {
        "primary" => Some(RouteMode::Primary),
        "replica" => Some(RouteMode::Replica),
        "auto" | "default" | "" => Some(RouteMode::Auto),
        _ => None,
    }
}

/// Per-client routing state; present only when the database has replicas.
pub struct SessionRouting {
    pub routing: Arc<Routing>,
    pub topology: Arc<Topology>,
    pub mode: RouteMode,
    pub scope: RywScope,
    pub fallback: Fallback,
    pub max_wait: Duration,
    /// `pgwarden.session_key` or the tenant, for shared read-your-writes.
    pub shared_key: Option<String>,
    pub session_key: Option<String>,
    pub tenant: Option<String>,
    /// Commit position of this connection's last write.
    pub last_write: Option<Lsn>,
    /// The current primary transaction wrote something.
    pub wrote: bool,
    /// Frames of the autocommit request in flight on a replica, until its first answer.
    pub retry_frames: super::retry_frames::RetryFrames,
    /// The frames of a request whose replica just failed, waiting to be retried.
    pub failed_frames: Vec<Bytes>,
    /// A replica that just failed this request.
    pub exclude: Option<usize>,
    /// The client's role is serializable by default on the server (`ALTER ROLE` or
    /// `ALTER DATABASE`), as a replica's refusal showed (`route/replica_refusals.rs`):
    /// its reads go to the primary unless the client set its own isolation.
    pub serializable_role: bool,
    /// The failed request was a replica's refusal (SQLSTATE 0A000: serializable mode,
    /// an unlogged table), not a fault: retried on the primary, and the replica stays
    /// healthy.
    pub refused_by_replica: bool,
    /// The last unnamed `Parse` classified, with its text (`routing_class.rs`).
    pub(super) last_parse: Option<ParseClass>,
    /// The client's unnamed statement writes nothing (`routing_class.rs`).
    pub(super) unnamed_writes_nothing: bool,
    /// The replica pools this session took connections from.
    pub(super) replica_pools: ReplicaPools,
}

/// The pools of a session's replicas by backend number, kept while the registry's
/// pools stay the same: looking one up builds its key (two strings) and searches the
/// registry, about 1,000 instructions per transaction routed to a replica. Kept weakly:
/// an idle session does not keep a pool the registry has let go of (and its
/// connections) alive.
#[derive(Default)]
pub(super) struct ReplicaPools {
    generation: u64,
    pools: Vec<Weak<ServerPool>>,
}

impl ReplicaPools {
    fn get(&self, generation: u64, backend: usize) -> Option<Arc<ServerPool>> {
        if self.generation != generation {
            return None;
        }
        self.pools.get(backend)?.upgrade()
    }

    fn keep(&mut self, generation: u64, backend: usize, pool: &Arc<ServerPool>) {
        if self.generation != generation {
            self.generation = generation;
            self.pools.clear();
        }
        if self.pools.len() <= backend {
            self.pools.resize(backend + 1, Weak::new());
        }
        self.pools[backend] = Arc::downgrade(pool);
    }
}

impl SessionRouting {
    pub fn new(
        routing: Arc<Routing>,
        topology: Arc<Topology>,
        config: &crate::config::Config,
        options: &[(String, String)],
        user: &str,
    ) -> SessionRouting {
        let serializable_role = topology.serializable_roles.contains(user);
        let mut state = SessionRouting {
            routing,
            topology,
            mode: RouteMode::Auto,
            scope: config.ryw.scope,
            fallback: config.routing.fallback,
            max_wait: Duration::from_millis(config.ryw.max_wait_ms),
            shared_key: None,
            session_key: None,
            tenant: None,
            last_write: None,
            wrote: false,
            retry_frames: Default::default(),
            failed_frames: Vec::new(),
            exclude: None,
            serializable_role,
            refused_by_replica: false,
            last_parse: None,
            unnamed_writes_nothing: false,
            replica_pools: ReplicaPools::default(),
        };
        for (name, value) in options {
            state.apply_setting(name, value);
        }
        state
    }

    /// Applies a `pgwarden.*` setting; false when the name or value is unknown.
    pub fn apply_setting(&mut self, name: &str, value: &str) -> bool {
        match name {
            "pgwarden.route" => match route_mode(value) {
                Some(mode) => self.mode = mode,
                None => return false,
            },
            "pgwarden.session_key" => {
                self.session_key = Some(value.to_string()).filter(|v| !v.is_empty())
            }
            "pgwarden.tenant_id" => self.tenant = Some(value.to_string()).filter(|v| !v.is_empty()),
            _ => return false,
        }
        self.shared_key = match self.scope {
            RywScope::SessionKey => self.session_key.clone(),
            RywScope::Tenant => self.tenant.clone().map(|t| format!("tenant:{t}")),
            _ => None,
        };
        true
    }

    /// Whether [`Self::apply_setting`] would take this setting.
    pub fn accepts_setting(name: &str, value: &str) -> bool {
        match name {
            "pgwarden.route" => route_mode(value).is_some(),
            "pgwarden.session_key" | "pgwarden.tenant_id" => true,
            _ => false,
        }
    }

    /// The WAL position a replica must have replayed before serving this client.
    pub(super) fn required_lsn(&self) -> Option<Lsn> {
        if self.scope == RywScope::Off {
            return None;
        }
        let shared = self
            .shared_key
            .as_ref()
            .and_then(|key| self.routing.positions.get(&self.topology.database, key));
        match (self.last_write, shared) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn forget_frames(&mut self) {
        self.retry_frames.forget();
    }
}

impl Session {
    /// Picks the backend for a message when no server is attached (0 = primary).
    pub(super) async fn choose_backend(
        &mut self,
        message_tag: u8,
        frame: &[u8],
    ) -> Result<usize, SessionError> {
        if self.routing.is_none() {
            return Ok(0);
        }
        let (class, hint) = self.classify_message(message_tag, frame);
        let Some(state) = self.routing.as_ref() else {
            return Ok(0);
        };
        if state.refused_by_replica {
            return Ok(0); // the retry of a read a replica refused
        }
        let serializable = || {
            self.settings
                .serializable_by_default(state.serializable_role)
        };
        let wants_replica = match (hint, state.mode, &class) {
            (Some(Hint::Primary), _, _) | (None, RouteMode::Primary, _) => false,
            (Some(Hint::Replica), _, _) | (None, RouteMode::Replica, _) => true,
            (_, _, StatementClass::Read) => {
                !serializable() && !self.refused_before(message_tag, frame)
            }
            (_, _, StatementClass::Begin { read_only }) => *read_only && !serializable(),
            _ => false,
        };
        if !wants_replica {
            return Ok(0);
        }
        let ignore_ryw = hint == Some(Hint::Replica) || state.mode == RouteMode::Replica;
        let min_lsn = if ignore_ryw {
            None
        } else {
            state.required_lsn()
        };
        let deadline = Instant::now() + state.max_wait;
        loop {
            let state = self.routing.as_ref().expect("checked above");
            match state
                .topology
                .pick_replica(min_lsn, state.routing.limits, state.exclude)
            {
                ReplicaChoice::Replica(index) => return Ok(index),
                ReplicaChoice::BehindWrites if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ReplicaChoice::BehindWrites => return Ok(0),
                ReplicaChoice::NoneHealthy => {
                    return match state.fallback {
                        Fallback::Primary => Ok(0),
                        Fallback::Error => Err(SessionError::NoReplica),
                    };
                }
            }
        }
    }

    /// Notes what a message forwarded to the attached server does, for
    /// read-your-writes and retries.
    pub(super) fn note_forwarded(&mut self, message_tag: u8, frame: &Bytes) {
        let backend_index = self.backend;
        let status = self.status;
        if self.routing.is_none() {
            return;
        }
        if self.forwarded_may_write(message_tag, frame, backend_index == 0) {
            if let Some(state) = self.routing.as_mut() {
                state.wrote = true;
            }
        }
        if backend_index != 0 && status == TransactionStatus::Idle {
            if let Some(state) = self.routing.as_mut() {
                state.retry_frames.remember(frame);
            }
        }
    }

    /// A replica refused this client's work as serializable while the session set no
    /// isolation of its own: the role's (or database's) default is serializable. Its
    /// reads go to the primary from now on, and for a while those of its next
    /// sessions too (`route/replica_refusals.rs`).
    pub(super) fn learn_serializable_role(&mut self) {
        let user = &self.identity.user;
        let Some(state) = self.routing.as_mut() else {
            return;
        };
        if !state.serializable_role {
            state.serializable_role = true;
            state.topology.serializable_roles.learn(user);
            tracing::info!(%user, database = %state.topology.database,
                "a replica refused this role's reads as serializable (its default_transaction_isolation, set by ALTER ROLE or ALTER DATABASE): they go to the primary");
        }
    }

    /// The pool of replica `backend` (1 = the first), kept at hand between transactions.
    pub(super) fn replica_pool(&mut self, backend: usize) -> Result<Arc<ServerPool>, SessionError> {
        let generation = self.runtime.pools.generation();
        let kept = self
            .routing
            .as_ref()
            .and_then(|r| r.replica_pools.get(generation, backend));
        if let Some(pool) = kept {
            return Ok(pool);
        }
        let pool = self
            .runtime
            .pool(&self.identity.database, &self.identity.user, backend)?;
        if let Some(routing) = self.routing.as_mut() {
            routing.replica_pools.keep(generation, backend, &pool);
        }
        Ok(pool)
    }

    /// Whether the transaction just ended wrote, and read-your-writes needs to know
    /// where (see [`Self::record_write_position`]).
    pub(super) fn write_position_pending(&self) -> bool {
        self.routing
            .as_ref()
            .is_some_and(|state| state.wrote && state.scope != RywScope::Off)
    }

    /// After a primary transaction that wrote: learn the commit position (and tell
    /// other instances, for shared scopes) before the server goes back to the pool.
    pub(super) async fn record_write_position(&mut self) {
        if !self.write_position_pending() {
            return;
        }
        let Some(state) = self.routing.as_mut() else {
            return;
        };
        state.wrote = false;
        let key = state.shared_key.clone();
        let database = state.topology.database.clone();
        let sql = match &key {
            Some(key) => format!(
                "SELECT pg_notify('{channel}', {payload} || '|' || pg_current_wal_insert_lsn()::text), pg_current_wal_insert_lsn()::text",
                channel = crate::route::ryw::CHANNEL,
                payload = crate::protocol::sql_quote::quote_literal(&format!("{database}|{key}")),
            ),
            None => "SELECT 1, pg_current_wal_insert_lsn()::text".to_string(),
        };
        let Some(server) = self.server.as_mut() else {
            return;
        };
        match server.query_values(&sql).await {
            Ok(values) => {
                let lsn = values
                    .get(1)
                    .and_then(|v| v.as_deref())
                    .and_then(crate::route::parse_lsn);
                if let (Some(lsn), Some(state)) = (lsn, self.routing.as_mut()) {
                    state.last_write = Some(state.last_write.map_or(lsn, |l| l.max(lsn)));
                    if let Some(key) = &key {
                        state.routing.positions.observe(&database, key, lsn);
                    }
                }
            }
            Err(e) => {
                server.mark_broken();
                // Unknown position: be safe and read from the primary for a while.
                if let Some(state) = self.routing.as_mut() {
                    state.last_write = Some(u64::MAX);
                }
                tracing::warn!(error = %e, "could not read the commit position");
            }
        }
    }

    /// The attached replica failed before answering: mark it, and run the request
    /// again on another backend. Returns false when no retry is possible.
    pub(super) async fn retry_elsewhere(&mut self) -> Result<bool, SessionError> {
        let failed = self.failed_backend.take();
        let Some(state) = self.routing.as_mut() else {
            return Ok(false);
        };
        let frames = std::mem::take(&mut state.failed_frames);
        // Taken here, so that no way out leaves it set; set again for the replay.
        let refused_by_replica = std::mem::take(&mut state.refused_by_replica);
        let Some(failed) = failed else {
            return Ok(false);
        };
        if failed == 0 || frames.is_empty() || state.exclude.is_some() {
            return Ok(false);
        }
        state.refused_by_replica = refused_by_replica;
        if refused_by_replica {
            // Not a fault of the replica: `choose_backend` sends the retry to the
            // primary, and the replica stays healthy.
            tracing::debug!(replica = %state.topology.backends[failed].address, "a replica refused a read (SQLSTATE 0A000); retrying it on the primary");
        } else {
            state.topology.mark_unhealthy(failed);
            state.topology.record_failure(failed);
            state.topology.backends[failed]
                .errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(replica = %state.topology.backends[failed].address, "retrying a read on another backend");
        }
        state.forget_frames();
        state.exclude = Some(failed);
        self.responses.clear();
        self.to_server.clear();
        self.status = TransactionStatus::Idle;
        let mut result = Ok(());
        for frame in frames {
            result = self.handle_client_message(frame).await;
            if result.is_err() {
                break;
            }
        }
        if let Some(state) = self.routing.as_mut() {
            state.exclude = None;
            state.refused_by_replica = false;
        }
        result.map(|_| true)
    }
}
