//! One logged-in client: read its messages, get a server connection when one is
//! needed, forward, relay the answers, and give the server back when the transaction
//! is over. The steps live in sibling files: `client_messages` (what each client
//! message does), `server_messages` (what each server message does), `pump` (bytes in
//! both directions), `responses` (the order of answers owed), `server_lease` (taking a
//! server connection from the pool and giving it back).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::cancel::CancelRegistration;
use super::pooled_state::PooledState;
use super::pump::{shrink_if_idle, write_client, write_server, Pump, PumpError, Pumped};
use super::responses::ResponseQueue;
use super::routing::SessionRouting;
use super::session_effects::Effect;
use super::settings::SessionSettings;
use super::shutdown::Phase;
use super::statements::ClientStatements;
use super::stream::ClientStream;
use super::SessionError;
use crate::config::PoolMode;
use crate::pool::{PooledServer, ServerPool};
use crate::protocol::tag::TransactionStatus;
use crate::runtime::Runtime;

/// Who the client is, as established at login.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub peer: String,
}

pub struct Session {
    pub(super) runtime: Arc<Runtime>,
    pub(super) client: ClientStream,
    /// Shared with the client's entry in the cancel registry (`SHOW CLIENTS`).
    pub(super) identity: Arc<ClientIdentity>,
    pub(super) mode: PoolMode,
    pub(super) pool: Arc<ServerPool>,
    pub(super) server: Option<PooledServer>,
    /// Which backend `server` belongs to (0 = primary).
    pub(super) backend: usize,
    /// The backend whose connection just failed, for a retry elsewhere.
    pub(super) failed_backend: Option<usize>,
    /// Present when the database has replicas to route reads to. Boxed, as the other
    /// optional parts below: every idle client holds a `Session`, most without them
    /// (issue 13: RSS per idle client).
    pub(super) routing: Option<Box<SessionRouting>>,
    /// Statements the client prepared from `SET pgwarden.*` (`proxy_settings.rs`).
    pub(super) setting_statements: Vec<super::proxy_settings::SettingStatement>,
    /// Present when the database is guarded or `tenancy.set_config` is set.
    pub(super) tenancy: Option<Box<super::tenancy::TenantSession>>,
    /// An extended-protocol batch is open (messages sent since the last `Sync`).
    pub(super) batch_open: bool,
    /// That batch executed a statement (so an implicit transaction may be open).
    pub(super) executed_in_batch: bool,
    /// Statement timings for query statistics (None when `stats.enabled = false`).
    pub(super) stats: Option<super::statistics::SessionStats>,
    /// Bytes read from the client, not yet handled.
    pub(super) client_buf: BytesMut,
    /// Bytes owed to the client.
    pub(super) to_client: BytesMut,
    /// Bytes owed to the server.
    pub(super) to_server: BytesMut,
    pub(super) responses: ResponseQueue,
    pub(super) statements: ClientStatements,
    pub(super) settings: SessionSettings,
    /// Setting changes of the statement in flight, and of the open transaction.
    pub(super) pending_settings: PendingSettings,
    pub(super) cancel: CancelRegistration,
    pub(super) status: TransactionStatus,
    /// After a proxy-side error in an extended-protocol batch: ignore until `Sync`.
    pub(super) skip_until_sync: bool,
    /// The scan of the `Query` being handled (`query_scan.rs`).
    pub(super) query_scan: super::query_scan::ScanMemo,
    /// The classes of the statement shapes this client sent lately.
    pub(super) class_memo: crate::route::ClassMemo,
    pub(super) max_message: usize,
    pub(super) idle_timeout: Option<Duration>,
    /// `pool.idle_in_transaction_timeout_ms` and `pool.idle_in_batch_timeout_ms`.
    pub(super) idle_in_transaction_timeout: Option<Duration>,
    pub(super) idle_in_batch_timeout: Option<Duration>,
    /// `pool.query_timeout_ms`: how long a server that owes answers may stay silent.
    pub(super) query_timeout: Option<Duration>,
    /// Transaction pooling: pins, the unnamed statement, effects of portals.
    pub(super) pooled: PooledState,
    /// The server sent a FATAL error (it is closing): relayed, and nothing more is
    /// added when the connection then drops, as PostgreSQL adds nothing either.
    pub(super) server_said_fatal: bool,
    /// Transaction pooling: what the client was owed when its server connection was
    /// lost, and the error to tell it (see `lost_server.rs`).
    pub(super) lost: Option<Box<super::lost_server::LostServer>>,
    /// A `DROP/ALTER DATABASE` this client runs: that database's checkouts are held.
    pub(super) draining_database: Option<String>,
    /// Fairness group, places under `[[limits]]` rules.
    pub(super) protection: super::protection::SessionProtection,
    /// Result cache state (None when `cache.mode = "off"`).
    pub(super) caching: Option<super::caching::SessionCache>,
    /// Graceful shutdown, as this session waits for it.
    pub(super) shutdown: Arc<super::shutdown::SessionShutdown>,
    /// A large message being relayed to the client as it arrives.
    pub(super) streamed: super::streamed_frame::StreamedFrame,
    /// The server was lost in the middle of a streamed message: the client holds half
    /// a message, so nothing more can be said to it.
    pub(super) cut_message: bool,
}

