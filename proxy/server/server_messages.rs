//! What each server message does: relayed byte for byte (the common case, copied in
//! runs, never decoded), dropped (answers to proxy-injected messages), or observed on
//! the way (`ReadyForQuery` status, errors and command tags for settings tracking).

use bytes::Buf;

use super::pump::move_relayed;
use super::responses::{Disposition, Expect};
use super::session::{PendingSettings, Session};
use super::session_effects::{Effect, Pins};
use super::settings::{SessionSettings, SettingChange};
use super::statements::StatementId;
use super::streamed_frame::announced_len;
use super::SessionError;
use crate::protocol::backend::{command_tag, error_code};
use crate::protocol::frame::check_frame;
use crate::protocol::tag::{backend as tag, TransactionStatus};
use crate::route::replica_refusals::{standby_refusal, StandbyRefusal};

/// PostgreSQL's own limit on one message is 1 GiB.
const MAX_SERVER_MESSAGE: usize = (1 << 30) + 64;

impl Session {
    pub(super) fn handle_server_messages(&mut self) -> Result<(), SessionError> {
        match self.replica_answer_before_relay() {
            ReplicaAnswer::Relay => {}
            ReplicaAnswer::Failed => {
                self.server_failed();
                return Err(SessionError::ServerLost(
                    "replica terminated the connection".into(),
                ));
            }
            ReplicaAnswer::Refused(refusal) => {
                self.replica_refused(refusal);
                return Err(SessionError::ServerLost("replica refused a read".into()));
            }
        }
        if let Some(state) = self.routing.as_mut() {
            if !state.retry_frames.is_empty()
                && self.server.as_ref().is_some_and(|s| !s.read_buf.is_empty())
            {
                state.forget_frames(); // the answer has started: no retry from here on
            }
        }
        let can_outlive_server = self.can_outlive_server();
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if !server.read_buf.is_empty() {
            // The server answers what came after any held proxy answers: those first.
            self.responses.release_held(&mut self.to_client);
        }
        let watch_settings = !self.pending_settings.is_idle();
        let served = if self.backend == 0 {
            crate::stats::Served::Primary
        } else {
            crate::stats::Served::Replica
        };
        // Bytes at the front of the server buffer already known to be relayed: first
        // the rest of a large message being streamed (streamed_frame.rs).
        let mut relay_run = self.streamed.take(server.read_buf.len());
        // Rows relayed since the statistics last looked (they count the rows of an
        // `Execute` that ends suspended, whose answer has no command tag).
        let mut data_rows = 0u64;
        loop {
            if self.streamed.is_open() {
                break;
            }
            let rest = &server.read_buf[relay_run..];
            let len = match check_frame(rest, MAX_SERVER_MESSAGE) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    let total = announced_len(rest).unwrap_or(0);
                    if self.streamed.start(rest, total) {
                        data_rows += u64::from(rest[0] == tag::DATA_ROW);
                        // Only DataRow/CopyData: relayed, never the end of an answer.
                        let (disposition, popped) = self.responses.on_server_message(rest[0]);
                        debug_assert!(disposition == Disposition::Relay && popped.is_none());
                        relay_run = server.read_buf.len();
                    }
                    break;
                }
                Err(e) => {
                    server.mark_broken();
                    return Err(SessionError::ServerLost(e.to_string()));
                }
            };
            let message_tag = rest[0];
            if message_tag == tag::DATA_ROW || message_tag == tag::COPY_DATA {
                // Rows and COPY data are only relayed: the response queue, settings
                // and statistics read the messages around them, never these. A large
                // result is a million of them, so they skip the rest of the loop. (The
                // queue's one effect of any message, dropping `CopyEnd` marks at its
                // head, has already happened: rows always follow a RowDescription,
                // BindComplete or CopyOutResponse, which pass through it.)
                relay_run += len;
                data_rows += u64::from(message_tag == tag::DATA_ROW);
                continue;
            }
            tracing::trace!(tag = %(message_tag as char), len, "server message");
            if message_tag == tag::NOTIFICATION_RESPONSE && len >= 9 {
                // The client knows its own backend by the pid it was given.
                let at = relay_run + 5;
                if server.read_buf[at..at + 4] == server.key.pid.to_be_bytes() {
                    server.read_buf[at..at + 4].copy_from_slice(&self.cancel.pid.to_be_bytes());
                }
            }
            if message_tag == tag::ERROR_RESPONSE
                && is_fatal(&server.read_buf[relay_run + 5..relay_run + len])
            {
                if can_outlive_server {
                    // Transaction pooling: the client outlives this server connection
                    // and is told as an ERROR where it is owed one (lost_server.rs).
                    self.to_client
                        .extend_from_slice(&server.read_buf[..relay_run]);
                    let body = server.read_buf[relay_run + 5..relay_run + len].to_vec();
                    self.note_server_fatal(&body);
                    self.server_failed();
                    return Err(SessionError::ServerLost(
                        "the server ended the connection".into(),
                    ));
                }
                // The server ends the connection with this error: the client's last word.
                self.server_said_fatal = true;
            }
            let rest = &server.read_buf[relay_run..];
            let (disposition, popped) = self.responses.on_server_message(message_tag);
            let mut stale_plan = None;
            let reported = message_tag == tag::PARAMETER_STATUS;
            let string_syntax = if reported {
                crate::pool::nonstandard_strings_in(&rest[..len])
            } else {
                None
            };
            if let Some(Expect::Parse(Some(id))) = &popped {
                if message_tag == tag::PARSE_COMPLETE {
                    self.pool.remember_statement(id.0);
                }
            }
            match message_tag {
                tag::COPY_IN_RESPONSE => self.responses.on_copy_in_started(),
                tag::READY_FOR_QUERY => {
                    if let Some(database) = self.draining_database.take() {
                        self.runtime.pools.stop_draining(&database);
                        self.runtime.cache.resume_database(&database);
                    }
                    self.status = rest
                        .get(5)
                        .copied()
                        .and_then(TransactionStatus::from_byte)
                        .unwrap_or(TransactionStatus::Failed);
                }
                tag::ERROR_RESPONSE => {
                    if watch_settings {
                        self.pending_settings.failed = true;
                    }
                    if let Some(Expect::Bind(Some(id)) | Expect::DescribeStatement(Some(id))) =
                        &popped
                    {
                        if error_code(&rest[5..len]) == Some(b"0A000") {
                            stale_plan = Some(*id);
                        }
                    }
                }
                tag::COMMAND_COMPLETE
                    if watch_settings && command_tag(&rest[5..len]) == b"ROLLBACK" =>
                {
                    self.pending_settings.rolled_back = true;
                }
                _ => {}
            }
            if let Some(stats) = self.stats.as_mut() {
                stats.on_data_rows(std::mem::take(&mut data_rows));
                match message_tag {
                    tag::COMMAND_COMPLETE => stats.on_command_complete(&rest[5..len]),
                    tag::PORTAL_SUSPENDED => stats.on_portal_suspended(),
                    tag::ERROR_RESPONSE if popped.is_some() => {
                        // Extended protocol: the batch failed up to its Sync.
                        for _ in 0..self.responses.take_failed_executes() {
                            stats.finish_one(&self.runtime.stats, served, true);
                        }
                        stats.reset_error();
                    }
                    tag::ERROR_RESPONSE if self.responses.answering_query() => {
                        // A simple query ends at its error: drivers return it to the
                        // application before `ReadyForQuery` arrives.
                        stats.finish_query_at_error(&self.runtime.stats, served);
                    }
                    tag::ERROR_RESPONSE => stats.on_error(),
                    tag::READY_FOR_QUERY if self.status != TransactionStatus::InTransaction => {
                        stats.transaction_ended(&self.runtime.stats)
                    }
                    _ => {}
                }
                match popped {
                    _ if message_tag == tag::ERROR_RESPONSE => {}
                    Some(Expect::Query) => stats.query_answered(&self.runtime.stats, served),
                    Some(Expect::Execute) => stats.finish_one(&self.runtime.stats, served, false),
                    _ => {}
                }
            }
            if reported {
                // A setting changed, perhaps where the proxy could not see it (a
                // function calling set_config): the next client of this connection gets
                // its own settings replayed, not these.
                server.settings_hash = super::settings::UNKNOWN_SETTINGS;
            }
            if let Some(nonstandard) = string_syntax {
                // Every later statement on this connection is lexed this way.
                server.nonstandard_strings = nonstandard;
            }
            if let Some(id) = stale_plan {
                // "cached plan must not change result type": this server's copy is
                // stale, and so is the shared name on every other server.
                server.prepared.mark_stale(id.0);
                if let Some(definition) = self.statements.definition_of(id) {
                    StatementId::retire(&definition, id);
                }
            }
            match disposition {
                Disposition::Relay => relay_run += len,
                Disposition::Drop => {
                    move_relayed(&mut self.to_client, &mut server.read_buf, relay_run);
                    server.read_buf.advance(len);
                    relay_run = 0;
                }
            }
            if popped.is_some() {
                if self.responses.synthetic_due() {
                    // The server's answers so far go before the proxy's own.
                    move_relayed(&mut self.to_client, &mut server.read_buf, relay_run);
                    relay_run = 0;
                    self.responses.flush_synthetic(&mut self.to_client);
                }
                for id in self.responses.take_failed_parses() {
                    server.prepared.remove(id.0);
                }
                for id in self.responses.take_skipped_closes() {
                    server.prepared.mark_stale(id.0);
                }
            }
            if message_tag == tag::READY_FOR_QUERY && watch_settings {
                settle_settings(
                    &mut self.pending_settings,
                    &mut self.settings,
                    &mut self.pooled.pins,
                    self.status,
                );
                self.cancel.slot.set_pins(self.pooled.pins);
            }
        }
        if relay_run > 0 {
            move_relayed(&mut self.to_client, &mut server.read_buf, relay_run);
        }
        if let Some(stats) = self.stats.as_mut() {
            stats.on_data_rows(data_rows);
        }
        Ok(())
    }
}

