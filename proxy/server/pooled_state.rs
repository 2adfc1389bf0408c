//! Server-side session state of one client under transaction pooling: what its
//! statements did to the server session (settings, pins, wiped statements), in both
//! protocols, and the client's unnamed prepared statement, which PostgreSQL keeps
//! until the next unnamed `Parse` even though the proxy may have moved the client to
//! another server connection in between.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::family_verdicts::FamilyVerdicts;
use super::opaque_code::{OpaqueCheck, SessionSafeFunctions};
use super::recent_texts::RecentTexts;
use super::responses::Expect;
use super::session::Session;
use super::session_effects::{Effect, Pins};
use super::statements::statement_effects;
use crate::config::PoolMode;
use crate::protocol::extended::write_parse;
use crate::scan::{Shape, StatementScan};
use crate::stats::EventText;

/// Above this capacity, the unnamed statement's buffer is let go of when a much
/// shorter text follows, so a session does not keep one huge statement's room for its
/// life.
const UNNAMED_KEEP: usize = 8 * 1024;

/// The client's unnamed statement, as last parsed.
#[derive(Debug, Default)]
pub struct UnnamedStatement {
    /// Reused buffer: query, NUL, parameter types, exactly as sent.
    pub definition: BytesMut,
    /// Bytes of `definition` before its NUL: the query.
    query_len: usize,
    /// The query's shape (None before the first `Parse`), for the statistics of the
    /// statements that run it: they need not scan the text again.
    pub shape: Option<Shape>,
    /// A shared copy of the query, made for the first statistics event that holds
    /// the text shared (longer than an event holds inline) and dropped when the text
    /// changes: a driver repeating one long unnamed text copies it once.
    shared_query: Option<Bytes>,
    pub effects: Option<Arc<[Effect]>>,
    /// Executing it may leave `currval`/`lastval` state (`sequence_state.rs`).
    pub sets_sequences: bool,
    /// Executing it may seed the session's random numbers (`random_seed.rs`).
    pub seeds: bool,
    /// The attached server has it (parsed there since it was attached).
    pub on_server: bool,
    pub exists: bool,
    /// What the last few unnamed texts do, for a driver that parses a few in turn.
    pub recent: RecentTexts<UnnamedVerdicts>,
}

impl UnnamedStatement {
    /// Hands the definition over into `into` (whose buffer it takes in exchange, to
    /// be filled by the next `Parse`); returns the query's length in it.
    pub fn take_definition(&mut self, into: &mut BytesMut) -> usize {
        std::mem::swap(&mut self.definition, into);
        self.query_len
    }

    /// The query as a statistics event holds it: copied when short, else shared
    /// from one copy per text.
    pub fn event_text(&mut self) -> EventText {
        let query = &self.definition[..self.query_len];
        let shared = &mut self.shared_query;
        EventText::copied_or(query, || {
            shared
                .get_or_insert_with(|| Bytes::copy_from_slice(query))
                .clone()
        })
    }

    /// An unnamed statement of `query` (no parameter types), as a `Parse` leaves it.
    #[cfg(test)]
    pub fn parsed(query: &[u8]) -> UnnamedStatement {
        let mut definition = BytesMut::from(query);
        definition.extend_from_slice(&[0, 0, 0]);
        UnnamedStatement {
            definition,
            query_len: query.len(),
            shape: Some(crate::scan::scan(query).shape),
            exists: true,
            ..UnnamedStatement::default()
        }
    }
}

/// What an unnamed statement's text does to the server session, and its shape, as
/// worked out when it was parsed.
#[derive(Debug, Clone)]
pub struct UnnamedVerdicts {
    shape: Shape,
    effects: Option<Arc<[Effect]>>,
    sets_sequences: bool,
    seeds: bool,
    /// Whether the database's session-safe functions were known when the text was
    /// judged: once they are, a text judged without them is judged again (a call
    /// counted as opaque may turn out safe).
    with_safe_functions: bool,
}

