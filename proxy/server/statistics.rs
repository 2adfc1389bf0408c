//! The session's side of query statistics: when each statement was sent, which text it
//! ran, the rows and errors its answer reported, counted by the stats recorder (in this
//! thread's shard) when the answer is complete. Only timestamps and cheap `Bytes`
//! handles on the data path.
//!
//! A statement in flight keeps its text copied when short (`EventText`), so the
//! client's read buffer is not held until the answer and can be reused in place; a
//! long `Query` text shares the buffer until then. A text remembered beyond
//! its message (a portal's statement) is copied, so it never pins a whole read buffer
//! for the life of the session. The unnamed statement's text and shape are the
//! session's (`UnnamedStatement`, worked out once per text at its `Parse`); a
//! statement's shape travels with its event, so the recorder scans no text a session
//! scanned already. A session-pooled client's named statements, and every client's
//! named portals (a result read in steps), are kept here by name, bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::pooled_state::UnnamedStatement;
use super::portal_steps::{portal_key, OpenPortals, PortalKey, Run, Tally};
use super::session::Session;
use crate::protocol::extended::{cstr, execute_portal, BindView};
use crate::protocol::frame::{body, query_text, HEADER_LEN};
use crate::protocol::tag::frontend as tag;
use crate::scan::Shape;
use crate::stats::clock::{self, Instant};
use crate::stats::{rows_from_tag, EventText, ProcessMap, Served, StatementEvent, StatsRecorder};

struct InFlight {
    started: Instant,
    /// Copied when short, so the client's read buffer is not held until the answer.
    sql: EventText,
    /// Its shape, from the session's scan of a simple query or of the prepared
    /// statement's `Parse`.
    shape: Option<Shape>,
    /// A hash of the bound parameters (0: simple query).
    params: u64,
    session_key: u64,
    /// The portal an `Execute` ran (`None`: a simple query or function call).
    portal: Option<PortalKey>,
}

/// Numbers client connections for the N+1 detector's sessions.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

fn hash_bytes(bytes: &[u8]) -> u64 {
    crate::stats::process_hash(bytes).max(1)
}

/// Statements of one session whose answers are not complete yet.
/// The recorder is the runtime's (`Runtime::stats`), passed in, not a copy per session
/// (issue 13: RSS per idle client).
pub struct SessionStats {
    in_flight: VecDeque<InFlight>,
    rows: u64,
    /// Rows relayed since the last statement finished: an `Execute` that ends
    /// suspended (a portal read in steps) reports no count, so its rows are these.
    data_rows: u64,
    error: bool,
    /// Text and shape of the statement the last `Bind` bound.
    portal: PortalText,
    /// The definition of an unnamed statement a portal was bound to, kept when the
    /// next unnamed `Parse` came before the portal's `Execute`.
    portal_kept: BytesMut,
    /// A hash of the parameters the last `Bind` bound.
    portal_params: u64,
    /// Named portals (JDBC's fetches in steps): what each runs, with its parameters'
    /// hash; at most [`NAMED_PORTALS_KEPT`], the oldest forgotten first, and all of
    /// them when their transaction ends.
    named_portals: Vec<(Bytes, PortalText, u64)>,
    /// The answer being read ended with `PortalSuspended` (a row limit reached).
    suspended: bool,
    /// Portals read in steps, counted once they are done (`portal_steps.rs`).
    open_portals: OpenPortals,
    /// The simple query being answered was counted at its `ErrorResponse`.
    query_finished_at_error: bool,
    client: u64,
    /// A hash of `pgwarden.session_key` given at startup (0: none).
    startup_session_key: u64,
    /// A hash of the session key now: the startup one until a `SET`.
    session_key: u64,
    /// Session pooling: the client's named statements' texts and shapes (transaction
    /// pooling keeps them in the session's pooled statements). Boxed: most sessions
    /// never name a statement.
    named: Option<Box<NamedTexts>>,
}

/// A session-pooled client's named statements, by name: the query text and its shape.
#[derive(Default)]
struct NamedTexts {
    by_name: ProcessMap<Bytes, (Bytes, Shape)>,
    bytes: usize,
}

/// Named portals a session keeps track of at once (a driver keeps a few open, one per
/// result it reads in steps).
const NAMED_PORTALS_KEPT: usize = 16;

/// The named statements' texts a session-pooled client may keep before they are
/// forgotten (their executions are then counted as `<unknown portal>`).
const NAMED_TEXTS_MAX_BYTES: usize = 4 << 20;

