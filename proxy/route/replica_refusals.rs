//! Reads a hot standby refuses while the primary runs them, both with SQLSTATE 0A000:
//! a serializable transaction ("cannot use serializable mode in a hot standby"), and
//! a query of an unlogged table ("cannot access temporary or unlogged relations during
//! recovery"). They are told apart by the routine that raised them
//! ([`standby_refusal`]). Such a read, refused before any of its answer reached the client, is
//! retried on the primary (`server/server_messages.rs`), and what caused it is
//! remembered for a while, so the next such reads go to the primary first:
//! - a serializable default that never shows in the protocol (`ALTER ROLE ... SET
//!   default_transaction_isolation`, or `ALTER DATABASE`), by role;
//! - an unlogged table, by the statement's shape.
//!
//! After [`REMEMBER_FOR`] a replica is tried again, in case the default or the table
//! changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a refusal keeps a role's or a shape's reads on the primary.
pub const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Keys learned from refusals, each remembered for [`REMEMBER_FOR`]; past `cap` keys
/// the oldest goes first.
#[derive(Debug)]
struct Remembered<K> {
    learned: Mutex<HashMap<K, Instant>>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Remembered<K> {
    fn with_cap(cap: usize) -> Remembered<K> {
        Remembered {
            learned: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Remembers `key`.
    fn learn(&self, key: K) {
        let mut learned = self.lock();
        if learned.len() >= self.cap {
            learned.retain(|_, at| at.elapsed() < REMEMBER_FOR);
            if learned.len() >= self.cap {
                let oldest = learned
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    learned.remove(&oldest);
                }
            }
        }
        learned.insert(key, Instant::now());
    }

    /// Whether `key` was learned within [`REMEMBER_FOR`] (an older one is forgotten),
    /// and how many keys remain.
    fn contains<Q>(&self, key: &Q) -> (bool, usize)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut learned = self.lock();
        let found = match learned.get(key) {
            Some(at) if at.elapsed() < REMEMBER_FOR => true,
            Some(_) => {
                learned.remove(key);
                false
            }
            None => false,
        };
        (found, learned.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Instant>> {
        self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The roles of one database learned to be serializable by default, and when.
#[derive(Debug)]
pub struct SerializableRoles(Remembered<String>);

impl Default for SerializableRoles {
    fn default() -> SerializableRoles {
        SerializableRoles(Remembered::with_cap(usize::MAX))
    }
}

impl SerializableRoles {
    /// A replica refused `role`'s read as serializable.
    pub fn learn(&self, role: &str) {
        self.0.learn(role.to_string());
    }

    /// Whether `role`'s transactions were found serializable within [`REMEMBER_FOR`].
    /// Asked once per client login, not per statement.
    pub fn contains(&self, role: &str) -> bool {
        self.0.contains(role).0
    }
}

/// Statement shapes (`crate::scan::Shape::hash`) a replica refused for another reason
/// (an unlogged table, most often). Asked for every read routed while one is known:
/// a process without any costs one atomic load.
#[derive(Debug)]
pub struct RefusedShapes {
    any: AtomicBool,
    learned: Remembered<u64>,
}

/// At most this many shapes are remembered (the oldest go first).
const MAX_SHAPES: usize = 1024;

impl Default for RefusedShapes {
    fn default() -> RefusedShapes {
        RefusedShapes {
            any: AtomicBool::new(false),
            learned: Remembered::with_cap(MAX_SHAPES),
        }
    }
}

impl RefusedShapes {
    pub fn learn(&self, shape: u64) {
        self.learned.learn(shape);
        self.any.store(true, Ordering::Relaxed);
    }

    /// Whether any shape is remembered: the cheap question asked first.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn contains(&self, shape: u64) -> bool {
        let (found, left) = self.learned.contains(&shape);
        if left == 0 {
            self.any.store(false, Ordering::Relaxed);
        }
        found
    }
}

/// What a hot standby refused, told from an `ErrorResponse` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyRefusal {
    /// A serializable transaction: learned for the role.
    Serializable,
    /// A temporary or unlogged relation: learned for the statement's shape.
    UnloggedRelation,
}

/// The hot-standby refusal an `ErrorResponse` body is, if any: SQLSTATE 0A000 raised
/// by the routine that refuses it (the `R` field, which no translation changes).
/// Nothing else with 0A000 is retried: "cached plan must not change result type",
/// for one, depends on what the client prepared, and a driver such as pgjdbc must
/// see it to prepare again.
pub fn standby_refusal(error_body: &[u8]) -> Option<StandbyRefusal> {
    use crate::protocol::backend::error_field;
    if error_field(error_body, b'C') != Some(b"0A000") {
        return None;
    }
    match error_field(error_body, b'R')? {
        b"GetSerializableTransactionSnapshot" => Some(StandbyRefusal::Serializable),
        b"get_relation_info" => Some(StandbyRefusal::UnloggedRelation),
        _ => None,
    }
}

/// PostgreSQL's message for a refused serializable transaction (SQLSTATE 0A000), as a
/// proxy-internal query reports it (message only).
pub const SERIALIZABLE_REFUSAL_MESSAGE: &str = "cannot use serializable mode in a hot standby";

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
        assert!(shapes.learned.lock().len() <= MAX_SHAPES);
        assert!(
            shapes.contains(100 + MAX_SHAPES as u64 - 1),
            "the newest stays"
        );
    }

    #[test]
    fn refusals_are_told_by_code_and_routine() {
        let serializable =
            b"SERROR\0VERROR\0C0A000\0Mcannot use serializable mode in a hot standby\0\
            D\"default_transaction_isolation\" is set to \"serializable\".\0Fpredicate.c\0L1697\0\
            RGetSerializableTransactionSnapshot\0\0";
        assert_eq!(
            standby_refusal(serializable),
            Some(StandbyRefusal::Serializable)
        );
        // Another language: the routine still tells.
        let translated =
            b"SERREUR\0VERROR\0C0A000\0Mne peut pas utiliser le mode s\xc3\xa9rialisable\0\
            Fpredicate.c\0L1697\0RGetSerializableTransactionSnapshot\0\0";
        assert_eq!(
            standby_refusal(translated),
            Some(StandbyRefusal::Serializable)
        );
        let unlogged = b"SERROR\0VERROR\0C0A000\0Mcannot access temporary or unlogged relations during recovery\0\
            Fplancat.c\0L150\0Rget_relation_info\0\0";
        assert_eq!(
            standby_refusal(unlogged),
            Some(StandbyRefusal::UnloggedRelation)
        );
        let cached_plan = b"SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0\
            Fplancache.c\0L717\0RRevalidateCachedQuery\0\0";
        assert_eq!(standby_refusal(cached_plan), None);
        let other_code =
            b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0Rget_relation_info\0\0";
        assert_eq!(standby_refusal(other_code), None);
    }
}
