//! `SET pgwarden.route`, `pgwarden.session_key` and, with replicas,
//! `pgwarden.tenant_id` (and their `RESET`): settings of the proxy, with or without
//! replicas, whichever protocol carries them.
//!
//! - A simple `Query` is answered by pgwarden itself, with the transaction status the
//!   statements before it left, or refused with 25P02 in a failed transaction.
//! - A prepared statement (`Parse`, as JDBC, asyncpg's `fetch` and psycopg with
//!   parameters send it) still runs on the server, so that every answer of the
//!   extended protocol (`ParseComplete`, `Describe`'s, errors in a failed batch) is
//!   PostgreSQL's own; but its text becomes `SET pgwarden.x TO DEFAULT` (`RESET
//!   pgwarden.x`), which PostgreSQL accepts for any value (`primary` is a reserved word
//!   there) and which leaves no value behind on a pooled connection (an empty
//!   placeholder setting at most, as any custom setting leaves). The setting takes
//!   effect when the statement is bound.
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
use crate::route::proxy_setting_of;

/// A statement the client prepared from `SET pgwarden.*`: applied when bound.
pub struct SettingStatement {
    statement: Bytes,
    name: String,
    value: String,
}

/// Whether `text` may be a lone `SET` or `RESET`: it opens with one of them (or with
/// a comment). Every statement pays this test, so it looks at a few bytes only.
fn may_be_setting(text: &[u8]) -> bool {
    crate::protocol::text::opens_with_word_or_comment(text, &[b"set", b"reset"])
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
    /// The `pgwarden.*` setting a statement text makes, if pgwarden keeps it: always
    /// `pgwarden.route` and `pgwarden.session_key`; `pgwarden.tenant_id` with replicas
    /// (the guard keeps it in a guarded session, `tenant_change.rs`; otherwise it is
    /// PostgreSQL's, a setting `current_setting` can read).
    fn proxy_setting(&self, text: &[u8]) -> Option<(String, String)> {
        if !may_be_setting(text) || !contains_ignoring_case(text, b"pgwarden.") {
            return None;
        }
        let (name, value) = proxy_setting_of(&lossy(text))?;
        let guarded = self.tenancy.as_ref().is_some_and(|t| !t.bypass);
        let tenant_is_ours = self.routing.is_some() && !guarded;
        (name != "pgwarden.tenant_id" || tenant_is_ours).then_some((name, value))
    }

    /// Gives a `pgwarden.*` setting to every part of the session that follows it:
    /// routing, the statistics' session key (the N+1 detector's sessions) and fair
    /// queueing. False when the name or the value is unknown.
    fn apply_proxy_setting(&mut self, name: &str, value: &str) -> bool {
        if !SessionRouting::accepts_setting(name, value) {
            return false;
        }
        if name == "pgwarden.session_key" {
            let key = (!value.is_empty()).then_some(value);
            if let Some(stats) = self.stats.as_mut() {
                stats.set_session_key(key);
            }
            self.protection.set_session_key(key);
        }
        if let Some(routing) = self.routing.as_mut() {
            routing.apply_setting(name, value);
        }
        true
    }

    /// Handles `SET pgwarden.*` in a simple query, whether or not a server is attached:
    /// PostgreSQL never sees it. Statements the client sent before it finish first, so
    /// the answer carries the real transaction status. Returns true when answered.
    pub(super) async fn answer_proxy_setting(
        &mut self,
        frame: &[u8],
    ) -> Result<bool, SessionError> {
        let text = query_text(frame);
        let Some((name, value)) = self.proxy_setting(text) else {
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
        if !self.apply_proxy_setting(&name, &value) {
            return Err(SessionError::BadProxySetting(format!("{name} = {value}")));
        }
        self.responses.push(
            Expect::Synthetic(setting_answer(text, status)),
            &mut self.to_client,
        );
        Ok(true)
    }

    /// Whether [`Self::follow_setting_statements`] has anything to do with this
    /// message. Every message asks, so it decides most of them with a look at the
    /// first bytes of a `Parse`'s text.
    #[inline]
    pub(super) fn follows_setting_statements(&self, message_tag: u8, frame: &[u8]) -> bool {
        if !self.setting_statements.is_empty() {
            return true;
        }
        if message_tag != tag::PARSE {
            return false;
        }
        crate::protocol::extended::cstr(body(frame)).is_none_or(|(_, text)| may_be_setting(text))
    }

    /// Whether a simple `Query` may be `SET pgwarden.*` (a look at its first bytes), so
    /// that [`Self::answer_proxy_setting`] is asked.
    #[inline]
    pub(super) fn may_answer_proxy_setting(frame: &[u8]) -> bool {
        may_be_setting(query_text(frame))
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
        let malformed =
            |e: crate::protocol::extended::Malformed| SessionError::Protocol(e.to_string());
        match message_tag {
            tag::PARSE => {
                let view = ParseView::parse(body(&frame)).map_err(malformed)?;
                if !self.setting_statements.is_empty() {
                    self.setting_statements
                        .retain(|s| s.statement[..] != *view.statement);
                }
                let Some((name, value)) = self.proxy_setting(view.query) else {
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
                self.setting_statements.push(SettingStatement {
                    statement: Bytes::copy_from_slice(view.statement),
                    name,
                    value,
                });
                Ok(view.with_query(&replacement))
            }
            _ if self.setting_statements.is_empty() => Ok(frame),
            tag::BIND => {
                let view = BindView::parse(body(&frame)).map_err(malformed)?;
                let bound = self
                    .setting_statements
                    .iter()
                    .find(|s| s.statement[..] == *view.statement)
                    .map(|s| (s.name.clone(), s.value.clone()));
                if let Some((name, value)) = bound {
                    self.apply_proxy_setting(&name, &value);
                }
                Ok(frame)
            }
            tag::CLOSE => {
                let target = TargetView::parse(body(&frame), "Close").map_err(malformed)?;
                if target.kind == TargetKind::Statement {
                    self.setting_statements
                        .retain(|s| s.statement[..] != *target.name);
                }
                Ok(frame)
            }
            tag::QUERY => {
                // A simple query replaces the unnamed statement.
                self.setting_statements.retain(|s| !s.statement.is_empty());
                Ok(frame)
            }
            _ => Ok(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::may_be_setting;

    #[test]
    fn only_set_reset_or_a_comment_may_be_a_setting() {
        for text in [
            "SET pgwarden.route = primary",
            "  reset pgwarden.route",
            "/* x */ SET a = 1",
            "-- x\nSET a = 1",
            "Set a = 1",
        ] {
            assert!(may_be_setting(text.as_bytes()), "{text}");
        }
        for text in [
            "SELECT 'pgwarden.route'",
            "select 1",
            "",
            "se",
            "UPDATE t SET a = 1",
        ] {
            assert!(!may_be_setting(text.as_bytes()), "{text}");
        }
    }
}