/// What the last `Bind` bound, for the statement its `Execute` runs.
#[derive(Clone)]
enum PortalText {
    /// No statement we know of.
    Unknown,
    /// The unnamed statement, whose text and shape are the session's
    /// (`UnnamedStatement`) until the next unnamed `Parse` (which keeps them here
    /// first, `Kept`).
    Unnamed,
    /// An unnamed statement's definition in `portal_kept` (the query is the first
    /// this many bytes), and its shape.
    Kept(usize, Option<Shape>),
    /// A named statement's text and shape.
    Named(Bytes, Shape),
}

impl PortalText {
    /// The unnamed statement (`parsed`: a `Parse` gave it a text).
    fn unnamed(parsed: bool) -> PortalText {
        if parsed {
            PortalText::Unnamed
        } else {
            PortalText::Unknown
        }
    }
}

fn key_hash(key: Option<&str>) -> u64 {
    key.filter(|k| !k.is_empty())
        .map_or(0, |k| hash_bytes(k.as_bytes()))
}

impl SessionStats {
    /// `SET pgwarden.session_key` (None: `RESET`, back to the startup key).
    pub fn set_session_key(&mut self, key: Option<&str>) {
        self.session_key = match key {
            Some(_) => key_hash(key),
            None => self.startup_session_key,
        };
    }

    pub fn new(session_key: Option<&str>) -> SessionStats {
        SessionStats {
            portal_params: 0,
            query_finished_at_error: false,
            client: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            startup_session_key: key_hash(session_key),
            session_key: key_hash(session_key),
            in_flight: VecDeque::new(),
            rows: 0,
            data_rows: 0,
            error: false,
            portal: PortalText::Unknown,
            portal_kept: BytesMut::new(),
            named_portals: Vec::new(),
            suspended: false,
            open_portals: OpenPortals::default(),
            named: None,
        }
    }

    /// A `Bind` to a named portal: what it runs, kept under its name (a text the
    /// session's unnamed statement holds is copied, since a later `Parse` replaces it).
    fn bind_named_portal(
        &mut self,
        name: &[u8],
        text: PortalText,
        unnamed: &mut UnnamedStatement,
        params: u64,
    ) {
        let text = match (text, unnamed.shape) {
            (PortalText::Unnamed, Some(shape)) => {
                PortalText::Named(Bytes::copy_from_slice(&unnamed.event_text()), shape)
            }
            (PortalText::Unnamed, None) => PortalText::Unknown,
            (text, _) => text,
        };
        self.named_portals
            .retain(|(kept, _, _)| kept.as_ref() != name);
        if self.named_portals.len() >= NAMED_PORTALS_KEPT {
            self.named_portals.remove(0);
        }
        self.named_portals
            .push((Bytes::copy_from_slice(name), text, params));
    }

    /// A `Close` of a portal: a result it was reading in steps is counted now.
    pub(super) fn portal_closed(&mut self, recorder: &StatsRecorder, name: &[u8]) {
        self.named_portals
            .retain(|(kept, _, _)| kept.as_ref() != name);
        self.portal_gone(recorder, portal_key(name));
    }

    /// Portal `key` is gone (closed, or bound anew): its steps so far are one call.
    #[inline]
    fn portal_gone(&mut self, recorder: &StatsRecorder, key: PortalKey) {
        if self.open_portals.is_empty() {
            return;
        }
        if let Some(run) = self.open_portals.end(key) {
            run.record(recorder, self.client);
        }
    }

    /// The transaction ended (`ReadyForQuery` outside a transaction block, or in a
    /// failed one): PostgreSQL dropped its portals, so results read in steps are
    /// counted and the named portals' texts forgotten.
    #[inline]
    pub fn transaction_ended(&mut self, recorder: &StatsRecorder) {
        if self.open_portals.is_empty() && self.named_portals.is_empty() {
            return;
        }
        self.portals_dropped(recorder);
    }

    fn portals_dropped(&mut self, recorder: &StatsRecorder) {
        self.named_portals.clear();
        let client = self.client;
        for run in self.open_portals.end_all() {
            run.record(recorder, client);
        }
    }

    /// The text, shape and parameters' hash of a named portal's statement.
    fn named_portal_text(
        &self,
        name: &[u8],
        unnamed: &mut UnnamedStatement,
    ) -> (EventText, Option<Shape>, u64) {
        let (portal, params) = self
            .named_portals
            .iter()
            .find(|(kept, _, _)| kept.as_ref() == name)
            .map_or((&PortalText::Unknown, 0), |(_, portal, params)| {
                (portal, *params)
            });
        let (sql, shape) = self.text_of(portal, unnamed);
        (sql, shape, params)
    }

