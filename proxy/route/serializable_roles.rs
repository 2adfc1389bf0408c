//! Roles whose reads a replica refused as serializable: PostgreSQL runs no serializable
//! transaction on a hot standby, and a default set with `ALTER ROLE ... SET
//! default_transaction_isolation` (or `ALTER DATABASE`) never shows in the protocol.
//! The proxy learns it from the refusal, retries that read on the primary, and sends
//! the role's reads there for a while; then a replica is tried again, in case the
//! default was changed back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a refusal keeps a role's reads on the primary.
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

/// Whether an `ErrorResponse` body is a hot standby's refusal of serializable mode:
/// SQLSTATE 0A000 with PostgreSQL's message. A server that answers in another
/// language is not recognized by the message; its refusal is still retried on the
/// primary (by the code alone) but not learned.
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
    fn a_refusal_is_told_by_its_message() {
        let refusal = b"SERROR\0VERROR\0C0A000\0Mcannot use serializable mode in a hot standby\0\
            D\"default_transaction_isolation\" is set to \"serializable\".\0\0";
        assert!(is_serializable_refusal(refusal));
        let other = b"SERROR\0VERROR\0C0A000\0MFULL JOIN is only supported with merge-joinable join conditions\0\0";
        assert!(!is_serializable_refusal(other));
    }
}
