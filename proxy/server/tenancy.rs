//! The session's side of the tenant guard: which tenant this client is (changing it
//! is `tenant_change.rs`), and applying the guard's decisions to the client's
//! messages before anything reaches a server — `Query` and `Parse` are judged (and
//! rewritten), `Bind` of a guarded statement is checked against the tenant it was
//! prepared for and its tenant parameters, `FunctionCall` is refused. Decisions come
//! from the `tenant` room.

use std::sync::Arc;

use bytes::Bytes;

use super::session::Session;
use super::settings::SessionSettings;
use super::SessionError;
use crate::config::{Config, TenancyMode};
use crate::protocol::extended::{BindView, ParseView, TargetKind, TargetView};
use crate::protocol::frame::body;
use crate::protocol::tag::frontend as tag;
use crate::tenant::{
    params_are_tenant, Decision, Rejection, RejectionKind, ShapeMemo, TenantGuard,
};

/// What the guard remembers of a statement it judged at Parse.
#[derive(Debug, Clone)]
pub(super) struct GuardedStatement {
    pub(super) tenant: Option<String>,
    pub(super) tenant_params: Vec<usize>,
    /// The statement changes the tenant (`SET pgwarden.tenant_id`, `tenant_change.rs`).
    pub(super) sets_tenant: Option<Option<String>>,
}

/// Per-client tenant state; present when the database's tenancy mode is not `off`,
/// or `tenancy.set_config` is set (row-level security with the tenant from pgwarden).
pub struct TenantSession {
    pub mode: TenancyMode,
    pub tenant: Option<String>,
    /// The tenant comes from `tenancy.roles` and cannot be changed.
    pub fixed_by_role: bool,
    /// The role is in `tenancy.bypass_roles`: statements are not judged.
    pub bypass: bool,
    pub(super) statements: crate::stats::ProcessMap<Bytes, GuardedStatement>,
    /// The shapes this session's texts had last (`tenant/shape_memo.rs`).
    pub(super) shapes: ShapeMemo,
}

impl TenantSession {
    /// The tenant state of a new client, or None when its database is not guarded.
    /// `options` are the `pgwarden.*` startup options.
    pub fn for_login(
        config: &Config,
        database: &str,
        user: &str,
        options: &[(String, String)],
        settings: &mut SessionSettings,
    ) -> Result<Option<TenantSession>, SessionError> {
        let mode = config.tenancy_mode_for(database);
        if mode == TenancyMode::Off && config.tenancy.set_config.is_none() {
            return Ok(None);
        }
        let tenancy = &config.tenancy;
        let bypass = tenancy.bypass_roles.iter().any(|r| r == user);
        let role_tenant = tenancy.roles.get(user).cloned();
        let mut tenant = role_tenant.clone();
        if tenant.is_none() {
            if let Some((_, value)) = options.iter().find(|(n, _)| n == "pgwarden.tenant_id") {
                if !value.is_empty() {
                    tenancy
                        .check_tenant_value(value)
                        .map_err(SessionError::BadProxySetting)?;
                    tenant = Some(value.clone());
                }
            }
        }
        if mode != TenancyMode::Off && !bypass {
            if let Some(name) = crate::tenant::policy::STRING_SYNTAX_SETTINGS
                .into_iter()
                .find(|name| settings.mentions(name))
            {
                return Err(SessionError::TenantGuard(Rejection::new(
                    RejectionKind::SettingNotAllowed,
                    format!("changing {name}"),
                )));
            }
        }
        let session = TenantSession {
            mode,
            tenant,
            fixed_by_role: role_tenant.is_some(),
            bypass,
            statements: crate::stats::ProcessMap::default(),
            shapes: ShapeMemo::default(),
        };
        if !bypass {
            session.apply_rls_setting(config, settings);
        }
        Ok(Some(session))
    }

    /// `tenancy.set_config` follows the tenant (and a client cannot set it itself).
    pub(super) fn apply_rls_setting(&self, config: &Config, settings: &mut SessionSettings) {
        let Some(name) = config.tenancy.set_config.as_deref() else {
            return;
        };
        settings.forget(name);
        if let Some(tenant) = &self.tenant {
            settings.set_value(name, tenant);
        }
    }
}

fn query_text(frame: &[u8]) -> String {
    crate::protocol::text::lossy(crate::protocol::frame::query_text(frame)).into_owned()
}

/// A simple-protocol `Query` message running `sql`, written by the one writer of
/// such messages, the guard's (`RewrittenSql`).
pub(super) fn query_frame(sql: &str) -> Bytes {
    crate::tenant::RewrittenSql::from(sql).query_frame()
}

/// Looks like DDL: the catalog may have changed.
fn may_change_catalog(sql: &str) -> bool {
    let text = sql.trim_start();
    ["create", "alter", "drop", "comment", "grant", "revoke"]
        .iter()
        .any(|w| starts_with_word(text, w))
}

/// Whether `text` begins with `word`, in any case (a prefix test: `created` counts).
pub(super) fn starts_with_word(text: &str, word: &str) -> bool {
    text.get(..word.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(word))
}

