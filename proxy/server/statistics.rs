//! The session's side of query statistics: when each statement was sent, which text it
//! ran, the rows and errors its answer reported, handed to the stats recorder when the
//! answer is complete. Only timestamps and cheap `Bytes` handles on the data path.
//!
//! A text that lives only as long as its statement (a `Query` until its answer is
//! complete) shares the client's read buffer; a text remembered beyond its message (the
//! last unnamed `Parse`, the statement a portal ran) is copied, so it never pins a
//! whole read buffer for the life of the session.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::session::Session;
use crate::protocol::extended::{cstr, BindView, ParseView};
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::tag::frontend as tag;
use crate::stats::{rows_from_tag, Served, StatementEvent, StatsRecorder};

struct InFlight {
    started: Instant,
    sql: Bytes,
}

/// Statements of one session whose answers are not complete yet.
pub struct SessionStats {
    recorder: StatsRecorder,
    in_flight: VecDeque<InFlight>,
    rows: u64,
    error: bool,
    /// Text of the last unnamed `Parse`, and of the statement the last `Bind` bound.
    unnamed_sql: Option<Bytes>,
    portal_sql: Option<Bytes>,
}

impl SessionStats {
    pub fn new(recorder: StatsRecorder) -> SessionStats {
        SessionStats {
            recorder,
            in_flight: VecDeque::new(),
            rows: 0,
            error: false,
            unnamed_sql: None,
            portal_sql: None,
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
    pub fn finish_one(&mut self, served: Served, error: bool) {
        if let Some(statement) = self.in_flight.pop_front() {
            self.recorder.record(StatementEvent {
                sql: statement.sql,
                duration: statement.started.elapsed(),
                rows: self.rows,
                error: error || self.error,
                served,
            });
        }
        self.rows = 0;
        self.error = false;
    }

    /// A statement the result cache answered.
    pub fn record_cache_hit(&self, sql: Bytes, duration: std::time::Duration, rows: u64) {
        self.recorder.record(StatementEvent {
            sql,
            duration,
            rows,
            error: false,
            served: Served::Cache,
        });
    }

    pub fn clear(&mut self) {
        self.in_flight.clear();
        self.rows = 0;
        self.error = false;
    }
}

impl Session {
    /// Notes a forwarded message that starts a statement or names its text.
    pub(super) fn stats_on_forward(&mut self, message_tag: u8, frame: &Bytes) {
        let Some(stats) = self.stats.as_mut() else {
            return;
        };
        match message_tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                let end = frame.len().saturating_sub(1).max(HEADER_LEN);
                let sql = if message_tag == tag::QUERY {
                    frame.slice(HEADER_LEN..end)
                } else {
                    Bytes::from_static(b"<function call>")
                };
                stats.in_flight.push_back(InFlight {
                    started: Instant::now(),
                    sql,
                });
            }
            tag::PARSE => {
                if let Ok(view) = ParseView::parse(&frame[HEADER_LEN..]) {
                    if view.statement.is_empty() {
                        let start = HEADER_LEN + 1;
                        stats.unnamed_sql = Some(Bytes::copy_from_slice(
                            &frame[start..start + view.query.len()],
                        ));
                    }
                }
            }
            tag::BIND => {
                if let Ok(view) = BindView::parse(&frame[HEADER_LEN..]) {
                    stats.portal_sql = if view.statement.is_empty() {
                        stats.unnamed_sql.clone()
                    } else {
                        self.statements.get(view.statement).map(|s| {
                            let query_len = cstr(&s.definition).map_or(0, |(q, _)| q.len());
                            s.definition.slice(0..query_len)
                        })
                    };
                }
            }
            tag::EXECUTE => {
                let sql = stats
                    .portal_sql
                    .clone()
                    .unwrap_or_else(|| Bytes::from_static(b"<unknown portal>"));
                stats.in_flight.push_back(InFlight {
                    started: Instant::now(),
                    sql,
                });
            }
            _ => {}
        }
    }
}
