//! A client's named prepared statements under transaction pooling.
//!
//! The client's name maps to a proxy-wide name derived from the statement definition
//! (query text and parameter types), so identical statements from different clients
//! share one server-side statement, and a client that moves to another server
//! connection finds its statement prepared there on first use.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

/// Server-side identity of a statement definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementId(pub u64);

impl StatementId {
    pub fn of(definition: &[u8]) -> StatementId {
        let mut hasher = DefaultHasher::new();
        definition.hash(&mut hasher);
        StatementId(hasher.finish())
    }

    /// The name used on server connections, e.g. `pgw_00ab...`.
    pub fn server_name(self) -> [u8; 20] {
        let mut name = *b"pgw_0000000000000000";
        let hex = b"0123456789abcdef";
        for i in 0..16 {
            name[4 + i] = hex[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        name
    }
}

#[derive(Debug, Clone)]
pub struct PooledStatement {
    pub id: StatementId,
    /// Query text with NUL, parameter count and types, exactly as the client sent them.
    pub definition: Bytes,
    /// May run on a replica (decided when routing is on; false otherwise).
    pub read_only: bool,
}

/// Cap on statements one client may keep; past it the oldest name is forgotten.
const MAX_STATEMENTS_PER_CLIENT: usize = 10_000;

#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Bytes, PooledStatement>,
}

impl ClientStatements {
    pub fn define(&mut self, name: &[u8], definition: &[u8], read_only: bool) -> StatementId {
        let id = StatementId::of(definition);
        if self.by_name.len() >= MAX_STATEMENTS_PER_CLIENT && !self.by_name.contains_key(name) {
            if let Some(victim) = self.by_name.keys().next().cloned() {
                self.by_name.remove(&victim);
            }
        }
        self.by_name.insert(
            Bytes::copy_from_slice(name),
            PooledStatement {
                id,
                definition: Bytes::copy_from_slice(definition),
                read_only,
            },
        );
        id
    }

    pub fn get(&self, name: &[u8]) -> Option<&PooledStatement> {
        self.by_name.get(name)
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_definition_same_server_name() {
        let mut a = ClientStatements::default();
        let mut b = ClientStatements::default();
        let ia = a.define(b"s1", b"select 1\0\0\0", true);
        let ib = b.define(b"other", b"select 1\0\0\0", true);
        assert_eq!(ia, ib);
        let ic = b.define(b"s2", b"select 1\0\0\x01\0\0\0\x17", true);
        assert_ne!(ia, ic);
        assert!(ia.server_name().starts_with(b"pgw_"));
        assert!(a.remove(b"s1"));
        assert!(a.get(b"s1").is_none());
    }
}
