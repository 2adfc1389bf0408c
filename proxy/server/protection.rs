//! The session's side of protection: the group it waits in when the pool is
//! saturated (`pool.fairness`), quarantined fingerprints, and admission under
//! `[[limits]]` rules (held until the server connection goes back).
//!
//! With nothing quarantined and no rule, a statement costs two atomic loads here and
//! is never fingerprinted.

use bytes::Bytes;

use super::session::Session;
use super::SessionError;
use crate::config::{Config, Fairness};
use crate::protect::{fingerprint_of, Admission, StatementContext};
use crate::protocol::extended::{cstr, BindView, ParseView};
use crate::protocol::frame::{body, query_text};
use crate::protocol::tag::frontend as tag;

/// Per-client protection state.
pub struct SessionProtection {
    fairness: Fairness,
    /// `pgwarden.tenant_id` and `pgwarden.session_key` from the startup packet.
    login_tenant: Option<String>,
    login_session_key: Option<String>,
    /// `SET pgwarden.session_key` (None: never set, or `RESET` to the startup one).
    session_key: Option<String>,
    /// Places under concurrency limits, held while a server is attached.
    admission: Admission,
}

impl SessionProtection {
    pub fn new(config: &Config, options: &[(String, String)]) -> SessionProtection {
        let option = |name: &str| {
            options
                .iter()
                .rev()
                .find(|(n, v)| n == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        SessionProtection {
            fairness: config.pool.fairness,
            login_tenant: option("pgwarden.tenant_id"),
            login_session_key: option("pgwarden.session_key"),
            session_key: None,
            admission: Admission::default(),
        }
    }

    /// `SET pgwarden.session_key` (None: `RESET`).
    pub fn set_session_key(&mut self, key: Option<&str>) {
        self.session_key = key.map(str::to_string);
    }

    /// The statement (transaction) is over: its places under limits go back.
    pub fn release(&mut self) {
        self.admission = Admission::default();
    }
}

impl Session {
    /// The tenant as the guard, routing or the startup packet know it.
    fn protection_tenant(&self) -> Option<&str> {
        self.tenancy
            .as_ref()
            .and_then(|t| t.tenant.as_deref())
            .or_else(|| self.routing.as_ref().and_then(|r| r.tenant.as_deref()))
            .or(self.protection.login_tenant.as_deref())
    }

    /// The group this client waits in when the pool is saturated.
    pub(super) fn fair_group(&self) -> &str {
        match self.protection.fairness {
            Fairness::Off | Fairness::Role => "",
            Fairness::ApplicationName => &self.identity.application_name,
            Fairness::Tenant => self
                .protection_tenant()
                .or(self.protection.session_key.as_deref())
                .or(self.protection.login_session_key.as_deref())
                .unwrap_or(""),
        }
    }

    /// Whether [`Session::protect_statement`] has anything to do for this message: a
    /// quarantine is in force, or the message starts a transaction and limits are set.
    pub(super) fn protection_applies(&self, message_tag: u8) -> bool {
        let protection = &self.runtime.protection;
        protection.quarantine.is_active()
            || (self.starts_a_transaction(message_tag) && protection.has_limits())
    }

    /// Whether the message starts a transaction: one that runs something, with no
    /// server attached.
    fn starts_a_transaction(&self, message_tag: u8) -> bool {
        self.server.is_none()
            && matches!(
                message_tag,
                tag::QUERY | tag::PARSE | tag::BIND | tag::EXECUTE | tag::FUNCTION_CALL
            )
    }

    /// Refuses a quarantined statement, and admits one that starts a transaction
    /// under the `[[limits]]` rules it matches (waiting at most each rule's wait).
    pub(super) async fn protect_statement(
        &mut self,
        message_tag: u8,
        frame: &Bytes,
    ) -> Result<(), SessionError> {
        let protection = &self.runtime.protection;
        let quarantine = protection.quarantine.is_active();
        let starts = self.starts_a_transaction(message_tag);
        let limits = (starts && protection.has_limits()).then(|| protection.limits());
        if !quarantine && limits.is_none() {
            return Ok(());
        }
        let fingerprint = if protection.needs_fingerprint() {
            self.statement_text(message_tag, frame).map(fingerprint_of)
        } else {
            None
        };
        if let Some(id) = fingerprint.filter(|id| protection.quarantine.is_blocked(*id)) {
            protection.quarantine.note_refused(id);
            metrics::counter!("pgwarden_quarantine_refusals_total").increment(1);
            return Err(SessionError::Quarantined(format!("{id:016x}")));
        }
        let Some(limits) = limits else {
            return Ok(());
        };
        self.protection.release();
        let context = StatementContext {
            tenant: self.protection_tenant(),
            role: &self.identity.user,
            database: &self.identity.database,
            application_name: &self.identity.application_name,
            fingerprint,
        };
        let admission = limits
            .admit(&context)
            .await
            .map_err(SessionError::LimitExceeded)?;
        self.protection.admission = admission;
        Ok(())
    }

    /// The SQL text a message runs, when it names one.
    fn statement_text<'a>(&'a self, message_tag: u8, frame: &'a Bytes) -> Option<&'a [u8]> {
        match message_tag {
            tag::QUERY => Some(query_text(frame)),
            tag::PARSE => ParseView::parse(body(frame)).ok().map(|v| v.query),
            tag::BIND => {
                let view = BindView::parse(body(frame)).ok()?;
                if view.statement.is_empty() {
                    return None;
                }
                let statement = self.statements.get(view.statement)?;
                cstr(&statement.definition).map(|(query, _)| query)
            }
            _ => None,
        }
    }
}

impl Session {
    /// A statement that must run on `backend` (the primary) fails fast while its
    /// circuit is open, instead of waiting out a connect timeout.
    pub(super) fn circuit_allows(&self, backend: usize) -> Result<(), SessionError> {
        let Some(b) = self
            .routing
            .as_ref()
            .and_then(|r| r.topology.backends.get(backend))
        else {
            return Ok(());
        };
        if b.circuit.allows() {
            Ok(())
        } else {
            Err(SessionError::CircuitOpen(b.address.clone()))
        }
    }

    /// A request to `backend` failed (could not connect, server lost).
    pub(super) fn note_backend_failure(&self, backend: usize) {
        if let Some(state) = self.routing.as_ref() {
            state.topology.record_failure(backend);
        }
    }

    /// A request to `backend` got a server: closes a half-open circuit.
    pub(super) fn note_backend_success(&self, backend: usize) {
        if let Some(b) = self
            .routing
            .as_ref()
            .and_then(|r| r.topology.backends.get(backend))
        {
            if b.circuit.state() != crate::route::circuit::CircuitState::Closed {
                b.circuit.record_success(&b.address);
            }
        }
    }
}
