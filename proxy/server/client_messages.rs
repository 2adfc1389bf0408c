//! What each client message does: forwarded as is, renamed (pooled prepared
//! statements), answered by the proxy, or refused.

use bytes::{Bytes, BytesMut};

use super::database_ddl::{database_ddl_target, may_be_database_ddl};
use super::responses::{Expect, ResponseQueue};
use super::session::Session;
use super::session_effects::{effects_of, Effect};
use super::statements::StatementId;
use super::SessionError;
use crate::config::PoolMode;
use crate::protocol::backend;
use crate::protocol::extended::{
    write_bind, write_parse, write_statement_target, BindView, Malformed, ParseView, TargetKind,
    TargetView,
};
use crate::protocol::frame::{body, check_frame, query_text};
use crate::protocol::tag::{frontend as tag, TransactionStatus};
use crate::route::DataAccess;

impl Session {
    /// Handles every complete message in the client buffer.
    pub(super) async fn handle_client_messages(&mut self) -> Result<(), SessionError> {
        while let Some(len) = check_frame(&self.client_buf, self.max_message)? {
            if self.caching.is_some() && self.cache_front().await? {
                continue;
            }
            let frame = self.client_buf.split_to(len).freeze();
            self.handle_client_message(frame).await?;
        }
        if self.client_buf.is_empty() && self.server.is_none() {
            super::read_buffers::give_back(&mut self.client_buf);
        }
        // The request goes out now, not after the session loop's turn.
        self.write_server_now().await
    }