    /// Session pooling: a `Parse` of a named statement (a later `Parse` of the name,
    /// after the client closed it, replaces it).
    pub(super) fn named_statement_parsed(&mut self, name: &[u8], query: &[u8]) {
        let named = self.named.get_or_insert_with(Default::default);
        let size = name.len() + query.len();
        if named.bytes + size > NAMED_TEXTS_MAX_BYTES {
            **named = NamedTexts::default();
        }
        let shape = crate::scan::scan(query).shape;
        let text = (Bytes::copy_from_slice(query), shape);
        if let Some((old, _)) = named.by_name.insert(Bytes::copy_from_slice(name), text) {
            named.bytes -= name.len() + old.len();
        }
        named.bytes += size;
    }

    /// Session pooling: a `Close` of a named statement.
    pub(super) fn named_statement_closed(&mut self, name: &[u8]) {
        if let Some(named) = self.named.as_mut() {
            if let Some((old, _)) = named.by_name.remove(name) {
                named.bytes -= name.len() + old.len();
            }
        }
    }

    /// Session pooling: the text and shape of a named statement.
    fn named_text(&self, name: &[u8]) -> Option<PortalText> {
        let (text, shape) = self.named.as_ref()?.by_name.get(name)?;
        Some(PortalText::Named(text.clone(), *shape))
    }

    pub fn on_command_complete(&mut self, body: &[u8]) {
        self.rows += rows_from_tag(crate::protocol::backend::command_tag(body));
    }

    /// `DataRow`s relayed.
    #[inline]
    pub fn on_data_rows(&mut self, rows: u64) {
        self.data_rows += rows;
    }

    /// An `Execute` stopped at its row limit: the rows it returned are its count, and
    /// the portal stays open for the next step.
    pub fn on_portal_suspended(&mut self) {
        self.rows += std::mem::take(&mut self.data_rows);
        self.suspended = true;
    }

    pub fn on_error(&mut self) {
        self.error = true;
    }

    pub fn reset_error(&mut self) {
        self.error = false;
        self.rows = 0;
        self.data_rows = 0;
    }

    /// The statement at the head finished (its terminal message arrived). A step of a
    /// portal read in steps is counted with the portal's other steps, once it is done.
    pub fn finish_one(&mut self, recorder: &StatsRecorder, served: Served, error: bool) {
        let suspended = std::mem::take(&mut self.suspended);
        if let Some(statement) = self.in_flight.pop_front() {
            let ended = clock::now();
            let tally = Tally {
                shape: statement.shape,
                params: statement.params,
                session_key: statement.session_key,
                served,
                duration: ended.saturating_duration_since(statement.started),
                rows: self.rows,
                error: error || self.error,
                ended,
            };
            match statement.portal {
                Some(key) if suspended || !self.open_portals.is_empty() => {
                    let step = Run {
                        sql: statement.sql,
                        tally,
                    };
                    if let Some(run) = self.open_portals.step(key, step, suspended) {
                        run.record(recorder, self.client);
                    }
                }
                // The text is read where it is: the common case copies nothing.
                _ => tally.record(&statement.sql, recorder, self.client),
            }
        }
        self.rows = 0;
        self.data_rows = 0;
        self.error = false;
    }

    /// A simple query failed: it is counted now, and its `ReadyForQuery` then
    /// finishes nothing more.
    pub fn finish_query_at_error(&mut self, recorder: &StatsRecorder, served: Served) {
        self.finish_one(recorder, served, true);
        self.query_finished_at_error = true;
    }

    /// A simple query's `ReadyForQuery`.
    pub fn query_answered(&mut self, recorder: &StatsRecorder, served: Served) {
        if std::mem::take(&mut self.query_finished_at_error) {
            return;
        }
        self.finish_one(recorder, served, false);
    }

    /// A statement the result cache answered (`shape`: its text's, kept in the entry).
    pub fn record_cache_hit(
        &self,
        recorder: &StatsRecorder,
        sql: &[u8],
        shape: Shape,
        duration: std::time::Duration,
        rows: u64,
    ) {
        recorder.record(&StatementEvent {
            sql,
            shape: Some(shape),
            duration,
            rows,
            error: false,
            served: Served::Cache,
            // The N+1 detector sees only statements that reached a server.
            call: None,
        });
    }

