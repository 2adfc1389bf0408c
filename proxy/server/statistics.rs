//! The session's side of query statistics: when each statement was sent, which text it
//! ran, the rows and errors its answer reported, counted by the stats recorder (in this
//! thread's shard) when the answer is complete. Only timestamps and cheap `Bytes`
//! handles on the data path.
//!
//! A statement in flight keeps its text copied when short (`EventText`), so the
//! client's read buffer is not held until the answer and can be reused in place; a
//! long `Query` text shares the buffer until then. A text remembered beyond
//! its message (the last unnamed `Parse`, the statement a portal ran) is copied, so it
//! never pins a whole read buffer for the life of the session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::client_messages::ParsedParse;
use super::session::Session;
use crate::protocol::extended::{cstr, BindView};
use crate::protocol::frame::{query_text, HEADER_LEN};
use crate::protocol::tag::frontend as tag;
use crate::stats::{rows_from_tag, CallContext, EventText, Served, StatementEvent, StatsRecorder};

struct InFlight {
    started: Instant,
    /// Copied when short, so the client's read buffer is not held until the answer.
    sql: EventText,
    /// Its shape, from the session's scan of a simple query.
    shape: Option<crate::scan::Shape>,
    /// A hash of the bound parameters (0: simple query).
    params: u64,
    session_key: u64,
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
    error: bool,
    /// Text of the last unnamed `Parse` (`None` before the first), in a buffer each
    /// later one reuses: a driver that cycles through unnamed texts (pgbench's TPC-B:
    /// seven) costs a copy per `Parse`, not an allocation.
    unnamed_sql: Option<Vec<u8>>,
    /// A shared copy of `unnamed_sql`, made at the first `Execute` whose event holds it
    /// shared (texts longer than an event holds inline) and dropped when the text
    /// changes: a driver repeating one long unnamed text copies it once, not per
    /// statement.
    unnamed_shared: Option<Bytes>,
    /// Text of the statement the last `Bind` bound.
    portal_sql: PortalText,
    /// The text of an unnamed statement a portal was bound to, kept when the next
    /// unnamed `Parse` came before the portal's `Execute` (the two buffers trade
    /// places).
    portal_kept: Vec<u8>,
    /// A hash of the parameters the last `Bind` bound.
    portal_params: u64,
    /// The simple query being answered was counted at its `ErrorResponse`.
    query_finished_at_error: bool,
    client: u64,
    /// A hash of `pgwarden.session_key` given at startup (0: none).
    startup_session_key: u64,
    /// A hash of the session key now: the startup one until a `SET`.
    session_key: u64,
}

/// What the last `Bind` bound, for the statement its `Execute` runs.
enum PortalText {
    /// No statement we know of.
    Unknown,
    /// The unnamed statement, whose text is `unnamed_sql` until the next unnamed
    /// `Parse` (which moves it to `portal_kept` first).
    Unnamed,
    /// An unnamed statement's text in `portal_kept`.
    Kept,
    /// A named statement's text.
    Named(Bytes),
}

/// Above this capacity, the unnamed text's buffer is let go of when a much shorter text
/// follows, so a session does not keep one huge statement's room for its life.
const UNNAMED_KEEP: usize = 8 * 1024;

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
            error: false,
            unnamed_sql: None,
            unnamed_shared: None,
            portal_sql: PortalText::Unknown,
            portal_kept: Vec::new(),
        }
    }

    pub fn on_command_complete(&mut self, body: &[u8]) {
        self.rows += rows_from_tag(crate::protocol::backend::command_tag(body));
    }

    pub fn on_error(&mut self) {
        self.error = true;
    }

    pub fn reset_error(&mut self) {
        self.error = false;
        self.rows = 0;
    }

    /// The statement at the head finished (its terminal message arrived).
    pub fn finish_one(&mut self, recorder: &StatsRecorder, served: Served, error: bool) {
        if let Some(statement) = self.in_flight.pop_front() {
            let ended = Instant::now();
            recorder.record(&StatementEvent {
                sql: &statement.sql,
                shape: statement.shape,
                duration: ended.saturating_duration_since(statement.started),
                rows: self.rows,
                error: error || self.error,
                served,
                call: Some(CallContext {
                    client: self.client,
                    session_key: statement.session_key,
                    params: statement.params,
                    ended,
                }),
            });
        }
        self.rows = 0;
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

    /// A statement the result cache answered.
    pub fn record_cache_hit(
        &self,
        recorder: &StatsRecorder,
        sql: &[u8],
        duration: std::time::Duration,
        rows: u64,
    ) {
        recorder.record(&StatementEvent {
            sql,
            shape: None,
            duration,
            rows,
            error: false,
            served: Served::Cache,
            // The N+1 detector sees only statements that reached a server.
            call: None,
        });
    }

    /// A new unnamed `Parse` text: a portal still bound to the old one keeps it.
    fn remember_unnamed(&mut self, query: &[u8]) {
        self.unnamed_shared = None;
        let text = self.unnamed_sql.get_or_insert_with(Vec::new);
        if matches!(self.portal_sql, PortalText::Unnamed) {
            std::mem::swap(text, &mut self.portal_kept);
            self.portal_sql = PortalText::Kept;
        }
        if text.capacity() > UNNAMED_KEEP && query.len() < text.capacity() / 4 {
            *text = Vec::new();
        }
        text.clear();
        text.extend_from_slice(query);
    }

    /// The text of the statement the bound portal runs.
    fn portal_text(&mut self) -> EventText {
        let copied = |text: &[u8]| EventText::copied_or(text, || Bytes::copy_from_slice(text));
        match (&self.portal_sql, &self.unnamed_sql) {
            (PortalText::Unnamed, Some(text)) => EventText::copied_or(text, || {
                self.unnamed_shared
                    .get_or_insert_with(|| Bytes::copy_from_slice(text))
                    .clone()
            }),
            (PortalText::Kept, _) => copied(&self.portal_kept),
            (PortalText::Named(text), _) => EventText::new(text),
            _ => EventText::from("<unknown portal>"),
        }
    }

    /// `Bind` of the unnamed statement.
    fn bind_unnamed(&mut self) {
        self.portal_sql = if self.unnamed_sql.is_some() {
            PortalText::Unnamed
        } else {
            PortalText::Unknown
        };
    }

    pub fn clear(&mut self) {
        self.query_finished_at_error = false;
        self.in_flight.clear();
        self.rows = 0;
        self.error = false;
    }
}