/// Session effects (`SET`/`RESET`, the end of pinned state, `DISCARD ALL`) that count
/// only once their statement succeeds (and, inside a transaction, once it commits).
#[derive(Debug, Default)]
pub struct PendingSettings {
    pub in_flight: Vec<Effect>,
    pub in_transaction: Vec<Effect>,
    pub failed: bool,
    pub rolled_back: bool,
}

impl PendingSettings {
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.in_transaction.is_empty()
    }
}

impl Session {
    /// Serves the client until it leaves. Errors that the client can still read have
    /// been reported when this returns.
    ///
    /// Not an `async fn`: an async fn's future keeps its by-value arguments twice (the
    /// argument as passed, and the local the body moves it into), so the session was
    /// in every client's task twice. An `async move` block uses the captured session
    /// in place (issue 13: RSS per idle client).
    #[allow(clippy::manual_async_fn)] // deliberate: see above
    pub fn run(mut self) -> impl std::future::Future<Output = Result<(), SessionError>> + Send {
        async move { self.run_inner().await }
    }

    async fn run_inner(&mut self) -> Result<(), SessionError> {
        // Everything after `serve` is boxed: an async fn's future is as large as its
        // largest state, and every idle client's task holds this one (issue 13: RSS per
        // idle client). Only `serve`'s idle wait stays inline.
        let result = self.serve().await;
        let relayed_fatal =
            self.server_said_fatal && matches!(result, Err(SessionError::ServerLost(_)));
        match &result {
            Err(SessionError::ServerLost(_)) if relayed_fatal => {
                let _ = Box::pin(self.drain()).await;
            }
            Err(_) if self.cut_message => {}
            Err(error) => {
                if let Some(fields) = error.to_error_fields() {
                    fields.encode(&mut self.to_client);
                    let _ = Box::pin(self.drain()).await;
                }
            }
            Ok(()) => {}
        }
        Box::pin(self.finish()).await;
        if !matches!(
            result,
            Err(SessionError::ClientClosed) | Err(SessionError::ClientIo(_))
        ) {
            // The proxy ends the connection: close it properly (TLS close_notify,
            // then FIN), as PostgreSQL does.
            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
                use tokio::io::AsyncWriteExt;
                let _ = self.client.shutdown().await;
            }))
            .await;
        }
        match result {
            Err(SessionError::ClientClosed) => Ok(()),
            other => other,
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            let step = match self.pump_once().await {
                // Inline: its large parts (a server's checkout, the tenant guard,
                // limits, the cache's miss) are boxed where they run, so this future is
                // about as small as the idle wait beside it and `serve`'s does not grow
                // (`session_step_futures_are_small`).
                Ok(Pumped::ClientData) => self.handle_client_messages().await,
                Ok(Pumped::ServerData) => self.handle_server_messages(),
                Ok(Pumped::Drained) => Ok(()),
                Err(e) => Err(e),
            };
            if step.is_ok() && self.caching.is_some() {
                self.cache_after_step().await;
            }
            // The answer goes out before the server's return to its pool, which then
            // runs while the client reads. (Statements are counted before: once a
            // client has an answer, a statistics flush includes its statement.)
            let step = match step {
                Ok(()) => self.write_client_now().await,
                failed => failed,
            };
            match step {
                Ok(()) => {}
                Err(SessionError::ServerLost(reason)) if self.cut_message => {
                    return Err(SessionError::ServerLost(reason));
                }
                Err(SessionError::ServerLost(reason)) => {
                    // A replica that died before answering an autocommit read: run the
                    // read elsewhere; the client never notices.
                    if !Box::pin(self.retry_elsewhere()).await?
                        && !self.outlive_lost_server(&reason)
                    {
                        return Err(SessionError::ServerLost(reason));
                    }
                }
                Err(e) => return Err(e),
            }
            if self.server.is_some() {
                self.maybe_release().await;
            }
            self.shrink_buffers();
        }
    }

    async fn pump_once(&mut self) -> Result<Pumped, SessionError> {
        let (idle_limit, holding_server) = self.idle_limit();
        let server_owes = holding_server && idle_limit.is_none();
        let limit = if server_owes {
            self.query_timeout
        } else {
            idle_limit
        };
        // The clock is read only when there is a limit to keep (none by default while a
        // server owes answers).
        let deadline = limit.map(|limit| Instant::now() + limit);
        // Graceful shutdown: a client between transactions leaves when draining starts,
        // one in the middle of something only when the shutdown timeout has passed.
        let leave_at = if self.between_transactions() {
            Phase::Draining
        } else {
            Phase::Closing
        };
        if self.shutdown.has_reached(leave_at) {
            return Err(SessionError::Shutdown);
        }
        // While a message is cut in two, nothing else may be written to the client, so
        // its next messages wait (PostgreSQL does not read while it sends, either).
        let read_client = !self.streamed.is_open();
        let pumped = self
            .pump(read_client, false, deadline, Some(leave_at))
            .await;
        match pumped {
            Err(None) if server_owes => {
                let ms = limit.map_or(0, |l| l.as_millis() as u64);
                Err(self.server_hung(ms))
            }
            Err(None) => {
                let ms = idle_limit.map_or(0, |l| l.as_millis() as u64);
                Err(if holding_server {
                    SessionError::IdleInTransaction(ms)
                } else {
                    SessionError::IdleTimeout(ms)
                })
            }
            Err(Some(e)) => Err(e),
            Ok(pumped) => Ok(pumped),
        }
    }

    /// Whether the client is idle between transactions: nothing owed either way, no
    /// partial message read, no transaction, batch or COPY open on a server.
    fn between_transactions(&self) -> bool {
        self.client_buf.is_empty()
            && self.to_server.is_empty()
            && self.responses.is_empty()
            && !self.responses.awaiting_sync()
            && !self.batch_open
            && (self.server.is_none() || self.status == TransactionStatus::Idle)
    }

    /// How long the client may stay silent now, and whether it holds a server while
    /// doing so. A server that owes answers is working, not waiting for the client.
    fn idle_limit(&self) -> (Option<Duration>, bool) {
        if self.server.is_none() {
            return (self.idle_timeout, false);
        }
        if !self.responses.is_empty() || !self.to_server.is_empty() {
            return (None, true);
        }
        let limit = if self.batch_open {
            self.idle_in_batch_timeout
        } else if self.status != TransactionStatus::Idle {
            self.idle_in_transaction_timeout
        } else {
            None
        };
        (limit, true)
    }

    /// Waits for more bytes from the attached server (not reading the client).
    pub(super) async fn read_server_once(&mut self) -> Result<(), SessionError> {
        self.pump(false, false, None, None)
            .await
            .map(|_| ())
            .map_err(without_deadline)
    }

    /// Writes everything owed to both sides.
    pub(super) async fn drain(&mut self) -> Result<(), SessionError> {
        self.pump(false, true, None, None)
            .await
            .map(|_| ())
            .map_err(without_deadline)
    }

    /// Moves bytes in both directions until something needs handling. `Err(None)`
    /// means `deadline` passed first; with `leave_at`, the pump also stops with
    /// [`SessionError::Shutdown`] once the graceful shutdown reaches that phase.
    async fn pump(
        &mut self,
        read_client: bool,
        until_drained: bool,
        deadline: Option<Instant>,
        leave_at: Option<Phase>,
    ) -> Result<Pumped, Option<SessionError>> {
        // One async level between the session's steps and the pump's poll: every poll
        // of an idle or waiting session resumes each level it passes through.
        self.cache_capture();
        let pumped = {
            let mut pump = Pump {
                client: &mut self.client,
                client_buf: &mut self.client_buf,
                to_client: &mut self.to_client,
                server: self.server.as_deref_mut(),
                to_server: &mut self.to_server,
                read_client,
                until_drained,
                shutdown: leave_at.map(|phase| (&*self.shutdown, phase)),
            };
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), pump.run())
                    .await
                    .ok(),
                None => Some(pump.run().await),
            }
        };
        self.cache_captured();
        match pumped {
            Some(result) => result.map_err(|e| Some(self.pump_error(e))),
            None => Err(None),
        }
    }

    /// Writes what the client is owed now, without waiting: whatever the socket does not
    /// take, the pump writes later.
    async fn write_client_now(&mut self) -> Result<(), SessionError> {
        // Once the graceful shutdown started, a session about to leave sends its last
        // answer together with the notice that ends it (`pump_once`), so the client
        // reads both before it can send anything more.
        if self.to_client.is_empty() || self.shutdown.has_reached(Phase::Draining) {
            return Ok(());
        }
        self.cache_capture();
        let written =
            poll_fn(|cx| Poll::Ready(write_client(&mut self.client, &mut self.to_client, cx)))
                .await;
        self.cache_captured();
        written.map_err(|e| self.pump_error(e))
    }

    /// Writes what the attached server is owed now, without waiting: whatever the socket
    /// does not take, the pump writes later.
    pub(super) async fn write_server_now(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(());
        };
        if self.to_server.is_empty() {
            return Ok(());
        }
        let to_server = &mut self.to_server;
        let written = poll_fn(|cx| Poll::Ready(write_server(server, to_server, cx))).await;
        written.map_err(|e| self.pump_error(e))
    }

    /// Gives back buffer capacity a large result or COPY left behind, once the buffers
    /// are empty (see [`shrink_if_idle`]).
    fn shrink_buffers(&mut self) {
        shrink_if_idle(&mut self.client_buf);
        shrink_if_idle(&mut self.to_client);
        shrink_if_idle(&mut self.to_server);
        if let Some(server) = self.server.as_mut() {
            shrink_if_idle(&mut server.read_buf);
        }
    }

    fn pump_error(&mut self, error: PumpError) -> SessionError {
        match error {
            PumpError::Client(e) => SessionError::ClientIo(e),
            PumpError::ClientClosed => SessionError::ClientClosed,
            PumpError::Server(e) => {
                self.server_failed();
                SessionError::ServerLost(e.to_string())
            }
            PumpError::ServerClosed => {
                self.server_failed();
                SessionError::ServerLost("server closed the connection".into())
            }
            PumpError::Shutdown => SessionError::Shutdown,
        }
    }
}

