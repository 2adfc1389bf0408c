//! A session's memo of the classes of the statement shapes it sent last.
//!
//! [`Routing::classify_scanned`] answers from a process-wide moka cache by shape hash,
//! and each of those lookups costs about 800 instructions (hashing, the concurrent
//! map, the frequency sketch's read log, a clock read): 5% of a `pgbench -S`
//! transaction's work in pgwarden wherever a `Query` is classified (with replicas, or
//! while the result cache tracks writes). A client sends the same few shapes again
//! and again, so a handful of slots in the session answers nearly every lookup for a
//! few comparisons. The memo belongs to one [`Routing`] (by its generation): a reload
//! builds a new one, and the memo forgets what the old one said.

use super::{Routing, StatementClass};

/// Slots per session: the shapes a client alternates between in one transaction.
const SLOTS: usize = 4;

/// The class of a remembered shape in one byte; 0 marks an empty slot.
const EMPTY: u8 = 0;

#[derive(Debug, Default)]
pub struct ClassMemo {
    /// The generation of the [`Routing`] whose answers the slots hold.
    generation: u64,
    shapes: [u64; SLOTS],
    classes: [u8; SLOTS],
    /// The slot the next new shape takes (round robin).
    next: u8,
}

/// The one-byte form of a class that may be shared between texts of one shape
/// (a proxy setting carries its value, and is never remembered).
fn code(class: &StatementClass) -> Option<u8> {
    Some(match class {
        StatementClass::Read => 1,
        StatementClass::Write => 2,
        StatementClass::Begin { read_only: false } => 3,
        StatementClass::Begin { read_only: true } => 4,
        StatementClass::Control => 5,
        StatementClass::ProxySetting { .. } => return None,
    })
}

fn class_of(code: u8) -> Option<StatementClass> {
    Some(match code {
        EMPTY => return None,
        1 => StatementClass::Read,
        2 => StatementClass::Write,
        3 => StatementClass::Begin { read_only: false },
        4 => StatementClass::Begin { read_only: true },
        5 => StatementClass::Control,
        _ => return None,
    })
}

impl Routing {
    /// [`Routing::classify_scanned`], answered from `memo` when this session sent a
    /// statement of the same shape lately.
    pub fn classify_memoized(
        &self,
        sql: &str,
        shape_hash: u64,
        memo: &mut ClassMemo,
    ) -> StatementClass {
        if memo.generation != self.generation {
            *memo = ClassMemo {
                generation: self.generation,
                ..ClassMemo::default()
            };
        }
        for (shape, &code) in memo.shapes.iter().zip(&memo.classes) {
            if *shape == shape_hash {
                if let Some(class) = class_of(code) {
                    return class;
                }
            }
        }
        let class = self.classify_scanned(sql, shape_hash);
        if let Some(code) = code(&class) {
            let slot = usize::from(memo.next) % SLOTS;
            memo.shapes[slot] = shape_hash;
            memo.classes[slot] = code;
            memo.next = ((slot + 1) % SLOTS) as u8;
        }
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::route::SharedPositions;
    use std::sync::Arc;

    fn routing() -> Routing {
        Routing::start(&Config::default(), Arc::new(SharedPositions::default()))
    }

    fn shape(sql: &str) -> u64 {
        crate::scan::scan(sql.as_bytes()).shape.hash
    }

    #[tokio::test]
    async fn remembered_shapes_answer_as_the_classifier_did() {
        let routing = routing();
        let mut memo = ClassMemo::default();
        let texts = [
            "SELECT 1",
            "UPDATE t SET a = 1",
            "BEGIN",
            "BEGIN READ ONLY",
            "COMMIT",
            "SET pgwarden.route = 'primary'",
        ];
        for _ in 0..3 {
            for sql in texts {
                assert_eq!(
                    routing.classify_memoized(sql, shape(sql), &mut memo),
                    routing.classify(sql),
                    "{sql}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_new_routing_starts_the_memo_afresh() {
        let first = routing();
        let mut memo = ClassMemo::default();
        let read = shape("SELECT 1");
        first.classify_memoized("SELECT 1", read, &mut memo);
        let second = routing();
        assert_eq!(
            second.classify_memoized("DELETE FROM t", read, &mut memo),
            StatementClass::Write
        );
    }

    #[tokio::test]
    async fn proxy_settings_are_never_remembered() {
        let routing = routing();
        let mut memo = ClassMemo::default();
        let sql = "SET pgwarden.route = 'primary'";
        routing.classify_memoized(sql, shape(sql), &mut memo);
        assert!(memo.classes.iter().all(|&c| c == EMPTY));
    }
}