/// What a replica's answer to a retryable request (an autocommit read, none of whose
/// answer reached the client yet) calls for.
enum ReplicaAnswer {
    /// Relay it.
    Relay,
    /// The replica ended it with a FATAL error (shutting down, restarting): retry
    /// elsewhere, as for a lost connection.
    Failed,
    /// The replica refused it as a hot standby refuses serializable mode and unlogged
    /// tables (`route/replica_refusals.rs`): retry on the primary.
    Refused(StandbyRefusal),
}

impl Session {
    /// A replica ended a request that can still be retried with a FATAL error, or
    /// refused it as a hot standby, before the client was sent any of the answer. Neither need
    /// come first: a backend stopped mid-query sends the `RowDescription` it had
    /// buffered, then the FATAL, in one write; an unlogged table is refused when the
    /// query is planned, after the `ParseComplete` of the extended protocol or the
    /// answers to earlier statements of the same `Query`. None of it has reached the
    /// client yet, and the request only reads, so all of it can be run again.
    fn replica_answer_before_relay(&self) -> ReplicaAnswer {
        let (Some(state), Some(server)) = (self.routing.as_ref(), self.server.as_ref()) else {
            return ReplicaAnswer::Relay;
        };
        if self.backend == 0 || state.retry_frames.is_empty() {
            return ReplicaAnswer::Relay;
        }
        let mut rest = &server.read_buf[..];
        while let Ok(Some(len)) = check_frame(rest, MAX_SERVER_MESSAGE) {
            match rest[0] {
                tag::ERROR_RESPONSE if is_fatal(&rest[5..len]) => return ReplicaAnswer::Failed,
                tag::ERROR_RESPONSE => {
                    if let Some(refusal) = standby_refusal(&rest[5..len]) {
                        return ReplicaAnswer::Refused(refusal);
                    }
                    rest = &rest[len..];
                }
                tag::READY_FOR_QUERY => return ReplicaAnswer::Relay,
                _ => rest = &rest[len..],
            }
        }
        ReplicaAnswer::Relay
    }