    pub(super) async fn handle_client_message(&mut self, frame: Bytes) -> Result<(), SessionError> {
        let message_tag = frame[0];
        tracing::trace!(tag = %(message_tag as char), len = frame.len(), "client message");
        self.query_scan.forget();
        if matches!(message_tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
            self.executed_in_batch = false;
        }
        if self.lost.is_some() && self.answer_lost_transaction(message_tag) {
            return Ok(());
        }
        if self.skip_until_sync {
            if message_tag != tag::SYNC {
                return Ok(());
            }
            self.skip_until_sync = false;
            if self.server.is_none() {
                let mut answer = BytesMut::with_capacity(6);
                backend::ready_for_query(&mut answer, TransactionStatus::Idle);
                self.responses
                    .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
                return Ok(());
            }
            // Part of the batch already went to the server: its Sync ends it there.
        }
        match message_tag {
            tag::TERMINATE => return Err(SessionError::ClientClosed),
            tag::QUERY
            | tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::CLOSE
            | tag::SYNC
            | tag::FLUSH
            | tag::FUNCTION_CALL => {}
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // Outside COPY, PostgreSQL ignores these; with no server there is no COPY.
                if self.server.is_some() {
                    self.to_server.extend_from_slice(&frame);
                    if message_tag != tag::COPY_DATA {
                        self.responses.on_client_copy_end();
                    }
                }
                return Ok(());
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "unknown message type {:?} (0x{other:02x})",
                    other as char
                )))
            }
        }
        // Each check below is awaited only where it has something to do, and then
        // as a boxed future: without a tenant guard, a `DROP DATABASE` or protection
        // limits, the handling future (boxed once per transaction by `serve`) holds
        // none of their state and stays in malloc's per-thread cache.
        let guarded = if self.tenancy.is_none() || !super::tenancy::judges(message_tag) {
            Ok(frame)
        } else {
            Box::pin(self.guard_message(message_tag, frame)).await
        };
        let frame = match guarded {
            Ok(frame) => frame,
            Err(SessionError::Answered) => return Ok(()),
            Err(error @ SessionError::TenantGuard(_)) if self.server.is_some() => {
                // Part of this transaction may already have run: fail it on the
                // server, as PostgreSQL would, so it cannot commit.
                self.raise_on_server(message_tag, &error);
                return Ok(());
            }
            Err(error) if error.is_recoverable() => {
                self.report_recoverable(message_tag, &error);
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let frame = if self.follows_setting_statements(message_tag, &frame) {
            match self.follow_setting_statements(message_tag, frame) {
                Ok(frame) => frame,
                Err(error) if error.is_recoverable() => {
                    self.report_recoverable(message_tag, &error);
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        } else {
            frame
        };
        if message_tag == tag::QUERY {
            self.query_scan.remember(query_text(&frame));
        }
        if self.answer_without_server(message_tag, &frame)? {
            return Ok(());
        }
        let ddl_database = match message_tag {
            tag::QUERY => database_ddl_target(body(&frame)),
            tag::PARSE => crate::protocol::extended::cstr(body(&frame))
                .filter(|(_, definition)| may_be_database_ddl(definition))
                .and_then(|_| ParseView::parse(body(&frame)).ok())
                .and_then(|view| database_ddl_target(view.query)),
            _ => None,
        };
        if let Some(database) = ddl_database {
            Box::pin(self.before_database_ddl(database)).await;
        }
        if self.protection_applies(message_tag) {
            if let Err(error) = Box::pin(self.protect_statement(message_tag, &frame)).await {
                self.report_recoverable(message_tag, &error);
                return Ok(());
            }
        }
        // Boxed: choosing a backend and checking a server out is the largest state of
        // this future, and it runs once per transaction; the statements after the first
        // find the server attached. Unboxed, it made `serve` box this whole future for
        // every client message instead (issue 13: a copy, malloc and free per statement).
        let attached = if self.attach_has_work(message_tag, &frame) {
            Box::pin(self.attach_for(message_tag, &frame)).await
        } else {
            Ok(())
        };
        if self.server.is_none() {
            // Answered without a server, or none could be had: no place under limits.
            self.protection.release();
        }
        if let Err(error) = attached {
            if matches!(error, SessionError::Answered) {
                return Ok(());
            }
            if !error.is_recoverable() {
                return Err(error);
            }
            self.report_recoverable(message_tag, &error);
            return Ok(());
        }
        if let Err(error) = self.check_string_syntax(message_tag, &frame) {
            if let SessionError::TenantGuard(_) = &error {
                // Attached: fail the statement on the server, as for any refusal there.
                self.raise_on_server(message_tag, &error);
                return Ok(());
            }
            return Err(error);
        }
        // Read once for the rest, and only now, so that the view is not part of this
        // future's state across the awaits above.
        let parse: ParsedParse<'_> =
            (message_tag == tag::PARSE).then(|| ParseView::parse(body(&frame)));
        self.note_forwarded(message_tag, &frame);
        self.cache_note_forwarded(message_tag, &frame, parse);
        self.stats_on_forward(message_tag, &frame);
        self.batch_open = !matches!(message_tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL);
        self.executed_in_batch |= message_tag == tag::EXECUTE;
        let pooled_statements = self.mode == PoolMode::Transaction;
        match message_tag {
            tag::QUERY => self.forward_query(&frame),
            tag::FUNCTION_CALL => {
                if pooled_statements {
                    // A fast-path call names its function by OID: it may be nextval,
                    // or setseed.
                    self.note_sequence_state(|| true);
                    self.note_random_seed(true);
                }
                self.forward(&frame, Expect::Query)
            }
            tag::SYNC | tag::FLUSH => {
                // PostgreSQL sends what it buffered now: so do we.
                self.responses.release_held(&mut self.to_client);
                if message_tag == tag::SYNC {
                    if let Some(server) = self.server.as_mut() {
                        server.prepared.start_batch();
                    }
                }
                if message_tag == tag::SYNC && self.responses.sync_is_answered() {
                    self.forward(&frame, Expect::Sync)
                } else {
                    self.to_server.extend_from_slice(&frame)
                }
            }
            tag::EXECUTE => {
                if pooled_statements {
                    self.on_execute_portal(crate::protocol::extended::execute_portal(body(&frame)));
                }
                self.forward(&frame, Expect::Execute)
            }
            tag::PARSE if pooled_statements => self.forward_parse(&frame, parse)?,
            tag::PARSE => {
                // Session pooling: the statements' texts matter to the statistics only
                // (the text and shape their portals run).
                if let Some(Ok(view)) = parse.filter(|_| self.stats.is_some()) {
                    if view.statement.is_empty() {
                        self.on_unnamed_parse(view.definition, view.query);
                    } else if let Some(stats) = self.stats.as_mut() {
                        stats.named_statement_parsed(view.statement, view.query);
                    }
                }
                self.forward(&frame, Expect::Parse(None))
            }
            tag::BIND if pooled_statements => self.forward_bind(&frame)?,
            tag::BIND => self.forward(&frame, Expect::Bind(None)),
            tag::DESCRIBE => self.forward_describe(&frame, pooled_statements)?,
            tag::CLOSE => {
                if let Some(stats) = self.stats.as_mut() {
                    if let Ok(target) = TargetView::parse(body(&frame), "Close") {
                        match target.kind {
                            TargetKind::Statement => stats.named_statement_closed(target.name),
                            TargetKind::Portal => {
                                stats.portal_closed(&self.runtime.stats, target.name)
                            }
                        }
                    }
                }
                self.forward(&frame, Expect::Close)
            }
            _ => unreachable!("filtered above"),
        }
        Ok(())
    }

    /// Whether [`Session::attach_for`] may do anything for this message: no server is
    /// attached, the attached one is a replica (it may have to be left), or the text
    /// may be a proxy setting. Most messages of a transaction find the primary
    /// attached, and skip the call.
    fn attach_has_work(&self, message_tag: u8, frame: &Bytes) -> bool {
        self.server.is_none()
            || self.backend > 0
            || (message_tag == tag::QUERY && Session::may_answer_proxy_setting(frame))
    }

    /// Makes sure the right server is attached for this message: chooses a backend
    /// when none is attached, and leaves a replica for the primary at a batch boundary
    /// when the next statement must not run on a replica.
    pub(super) async fn attach_for(
        &mut self,
        message_tag: u8,
        frame: &Bytes,
    ) -> Result<(), SessionError> {
        if message_tag == tag::QUERY
            && Session::may_answer_proxy_setting(frame)
            && self.answer_proxy_setting(frame).await?
        {
            return Err(SessionError::Answered);
        }
        if self.server.is_some()
            && self.backend > 0
            && !self.batch_open
            && !self.pooled.is_pinned()
            && self.status == TransactionStatus::Idle
            && matches!(
                message_tag,
                tag::QUERY | tag::PARSE | tag::BIND | tag::FUNCTION_CALL
            )
            && self.choose_backend(message_tag, frame).await? == 0
        {
            self.settle_in_flight().await?;
            self.release();
        }
        if self.server.is_none() {
            let backend = self.choose_backend(message_tag, frame).await?;
            self.acquire(backend).await?;
        }
        Ok(())
    }

    /// Relays the rest of the answers owed by the attached server, so that what the
    /// client sent before is finished and the transaction status is known.
    pub(super) async fn settle_in_flight(&mut self) -> Result<(), SessionError> {
        self.relay_until(ResponseQueue::is_empty).await
    }

    /// Relays the answers of the requests (up to their `Sync` or simple `Query`) sent
    /// before the one in progress; unlike [`Self::settle_in_flight`], it does not wait
    /// for the unsynced messages of the current batch, which the server answers only
    /// at its `Sync`.
    pub(super) async fn settle_earlier_requests(&mut self) -> Result<(), SessionError> {
        self.relay_until(|responses| responses.owed_ends() == 0)
            .await
    }

    /// Relays the attached server's answers until `done` (or no server is attached).
    async fn relay_until(&mut self, done: fn(&ResponseQueue) -> bool) -> Result<(), SessionError> {
        while !done(&self.responses) && self.server.is_some() {
            self.drain().await?;
            self.read_server_once().await?;
            self.handle_server_messages()?;
        }
        Ok(())
    }

    /// Messages the proxy answers itself. Returns true when handled.
    fn answer_without_server(
        &mut self,
        message_tag: u8,
        frame: &[u8],
    ) -> Result<bool, SessionError> {
        match message_tag {
            tag::CLOSE if self.mode == PoolMode::Transaction => {
                let target = TargetView::parse(body(frame), "Close")
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                if target.kind == TargetKind::Statement && target.name.is_empty() {
                    self.pooled.unnamed.exists = false;
                }
                if target.kind == TargetKind::Statement && !target.name.is_empty() {
                    // Pooled statements stay prepared on the servers for others to reuse.
                    self.statements.remove(target.name);
                    let mut answer = BytesMut::with_capacity(5);
                    backend::close_complete(&mut answer);
                    self.responses
                        .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
                    return Ok(true);
                }
                Ok(false)
            }
            tag::PARSE if self.mode == PoolMode::Transaction && self.server.is_none() => {
                // A statement some server already accepted: remember it for this client
                // and prepare it lazily where it is used. Taking a server here would
                // make clients that prepare synchronously (pgbench) wait for each other.
                let view = ParseView::parse(body(frame))
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                if view.statement.is_empty()
                    || !self
                        .pool
                        .knows_statement(StatementId::of(view.definition).0)
                {
                    return Ok(false);
                }
                let access = self.statement_access(view.query);
                let opaque = self.pooled.opaque_check(self.mode);
                self.statements
                    .define(view.statement, view.definition, view.query, access, opaque);
                let mut answer = BytesMut::with_capacity(5);
                backend::parse_complete(&mut answer);
                self.responses
                    .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
                Ok(true)
            }
            tag::SYNC | tag::FLUSH if self.server.is_none() => {
                // Nothing in flight: the answer to Sync is an idle ReadyForQuery.
                self.responses.release_held(&mut self.to_client);
                if message_tag == tag::SYNC {
                    let mut answer = BytesMut::with_capacity(6);
                    backend::ready_for_query(&mut answer, TransactionStatus::Idle);
                    self.responses
                        .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reports an error the session survives (no server, a guard refusal) in the protocol's
    /// shape: a simple query gets `ErrorResponse` + `ReadyForQuery`; an extended batch gets
    /// `ErrorResponse` and the rest of the batch is ignored up to its `Sync`.
    fn report_recoverable(&mut self, message_tag: u8, error: &SessionError) {
        if self.error_fails_server_transaction(message_tag) {
            // PostgreSQL's error would fail the open transaction: let the server raise it.
            self.raise_on_server(message_tag, error);
            return;
        }
        // Through the answer queue: answers still owed by an attached server go first.
        let mut answer = BytesMut::new();
        if let Some(fields) = error.to_error_fields() {
            fields.encode(&mut answer);
        }
        match message_tag {
            tag::QUERY | tag::FUNCTION_CALL | tag::SYNC => {
                let status = if self.server.is_some() {
                    self.status
                } else {
                    TransactionStatus::Idle
                };
                backend::ready_for_query(&mut answer, status);
            }
            _ => self.skip_until_sync = true,
        }
        self.responses
            .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
    }

    /// What a statement being prepared does to data (only classified when routing is
    /// on: `MayWrite` otherwise).
    pub(super) fn statement_access(&self, query: &[u8]) -> DataAccess {
        match self.routing.as_ref() {
            Some(state) => state
                .routing
                .classify(&crate::protocol::text::lossy(query))
                .data_access(),
            None => DataAccess::MayWrite,
        }
    }

    fn forward(&mut self, frame: &[u8], expect: Expect) {
        self.to_server.extend_from_slice(frame);
        self.responses.push(expect, &mut self.to_client);
    }

    fn forward_query(&mut self, frame: &[u8]) {
        let sql = query_text(frame);
        if let Some(server) = self.server.as_mut() {
            server.prepared.start_batch();
        }
        if self.mode == PoolMode::Transaction {
            let scanned = self.query_scan(sql);
            if scanned.may_have_effects && self.deallocate_protocol_statement(sql) {
                return;
            }
            self.on_simple_query(sql, &scanned);
            self.note_sequence_state(|| scanned.may_set_sequences);
            self.note_random_seed(scanned.may_seed);
        }
        self.forward(frame, Expect::Query);
    }

    /// `DEALLOCATE name` of one of the client's protocol-level statements: those live
    /// under proxy-wide names on the servers, so the proxy forgets the name and answers
    /// as PostgreSQL would.
    /// Only called for texts that may have effects (`crate::scan`).
    fn deallocate_protocol_statement(&mut self, sql: &[u8]) -> bool {
        let effects = effects_of(&crate::protocol::text::lossy(sql));
        let [Effect::Deallocate(name)] = effects.as_slice() else {
            return false;
        };
        if !self.statements.remove(name.as_bytes()) {
            return false;
        }
        let mut answer = BytesMut::with_capacity(24);
        backend::command_complete(&mut answer, "DEALLOCATE");
        backend::ready_for_query(&mut answer, self.status);
        self.responses
            .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
        true
    }

    fn forward_parse(&mut self, frame: &[u8], parse: ParsedParse<'_>) -> Result<(), SessionError> {
        let view = parsed(parse)?;
        if view.statement.is_empty() {
            self.on_unnamed_parse(view.definition, view.query);
            self.forward(frame, Expect::Parse(None));
            return Ok(());
        }
        let access = self.statement_access(view.query);
        let opaque = self.pooled.opaque_check(self.mode);
        let id =
            self.statements
                .define(view.statement, view.definition, view.query, access, opaque);
        let server = self.server.as_mut().expect("acquired");
        if server.prepared.touch(id.0) {
            let mut answer = BytesMut::with_capacity(5);
            backend::parse_complete(&mut answer);
            self.responses
                .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
        } else {
            self.close_before_prepare(id);
            write_parse(&mut self.to_server, &id.server_name(), view.definition);
            self.responses
                .push(Expect::Parse(Some(id)), &mut self.to_client);
        }
        Ok(())
    }

    /// Records `id` as prepared on the attached server, closing first what must go:
    /// a stale copy of it, and the least recently used statements past
    /// `pool.max_prepared_statements`.
    fn close_before_prepare(&mut self, id: StatementId) {
        let server = self.server.as_mut().expect("acquired");
        for victim in server.prepared.insert(id.0, self.pooled.max_prepared) {
            let victim = StatementId(victim);
            write_statement_target(&mut self.to_server, tag::CLOSE, &victim.server_name());
            self.responses
                .push(Expect::SwallowClose(victim), &mut self.to_client);
        }
    }

    /// Makes sure the server has the pooled statement `name`; returns its server name.
    fn ensure_prepared(&mut self, name: &[u8]) -> Option<StatementId> {
        let statement = self.statements.get(name)?;
        let id = statement.id;
        let server = self.server.as_mut().expect("acquired");
        if !server.prepared.touch(id.0) {
            let definition = statement.definition.clone();
            self.close_before_prepare(id);
            write_parse(&mut self.to_server, &id.server_name(), &definition);
            self.responses
                .push(Expect::Swallow(id), &mut self.to_client);
        }
        Some(id)
    }

    fn forward_bind(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        let view =
            BindView::parse(body(frame)).map_err(|e| SessionError::Protocol(e.to_string()))?;
        self.note_bound_portal(view.portal, view.statement);
        if view.statement.is_empty() {
            self.ensure_unnamed_prepared();
        }
        let (sets_sequences, seeds) = if view.statement.is_empty() {
            let unnamed = &self.pooled.unnamed;
            (unnamed.sets_sequences, unnamed.seeds)
        } else {
            self.statements
                .get(view.statement)
                .map_or((false, false), |s| (s.sets_sequences, s.seeds))
        };
        self.note_sequence_state(|| sets_sequences);
        self.note_random_seed(seeds);
        match self.ensure_prepared(view.statement) {
            Some(id) => {
                write_bind(
                    &mut self.to_server,
                    view.portal,
                    &id.server_name(),
                    view.rest,
                );
                self.responses
                    .push(Expect::Bind(Some(id)), &mut self.to_client);
            }
            None => self.forward(frame, Expect::Bind(None)),
        }
        Ok(())
    }

    fn forward_describe(&mut self, frame: &[u8], pooled: bool) -> Result<(), SessionError> {
        let target = TargetView::parse(body(frame), "Describe")
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        if target.kind == TargetKind::Portal {
            self.forward(frame, Expect::DescribePortal);
            return Ok(());
        }
        if pooled && target.name.is_empty() {
            self.ensure_unnamed_prepared();
        }
        match pooled.then(|| self.ensure_prepared(target.name)).flatten() {
            Some(id) => {
                write_statement_target(&mut self.to_server, tag::DESCRIBE, &id.server_name());
                self.responses
                    .push(Expect::DescribeStatement(Some(id)), &mut self.to_client);
            }
            None => self.forward(frame, Expect::DescribeStatement(None)),
        }
        Ok(())
    }
}

/// A `Parse` message read once by [`Session::handle_client_message`] (`None` for
/// every other message), handed to what looks into it after.
pub(super) type ParsedParse<'a> = Option<Result<ParseView<'a>, Malformed>>;

/// The `Parse` itself, or the protocol error its malformed frame is.
#[inline]
fn parsed(parse: ParsedParse<'_>) -> Result<ParseView<'_>, SessionError> {
    match parse {
        Some(Ok(view)) => Ok(view),
        Some(Err(error)) => Err(SessionError::Protocol(error.to_string())),
        None => Err(SessionError::Protocol(Malformed("Parse").to_string())),
    }
}