/// Whether the guard looks at messages with this tag at all: the others (`Describe`,
/// `Execute`, `Sync`, copy data...) carry no statement, name or call, and go by
/// without the guard's (boxed) future.
pub(super) fn judges(message_tag: u8) -> bool {
    matches!(
        message_tag,
        tag::QUERY | tag::PARSE | tag::BIND | tag::CLOSE | tag::FUNCTION_CALL
    )
}

impl Session {
    /// Judges a client message before it goes anywhere (one [`judges`] names).
    /// Returns the frame to use (the same one, or a rewritten one). `Answered` means
    /// the proxy answered it.
    pub(super) async fn guard_message(
        &mut self,
        message_tag: u8,
        frame: Bytes,
    ) -> Result<Bytes, SessionError> {
        let Some(state) = self.tenancy.as_ref() else {
            return Ok(frame);
        };
        // The statement text, decoded once: only `Query` and `Parse` carry one. It is
        // borrowed from a second handle on the frame's bytes (valid UTF-8 is not
        // copied), since `frame` itself is handed back.
        let bytes = frame.clone();
        let text = match message_tag {
            tag::QUERY => Some(crate::protocol::text::lossy(
                crate::protocol::frame::query_text(&bytes),
            )),
            tag::PARSE if !state.bypass => ParseView::parse(body(&bytes))
                .ok()
                .map(|view| crate::protocol::text::lossy(view.query)),
            _ => None,
        };
        if message_tag == tag::QUERY && text.as_deref().is_some_and(may_change_catalog) {
            // Bypass roles and audit mode run DDL: look at the catalog again.
            self.runtime
                .tenancy()
                .request_refresh(&self.identity.database);
        }
        if state.bypass {
            return Ok(frame);
        }
        if let (tag::QUERY, Some(sql)) = (message_tag, &text) {
            if let Some(change) = super::tenant_change::tenant_setting(sql) {
                self.change_tenant(change, sql).await?;
                return Err(SessionError::Answered);
            }
        }
        // In every mode (audit too): the row-level security setting is pgwarden's.
        self.refuse_rls_setting_changes(message_tag, text.as_deref())?;
        if state.mode == TenancyMode::Off {
            return Ok(frame); // only `tenancy.set_config`: nothing to judge
        }
        match message_tag {
            tag::QUERY => {
                let sql = text.unwrap_or_default();
                match self.judge(&sql).await? {
                    Some(decision) => match decision.as_ref() {
                        Decision::Rewritten { sql, .. } => Ok(sql.query_frame()),
                        _ => Ok(frame),
                    },
                    None => Ok(frame),
                }
            }
            tag::PARSE => {
                let view = ParseView::parse(body(&frame))
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                let sql = text.unwrap_or_default();
                if let Some(change) = super::tenant_change::tenant_setting(&sql) {
                    return self.prepare_tenant_change(&view, change);
                }
                let name = Bytes::copy_from_slice(view.statement);
                let decision = self.judge(&sql).await?;
                let state = self.tenancy.as_mut().expect("checked above");
                state.statements.insert(
                    name,
                    GuardedStatement {
                        tenant: state.tenant.clone(),
                        tenant_params: decision
                            .as_ref()
                            .map(|d| d.tenant_params().to_vec())
                            .unwrap_or_default(),
                        sets_tenant: None,
                    },
                );
                match decision.as_deref() {
                    Some(Decision::Rewritten { sql, .. }) => Ok(view.with_query(sql)),
                    _ => Ok(frame),
                }
            }
            tag::BIND => {
                if let Some(change) = self.check_bind(&frame)? {
                    self.bind_tenant_change(change).await?;
                }
                Ok(frame)
            }
            tag::CLOSE => {
                if let Ok(target) = TargetView::parse(body(&frame), "Close") {
                    if target.kind == TargetKind::Statement {
                        if let Some(state) = self.tenancy.as_mut() {
                            state.statements.remove(target.name);
                        }
                    }
                }
                Ok(frame)
            }
            tag::FUNCTION_CALL => {
                let rejection = Rejection::new(
                    RejectionKind::StatementNotAllowed,
                    "the FunctionCall protocol message (fast-path function calls)",
                );
                self.refuse(rejection, "<function call>").map(|_| frame)
            }
            // Only the tags `judges` names are handed to this function: a tag given a
            // case here must be added there.
            _ => Ok(frame),
        }
    }

