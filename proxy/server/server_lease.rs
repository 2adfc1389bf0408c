//! The session's lease on a server connection: check one out of the pool (with this
//! client's settings), give it back when the transaction is over, mark it broken when
//! it failed, and reset it when the client leaves.

use std::sync::Arc;
use std::time::Duration;

use super::opaque_code::{SessionSafeFunctions, SESSION_SAFE_FUNCTIONS_SQL};
use super::pump::shrink_if_idle;
use super::random_seed;
use super::session::Session;
use super::settings::UNKNOWN_SETTINGS;
use super::SessionError;
use crate::config::PoolMode;
use crate::pool::{PoolError, PooledServer};
use crate::protocol::tag::TransactionStatus;

impl Session {
    pub(super) fn server_failed(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.mark_broken();
            self.note_lost_server();
            self.failed_backend = Some(self.backend);
            if let Some(state) = self.routing.as_mut() {
                state.failed_frames = state.retry_frames.take();
            }
        }
        self.release();
    }

    /// Transaction pooling: the server goes back once every answer is relayed and the
    /// server reported idle. Only a primary connection whose transaction wrote needs a
    /// round trip first (the commit position); that part alone is a boxed future, so
    /// the plain path allocates nothing here.
    pub(super) async fn maybe_release(&mut self) {
        if !self.may_release() {
            return;
        }
        if self.backend == 0 && self.write_position_pending() {
            Box::pin(self.record_write_position()).await;
        }
        self.release();
    }

    /// Whether the transaction-pooled server can go back now.
    fn may_release(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.responses.is_empty()
            && !self.batch_open
            && !self.pooled.is_pinned()
            && !self.responses.awaiting_sync()
            && self.status == TransactionStatus::Idle
            && self.to_server.is_empty()
            && !self.streamed.is_open()
            && self.server.as_ref().is_some_and(|s| s.read_buf.is_empty())
    }

    pub(super) fn release(&mut self) {
        if let Some(mut server) = self.server.take() {
            if self.streamed.is_open() {
                self.cut_message = true;
                self.streamed.reset();
            }
            // A pooled connection keeps no large read buffer for its next client.
            shrink_if_idle(&mut server.read_buf);
            server.last_used = crate::pool::CoarseInstant::now();
            self.cancel.slot.detach();
            if let Some(state) = self.routing.as_mut() {
                state.forget_frames();
                state.wrote = false;
                if let Some(b) = state.topology.backends.get(self.backend) {
                    b.in_flight
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.batch_open = false;
            self.server_switched();
            if let Some(stats) = self.stats.as_mut() {
                stats.clear();
            }
            self.responses.clear();
            self.to_server.clear();
            self.protection.release();
            // Dropping returns it to the pool (or closes it if marked broken).
        }
        if self.client_buf.is_empty() && self.client_buf.capacity() > 0 {
            super::read_buffers::give_back(&mut self.client_buf);
        }
    }

    /// Checks a server connection out of the pool and gives it this client's settings.
    pub(super) async fn acquire(&mut self, mut backend: usize) -> Result<(), SessionError> {
        if self.server.is_some() {
            return Ok(());
        }
        if self
            .lost
            .as_ref()
            .is_some_and(|lost| lost.pending.is_none())
        {
            self.lost = None; // told already, or retried elsewhere
        }
        if self.runtime.is_paused() {
            self.runtime.wait_unpaused().await;
        }
        if self.runtime.pools.is_draining(&self.identity.database) {
            return Err(SessionError::DatabaseDraining(
                self.identity.database.clone(),
            ));
        }
        let mut server = loop {
            let replica = if backend == 0 {
                self.circuit_allows(0)?;
                None
            } else {
                Some(self.replica_pool(backend)?)
            };
            // A warm connection needs no future (nor a reference of its own to the
            // pool); the general checkout's future is large (fair gate, bb8, timers),
            // so it is boxed to keep every session's own future small.
            let warm = replica.as_deref().unwrap_or(&self.pool).checkout_now();
            let checked_out = match warm {
                Some(server) => Ok(server),
                None => {
                    let pool = replica.unwrap_or_else(|| self.pool.clone());
                    Box::pin(pool.checkout_as(self.fair_group())).await
                }
            };
            match checked_out {
                Ok(mut server) => {
                    self.note_backend_success(backend);
                    if server.settings_hash == self.settings.hash()
                        && !server.needs_reset
                        && (self.pooled.safe_functions.is_some()
                            || !self.pooled.checks_opaque_code(self.mode))
                    {
                        break server;
                    }
                    match Box::pin(self.prepare_server(&mut server)).await {
                        Ok(()) => break server,
                        Err(e) => {
                            server.mark_broken();
                            if backend > 0 && refuses_serializable(&e) {
                                // The proxy's own query on the replica met the role's
                                // serializable default: learned like a client's read.
                                self.learn_serializable_role();
                            } else {
                                tracing::warn!(user = %self.identity.user, backend, error = %e, "could not apply session settings");
                            }
                            if backend == 0 {
                                return Err(SessionError::Pool(e));
                            }
                            // A replica going down as it was handed out: the read goes
                            // to the primary (a refused setting is refused there too).
                            backend = 0;
                        }
                    }
                }
                Err(e @ PoolError::LoginRejected(_)) if backend > 0 => {
                    // The replica is fine; it just does not know this role (yet): read
                    // from the primary without taking the replica out for everyone.
                    tracing::warn!(backend, error = %e, "replica refused this role; using the primary");
                    backend = 0;
                }
                Err(e) if backend > 0 => {
                    // A replica we cannot reach: take it out and read from the primary.
                    tracing::warn!(backend, error = %e, "replica connection failed");
                    self.note_backend_failure(backend);
                    if let Some(state) = self.routing.as_ref() {
                        state.topology.mark_unhealthy(backend);
                        state.topology.backends[backend]
                            .errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    backend = 0;
                }
                Err(e) => {
                    if matches!(
                        e,
                        PoolError::Connect { .. }
                            | PoolError::ConnectTimeout(_)
                            | PoolError::Unreachable(_)
                            | PoolError::Io { .. }
                    ) {
                        self.note_backend_failure(backend);
                    }
                    return Err(e.into());
                }
            }
        };
        self.cancel.slot.attach(&server.address, server.key);
        self.server_said_fatal = false;
        server.prepared.start_batch();
        self.server = Some(server);
        self.server_switched();
        if self.mode == PoolMode::Transaction {
            self.discard_others_sequence_state();
        }
        self.backend = backend;
        if let Some(state) = self.routing.as_ref() {
            if let Some(b) = state.topology.backends.get(backend) {
                b.in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                b.routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Readies a checked-out connection for this client: learns the database's
    /// session-safe function names if this session does not know them yet, resets a
    /// session that ran code the proxy cannot see into (`opaque_code.rs`), and gives it
    /// this client's settings. One round trip for the reset and the settings together.
    async fn prepare_server(&mut self, server: &mut PooledServer) -> Result<(), PoolError> {
        if self.pooled.safe_functions.is_none() && self.pooled.checks_opaque_code(self.mode) {
            self.pooled.safe_functions = Some(self.session_safe_functions(server).await?);
        }
        let reseed = random_seed::needs_reseed(server, self.sequence_owner());
        if !reseed && server.settings_hash == self.settings.hash() {
            return Ok(());
        }
        let mut sql = String::new();
        if server.needs_reset {
            // DISCARD ALL, spelled out: DISCARD ALL itself cannot run in a
            // multi-statement string. The settings replay below does the rest.
            sql.push_str(
                "CLOSE ALL;UNLISTEN *;SELECT pg_advisory_unlock_all();DISCARD TEMP;\
                 DISCARD SEQUENCES;DEALLOCATE ALL;DISCARD PLANS;",
            );
        }
        if reseed {
            sql.push_str(&random_seed::reseed_sql());
        }
        sql.push_str(&self.settings.replay_sql());
        server.run_internal(&sql).await?;
        if reseed {
            server.seeded_by = 0;
        }
        if self.settings.mentions("seed") {
            // The replay seeded it with this client's `seed`.
            server.seeded_by = self.sequence_owner();
        }
        if std::mem::take(&mut server.needs_reset) {
            server.prepared.clear();
            server.sequences_of = 0;
            metrics::counter!("pgwarden_opaque_code_resets_total").increment(1);
            tracing::debug!(user = %self.identity.user, "reset a server connection that ran a function, procedure or DO block");
        }
        server.settings_hash = self.settings.hash();
        Ok(())
    }

    /// The database's session-safe function names, asked on `server` the first time.
    async fn session_safe_functions(
        &self,
        server: &mut PooledServer,
    ) -> Result<Arc<SessionSafeFunctions>, PoolError> {
        let registry = &self.runtime.session_safe_functions;
        if let Some(known) = registry.get(&self.identity.database) {
            return Ok(known);
        }
        let answer = server.query_values(SESSION_SAFE_FUNCTIONS_SQL).await?;
        let json = answer.into_iter().next().flatten().unwrap_or_default();
        let functions = SessionSafeFunctions::from_answer(&json).unwrap_or_else(|| {
            tracing::warn!(database = %self.identity.database, "unreadable list of session-safe functions; every function call resets its server connection");
            SessionSafeFunctions::default()
        });
        Ok(registry.insert(&self.identity.database, functions))
    }

    /// Marks the attached server's settings as unknown (a `SET` went through it).
    pub(super) fn server_settings_changed(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.settings_hash = UNKNOWN_SETTINGS;
        }
    }

    pub(super) async fn finish(&mut self) {
        self.database_ddl_done();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let clean = self.responses.is_empty()
            && !self.responses.awaiting_sync()
            && !self.batch_open
            && self.status == TransactionStatus::Idle
            && self.to_server.is_empty();
        if !clean {
            // Mid-transaction, mid-batch or mid-answer: the server's state is unknown.
            server.mark_broken();
        } else if self.mode == PoolMode::Session || self.pooled.is_pinned() {
            // Session pooling does not scan for seeds: reseed after every session.
            let reseed = self.mode == PoolMode::Session || server.seeded_by != 0;
            let reset = tokio::time::timeout(Duration::from_secs(5), async {
                server.run_internal("DISCARD ALL").await?;
                if reseed {
                    server.run_internal(&random_seed::reseed_sql()).await?;
                }
                Ok::<_, PoolError>(())
            })
            .await;
            match reset {
                Ok(Ok(())) => {
                    server.prepared.clear();
                    server.settings_hash = 0;
                    server.sequences_of = 0;
                    server.seeded_by = 0;
                }
                _ => server.mark_broken(),
            }
        }
        self.release();
    }
}

/// Whether a proxy-internal query failed because a hot standby refused serializable
/// mode (`route/replica_refusals.rs`).
fn refuses_serializable(error: &PoolError) -> bool {
    use crate::route::replica_refusals::SERIALIZABLE_REFUSAL_MESSAGE;
    match error {
        PoolError::Unhealthy(message) | PoolError::Refused { message, .. } => {
            message == SERIALIZABLE_REFUSAL_MESSAGE
        }
        _ => false,
    }
}
