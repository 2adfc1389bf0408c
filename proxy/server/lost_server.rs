//! Transaction pooling outlives a lost server connection.
//!
//! When the server connection of a transaction-pooled client dies (the primary
//! restarts, a backend is terminated, the network drops), the client's connection is
//! to pgwarden, not to that backend, so it need not die too. The client gets one
//! clean error where it is owed an answer, exactly once, and then goes on with a new
//! server connection:
//! - requests in flight: an `ErrorResponse` (the server's own FATAL code, e.g. `57P01`
//!   or `57P02`, as an ERROR; else `08006`), then `ReadyForQuery` (idle) for each
//!   `Query`/`Sync` owed; an extended batch without its `Sync` yet is skipped up to it;
//! - an open transaction with nothing in flight: the error answers the client's next
//!   request instead, since it is not expecting anything now.
//!
//! The transaction is gone in either case (`ReadyForQuery` says idle). Session pooling,
//! and clients whose session state is pinned to that server (temporary tables, `LISTEN`,
//! ...), lose their session with it: the server's FATAL is relayed and the connection
//! closes, as PostgreSQL does.

use bytes::BytesMut;

use super::responses::Expect;
use super::session::{PendingSettings, Session};
use super::SessionError;
use crate::config::PoolMode;
use crate::protocol::backend;
use crate::protocol::error::{ErrorFields, SqlState};
use crate::protocol::tag::{frontend as tag, TransactionStatus};

/// What the client was owed when its server connection was lost.
#[derive(Debug)]
pub struct LostServer {
    /// `ReadyForQuery` owed for `Query`/`Sync` messages in flight.
    owed_ends: usize,
    /// Any answer owed at all.
    owed_anything: bool,
    /// Extended-protocol messages sent without their `Sync` yet.
    batch_open: bool,
    /// Inside a transaction when the connection was lost.
    in_transaction: bool,
    /// The error the server ended the connection with, if it said one.
    server_error: Option<ErrorFields>,
    /// Nothing was owed when the connection was lost: this error answers the
    /// client's next request.
    pub(super) pending: Option<ErrorFields>,
}

impl Session {
    /// Whether this client can outlive its server connection.
    pub(super) fn can_outlive_server(&self) -> bool {
        self.mode == PoolMode::Transaction && !self.pooled.is_pinned()
    }

    /// Called as the server connection is found broken, before it is released: notes
    /// what the client is owed.
    pub(super) fn note_lost_server(&mut self) {
        if !self.can_outlive_server() {
            return;
        }
        let server_error = self.lost.take().and_then(|lost| lost.server_error);
        self.lost = Some(Box::new(LostServer {
            owed_ends: self.responses.owed_ends(),
            owed_anything: !self.responses.is_empty(),
            batch_open: self.batch_open,
            in_transaction: self.status != TransactionStatus::Idle,
            server_error,
            pending: None,
        }));
    }

    /// The server owed an answer and sent nothing for `pool.query_timeout_ms`: its
    /// connection is closed, and the client told 57014.
    pub(super) fn server_hung(&mut self, ms: u64) -> SessionError {
        tracing::warn!(
            ms,
            "no answer from the server within pool.query_timeout_ms; closing it"
        );
        let mut error = ErrorFields::error(
            SqlState::QUERY_CANCELED,
            format!("pgwarden: no answer from the server within pool.query_timeout_ms ({ms} ms)"),
        );
        error.hint = Some("The server connection was closed as hung.".into());
        self.note_lost_error(error);
        self.server_failed();
        SessionError::ServerLost(format!("no answer within {ms} ms"))
    }