#[derive(Debug)]
pub struct PooledState {
    /// State that ties the client to its server connection.
    pub pins: Pins,
    /// `pool.pin_session_state`.
    pub pin_enabled: bool,
    /// `pool.max_prepared_statements`.
    pub max_prepared: usize,
    pub unnamed: UnnamedStatement,
    /// Portals bound to statements with session effects, applied at `Execute`.
    pub portal_effects: Vec<(Bytes, Arc<[Effect]>)>,
    /// The database's session-safe function names (`opaque_code.rs`); loaded at
    /// the first checkout (`server_lease.rs`) when pins are on.
    pub safe_functions: Option<Arc<SessionSafeFunctions>>,
    /// Whether simple queries of a text family run opaque code (`opaque_code.rs`).
    family_verdicts: FamilyVerdicts,
    warned_unpinned: bool,
}

impl PooledState {
    pub fn new(
        pin_enabled: bool,
        max_prepared: usize,
        safe_functions: Option<Arc<SessionSafeFunctions>>,
    ) -> PooledState {
        PooledState {
            pins: Pins::default(),
            pin_enabled,
            max_prepared,
            unnamed: UnnamedStatement::default(),
            portal_effects: Vec::new(),
            safe_functions,
            family_verdicts: FamilyVerdicts::default(),
            warned_unpinned: false,
        }
    }

    pub fn is_pinned(&self) -> bool {
        !self.pins.is_empty()
    }

    /// Whether statements are checked for code the proxy cannot see into: under
    /// transaction pooling with `pool.pin_session_state` on (off means state may stay on
    /// shared connections, as with PgBouncer).
    pub fn checks_opaque_code(&self, mode: PoolMode) -> bool {
        mode == PoolMode::Transaction && self.pin_enabled
    }

    pub fn opaque_check(&self, mode: PoolMode) -> Option<OpaqueCheck<'_>> {
        self.checks_opaque_code(mode)
            .then_some(OpaqueCheck(self.safe_functions.as_deref()))
    }

    /// Whether the simple query `sql` (scanned as `scanned`) runs code the proxy cannot
    /// see into, when that is checked at all.
    fn query_runs_opaque_code(
        &mut self,
        mode: PoolMode,
        sql: &[u8],
        scanned: &StatementScan,
    ) -> bool {
        if !scanned.may_call || !self.checks_opaque_code(mode) {
            return false;
        }
        let check = OpaqueCheck(self.safe_functions.as_deref());
        self.family_verdicts
            .runs_opaque_code(check, sql, scanned.family)
    }
}

