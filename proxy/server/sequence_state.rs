//! Sequence state (`currval`, `lastval`) under transaction pooling.
//!
//! `nextval` and `setval` leave a value in the server session that `currval(seq)` and
//! `lastval()` return later, and an `INSERT` into a `serial` column calls `nextval`
//! without naming it. Left on a pooled connection, the next client's `currval` would
//! answer with another client's id instead of PostgreSQL's `55000` ("currval of
//! sequence is not yet defined in this session"). A server connection therefore
//! remembers the client whose statements may have left such state
//! (`ServerConnection::sequences_of`), and the next
//! *other* client to take it has `DISCARD SEQUENCES` sent ahead of its first message,
//! in the same write, its answer swallowed: no extra round trip.
//!
//! The text check errs toward yes (a false alarm costs one pipelined statement): a
//! statement in the text starts with a word that can write (or with anything but a
//! word), or the text names `nextval`/`setval`. A client's own state does not follow
//! it to another server connection (PostgreSQL keeps it in one session); there its
//! `currval` fails with `55000` rather than answering with someone else's value.

use super::responses::Expect;
use super::session::Session;

/// `Query("DISCARD SEQUENCES")`, framed.
const DISCARD_SEQUENCES: &[u8] = b"Q\0\0\0\x16DISCARD SEQUENCES\0";

/// First words of statements that may call `nextval` unseen (column defaults,
/// triggers) or run other statements that do.
const WRITING_WORDS: [&[u8]; 9] = [
    b"insert", b"update", b"delete", b"merge", b"copy", b"with", b"execute", b"explain", b"call",
];

/// Whether running `sql` may leave `currval`/`lastval` state in the server session.
pub fn may_set_sequence_state(sql: &[u8]) -> bool {
    names_a_sequence_setter(sql) || a_statement_may_write(sql)
}

/// `nextval` or `setval` anywhere (any case, any schema prefix).
fn names_a_sequence_setter(sql: &[u8]) -> bool {
    memchr::memchr2_iter(b'v', b'V', sql).any(|at| {
        let tail = sql.get(at + 1..at + 3);
        tail.is_some_and(|t| t.eq_ignore_ascii_case(b"al"))
            && ((at >= 4 && sql[at - 4..at].eq_ignore_ascii_case(b"next"))
                || (at >= 3 && sql[at - 3..at].eq_ignore_ascii_case(b"set")))
    })
}

/// Whether the first word of any statement in `sql` (split at every `;`, quotes
/// ignored, which only adds statements) may write. A statement that starts with
/// something else than a word (a comment, a parenthesis) counts as writing.
fn a_statement_may_write(sql: &[u8]) -> bool {
    sql.split(|&b| b == b';').any(|statement| {
        let Some(start) = statement.iter().position(|b| !b.is_ascii_whitespace()) else {
            return false;
        };
        let statement = &statement[start..];
        let word_len = statement
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .unwrap_or(statement.len());
        if word_len == 0 {
            return true;
        }
        let word = &statement[..word_len];
        word.eq_ignore_ascii_case(b"do")
            || WRITING_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
    })
}

impl Session {
    /// Who this client is to a server connection's `sequences_of`: its cancel key,
    /// unique among connected clients (the secret is random, so a later client that is
    /// given the same pid is not taken for this one).
    fn sequence_owner(&self) -> u64 {
        ((self.cancel.pid as u32 as u64) << 32) | (self.cancel.secret as u32 as u64) | 1
    }

    /// A statement that may set sequence state is being forwarded on the attached
    /// server connection (transaction pooling only).
    pub(super) fn note_sequence_state(&mut self, may_set: impl FnOnce() -> bool) {
        let owner = self.sequence_owner();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.sequences_of != owner && may_set() {
            server.sequences_of = owner;
        }
    }

    /// The connection just attached may hold another client's sequence state: clear
    /// it ahead of this client's first message.
    pub(super) fn discard_others_sequence_state(&mut self) {
        let owner = self.sequence_owner();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.sequences_of == 0 || server.sequences_of == owner {
            return;
        }
        server.sequences_of = 0;
        self.to_server.extend_from_slice(DISCARD_SEQUENCES);
        self.responses
            .push(Expect::SwallowQuery, &mut self.to_client);
        metrics::counter!("pgwarden_sequence_state_discards_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discard_frame_is_well_formed() {
        let len = u32::from_be_bytes(DISCARD_SEQUENCES[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, DISCARD_SEQUENCES.len());
        assert_eq!(&DISCARD_SEQUENCES[5..len], b"DISCARD SEQUENCES");
    }

    #[test]
    fn statements_that_may_leave_sequence_state() {
        for sql in [
            "SELECT nextval('s')",
            "select pg_catalog.NEXTVAL('s')",
            "SELECT setval('s', 10)",
            "INSERT INTO items(v) VALUES ('x')",
            "  insert into t default values",
            "BEGIN; UPDATE t SET x = 1; COMMIT",
            "WITH n AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM n",
            "COPY t FROM STDIN",
            "/* app */ SELECT 1",
            "(SELECT 1)",
            "EXECUTE insert_item(1)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        ] {
            assert!(may_set_sequence_state(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn reads_and_session_statements_do_not() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT currval('s')",
            "SELECT lastval()",
            "select interval '1 day', value from t",
            "BEGIN; SELECT 1; COMMIT;",
            "SET search_path = app",
            "SHOW TimeZone",
            "",
            ";",
        ] {
            assert!(!may_set_sequence_state(sql.as_bytes()), "{sql}");
        }
    }
}