    /// The server sent a FATAL error and is closing: kept to tell the client as an
    /// ERROR, instead of relaying a FATAL that would make it close its connection.
    pub(super) fn note_server_fatal(&mut self, body: &[u8]) {
        let code = match backend::error_code(body) {
            Some(b"57P01") => SqlState::ADMIN_SHUTDOWN,
            Some(b"57P02") => SqlState::CRASH_SHUTDOWN,
            Some(b"57P03") => SqlState::CANNOT_CONNECT_NOW,
            _ => SqlState::CONNECTION_FAILURE,
        };
        let message = body
            .split(|b| *b == 0)
            .find(|field| field.first() == Some(&b'M'))
            .map(|field| String::from_utf8_lossy(&field[1..]).into_owned())
            .unwrap_or_else(|| "the server ended the connection".into());
        self.note_lost_error(ErrorFields::error(code, message));
    }

    /// The error to tell the client when the connection, about to be found broken,
    /// is gone.
    fn note_lost_error(&mut self, error: ErrorFields) {
        self.lost = Some(Box::new(LostServer {
            owed_ends: 0,
            owed_anything: false,
            batch_open: false,
            in_transaction: false,
            server_error: Some(error),
            pending: None,
        }));
    }

    /// After the server connection was lost and no retry elsewhere was possible: tells
    /// the client what it is owed and keeps serving it. False when the client cannot
    /// outlive its server (the session then ends, as before).
    pub(super) fn outlive_lost_server(&mut self, reason: &str) -> bool {
        if !self.can_outlive_server() {
            return false;
        }
        let Some(lost) = self.lost.take() else {
            return false;
        };
        let mut error = lost.server_error.clone().unwrap_or_else(|| {
            ErrorFields::error(
                SqlState::CONNECTION_FAILURE,
                format!("pgwarden: lost the server connection ({reason})"),
            )
        });
        error.detail = Some(
            "The server connection of this transaction ended; the transaction is gone. \
             A COMMIT in flight may or may not have been applied."
                .into(),
        );
        tracing::info!(reason, "server connection lost; the client goes on");
        self.pending_settings = PendingSettings::default();
        self.status = TransactionStatus::Idle;
        if lost.owed_anything || lost.batch_open {
            // One error per request owed (an open batch is one more, answered at its
            // `Sync`), each `Query`/`Sync` with its `ReadyForQuery`.
            let errors = (lost.owed_ends + usize::from(lost.batch_open)).max(1);
            self.answer_with(&error, errors, lost.owed_ends);
            self.skip_until_sync = errors > lost.owed_ends;
        } else if lost.in_transaction {
            self.lost = Some(Box::new(LostServer {
                pending: Some(error),
                ..*lost
            }));
        }
        true
    }

    /// A client request arrived after its transaction was lost with nothing owed:
    /// the kept error answers it. Returns true when the message was consumed.
    pub(super) fn answer_lost_transaction(&mut self, message_tag: u8) -> bool {
        let Some(error) = self.lost.as_mut().and_then(|lost| lost.pending.take()) else {
            return false;
        };
        self.lost = None;
        match message_tag {
            tag::QUERY | tag::FUNCTION_CALL | tag::SYNC => self.answer_with(&error, 1, 1),
            tag::TERMINATE => return false,
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // Not a request: the error waits for one.
                self.lost = Some(Box::new(LostServer {
                    owed_ends: 0,
                    owed_anything: false,
                    batch_open: false,
                    in_transaction: true,
                    server_error: None,
                    pending: Some(error),
                }));
            }
            _ => {
                // Extended protocol: the error, then everything up to `Sync` is skipped.
                self.answer_with(&error, 1, 0);
                self.skip_until_sync = true;
            }
        }
        true
    }

    /// `errors` error responses, the first `ready` of them followed by `ReadyForQuery`.
    fn answer_with(&mut self, error: &ErrorFields, errors: usize, ready: usize) {
        let mut answer = BytesMut::new();
        for i in 0..errors {
            error.encode(&mut answer);
            if i < ready {
                backend::ready_for_query(&mut answer, TransactionStatus::Idle);
            }
        }
        self.responses.release_held(&mut self.to_client);
        self.responses
            .push(Expect::Synthetic(answer.freeze()), &mut self.to_client);
    }
}