/// A pump run without a deadline always ends with a real error.
fn without_deadline(error: Option<SessionError>) -> SessionError {
    error
        .unwrap_or_else(|| SessionError::Protocol("internal: pump stopped without a reason".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client's task holds one `Session` (issue 13: RSS per idle client).
    #[test]
    fn session_sizes() {
        let sizes = [
            ("Session", std::mem::size_of::<Session>()),
            ("ClientStream", std::mem::size_of::<ClientStream>()),
            (
                "Option<PooledServer>",
                std::mem::size_of::<Option<PooledServer>>(),
            ),
            ("ResponseQueue", std::mem::size_of::<ResponseQueue>()),
            ("ClientStatements", std::mem::size_of::<ClientStatements>()),
            ("SessionSettings", std::mem::size_of::<SessionSettings>()),
            ("PooledState", std::mem::size_of::<PooledState>()),
            (
                "Option<Box<SessionRouting>>",
                std::mem::size_of::<Option<Box<SessionRouting>>>(),
            ),
            (
                "Option<Box<LostServer>>",
                std::mem::size_of::<Option<Box<super::super::lost_server::LostServer>>>(),
            ),
            (
                "Option<SessionCache>",
                std::mem::size_of::<Option<super::super::caching::SessionCache>>(),
            ),
            (
                "Option<SessionStats>",
                std::mem::size_of::<Option<super::super::statistics::SessionStats>>(),
            ),
            (
                "Option<Box<TenantSession>>",
                std::mem::size_of::<Option<Box<super::super::tenancy::TenantSession>>>(),
            ),
            (
                "SessionProtection",
                std::mem::size_of::<super::super::protection::SessionProtection>(),
            ),
            (
                "CancelRegistration",
                std::mem::size_of::<CancelRegistration>(),
            ),
        ];
        for (name, size) in sizes {
            println!("{name}: {size} bytes");
        }
        assert!(sizes[0].1 < 4096, "a Session fits in 4 KiB");
    }

    /// The size of what `f` returns (a future), without making one.
    fn output_size<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// `serve` awaits its steps inline, once per client message, and every idle
    /// client's task holds `serve`'s future: a step's future must stay about as small
    /// as the idle wait beside it (`pump_once`), its large parts boxed where they run
    /// (issue 13: RSS per idle client). Budgets from the sizes when this was written
    /// (release: 280, 296 and 560 bytes); with the server's checkout inline, the
    /// client step was 784 bytes.
    #[test]
    fn session_step_futures_are_small() {
        let idle_wait = output_size(Session::pump_once);
        let client_step = output_size(Session::handle_client_messages);
        let serve = output_size(Session::serve);
        println!(
            "pump_once: {idle_wait}, handle_client_messages: {client_step}, serve: {serve} bytes"
        );
        assert!(
            client_step <= 384,
            "handle_client_messages' future: {client_step} bytes"
        );
        assert!(serve <= 640, "serve's future: {serve} bytes");
    }

    /// An async fn's future keeps a by-value argument twice; `run` must keep the
    /// session once, next to its idle wait (issue 13: RSS per idle client).
    #[test]
    fn run_future_holds_the_session_once() {
        let session = std::mem::size_of::<Session>();
        let run = output_size(Session::run);
        println!("Session: {session} bytes, run's future: {run} bytes");
        assert!(run < session + 1024, "run's future: {run} bytes");
    }
}
