//! Changing a guarded session's tenant: `SET` / `RESET pgwarden.tenant_id`.
//!
//! - In a simple query, pgwarden answers it itself, once the statements sent before it
//!   have finished (so a pipelined change is judged with the real transaction status).
//! - As a prepared statement (JDBC's `Statement.execute`, asyncpg's `fetch`, psycopg
//!   with parameters), PostgreSQL still runs a statement in its place, so that every
//!   answer of the extended protocol is its own: one that sets `tenancy.set_config` to
//!   the new tenant, or `SET pgwarden.tenant_id TO DEFAULT` without it (which leaves
//!   nothing behind). The change takes effect when the statement is bound, checked as
//!   the simple query is: never inside a transaction, never for a role mapped to its
//!   tenant. Before, PostgreSQL ran the text as a setting of its own and the guard
//!   kept judging with the old tenant.

use bytes::Bytes;

use super::proxy_settings::{is_reset, setting_answer};
use super::responses::Expect;
use super::session::Session;
use super::tenancy::{starts_with_word, GuardedStatement};
use super::SessionError;
use crate::protocol::extended::ParseView;
use crate::protocol::sql_quote::quote_literal;
use crate::protocol::tag::TransactionStatus;
use crate::tenant::{Rejection, RejectionKind};

/// `SET pgwarden.tenant_id = '42'` → Some(Some("42")); `RESET pgwarden.tenant_id`
/// → Some(None); anything else → None.
pub(super) fn tenant_setting(sql: &str) -> Option<Option<String>> {
    // Most statements are neither: decide on the first word before trimming the end
    // or copying anything.
    let start = sql.trim_start();
    if !(starts_with_word(start, "set") || starts_with_word(start, "reset")) {
        return None;
    }
    let text = start.trim_end().trim_end_matches(';').trim_end();
    if text.contains(';') {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    match words.next()? {
        "reset" => {
            (words.next()? == "pgwarden.tenant_id" && words.next().is_none()).then_some(None)
        }
        "set" => {
            let rest = lower["set".len()..].trim_start();
            let rest = rest.strip_prefix("session ").unwrap_or(rest).trim_start();
            let rest = rest.strip_prefix("pgwarden.tenant_id")?.trim_start();
            let value_start = if let Some(v) = rest.strip_prefix('=') {
                v
            } else {
                rest.strip_prefix("to ")?
            };
            // Take the value from the original text to keep its case.
            let value = text[text.len() - value_start.len()..].trim();
            let value = value.trim_matches('\'').trim_matches('"');
            match value.to_ascii_lowercase().as_str() {
                "default" => Some(None),
                _ => Some(Some(value.to_string())),
            }
        }
        _ => None,
    }
}

impl Session {
    /// `SET/RESET pgwarden.tenant_id` in a simple query, answered by the proxy.
    pub(super) async fn change_tenant(
        &mut self,
        value: Option<String>,
        sql: &str,
    ) -> Result<(), SessionError> {
        let config = self.runtime.config();
        self.check_tenant_change(value.as_deref())?;
        // A client may send the change right behind statements still running (a
        // pipeline): they finish first, as they would in PostgreSQL, before judging.
        self.settle_in_flight().await?;
        let in_transaction = self.server.is_some() && self.status != TransactionStatus::Idle;
        if in_transaction || !self.responses.is_empty() {
            return Err(SessionError::TenantChangeInTransaction);
        }
        self.set_tenant(value);
        if let (Some(name), Some(server)) =
            (config.tenancy.set_config.as_deref(), self.server.as_mut())
        {
            // Session pooling keeps its server: give it the new setting now.
            if let Err(e) = server.run_internal(&self.settings.replay_sql()).await {
                server.mark_broken();
                tracing::warn!(setting = name, error = %e, "could not apply the tenant setting");
                return Err(SessionError::Pool(e));
            }
            server.settings_hash = self.settings.hash();
        }
        let answer = setting_answer(sql.as_bytes(), self.status);
        self.responses
            .push(Expect::Synthetic(answer), &mut self.to_client);
        Ok(())
    }

    /// Refuses a change this session may not make: a role mapped to its tenant, or a
    /// value `tenancy.value_type` does not take.
    fn check_tenant_change(&self, value: Option<&str>) -> Result<(), SessionError> {
        let state = self.tenancy.as_ref().expect("guarded session");
        if state.fixed_by_role {
            return Err(SessionError::TenantGuard(Rejection::new(
                RejectionKind::SettingNotAllowed,
                "changing pgwarden.tenant_id of a role mapped in tenancy.roles",
            )));
        }
        if let Some(value) = value {
            self.runtime
                .config()
                .tenancy
                .check_tenant_value(value)
                .map_err(SessionError::BadProxySetting)?;
        }
        Ok(())
    }

    /// The new tenant, for the guard, read-your-writes and the row-level security
    /// setting replayed on the next server this client takes.
    fn set_tenant(&mut self, value: Option<String>) {
        let config = self.runtime.config();
        if let Some(routing) = self.routing.as_mut() {
            routing.apply_setting("pgwarden.tenant_id", value.as_deref().unwrap_or(""));
        }
        let state = self.tenancy.as_mut().expect("guarded session");
        state.tenant = value;
        state.apply_rls_setting(&config, &mut self.settings);
    }

    /// A `Parse` of `SET/RESET pgwarden.tenant_id`: checked, remembered with its
    /// statement, and given to PostgreSQL as the statement the module doc describes.
    /// Returns the `Parse` to forward.
    pub(super) fn prepare_tenant_change(
        &mut self,
        view: &ParseView,
        change: Option<String>,
    ) -> Result<Bytes, SessionError> {
        self.check_tenant_change(change.as_deref())?;
        let config = self.runtime.config();
        let resets = is_reset(view.query);
        let stand_in = match (config.tenancy.set_config.as_deref(), &change) {
            (Some(name), Some(tenant)) => format!("SET {name} = {}", quote_literal(tenant)),
            (Some(name), None) if resets => format!("RESET {name}"),
            (Some(name), None) => format!("SET {name} TO DEFAULT"),
            (None, _) if resets => "RESET pgwarden.tenant_id".to_string(),
            (None, _) => "SET pgwarden.tenant_id TO DEFAULT".to_string(),
        };
        let state = self.tenancy.as_mut().expect("guarded session");
        state.statements.insert(
            Bytes::copy_from_slice(view.statement),
            GuardedStatement {
                tenant: state.tenant.clone(),
                tenant_params: Vec::new(),
                sets_tenant: Some(change),
            },
        );
        Ok(view.with_query(&stand_in))
    }

    /// The `Bind` of a tenant change: requests the client sent before this one finish
    /// first; then it is refused inside a transaction, or behind a statement executed
    /// earlier in the same batch (its implicit transaction), and takes effect otherwise.
    pub(super) async fn bind_tenant_change(
        &mut self,
        change: Option<String>,
    ) -> Result<(), SessionError> {
        self.settle_earlier_requests().await?;
        let in_transaction = self.server.is_some() && self.status != TransactionStatus::Idle;
        if in_transaction || self.executed_in_batch {
            return Err(SessionError::TenantChangeInTransaction);
        }
        self.check_tenant_change(change.as_deref())?;
        self.set_tenant(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_settings_are_recognised() {
        assert_eq!(
            tenant_setting("SET pgwarden.tenant_id = '42'"),
            Some(Some("42".into()))
        );
        assert_eq!(
            tenant_setting("set pgwarden.tenant_id to Acme;"),
            Some(Some("Acme".into()))
        );
        assert_eq!(
            tenant_setting("SET SESSION pgwarden.tenant_id = 7"),
            Some(Some("7".into()))
        );
        assert_eq!(tenant_setting("RESET pgwarden.tenant_id"), Some(None));
        assert_eq!(
            tenant_setting("SET pgwarden.tenant_id = DEFAULT"),
            Some(None)
        );
        assert_eq!(
            tenant_setting("SET pgwarden.tenant_id = 1; DELETE FROM t"),
            None
        );
        assert_eq!(tenant_setting("SET pgwarden.route = primary"), None);
        assert_eq!(tenant_setting("SELECT 1"), None);
    }
}
