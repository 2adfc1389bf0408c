//! Reads a hot standby refuses while the primary runs them, all with SQLSTATE 0A000:
//! a serializable transaction ("cannot use serializable mode in a hot standby"), and
//! a query of an unlogged table ("cannot access temporary or unlogged relations during
//! recovery"). Such a read, refused before any of its answer reached the client, is
//! retried on the primary (`server/server_messages.rs`), and what caused it is
//! remembered for a while, so the next such reads go to the primary first:
//! - a serializable default that never shows in the protocol (`ALTER ROLE ... SET
//!   default_transaction_isolation`, or `ALTER DATABASE`), by role;
//! - any other refusal, by the statement's shape.
//!
//! After [`REMEMBER_FOR`] a replica is tried again, in case the default or the table
//! changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a refusal keeps a role's or a shape's reads on the primary.
pub const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// The roles of one database learned to be serializable by default, and when.
#[derive(Debug, Default)]
pub struct SerializableRoles {
    learned: Mutex<HashMap<String, Instant>>,
}

impl SerializableRoles {
    /// A replica refused `role`'s read as serializable.
    pub fn learn(&self, role: &str) {
        self.lock().insert(role.to_string(), Instant::now());
    }

    /// Whether `role`'s transactions were found serializable within [`REMEMBER_FOR`].
    /// Asked once per client login, not per statement.
    pub fn contains(&self, role: &str) -> bool {
        let mut learned = self.lock();
        match learned.get(role) {
            Some(at) if at.elapsed() < REMEMBER_FOR => true,
            Some(_) => {
                learned.remove(role);
                false
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Statement shapes (`crate::scan::Shape::hash`) a replica refused for another reason
/// (an unlogged table, most often). Asked for every read routed while one is known:
/// a process without any costs one atomic load.
#[derive(Debug, Default)]
pub struct RefusedShapes {
    any: AtomicBool,
    learned: Mutex<HashMap<u64, Instant>>,
}

/// At most this many shapes are remembered (the oldest go first).
const MAX_SHAPES: usize = 1024;

impl RefusedShapes {
    pub fn learn(&self, shape: u64) {
        let mut learned = self.lock();
        if learned.len() >= MAX_SHAPES {
            learned.retain(|_, at| at.elapsed() < REMEMBER_FOR);
            if learned.len() >= MAX_SHAPES {
                if let Some(oldest) = learned.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k) {
                    learned.remove(&oldest);
                }
            }
        }
        learned.insert(shape, Instant::now());
        self.any.store(true, Ordering::Relaxed);
    }

    /// Whether any shape is remembered: the cheap question asked first.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn contains(&self, shape: u64) -> bool {
        let mut learned = self.lock();
        let found = match learned.get(&shape) {
            Some(at) if at.elapsed() < REMEMBER_FOR => true,
            Some(_) => {
                learned.remove(&shape);
                false
            }
            None => false,
        };
        if learned.is_empty() {
            self.any.store(false, Ordering::Relaxed);
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether an `ErrorResponse` body is a hot standby's refusal of serializable mode:
/// SQLSTATE 0A000 with PostgreSQL's message. A server that answers in another
/// language is not recognized by the message; its refusal is still retried on the
/// primary (by the code alone), and learned by shape instead of by role.
pub fn is_serializable_refusal(error_body: &[u8]) -> bool {
    crate::protocol::backend::error_field(error_body, b'M')
        .is_some_and(|m| m == REFUSAL_MESSAGE.as_bytes())
}

/// PostgreSQL's message for it (SQLSTATE 0A000).
pub const REFUSAL_MESSAGE: &str = "cannot use serializable mode in a hot standby";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_role_is_remembered_and_others_are_not() {
        let roles = SerializableRoles::default();
        assert!(!roles.contains("app"));
        roles.learn("app");
        assert!(roles.contains("app"));
        assert!(!roles.contains("reporting"));
    }

    #[test]
    fn refused_shapes_are_remembered_and_bounded() {
        let shapes = RefusedShapes::default();
        assert!(!shapes.any());
        shapes.learn(7);
        assert!(shapes.any() && shapes.contains(7) && !shapes.contains(8));
        for shape in 100..100 + MAX_SHAPES as u64 {
            shapes.learn(shape);
        }
        assert!(shapes.lock().len() <= MAX_SHAPES);
        assert!(
            shapes.contains(100 + MAX_SHAPES as u64 - 1),
            "the newest stays"
        );
    }

    #[test]
    fn a_refusal_is_told_by_its_message() {
        let refusal = b"SERROR\0VERROR\0C0A000\0Mcannot use serializable mode in a hot standby\0\
            D\"default_transaction_isolation\" is set to \"serializable\".\0\0";
        assert!(is_serializable_refusal(refusal));
        let other = b"SERROR\0VERROR\0C0A000\0MFULL JOIN is only supported with merge-joinable join conditions\0\0";
        assert!(!is_serializable_refusal(other));
    }
}