impl Session {
    /// Applies what a statement (sent now, or executed now as a portal) does to the
    /// server session. Pins hold from the moment it is sent; settings and the end of
    /// pinned state count once the statement has committed.
    pub(super) fn apply_effects(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Setting(_) | Effect::Unknown => self.server_settings_changed(),
                Effect::Pin(pins) => self.pin(*pins),
                Effect::Unpin(_) => {}
                Effect::DiscardAll | Effect::DeallocateAll => {
                    self.server_settings_changed();
                    if let Some(server) = self.server.as_mut() {
                        // Gone if it succeeds; if not, closing them first is harmless.
                        server.prepared.mark_all_stale();
                    }
                    self.statements.clear();
                }
                Effect::Deallocate(name) => {
                    self.statements.remove(name.as_bytes());
                }
                Effect::OpaqueCode => {
                    if let Some(server) = self.server.as_mut() {
                        server.needs_reset = true;
                    }
                }
            }
            if matches!(
                effect,
                Effect::Setting(_) | Effect::Unpin(_) | Effect::DiscardAll | Effect::DeallocateAll
            ) {
                self.pending_settings.in_flight.push(effect.clone());
            }
        }
    }

    fn pin(&mut self, pins: Pins) {
        if self.mode != PoolMode::Transaction {
            return;
        }
        if !self.pooled.pin_enabled {
            // Today's PgBouncer-like behaviour: the state stays on the pooled server.
            self.server_settings_changed();
            if !self.pooled.warned_unpinned {
                self.pooled.warned_unpinned = true;
                tracing::warn!(user = %self.identity.user, state = %pins.describe(),
                    "session state created under transaction pooling with pool.pin_session_state = false: it stays on a shared server connection");
            }
            return;
        }
        if !self.pooled.is_pinned() {
            metrics::counter!("pgwarden_pinned_clients_total").increment(1);
            tracing::debug!(user = %self.identity.user, state = %pins.describe(), "client pinned to its server connection");
        }
        self.pooled.pins.insert(pins);
        self.cancel.slot.set_pins(self.pooled.pins);
    }

    /// `Query` (simple protocol) in transaction pooling: its effects, and the end of
    /// the unnamed statement (a simple query destroys it, as in PostgreSQL).
    /// `scanned` is the text's scan (made once by the caller).
    pub(super) fn on_simple_query(&mut self, sql: &[u8], scanned: &StatementScan) {
        self.pooled.unnamed.exists = false;
        self.pooled.unnamed.on_server = false;
        if !scanned.may_have_effects && !self.pooled.query_runs_opaque_code(self.mode, sql, scanned)
        {
            return;
        }
        let opaque = self.pooled.opaque_check(self.mode);
        if let Some(effects) = statement_effects(sql, scanned, opaque) {
            self.apply_effects(&effects);
        }
    }

    /// A client `Parse` of the unnamed statement is being forwarded.
    pub(super) fn on_unnamed_parse(&mut self, definition: &[u8], query: &[u8]) {
        // Drivers send the same unnamed text again and again, or a few in turn: their
        // effects are known.
        if self.pooled.unnamed.definition != definition {
            let with_safe_functions = self.pooled.safe_functions.is_some();
            let known = self
                .pooled
                .unnamed
                .recent
                .get(definition)
                .filter(|known| known.with_safe_functions == with_safe_functions)
                .cloned();
            let verdicts = known.unwrap_or_else(|| {
                let scanned = crate::scan::scan(query);
                let verdicts = UnnamedVerdicts {
                    shape: scanned.shape,
                    effects: statement_effects(
                        query,
                        &scanned,
                        self.pooled.opaque_check(self.mode),
                    ),
                    sets_sequences: scanned.may_set_sequences,
                    seeds: scanned.may_seed,
                    with_safe_functions,
                };
                self.pooled
                    .unnamed
                    .recent
                    .remember(definition, verdicts.clone());
                verdicts
            });
            let unnamed = &mut self.pooled.unnamed;
            if let Some(stats) = self.stats.as_mut() {
                // A portal bound to the old text still runs it.
                stats.unnamed_replaced(unnamed);
            }
            if unnamed.definition.capacity() > UNNAMED_KEEP
                && definition.len() < unnamed.definition.capacity() / 4
            {
                unnamed.definition = BytesMut::new();
            }
            unnamed.definition.clear();
            unnamed.definition.extend_from_slice(definition);
            unnamed.query_len = query.len();
            unnamed.shape = Some(verdicts.shape);
            unnamed.shared_query = None;
            unnamed.effects = verdicts.effects;
            unnamed.sets_sequences = verdicts.sets_sequences;
            unnamed.seeds = verdicts.seeds;
        }
        let unnamed = &mut self.pooled.unnamed;
        unnamed.on_server = true;
        unnamed.exists = true;
    }

    /// Before a `Bind` or `Describe` of the unnamed statement: when the client parsed
    /// it on another server connection, parse it again here (answer not shown).
    pub(super) fn ensure_unnamed_prepared(&mut self) {
        let unnamed = &mut self.pooled.unnamed;
        if unnamed.on_server || !unnamed.exists {
            return;
        }
        write_parse(&mut self.to_server, b"", &unnamed.definition);
        unnamed.on_server = true;
        self.responses
            .push(Expect::SwallowUnnamed, &mut self.to_client);
    }

    /// `Bind`: remembers the portal when its statement has session effects.
    pub(super) fn note_bound_portal(&mut self, portal: &[u8], statement: &[u8]) {
        let effects = if statement.is_empty() {
            self.pooled.unnamed.effects.clone()
        } else {
            self.statements
                .get(statement)
                .and_then(|s| s.effects.clone())
        };
        self.pooled.portal_effects.retain(|(p, _)| p != portal);
        if let Some(effects) = effects {
            self.pooled
                .portal_effects
                .push((Bytes::copy_from_slice(portal), effects));
        }
    }

    /// `Execute` of a portal: applies its statement's session effects.
    pub(super) fn on_execute_portal(&mut self, portal: &[u8]) {
        if self.pooled.portal_effects.is_empty() {
            return;
        }
        let effects = self
            .pooled
            .portal_effects
            .iter()
            .find(|(p, _)| p == portal)
            .map(|(_, e)| e.clone());
        if let Some(effects) = effects {
            self.apply_effects(&effects);
        }
    }

    /// The server connection changed: nothing the client parsed is on the new one.
    pub(super) fn server_switched(&mut self) {
        self.pooled.unnamed.on_server = false;
        self.pooled.portal_effects.clear();
    }
}
