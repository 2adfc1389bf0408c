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
//! The text check (`may_set_sequences` of `crate::scan`) errs toward yes (a false
//! alarm costs one pipelined statement): a statement in the text starts with a word
//! that can write (or with anything but a word), or the text names `nextval`/`setval`.
//! A client's own state does not follow it to another server connection (PostgreSQL
//! keeps it in one session); there its `currval` fails with `55000` rather than
//! answering with someone else's value.

use super::responses::Expect;
use super::session::Session;

/// `Query("DISCARD SEQUENCES")`, framed.
const DISCARD_SEQUENCES: &[u8] = b"Q\0\0\0\x16DISCARD SEQUENCES\0";

impl Session {
    /// Who this client is to a server connection's `sequences_of`: its cancel key,
    /// unique among connected clients (the secret is random, so a later client that is
    /// given the same pid is not taken for this one).
    pub(super) fn sequence_owner(&self) -> u64 {
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
}