impl Session {
    /// Notes a forwarded message that starts a statement or names its text.
    pub(super) fn stats_on_forward(
        &mut self,
        message_tag: u8,
        frame: &Bytes,
        parse: ParsedParse<'_>,
    ) {
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
                    started: Instant::now(),
                    sql,
                    shape,
                    params: 0,
                    session_key,
                });
            }
            tag::PARSE => {
                if let Some(Ok(view)) = parse {
                    if view.statement.is_empty() {
                        // The same text again (the usual case): keep the copy.
                        if stats.unnamed_sql.as_deref() != Some(view.query) {
                            stats.remember_unnamed(view.query);
                        }
                    }
                }
            }
            tag::BIND => {
                if let Ok(view) = BindView::parse(&frame[HEADER_LEN..]) {
                    // Portal and statement names precede the values; the body is a
                    // fine stand-in for "these parameters". Bounded: the first 512
                    // bytes and the length.
                    let end = frame.len().min(HEADER_LEN + 512);
                    stats.portal_params = hash_bytes(&frame[HEADER_LEN..end]) ^ frame.len() as u64;
                    if view.statement.is_empty() {
                        stats.bind_unnamed();
                    } else {
                        stats.portal_sql =
                            self.statements
                                .get(view.statement)
                                .map_or(PortalText::Unknown, |s| {
                                    let query_len = cstr(&s.definition).map_or(0, |(q, _)| q.len());
                                    PortalText::Named(s.definition.slice(0..query_len))
                                });
                    }
                }
            }
            tag::EXECUTE => {
                let sql = stats.portal_text();
                stats.in_flight.push_back(InFlight {
                    started: Instant::now(),
                    sql,
                    shape: None,
                    params: stats.portal_params,
                    session_key,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portal_runs_the_text_it_was_bound_to() {
        let mut stats = SessionStats::new(None);
        assert_eq!(&*stats.portal_text(), b"<unknown portal>");
        stats.remember_unnamed(b"SELECT 1");
        stats.bind_unnamed();
        assert_eq!(&*stats.portal_text(), b"SELECT 1");
        // The next unnamed Parse before the portal's Execute: the portal keeps its text.
        stats.remember_unnamed(b"SELECT 2");
        assert_eq!(&*stats.portal_text(), b"SELECT 1");
        stats.bind_unnamed();
        assert_eq!(&*stats.portal_text(), b"SELECT 2");
        // Texts in turn reuse the two buffers.
        for round in 0..3 {
            let text = format!("SELECT {round} + 10");
            stats.remember_unnamed(text.as_bytes());
            stats.bind_unnamed();
            assert_eq!(&*stats.portal_text(), text.as_bytes());
        }
        // A text longer than an event holds inline reads back whole too, from one
        // shared copy while it repeats, and a new text gets its own.
        let long = "x".repeat(1000);
        stats.remember_unnamed(long.as_bytes());
        stats.bind_unnamed();
        let first = stats.portal_text();
        assert_eq!(&*first, long.as_bytes());
        stats.bind_unnamed();
        let again = stats.portal_text();
        assert_eq!(first.as_ptr(), again.as_ptr(), "one shared copy");
        let other = "y".repeat(1000);
        stats.remember_unnamed(other.as_bytes());
        stats.bind_unnamed();
        assert_eq!(&*stats.portal_text(), other.as_bytes());
    }
}
