//! The order of answers owed to the client.
//!
//! Every client message that the server answers pushes one [`Expect`] entry; messages
//! the proxy answers itself (a `Parse` of a statement the server already has, a `Close`
//! of a pooled statement) push a `Synthetic` entry holding the answer's bytes, and a
//! `Parse` the proxy injects pushes `Swallow`. Server messages then pop entries in
//! order, so synthetic answers reach the client exactly where PostgreSQL would have put
//! them. The queue being empty (with the server idle) is what lets the session return
//! the server connection to the pool.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::statements::StatementId;
use crate::protocol::tag::backend as tag;

/// What the client is owed for one message, and which server message ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `Query` or `FunctionCall`: ends with `ReadyForQuery`.
    Query,
    Sync,
    /// `Parse`; a pooled statement carries its id so a failure can be forgotten.
    Parse(Option<StatementId>),
    /// `Bind`; of a pooled statement, with its id (a stale plan shows up here).
    Bind(Option<StatementId>),
    DescribeStatement(Option<StatementId>),
    DescribePortal,
    Execute,
    Close,
    /// A proxy-injected `Parse`: its `ParseComplete` is not shown to the client.
    Swallow(StatementId),
    /// A proxy-injected `Bind`: its `BindComplete` is not shown to the client.
    SwallowBind,
    /// A proxy-injected `Parse` of the client's unnamed statement.
    SwallowUnnamed,
    /// A proxy-injected simple `Query` (`sequence_state.rs`): none of its answer, up to
    /// and including its `ReadyForQuery`, is shown to the client.
    SwallowQuery,
    /// A proxy-injected `Close` of a pooled statement (evicted or stale).
    SwallowClose(StatementId),
    /// A proxy-made answer, sent when it reaches the head of the queue.
    Synthetic(Bytes),
    /// Where the client ended a COPY (`CopyDone`/`CopyFail`) before the server said
    /// the COPY started: bounds the `Sync`s the server will ignore.
    CopyEnd,
}

impl Expect {
    fn ends_with(&self, server_tag: u8) -> bool {
        match self {
            Expect::Query | Expect::Sync | Expect::SwallowQuery => {
                server_tag == tag::READY_FOR_QUERY
            }
            Expect::Parse(_) | Expect::Swallow(_) | Expect::SwallowUnnamed => {
                server_tag == tag::PARSE_COMPLETE
            }
            Expect::Bind(_) | Expect::SwallowBind => server_tag == tag::BIND_COMPLETE,
            Expect::Close | Expect::SwallowClose(_) => server_tag == tag::CLOSE_COMPLETE,
            Expect::DescribeStatement(_) | Expect::DescribePortal => {
                server_tag == tag::ROW_DESCRIPTION || server_tag == tag::NO_DATA
            }
            Expect::Execute => matches!(
                server_tag,
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED
            ),
            Expect::Synthetic(_) | Expect::CopyEnd => false,
        }
    }

    /// Extended-protocol messages: after an error the server skips them up to `Sync`.
    fn skipped_after_error(&self) -> bool {
        !matches!(self, Expect::Query | Expect::Sync | Expect::SwallowQuery)
    }
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Relay,
    Drop,
}

#[derive(Debug, Default)]
pub struct ResponseQueue {
    entries: VecDeque<Expect>,
    /// Pooled statements whose `Parse` failed or was skipped after an error: the
    /// server does not have them after all.
    failed_parses: Vec<StatementId>,
    /// The server is in COPY IN mode and the client has not ended the COPY yet: the
    /// server ignores `Sync` now, so a `Sync` owes no `ReadyForQuery`.
    copy_in_open: bool,
    /// `Execute`s that ended with an error (failed or skipped after one), for stats.
    failed_executes: usize,
    /// An extended-protocol COPY IN failed: the server discards everything up to the
    /// client's next `Sync`, so the connection must not go back to the pool before.
    awaiting_sync: bool,
    /// Proxy-made answers to extended-protocol messages (`ParseComplete`,
    /// `CloseComplete`) held until the client sends `Sync` or `Flush`, or the server
    /// answers something after them: PostgreSQL sends nothing earlier either.
    held: BytesMut,
    /// Pooled statements whose injected `Close` the server skipped after an error.
    skipped_closes: Vec<StatementId>,
    /// The server failed an extended-protocol batch whose `Sync` the client has not
    /// sent yet: it skips every message up to that `Sync`, so they are owed nothing.
    skipping: bool,
}

