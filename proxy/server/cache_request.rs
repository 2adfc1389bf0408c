//! Finding a request the result cache may answer at the front of the client buffer:
//! a simple `Query`, or a whole `Parse`/`Bind`/`Describe`/`Execute`/`Sync` batch
//! already in the buffer. Only the frames are read; `caching.rs` decides the rest.

use bytes::Bytes;

use super::session::Session;
use crate::cache;
use crate::config::PoolMode;
use crate::protocol::extended::{BindView, ParseView};
use crate::protocol::frame::{body, check_frame, query_text};
use crate::protocol::tag::frontend as tag;

/// A cacheable-looking request at the front of the client buffer.
pub(super) struct Request {
    pub(super) len: usize,
    pub(super) sql: Bytes,
    /// `Parse`: (statement name, definition).
    pub(super) parse: Option<(Vec<u8>, Bytes)>,
    /// The named statement a `Bind` without `Parse` binds (its definition is in the key).
    pub(super) definition: Option<Bytes>,
    /// Where the `Bind` is in the client buffer: (offset, length).
    pub(super) bind: Option<(usize, usize)>,
}

impl Session {
    /// The whole request at the front of the client buffer, when it is one the cache
    /// can answer: a `Query`, or `[Parse] Bind [Describe] Execute(all rows) Sync`.
    pub(super) fn front_request(&self) -> Option<Request> {
        let buf = &self.client_buf;
        let first = check_frame(buf, self.max_message).ok().flatten()?;
        if buf[0] == tag::QUERY {
            let sql = query_text(&buf[..first]);
            if !cache::has_mark(sql) && self.cheap_skip() {
                return None;
            }
            return Some(Request {
                len: first,
                sql: Bytes::copy_from_slice(sql),
                parse: None,
                definition: None,
                bind: None,
            });
        }
        // A batch that starts with `Parse` carries its text: when the hint is not
        // anywhere in the buffer, it is not in the text either, and nothing needs
        // walking (a `Bind` alone binds a text kept elsewhere, and is walked).
        if buf[0] == tag::PARSE && self.cheap_skip() && !cache::has_mark(buf) {
            return None;
        }
        let mut at = 0;
        let mut parse = None;
        let mut sql = None;
        let mut definition = None;
        let mut bind = None;
        let mut step = 0; // 0: Parse?, 1: Bind, 2: Describe?/Execute, 3: Sync
        while at < buf.len() {
            let len = check_frame(&buf[at..], self.max_message).ok().flatten()?;
            let frame = &buf[at..at + len];
            let fbody = body(frame);
            match (frame[0], step) {
                (tag::PARSE, 0) => {
                    let view = ParseView::parse(fbody).ok()?;
                    if !view.statement.is_empty() && self.mode == PoolMode::Session {
                        return None; // the server must keep the statement: not answered here
                    }
                    if !cache::has_mark(view.query) && self.cheap_skip() {
                        return None;
                    }
                    sql = Some(Bytes::copy_from_slice(view.query));
                    parse = Some((
                        view.statement.to_vec(),
                        Bytes::copy_from_slice(view.definition),
                    ));
                    step = 1;
                }
                (tag::BIND, 0 | 1) => {
                    let view = BindView::parse(fbody).ok()?;
                    bind = Some((at, len));
                    match &parse {
                        Some((name, _)) if name.as_slice() != view.statement => return None,
                        Some(_) => {}
                        None => {
                            if view.statement.is_empty() || self.mode == PoolMode::Session {
                                return None;
                            }
                            let statement = self.statements.get(view.statement)?;
                            let query_len = crate::protocol::extended::cstr(&statement.definition)
                                .map(|(q, _)| q.len())?;
                            let query = statement.definition.slice(0..query_len);
                            if !cache::has_mark(&query) && self.cheap_skip() {
                                return None;
                            }
                            definition = Some(statement.definition.clone());
                            sql = Some(query);
                        }
                    }
                    step = 2;
                }
                (tag::DESCRIBE, 2) => {}
                (tag::EXECUTE, 2) => {
                    let (_, rest) = crate::protocol::extended::cstr(fbody)?;
                    if rest != [0, 0, 0, 0] {
                        return None; // a row limit: PortalSuspended, not cached
                    }
                    step = 3;
                }
                (tag::SYNC, 3) => {
                    return Some(Request {
                        len: at + len,
                        sql: sql?,
                        parse,
                        definition,
                        bind,
                    });
                }
                _ => return None,
            }
            at += len;
        }
        None // the batch is not complete in the buffer: not cached
    }
}