    /// A statement that so much as names the row-level security setting is
    /// refused: it could change it (`SET`, `set_config`, `RESET`).
    fn refuse_rls_setting_changes(
        &self,
        message_tag: u8,
        text: Option<&str>,
    ) -> Result<(), SessionError> {
        if text.is_none() && message_tag != tag::FUNCTION_CALL {
            return Ok(());
        }
        let config = self.runtime.config();
        let Some(name) = config.tenancy.set_config.as_deref() else {
            return Ok(());
        };
        // A fast-path function call could be set_config itself.
        let names_it = text.is_none_or(|text| {
            text.to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase())
        });
        if names_it {
            return Err(SessionError::TenantGuard(Rejection::new(
                RejectionKind::SettingNotAllowed,
                format!("a statement naming {name} (tenancy.set_config)"),
            )));
        }
        Ok(())
    }

    /// The guard's decision for `sql`; None when it may run unchanged. Refusals are
    /// counted, and returned as errors unless the mode is `audit`.
    async fn judge(&mut self, sql: &str) -> Result<Option<Arc<Decision>>, SessionError> {
        let state = self.tenancy.as_mut().expect("guarded session");
        let guard: Arc<TenantGuard> = self.runtime.tenancy();
        // Timed only when traced: no clock read per statement otherwise.
        let started = tracing::enabled!(tracing::Level::TRACE).then(std::time::Instant::now);
        let decision = guard
            .decide(
                &mut state.shapes,
                &self.identity.database,
                state.mode,
                state.tenant.as_deref(),
                sql,
            )
            .await
            .map_err(SessionError::TenantGuardUnavailable)?;
        if let Some(started) = started {
            tracing::trace!(
                micros = started.elapsed().as_micros() as u64,
                "tenant guard decided"
            );
        }
        if let Decision::Reject(rejection) = decision.as_ref() {
            self.refuse(rejection.clone(), sql)?;
            return Ok(None);
        }
        Ok(Some(decision))
    }

    /// Counts a refusal; an error unless the mode is `audit`.
    fn refuse(&self, rejection: Rejection, sql: &str) -> Result<(), SessionError> {
        let state = self.tenancy.as_ref().expect("guarded session");
        let audited = state.mode == TenancyMode::Audit;
        self.runtime.violations.record(
            &self.identity.database,
            state.tenant.as_deref(),
            sql,
            &rejection,
            audited,
        );
        if audited {
            tracing::warn!(
                database = %self.identity.database,
                tenant = state.tenant.as_deref().unwrap_or("(none)"),
                reason = %rejection,
                "tenant guard (audit): statement could reach other tenants"
            );
            return Ok(());
        }
        Err(SessionError::TenantGuard(rejection))
    }

    /// A guarded statement runs only where PostgreSQL reads string literals as the
    /// guard did, with `standard_conforming_strings = on`. With it off (a role,
    /// database or server default, or a change the guard did not see), `\'` ends no
    /// string, and a literal the guard judged harmless could hold SQL. Only `Query`
    /// and `Parse` carry text to lex, and only a backslash lexes differently, so a
    /// text without one (`ROLLBACK`, most statements) still runs. The server
    /// connection is attached.
    pub(super) fn check_string_syntax(
        &self,
        message_tag: u8,
        frame: &[u8],
    ) -> Result<(), SessionError> {
        let Some(state) = self.tenancy.as_ref() else {
            return Ok(());
        };
        if state.bypass
            || state.mode == TenancyMode::Off
            || !matches!(message_tag, tag::QUERY | tag::PARSE)
            || !self.server.as_ref().is_some_and(|s| s.nonstandard_strings)
            || !frame.contains(&b'\\')
        {
            return Ok(());
        }
        let sql = match message_tag {
            tag::QUERY => query_text(frame),
            _ => ParseView::parse(body(frame))
                .map(|view| crate::protocol::text::lossy(view.query).into_owned())
                .unwrap_or_default(),
        };
        self.refuse(
            Rejection::new(RejectionKind::NonstandardStrings, "string literals"),
            &sql,
        )
    }

    /// A guarded statement runs only for the tenant it was judged for, and with its
    /// tenant parameters equal to that tenant. One prepared from `SET/RESET
    /// pgwarden.tenant_id` is not checked: the tenant it changes to is returned, for
    /// [`Self::bind_tenant_change`].
    fn check_bind(&self, frame: &[u8]) -> Result<Option<Option<String>>, SessionError> {
        let view =
            BindView::parse(body(frame)).map_err(|e| SessionError::Protocol(e.to_string()))?;
        let state = self.tenancy.as_ref().expect("guarded session");
        let Some(statement) = state.statements.get(view.statement) else {
            return Ok(None);
        };
        if let Some(change) = &statement.sets_tenant {
            return Ok(Some(change.clone()));
        }
        let name = crate::protocol::text::lossy(view.statement).into_owned();
        if statement.tenant != state.tenant {
            return self
                .refuse(
                    Rejection::new(RejectionKind::PreparedForOtherTenant, format!("{name:?}")),
                    &name,
                )
                .map(|_| None);
        }
        if !statement.tenant_params.is_empty() {
            let tenant = state.tenant.as_deref().unwrap_or_default();
            let config = &self.runtime.tenancy().config;
            if !params_are_tenant(
                view.rest,
                &statement.tenant_params,
                config.value_type,
                tenant,
            ) {
                return self
                    .refuse(
                        Rejection::new(
                            RejectionKind::ForeignTenantValue,
                            format!(
                                "a parameter compared with or written to {} is not the session's tenant",
                                config.column
                            ),
                        ),
                        &name,
                    )
                    .map(|_| None);
            }
        }
        Ok(None)
    }
}