impl ResponseQueue {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the answer being read is a simple `Query`'s.
    pub fn answering_query(&self) -> bool {
        matches!(self.entries.front(), Some(Expect::Query))
    }

    /// How many `ReadyForQuery` the client is owed (its `Query`s and `Sync`s in flight).
    pub fn owed_ends(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Expect::Query | Expect::Sync))
            .count()
    }

    /// Forgets what the server owes (the connection is going away); answers the proxy
    /// already made stay held for the client.
    pub fn clear(&mut self) {
        self.awaiting_sync = false;
        self.skipping = false;
        self.skipped_closes.clear();
        self.entries.clear();
        self.failed_parses.clear();
        self.copy_in_open = false;
        self.failed_executes = 0;
    }

    /// Whether the server waits for a `Sync` after a failed extended-protocol COPY IN.
    pub fn awaiting_sync(&self) -> bool {
        self.awaiting_sync
    }

    /// Whether a `Sync` sent now will be answered (it is not, during COPY IN).
    pub fn sync_is_answered(&self) -> bool {
        !self.copy_in_open
    }

    /// The server sent `CopyInResponse`: `Sync`s the client sent after the COPY's
    /// command and before ending the COPY are ignored by the server.
    pub fn on_copy_in_started(&mut self) {
        let mut i = 1;
        while i < self.entries.len() {
            match self.entries[i] {
                Expect::CopyEnd => {
                    self.entries.remove(i);
                    return;
                }
                Expect::Sync => {
                    self.entries.remove(i);
                }
                _ => i += 1,
            }
        }
        self.copy_in_open = true;
    }

    /// The client sent `CopyDone` or `CopyFail`.
    pub fn on_client_copy_end(&mut self) {
        if self.copy_in_open {
            self.copy_in_open = false;
        } else {
            self.entries.push_back(Expect::CopyEnd);
        }
    }

    /// `Execute`s ended by an error since the last call.
    pub fn take_failed_executes(&mut self) -> usize {
        std::mem::take(&mut self.failed_executes)
    }

    /// Statements the server turned out not to have prepared (drained by the caller).
    pub fn take_failed_parses(&mut self) -> Vec<StatementId> {
        std::mem::take(&mut self.failed_parses)
    }

    /// Statements the server may still have because their `Close` was skipped.
    pub fn take_skipped_closes(&mut self) -> Vec<StatementId> {
        std::mem::take(&mut self.skipped_closes)
    }

    /// Sends the held answers now (the client sent `Sync` or `Flush`, or the server
    /// is answering what came after them).
    pub fn release_held(&mut self, out: &mut BytesMut) {
        if !self.held.is_empty() {
            out.extend_from_slice(&self.held);
            self.held.clear();
        }
    }

    /// Queues an entry; synthetic answers at the head go out at once (into `out`).
    pub fn push(&mut self, expect: Expect, out: &mut BytesMut) {
        if self.skipping {
            if expect.skipped_after_error() {
                self.account_skipped(&expect);
                return;
            }
            self.skipping = false;
        }
        self.entries.push_back(expect);
        self.write_synthetic(out, true);
    }

    /// A message the server skips after an error: what the proxy must forget.
    fn account_skipped(&mut self, expect: &Expect) {
        match expect {
            Expect::Parse(Some(id)) | Expect::Swallow(id) => self.failed_parses.push(*id),
            Expect::SwallowClose(id) => self.skipped_closes.push(*id),
            Expect::Execute => self.failed_executes += 1,
            _ => {}
        }
    }

    /// Accounts for one server message with type `server_tag`; writes any synthetic
    /// answers that become due into `out` (after the caller relays this message, so
    /// the caller passes `out` and relays first when told to).
    pub fn on_server_message(&mut self, server_tag: u8) -> (Disposition, Option<Expect>) {
        while let Some(Expect::CopyEnd) = self.entries.front() {
            self.entries.pop_front();
        }
        match server_tag {
            tag::READY_FOR_QUERY => self.awaiting_sync = false,
            tag::ERROR_RESPONSE if self.copy_in_open => {
                self.awaiting_sync = !matches!(self.entries.front(), Some(Expect::Query) | None);
            }
            _ => {}
        }
        let Some(head) = self.entries.front() else {
            // Asynchronous messages (notices, notifications, parameter status, a FATAL
            // before the server closes) belong to nobody; relay them.
            return (Disposition::Relay, None);
        };
        if matches!(head, Expect::SwallowQuery) {
            return match server_tag {
                tag::READY_FOR_QUERY => (Disposition::Drop, self.entries.pop_front()),
                tag::COMMAND_COMPLETE
                | tag::EMPTY_QUERY_RESPONSE
                | tag::ERROR_RESPONSE
                | tag::NOTICE_RESPONSE => (Disposition::Drop, None),
                _ => (Disposition::Relay, None), // asynchronous: the client's
            };
        }
        if server_tag == tag::ERROR_RESPONSE && head.skipped_after_error() {
            // The server now ignores everything up to the next Sync.
            let mut first = None;
            while let Some(front) = self.entries.front() {
                if matches!(front, Expect::Sync | Expect::Query) {
                    break;
                }
                let Some(popped) = self.entries.pop_front() else {
                    break;
                };
                self.account_skipped(&popped);
                if first.is_none() {
                    first = Some(popped);
                }
            }
            // No Sync yet: what the client sends until it is skipped too.
            self.skipping = self.entries.is_empty();
            return (Disposition::Relay, first);
        }
        if head.ends_with(server_tag) {
            let head = self.entries.pop_front();
            let disposition = if matches!(
                head,
                Some(
                    Expect::Swallow(_)
                        | Expect::SwallowBind
                        | Expect::SwallowUnnamed
                        | Expect::SwallowClose(_)
                )
            ) {
                Disposition::Drop
            } else {
                Disposition::Relay
            };
            return (disposition, head);
        }
        (Disposition::Relay, None)
    }

    /// Whether a synthetic answer is at the head of the queue: only then does
    /// [`ResponseQueue::flush_synthetic`] write anything.
    #[inline(always)]
    pub fn synthetic_due(&self) -> bool {
        matches!(self.entries.front(), Some(Expect::Synthetic(_)))
    }

    /// Writes synthetic answers that a server answer just brought to the head of the
    /// queue (the server answered, so the client's `Sync` or `Flush` came already).
    pub fn flush_synthetic(&mut self, out: &mut BytesMut) {
        self.write_synthetic(out, false);
    }

    /// Writes synthetic answers now at the head of the queue. When the client's own
    /// message made them due (`hold`), answers to extended-protocol messages wait in
    /// `held` for its `Sync` or `Flush`, as PostgreSQL's output buffer would.
    ///
    /// Called after every push and server message, and most find no synthetic answer
    /// at the head: that check is inlined, the writing is not.
    #[inline(always)]
    fn write_synthetic(&mut self, out: &mut BytesMut, hold: bool) {
        if self.synthetic_due() {
            self.write_synthetic_now(out, hold);
        }
    }

    #[inline(never)]
    fn write_synthetic_now(&mut self, out: &mut BytesMut, hold: bool) {
        while let Some(Expect::Synthetic(_)) = self.entries.front() {
            let Some(Expect::Synthetic(bytes)) = self.entries.pop_front() else {
                break;
            };
            if hold && is_held_answer(&bytes) {
                self.held.extend_from_slice(&bytes);
            } else {
                self.release_held(out);
                out.extend_from_slice(&bytes);
            }
        }
    }
}

