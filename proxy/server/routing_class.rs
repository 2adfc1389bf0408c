//! The read/write class of the messages a session with replicas routes: the `route`
//! room's answer for each message, the last unnamed `Parse`'s class kept with its text
//! (drivers parse the same unnamed statement before every execution, and it is asked
//! when a backend is chosen and again when it is forwarded), and whether the client's
//! unnamed statement only reads, so that a `Bind` of it on the primary is judged by its
//! text instead of counting as a write (which cost a read-your-writes round trip after
//! every read a driver ran on the primary through unnamed statements). Transaction and
//! session control (`BEGIN`, `COMMIT`, `SAVEPOINT`, `SET`, ...) writes nothing either: a
//! transaction on the primary that only read, or a `SET`, leaves no read-your-writes
//! position behind.

use bytes::Bytes;

use super::session::Session;
use crate::protocol::extended::{BindView, ParseView, TargetKind, TargetView};
use crate::protocol::frame::{body, query_text};
use crate::protocol::tag::frontend as tag;
use crate::route::{hint, DataAccess, Hint, Routing, StatementClass};

/// Unnamed `Parse` texts longer than this are classified every time, not remembered.
const MAX_REMEMBERED_PARSE: usize = 4096;

/// The class of the last unnamed `Parse` a session classified, by its exact text (the
/// class depends on the text and on the session's `Routing`, which is the same for its
/// whole life).
pub struct ParseClass {
    query: Bytes,
    class: StatementClass,
    hint: Option<Hint>,
}

fn writes_nothing(class: &StatementClass) -> bool {
    class.data_access() != DataAccess::MayWrite
}

impl Session {
    /// The read/write class of an extended-protocol message that may start work on a
    /// server (a `Query`'s is answered from the session's memo, in `classify_message`).
    fn message_class(
        &self,
        routing: &Routing,
        message_tag: u8,
        frame: &[u8],
    ) -> (StatementClass, Option<Hint>) {
        let lossy = crate::protocol::text::lossy;
        match message_tag {
            tag::PARSE => match ParseView::parse(body(frame)) {
                Ok(view) => {
                    let sql = lossy(view.query);
                    (routing.classify(&sql), hint(&sql))
                }
                Err(_) => (StatementClass::Write, None),
            },
            tag::BIND => match BindView::parse(body(frame)) {
                Ok(view) => self.stored_class(view.statement),
                Err(_) => (StatementClass::Write, None),
            },
            tag::DESCRIBE => match TargetView::parse(body(frame), "Describe") {
                Ok(view) if view.kind == TargetKind::Statement => self.stored_class(view.name),
                _ => (StatementClass::Write, None),
            },
            _ => (StatementClass::Write, None),
        }
    }

    /// [`Session::message_class`], with the last unnamed `Parse`'s class remembered by
    /// its text. A session without replicas has no routing: everything is a write.
    pub(super) fn classify_message(
        &mut self,
        message_tag: u8,
        frame: &[u8],
    ) -> (StatementClass, Option<Hint>) {
        let unnamed_query = match message_tag {
            tag::PARSE => ParseView::parse(body(frame))
                .ok()
                .filter(|view| view.statement.is_empty())
                .map(|view| view.query),
            _ => None,
        };
        let Some(state) = self.routing.as_deref() else {
            return (StatementClass::Write, None);
        };
        if let (Some(query), Some(known)) = (unnamed_query, state.last_parse.as_ref()) {
            if known.query[..] == *query {
                return (known.class.clone(), known.hint);
            }
        }
        if message_tag == tag::QUERY {
            let sql = query_text(frame);
            let shape = self.query_scan(sql).shape.hash;
            let sql = crate::protocol::text::lossy(sql);
            let class = state
                .routing
                .classify_memoized(&sql, shape, &mut self.class_memo);
            return (class, hint(&sql));
        }
        let answer = self.message_class(&state.routing, message_tag, frame);
        if let (Some(query), Some(state)) = (unnamed_query, self.routing.as_deref_mut()) {
            let remembered = query.len() <= MAX_REMEMBERED_PARSE
                && !matches!(answer.0, StatementClass::ProxySetting { .. });
            state.last_parse = remembered.then(|| ParseClass {
                query: Bytes::copy_from_slice(query),
                class: answer.0.clone(),
                hint: answer.1,
            });
        }
        answer
    }

