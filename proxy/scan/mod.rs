//! The statement scanner: one pass over a statement's text that gives every consumer
//! what it needs, computed once per statement and handed to all of them.
//!
//! - The **shape** (`walk.rs`): the text with literal values replaced by `?` and
//!   whitespace collapsed, so that statements differing only in constants
//!   (`WHERE aid = 17` / `WHERE aid = 42`) share one entry. Its hash keys the
//!   classifier cache (`route`) and the statistics' fingerprint map (`stats`); the text
//!   itself ([`shape`]) is only built where it is shown or tested.
//! - The **session verdicts** (`flags.rs`) that transaction pooling needs on every
//!   forwarded query: may it change the server session, leave `currval` state, or
//!   call a function.
//! - **Repeats** (`repeat.rs`): a text that is a recent one of this thread but for its
//!   numbers (`WHERE aid = 17`, then `WHERE aid = 42`) is not walked again: it has
//!   that text's scan, and its [`Family`], by which consumers keep other verdicts that
//!   treat every digit alike.
//!
//! Not here: the statistics' normalized text (`stats/fingerprint.rs`, computed once
//! per new shape, off the per-statement path) and the tenant guard's literal spans
//! (`tenant/shape.rs`, checked against sqlparser's tokenizer because the guard's
//! exactness rests on them; it runs only with the guard on).

mod flags;
mod repeat;
mod walk;

pub use repeat::scan_recent;

#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, Hasher};

use walk::ShapeSink;

/// Keeps shape hashes apart from the hashes of texts that happen to equal a shape.
const SHAPE_HASH_SALT: u64 = 0x5be5_d1ce_0f5a_9e01;

/// What identifies a statement's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The seeded process hash of the shape (salted apart from text hashes).
    pub hash: u64,
    /// Whether the shape replaced any literal.
    pub has_literals: bool,
}

/// Everything the scanner found in one statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementScan {
    pub shape: Shape,
    /// Whether running the text may change the server session: `SET`/`RESET` where a
    /// statement starts, `set_config`, `LISTEN`/`UNLISTEN`, `DISCARD`, `DEALLOCATE`,
    /// `PREPARE`, temp tables, advisory locks, `WITH HOLD` cursors, `CLOSE`. Read from
    /// the raw bytes (quotes and comments included), so it errs toward yes; the exact
    /// effects are then worked out by `server/session_effects.rs`.
    pub may_have_effects: bool,
    /// Whether running the text may leave `currval`/`lastval` state: a statement
    /// (split at every `;`) starts with a word that can write (`INSERT`, `UPDATE`,
    /// `DELETE`, `MERGE`, `COPY`, `WITH`, `EXECUTE`, `EXPLAIN`, `CALL`, `DO`) or with no
    /// word at all, or the text names `nextval`/`setval`.
    pub may_set_sequences: bool,
    /// Whether running the text may seed the server session's random numbers (which
    /// `DISCARD ALL` keeps): the text has the word `setseed` or `seed` (the setting).
    pub may_seed: bool,
    /// Whether the text has a `(`, `$` or `'`: without one it calls no function and
    /// has no `DO` body.
    pub may_call: bool,
    /// The texts this one belongs with: equal to it but for the digits of its numbers
    /// (`repeat.rs`), when [`scan_recent`] knows them. Any verdict that treats every
    /// digit alike is the same for all of them. `None` from [`scan`].
    pub family: Option<Family>,
}

/// One family of texts that are equal but for the digits of their numbers. Never
/// given to two families, on any thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family(pub u64);

/// Scans `sql` (one or more statements, as sent).
pub fn scan(sql: &[u8]) -> StatementScan {
    scan_numbered(sql).0
}

/// [`scan`], and where the text's numbers are (`repeat.rs`).
fn scan_numbered(sql: &[u8]) -> (StatementScan, walk::Numbers) {
    let mut sink = HashSink {
        hasher: crate::stats::process_hasher().build_hasher(),
        buffer: [0; HASH_CHUNK],
        filled: 0,
    };
    let walked = walk::walk(sql, &mut sink);
    sink.hasher.write(&sink.buffer[..sink.filled]);
    let scanned = StatementScan {
        shape: Shape {
            hash: sink.hasher.finish() ^ SHAPE_HASH_SALT,
            has_literals: walked.has_literals,
        },
        may_have_effects: walked.flags.may_have_effects(),
        may_set_sequences: walked.flags.sequences,
        may_seed: walked.flags.seed,
        may_call: walked.flags.call_syntax,
        family: None,
    };
    (scanned, walked.numbers)
}

/// The statement's shape as text (for display, tests and fuzzing; the hot path uses
/// [`Shape::hash`]).
pub fn shape(sql: &str) -> String {
    let mut out = Vec::with_capacity(sql.len());
    walk::walk(sql.as_bytes(), &mut out);
    // Parts are cut at ASCII bytes, so valid text gives valid text.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The bytes the hasher is given at a time: a shape is a dozen or more parts, most a
/// few bytes, gathered here so the hash depends on the shape's bytes alone and the
/// hasher runs once for most statements.
const HASH_CHUNK: usize = 256;

struct HashSink<H> {
    hasher: H,
    buffer: [u8; HASH_CHUNK],
    filled: usize,
}

impl<H: Hasher> ShapeSink for HashSink<H> {
    #[inline(always)]
    fn put(&mut self, mut part: &[u8]) {
        while !part.is_empty() {
            let take = part.len().min(HASH_CHUNK - self.filled);
            self.buffer[self.filled..self.filled + take].copy_from_slice(&part[..take]);
            self.filled += take;
            part = &part[take..];
            if self.filled == HASH_CHUNK {
                self.hasher.write(&self.buffer);
                self.filled = 0;
            }
        }
    }
}
