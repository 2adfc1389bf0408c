//! Sequence state (`currval`, `lastval`) under transaction pooling.
//!
//! `nextval` and `setval` leave a value in the server session that `currval(seq)` and
//! `lastval()` return later, and an `INSERT` into a `serial` column calls `nextval`
//! without naming it. Left on a pooled connection, the next client's `currval` would
//! answer with another client's id instead of PostgreSQL's `55000` ("currval of
//! sequence is not yet defined in this session"). A server connection therefore
//! remembers the client whose statements may have left such state
//! (`ServerConnection::sequences_of`), and the next *other* client to take it has
//! `DISCARD SEQUENCES` sent ahead of its first message, in the same write, its answer
//! swallowed: no extra round trip.
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
const WRITING_WORDS: [&[u8]; 10] = [
    b"insert", b"update", b"delete", b"merge", b"copy", b"with", b"execute", b"explain", b"call",
    b"do",
];
/// The longest of them: a longer first word is none of them.
const LONGEST_WRITING_WORD: usize = 7;

/// Whether running `sql` may leave `currval`/`lastval` state in the server session:
/// the first word of any statement may write (statements split at every `;`, quotes
/// ignored, which only adds statements; one that starts with something else than a
/// word, a comment or a parenthesis, counts as writing), or the text names `nextval`
/// or `setval` (any case, any schema prefix). Runs on every forwarded query, so one
/// `memchr3` pass finds the `;`s and `v`s, and only those places are looked at.
pub fn may_set_sequence_state(sql: &[u8]) -> bool {
    if first_word_may_write(sql) {
        return true;
    }
    memchr::memchr3_iter(b';', b'v', b'V', sql).any(|at| {
        if sql[at] == b';' {
            return first_word_may_write(&sql[at + 1..]);
        }
        let tail = sql.get(at + 1..at + 3);
        tail.is_some_and(|t| t.eq_ignore_ascii_case(b"al"))
            && ((at >= 4 && sql[at - 4..at].eq_ignore_ascii_case(b"next"))
                || (at >= 3 && sql[at - 3..at].eq_ignore_ascii_case(b"set")))
    })
}

fn first_word_may_write(statement: &[u8]) -> bool {
    let Some(start) = statement.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    let statement = &statement[start..];
    if statement[0] == b';' {
        return false; // an empty statement
    }
    let word_len = statement
        .iter()
        .take(LONGEST_WRITING_WORD + 1)
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(statement.len().min(LONGEST_WRITING_WORD + 1));
    let word = &statement[..word_len];
    word_len == 0 || WRITING_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
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
            "select 1;\n  Explain analyze insert into t values (1)",
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
            "selected_nonsense_word",
            "executed",
            "",
            ";",
        ] {
            assert!(!may_set_sequence_state(sql.as_bytes()), "{sql}");
        }
    }

    /// The check written plainly: split at `;`, first words, then a lowercase search.
    fn reference(sql: &[u8]) -> bool {
        let writes = sql.split(|&b| b == b';').any(|statement| {
            let text = String::from_utf8_lossy(statement).to_ascii_lowercase();
            let text = text.trim_start();
            let word: String = text
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            !text.is_empty() && (word.is_empty() || WRITING_WORDS.contains(&word.as_bytes()))
        });
        let lower = String::from_utf8_lossy(sql).to_ascii_lowercase();
        writes || lower.contains("nextval") || lower.contains("setval")
    }

    #[test]
    fn the_fast_check_agrees_with_the_plain_one() {
        const PIECES: [&str; 24] = [
            "select",
            "SELECT",
            " ",
            "\n",
            ";",
            "insert",
            "Insert",
            "into",
            "t",
            "nextval",
            "NextVal",
            "set",
            "val",
            "v",
            "('s')",
            "(",
            "/*",
            "*/",
            "with",
            "do",
            "explained",
            "execute",
            "value",
            "1",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut both = [0usize; 2];
        for _ in 0..50_000 {
            let mut sql = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pieces = 1 + (state % 9) as usize;
            for n in 0..pieces {
                let pick = (state >> (n * 5)) as usize % PIECES.len();
                sql.push_str(PIECES[pick]);
            }
            let verdict = may_set_sequence_state(sql.as_bytes());
            assert_eq!(verdict, reference(sql.as_bytes()), "{sql:?}");
            both[verdict as usize] += 1;
        }
        assert!(both[0] > 1_000 && both[1] > 1_000, "{both:?}");
    }
}