    /// A replica refused a read of this shape lately (`route/replica_refusals.rs`).
    /// Costs an atomic load while no shape is known.
    pub(super) fn refused_before(&self, message_tag: u8, frame: &[u8]) -> bool {
        let Some(state) = self.routing.as_ref() else {
            return false;
        };
        let shapes = &state.topology.refused_shapes;
        shapes.any()
            && self
                .refusal_shape(message_tag, frame)
                .is_some_and(|s| shapes.contains(s))
    }

    /// The shape a replica's refusal of a request is remembered by: that of the text
    /// its first message runs, a `Query`, a `Parse`, or the `Bind` of a named
    /// statement (None for others).
    pub(super) fn refusal_shape(&self, message_tag: u8, frame: &[u8]) -> Option<u64> {
        let text = match message_tag {
            tag::QUERY => query_text(frame),
            tag::PARSE => ParseView::parse(body(frame)).ok()?.query,
            tag::BIND => {
                let view = BindView::parse(body(frame)).ok()?;
                let definition = &self.statements.get(view.statement)?.definition;
                crate::protocol::extended::cstr(definition)?.0
            }
            _ => return None,
        };
        Some(self.query_scan(text).shape.hash)
    }

    /// The class of a prepared statement, from what was remembered of it. One that
    /// changes nothing without only reading (`BEGIN`, `COMMIT`, `SET`, ...) answers
    /// `Control`: it goes to the primary and does not count as writing. A prepared
    /// `BEGIN READ ONLY` answers as the text does, so that executing it again (a `Bind`
    /// without a `Parse`) starts its transaction on a replica too.
    fn stored_class(&self, name: &[u8]) -> (StatementClass, Option<Hint>) {
        let access = self.statements.get(name).map(|s| s.access);
        let class = match access {
            Some(DataAccess::Reads) => StatementClass::Read,
            Some(DataAccess::BeginsReadOnly) => StatementClass::Begin { read_only: true },
            Some(DataAccess::WritesNothing) => StatementClass::Control,
            Some(DataAccess::MayWrite) | None => StatementClass::Write,
        };
        (class, None)
    }

    /// Whether a message forwarded to the attached server may write (read-your-writes
    /// then learns the commit position). Every unnamed `Parse`, wherever it goes, and
    /// every simple query (which destroys the unnamed statement) update what the
    /// client's unnamed statement is; until the first `Parse` of it, it counts as
    /// writing.
    pub(super) fn forwarded_may_write(
        &mut self,
        message_tag: u8,
        frame: &[u8],
        on_primary: bool,
    ) -> bool {
        let may_write = match message_tag {
            tag::PARSE => {
                let unnamed = ParseView::parse(body(frame)).is_ok_and(|v| v.statement.is_empty());
                if !unnamed && !on_primary {
                    return false;
                }
                let (class, _) = self.classify_message(message_tag, frame);
                if unnamed {
                    if let Some(state) = self.routing.as_deref_mut() {
                        state.unnamed_writes_nothing = writes_nothing(&class);
                    }
                }
                !writes_nothing(&class)
            }
            tag::BIND if on_primary => {
                let binds_unnamed =
                    BindView::parse(body(frame)).is_ok_and(|v| v.statement.is_empty());
                match self.routing.as_deref() {
                    Some(state) if binds_unnamed => !state.unnamed_writes_nothing,
                    _ => !writes_nothing(&self.classify_message(message_tag, frame).0),
                }
            }
            tag::QUERY => {
                if let Some(state) = self.routing.as_deref_mut() {
                    state.unnamed_writes_nothing = false;
                }
                on_primary && !writes_nothing(&self.classify_message(message_tag, frame).0)
            }
            tag::FUNCTION_CALL if on_primary => true,
            _ => false,
        };
        on_primary && may_write
    }
}