/// Answers PostgreSQL buffers until `Sync`/`Flush` (errors it flushes at once).
fn is_held_answer(bytes: &[u8]) -> bool {
    matches!(
        bytes.first(),
        Some(&tag::PARSE_COMPLETE) | Some(&tag::CLOSE_COMPLETE) | Some(&tag::BIND_COMPLETE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(q: &mut ResponseQueue, t: u8) -> (Disposition, bool) {
        let (d, popped) = q.on_server_message(t);
        (d, popped.is_some())
    }

    fn synth(byte: u8) -> Expect {
        Expect::Synthetic(Bytes::from(vec![byte, 0, 0, 0, 4]))
    }

    #[test]
    fn synthetic_answer_waits_for_earlier_replies() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Bind(None), &mut out);
        q.push(synth(b'1'), &mut out);
        q.push(Expect::Sync, &mut out);
        assert!(out.is_empty());
        assert_eq!(step(&mut q, b'2'), (Disposition::Relay, true));
        q.flush_synthetic(&mut out);
        q.release_held(&mut out);
        assert_eq!(&out[..], &[b'1', 0, 0, 0, 4]);
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert!(q.is_empty());
    }

    #[test]
    fn synthetic_answer_at_head_waits_for_sync_or_flush() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(synth(b'3'), &mut out);
        assert!(out.is_empty(), "CloseComplete is held until Sync/Flush");
        assert!(q.is_empty());
        q.release_held(&mut out);
        assert_eq!(out.len(), 5);
        // A ReadyForQuery (the answer to Sync) sends what was held first.
        q.push(synth(b'1'), &mut out);
        q.push(synth(b'Z'), &mut out);
        assert_eq!(&out[5..], &[b'1', 0, 0, 0, 4, b'Z', 0, 0, 0, 4]);
    }

    #[test]
    fn swallowed_parse_complete_is_dropped() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Swallow(StatementId(7)), &mut out);
        q.push(Expect::Bind(None), &mut out);
        assert_eq!(step(&mut q, b'1'), (Disposition::Drop, true));
        assert_eq!(step(&mut q, b'2'), (Disposition::Relay, true));
    }

    #[test]
    fn error_skips_to_sync() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        for e in [
            Expect::Parse(Some(StatementId(3))),
            Expect::Bind(None),
            synth(b'1'),
            Expect::Execute,
            Expect::Sync,
        ] {
            q.push(e, &mut out);
        }
        assert_eq!(step(&mut q, b'E'), (Disposition::Relay, true));
        assert_eq!(q.entries.len(), 1);
        assert_eq!(q.take_failed_parses(), vec![StatementId(3)]);
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert!(q.is_empty());
    }

    #[test]
    fn messages_sent_after_an_error_before_sync_are_owed_nothing() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Bind(None), &mut out);
        q.push(Expect::Execute, &mut out);
        assert_eq!(step(&mut q, b'E'), (Disposition::Relay, true));
        // The client had not seen the error yet and kept sending.
        q.push(Expect::Bind(None), &mut out);
        q.push(Expect::Swallow(StatementId(9)), &mut out);
        q.push(synth(b'1'), &mut out);
        q.push(Expect::Execute, &mut out);
        q.push(Expect::Sync, &mut out);
        assert_eq!(q.take_failed_parses(), vec![StatementId(9)]);
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert!(q.is_empty());
        q.release_held(&mut out);
        assert!(out.is_empty(), "no answer to a skipped message");
        assert_eq!(q.take_failed_executes(), 2);
    }

    #[test]
    fn query_collects_everything_until_ready() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Query, &mut out);
        for t in [b'T', b'D', b'C', b'E', b'N'] {
            assert_eq!(step(&mut q, t), (Disposition::Relay, false));
        }
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
    }

    #[test]
    fn syncs_sent_during_copy_in_are_not_answered() {
        // Bind, Execute (COPY FROM STDIN), Sync sent together; then CopyData, CopyDone,
        // Sync; then a Close answered by the proxy and another Sync.
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Bind(None), &mut out);
        q.push(Expect::Execute, &mut out);
        q.push(Expect::Sync, &mut out);
        assert_eq!(step(&mut q, b'2'), (Disposition::Relay, true));
        q.on_copy_in_started();
        assert!(!q.sync_is_answered());
        q.on_client_copy_end();
        q.push(Expect::Sync, &mut out);
        q.push(synth(b'3'), &mut out);
        q.push(Expect::Sync, &mut out);
        assert_eq!(step(&mut q, b'E'), (Disposition::Relay, true));
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        q.flush_synthetic(&mut out);
        q.release_held(&mut out);
        assert_eq!(
            out.len(),
            5,
            "CloseComplete right after the first ReadyForQuery"
        );
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert!(q.is_empty());
    }

    #[test]
    fn copy_end_before_copy_in_response_bounds_ignored_syncs() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::Query, &mut out);
        q.push(Expect::Sync, &mut out); // sent during the copy: ignored
        q.on_client_copy_end();
        q.push(Expect::Sync, &mut out); // after CopyDone: answered
        q.on_copy_in_started();
        assert!(q.sync_is_answered());
        assert_eq!(step(&mut q, b'C'), (Disposition::Relay, false));
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert_eq!(step(&mut q, b'Z'), (Disposition::Relay, true));
        assert!(q.is_empty());
    }

    #[test]
    fn describe_statement_ends_at_row_description() {
        let mut q = ResponseQueue::default();
        let mut out = BytesMut::new();
        q.push(Expect::DescribeStatement(None), &mut out);
        assert_eq!(step(&mut q, b't'), (Disposition::Relay, false));
        assert_eq!(step(&mut q, b'n'), (Disposition::Relay, true));
    }
}
