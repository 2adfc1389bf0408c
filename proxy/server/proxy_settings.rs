//! `SET pgwarden.route`, `pgwarden.session_key` and `pgwarden.tenant_id` (and their
//! `RESET`) with replicas: settings of the proxy, whichever protocol carries them.
//!
//! - A simple `Query` is answered by pgwarden itself, with the transaction status the
//!   statements before it left, or refused with 25P02 in a failed transaction.
//! - A prepared statement (`Parse`, as JDBC, asyncpg's `fetch` and psycopg with
//!   parameters send it) still runs on the server, so that every answer of the
//!   extended protocol (`ParseComplete`, `Describe`'s, errors in a failed batch) is
//!   PostgreSQL's own; but its text becomes `SET pgwarden.x TO DEFAULT` (`RESET
//!   pgwarden.x`), which PostgreSQL accepts for any value (`primary` is a reserved word
//!   there) and which leaves no setting behind on a pooled connection. The setting
//!   takes effect when the statement is bound.
//!
//! Settings apply from the next statement on and are not undone by `ROLLBACK`.

use bytes::{Bytes, BytesMut};

use super::responses::Expect;
use super::routing::SessionRouting;
use super::session::Session;
use super::SessionError;
use crate::protocol::backend;
use crate::protocol::extended::{BindView, ParseView, TargetKind, TargetView};
use crate::protocol::frame::{body, query_text};
use crate::protocol::tag::{frontend as tag, TransactionStatus};
use crate::protocol::text::{contains_ignoring_case, lossy};
use crate::route::StatementClass;

/// A statement the client prepared from `SET pgwarden.*`: applied when bound.
pub struct SettingStatement {
    statement: Bytes,
    name: String,
    value: String,
}

/// The setting a statement text makes (`RESET` gives an empty value), if it is one.
fn proxy_setting(routing: &SessionRouting, text: &[u8]) -> Option<(String, String)> {
    if !contains_ignoring_case(text, b"pgwarden.") {
        return None;
    }
    match routing.routing.classify(&lossy(text)) {
        StatementClass::ProxySetting { name, value } => Some((name, value)),
        _ => None,
    }
}

/// The text is a `RESET` (answered `RESET`, not `SET`).
pub(super) fn is_reset(text: &[u8]) -> bool {
    super::tenancy::starts_with_word(lossy(text).trim_start(), "reset")
}

/// PostgreSQL's answer to a `SET` or `RESET` statement `text` (`CommandComplete`,
/// `ReadyForQuery` with `status`), for one the proxy answers itself.
pub(super) fn setting_answer(text: &[u8], status: TransactionStatus) -> Bytes {
    let command: &[u8] = if is_reset(text) { b"RESET\0" } else { b"SET\0" };
    let mut answer = BytesMut::with_capacity(16);
    answer.extend_from_slice(&[b'C', 0, 0, 0, 4 + command.len() as u8]);
    answer.extend_from_slice(command);
    backend::ready_for_query(&mut answer, status);
    answer.freeze()
}

impl Session {
    /// Handles `SET pgwarden.*` in a simple query, whether or not a server is attached:
    /// PostgreSQL never sees it. Statements the client sent before it finish first, so
    /// the answer carries the real transaction status. Returns true when answered.
    pub(super) async fn answer_proxy_setting(
        &mut self,
        frame: &[u8],
    ) -> Result<bool, SessionError> {
        let text = query_text(frame);
        let Some((name, value)) = self.routing.as_ref().and_then(|r| proxy_setting(r, text)) else {
            return Ok(false);
        };
        self.settle_in_flight().await?;
        let status = match self.server {
            Some(_) => self.status,
            None => TransactionStatus::Idle,
        };
        if status == TransactionStatus::Failed {
            return Err(SessionError::TransactionAborted);
        }
        let state = self.routing.as_mut().expect("checked above");
        if !state.apply_setting(&name, &value) {
            return Err(SessionError::BadProxySetting(format!("{name} = {value}")));
        }
        self.responses.push(
            Expect::Synthetic(setting_answer(text, status)),
            &mut self.to_client,
        );
        Ok(true)
    }

    /// Follows the client's statements made from `SET pgwarden.*` through the extended
    /// protocol: a `Parse` of one is rewritten (see the module doc) and remembered by
    /// statement name, its `Bind` applies the setting, and a `Close`, a new `Parse` of
    /// the name or (for the unnamed statement) a simple query forget it. Returns the
    /// frame to use.
    pub(super) fn follow_setting_statements(
        &mut self,
        message_tag: u8,
        frame: Bytes,
    ) -> Result<Bytes, SessionError> {
        // The guard follows tenant changes itself (`tenant_change.rs`).
        let guarded = self.tenancy.as_ref().is_some_and(|t| !t.bypass);
        let Some(state) = self.routing.as_mut() else {
            return Ok(frame);
        };
        let malformed =
            |e: crate::protocol::extended::Malformed| SessionError::Protocol(e.to_string());
        match message_tag {
            tag::PARSE => {
                let view = ParseView::parse(body(&frame)).map_err(malformed)?;
                if !state.setting_statements.is_empty() {
                    state
                        .setting_statements
                        .retain(|s| s.statement[..] != *view.statement);
                }
                let Some((name, value)) = proxy_setting(state, view.query)
                    .filter(|(name, _)| !(guarded && name == "pgwarden.tenant_id"))
                else {
                    return Ok(frame);
                };
                if !SessionRouting::accepts_setting(&name, &value) {
                    return Err(SessionError::BadProxySetting(format!("{name} = {value}")));
                }
                let replacement = if is_reset(view.query) {
                    format!("RESET {name}")
                } else {
                    format!("SET {name} TO DEFAULT")
                };
                state.setting_statements.push(SettingStatement {
                    statement: Bytes::copy_from_slice(view.statement),
                    name,
                    value,
                });
                Ok(view.with_query(&replacement))
            }
            _ if state.setting_statements.is_empty() => Ok(frame),
            tag::BIND => {
                let view = BindView::parse(body(&frame)).map_err(malformed)?;
                let bound = state
                    .setting_statements
                    .iter()
                    .find(|s| s.statement[..] == *view.statement)
                    .map(|s| (s.name.clone(), s.value.clone()));
                if let Some((name, value)) = bound {
                    state.apply_setting(&name, &value);
                }
                Ok(frame)
            }
            tag::CLOSE => {
                let target = TargetView::parse(body(&frame), "Close").map_err(malformed)?;
                if target.kind == TargetKind::Statement {
                    state
                        .setting_statements
                        .retain(|s| s.statement[..] != *target.name);
                }
                Ok(frame)
            }
            tag::QUERY => {
                // A simple query replaces the unnamed statement.
                state.setting_statements.retain(|s| !s.statement.is_empty());
                Ok(frame)
            }
            _ => Ok(frame),
        }
    }
}