    /// The replica refused this read: the connection is closed (it may be in the
    /// middle of its answer), and the read is retried on the primary with the replica
    /// left healthy (`retry_elsewhere`). What caused the refusal is learned, so the
    /// next such reads go to the primary first: the role for serializable mode, the
    /// request's shape for an unlogged table.
    fn replica_refused(&mut self, refusal: StandbyRefusal) {
        let serializable = refusal == StandbyRefusal::Serializable;
        let shape = match self.routing.as_ref() {
            Some(state) if !serializable => state
                .retry_frames
                .first()
                .and_then(|frame| self.refusal_shape(frame[0], frame)),
            _ => None,
        };
        metrics::counter!("pgwarden_replica_refusals_total", "cause" => if serializable { "serializable" } else { "unlogged" })
            .increment(1);
        if let Some(state) = self.routing.as_mut() {
            state.refused_by_replica = true;
            if let Some(shape) = shape {
                state.topology.refused_shapes.learn(shape);
            }
        }
        if serializable {
            self.learn_serializable_role();
        }
        self.server_failed();
    }
}

/// Whether an `ErrorResponse` body has severity FATAL or PANIC.
fn is_fatal(body: &[u8]) -> bool {
    body.split(|b| *b == 0).any(|field| {
        matches!(field.first(), Some(b'S') | Some(b'V'))
            && matches!(&field[1..], b"FATAL" | b"PANIC")
    })
}

/// At `ReadyForQuery`: settings changes that succeeded become the client's own, and
/// pinned state that was dropped for good stops pinning.
fn settle_settings(
    pending: &mut PendingSettings,
    settings: &mut SessionSettings,
    pins: &mut Pins,
    status: TransactionStatus,
) {
    {
        let in_flight = std::mem::take(&mut pending.in_flight);
        if !pending.failed {
            pending.in_transaction.extend(in_flight);
        }
        pending.failed = false;
        if status == TransactionStatus::Idle {
            let changes = std::mem::take(&mut pending.in_transaction);
            if !pending.rolled_back {
                for change in &changes {
                    match change {
                        Effect::Setting(change) => settings.apply(change),
                        Effect::Unpin(gone) => pins.remove(*gone),
                        Effect::DiscardAll => {
                            settings.apply(&SettingChange::ResetAll);
                            *pins = Pins::default();
                        }
                        Effect::DeallocateAll => pins.remove(Pins::SQL_PREPARE),
                        _ => {}
                    }
                }
            }
            pending.rolled_back = false;
        }
    }
}