    /// The unnamed statement's text is about to be replaced by a new `Parse`: a
    /// portal still bound to it keeps its text and shape. The two buffers trade
    /// places, so nothing is copied.
    pub(super) fn unnamed_replaced(&mut self, unnamed: &mut UnnamedStatement) {
        if matches!(self.portal, PortalText::Unnamed) {
            let query_len = unnamed.take_definition(&mut self.portal_kept);
            self.portal = PortalText::Kept(query_len, unnamed.shape);
        }
    }

    /// The text and shape of the statement the bound portal runs.
    fn portal_text(&self, unnamed: &mut UnnamedStatement) -> (EventText, Option<Shape>) {
        self.text_of(&self.portal, unnamed)
    }

    /// The text and shape of the statement `portal` runs.
    fn text_of(
        &self,
        portal: &PortalText,
        unnamed: &mut UnnamedStatement,
    ) -> (EventText, Option<Shape>) {
        match portal {
            PortalText::Unnamed => (unnamed.event_text(), unnamed.shape),
            PortalText::Kept(query_len, shape) => {
                let query = &self.portal_kept[..*query_len];
                (
                    EventText::copied_or(query, || Bytes::copy_from_slice(query)),
                    *shape,
                )
            }
            PortalText::Named(text, shape) => (EventText::new(text), Some(*shape)),
            PortalText::Unknown => (EventText::from("<unknown portal>"), None),
        }
    }

    /// `Bind` of the unnamed statement to the unnamed portal.
    #[cfg(test)]
    fn bind_unnamed(&mut self, parsed: bool) {
        self.portal = PortalText::unnamed(parsed);
    }

    pub fn clear(&mut self) {
        self.query_finished_at_error = false;
        self.suspended = false;
        // Like the statements in flight, runs cut off with their server are not counted.
        self.open_portals = OpenPortals::default();
        self.in_flight.clear();
        self.rows = 0;
        self.data_rows = 0;
        self.error = false;
    }
}

impl Session {
    /// Notes a forwarded message that starts a statement or names its text.
    pub(super) fn stats_on_forward(&mut self, message_tag: u8, frame: &Bytes) {
        if self.stats.is_none() {
            return;
        }
        let shape = (message_tag == tag::QUERY).then(|| self.query_scan(query_text(frame)).shape);
        let Some(stats) = self.stats.as_mut() else {
            return;
        };
        let session_key = stats.session_key;
        match message_tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                let end = frame.len().saturating_sub(1).max(HEADER_LEN);
                let sql = if message_tag == tag::QUERY {
                    EventText::copied_or(&frame[HEADER_LEN..end], || frame.slice(HEADER_LEN..end))
                } else {
                    EventText::from("<function call>")
                };
                stats.in_flight.push_back(InFlight {
                    started: clock::now(),
                    sql,
                    shape,
                    params: 0,
                    session_key,
                    portal: None,
                });
            }
            tag::BIND => {
                if let Ok(view) = BindView::parse(&frame[HEADER_LEN..]) {
                    // Portal and statement names precede the values; the body is a
                    // fine stand-in for "these parameters". Bounded: the first 512
                    // bytes and the length.
                    let end = frame.len().min(HEADER_LEN + 512);
                    let params = hash_bytes(&frame[HEADER_LEN..end]) ^ frame.len() as u64;
                    let text = if view.statement.is_empty() {
                        PortalText::unnamed(self.pooled.unnamed.shape.is_some())
                    } else {
                        self.statements
                            .get(view.statement)
                            .map(|s| {
                                let query_len = cstr(&s.definition).map_or(0, |(q, _)| q.len());
                                PortalText::Named(s.definition.slice(0..query_len), s.shape)
                            })
                            .or_else(|| stats.named_text(view.statement))
                            .unwrap_or(PortalText::Unknown)
                    };
                    // A portal of that name is bound anew: the old one is gone.
                    stats.portal_gone(&self.runtime.stats, portal_key(view.portal));
                    if view.portal.is_empty() {
                        stats.portal = text;
                        stats.portal_params = params;
                    } else {
                        stats.bind_named_portal(
                            view.portal,
                            text,
                            &mut self.pooled.unnamed,
                            params,
                        );
                    }
                }
            }
            tag::EXECUTE => {
                let portal = execute_portal(body(frame));
                let (sql, shape, params) = if portal.is_empty() {
                    let (sql, shape) = stats.portal_text(&mut self.pooled.unnamed);
                    (sql, shape, stats.portal_params)
                } else {
                    stats.named_portal_text(portal, &mut self.pooled.unnamed)
                };
                stats.in_flight.push_back(InFlight {
                    started: clock::now(),
                    sql,
                    shape,
                    params,
                    session_key,
                    portal: Some(portal_key(portal)),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "statistics_tests.rs"]
mod tests;
