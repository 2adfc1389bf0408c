//! The session's random numbers under pooling.
//!
//! `setseed(x)` and `SET seed = x` make `random()` in that server session repeat a
//! known sequence, and `DISCARD ALL` does not undo that. Left on a pooled connection,
//! the next client's `random()` would go on with the first client's sequence, where
//! PostgreSQL gives every new session an unpredictable one. So a server connection
//! remembers the client whose statements may have seeded it
//! (`ServerConnection::seeded_by`, set from the scanner's `may_seed`, and by the
//! replay of a client's own `SET seed` onto a connection), and:
//! - the next *other* client to take it has it reseeded from the proxy's own random
//!   source, in the round trip that gives it that client's settings
//!   (`prepare_server`), before them: a client that set `seed` itself gets its own
//!   sequence back from the replay;
//! - a connection released by a session (session pooling, or a pinned client) is
//!   reseeded after its `DISCARD ALL`.
//!
//! The seeding client's own sequence goes on while it stays on that connection, as the
//! sequences' state does. The reseed is `SET seed = x; RESET seed`: `RESET` does not
//! seed again, so the setting reads as before. A user function that seeds is code the
//! proxy cannot see into, and its connection's full reset reseeds as well.

use super::session::Session;
use crate::pool::ServerConnection;

impl Session {
    /// A statement that may seed the session's random numbers is being forwarded on
    /// the attached server connection.
    pub(super) fn note_random_seed(&mut self, may_seed: bool) {
        if !may_seed {
            return;
        }
        let owner = self.sequence_owner();
        if let Some(server) = self.server.as_mut() {
            server.seeded_by = owner;
        }
    }
}

/// Whether `server` must be reseeded before the client `owner` uses it: another client
/// may have seeded it, or it ran code the proxy cannot see into.
pub(super) fn needs_reseed(server: &ServerConnection, owner: u64) -> bool {
    server.needs_reset || (server.seeded_by != 0 && server.seeded_by != owner)
}

/// Statements that seed the session's random numbers afresh and leave the `seed`
/// setting at its default.
pub(super) fn reseed_sql() -> String {
    // `seed` takes -1 to 1.
    let seed = rand::random::<f64>() * 2.0 - 1.0;
    format!("SET seed = {seed:.17};RESET seed;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reseed_has_its_own_seed_in_range() {
        let first = reseed_sql();
        assert_ne!(first, reseed_sql());
        let seed: f64 = first
            .strip_prefix("SET seed = ")
            .and_then(|rest| rest.split(';').next())
            .and_then(|value| value.parse().ok())
            .expect("a number");
        assert!((-1.0..=1.0).contains(&seed), "{first}");
        assert!(first.ends_with(";RESET seed;"));
    }
}
