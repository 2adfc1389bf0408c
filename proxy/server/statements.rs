//! A client's named prepared statements under transaction pooling.
//!
//! The client's name maps to a proxy-wide name given to the statement definition
//! (query text and parameter types) by a process-wide registry, so identical
//! statements from different clients share one server-side statement, and a client
//! that moves to another server connection finds its statement prepared there on
//! first use. Names come from a counter, never from a hash: two definitions can never
//! share a server name.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

use super::opaque_code::OpaqueCheck;
use super::session_effects::{effects_of, Effect};
use crate::route::DataAccess;
use crate::stats::ProcessMap;

/// Server-side identity of a statement definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementId(pub u64);

/// Definitions kept by the registry before it starts over (ids stay unique: a
/// definition registered again simply gets a new one).
pub const REGISTRY_MAX_BYTES: usize = 32 << 20;

/// Bytes the process-wide registry holds now (definitions plus per-entry overhead).
pub fn registry_bytes() -> usize {
    registry().lock().unwrap_or_else(|e| e.into_inner()).bytes
}

struct Registry {
    by_definition: ProcessMap<Box<[u8]>, u64>,
    bytes: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(Registry {
            by_definition: ProcessMap::default(),
            bytes: 0,
        })
    })
}

impl StatementId {
    /// The proxy-wide id of a definition (registered on first sight).
    pub fn of(definition: &[u8]) -> StatementId {
        let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = registry.by_definition.get(definition) {
            return StatementId(*id);
        }
        if registry.bytes + definition.len() > REGISTRY_MAX_BYTES {
            registry.by_definition.clear();
            registry.bytes = 0;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        registry.bytes += definition.len() + 32;
        registry.by_definition.insert(definition.into(), id);
        StatementId(id)
    }

    /// The server said this statement's cached plan is no longer valid (its result
    /// type changed): the next `Parse` of the definition gets a fresh server name, so
    /// every server connection prepares it anew instead of reusing the stale plan.
    pub fn retire(definition: &[u8], id: StatementId) {
        let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
        if registry.by_definition.get(definition) == Some(&id.0) {
            registry.by_definition.remove(definition);
            registry.bytes = registry.bytes.saturating_sub(definition.len() + 32);
        }
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
    /// Reads only (may run on a replica), changes nothing, or may write: decided when
    /// routing is on, `MayWrite` otherwise.
    pub access: DataAccess,
    /// What executing it does to the server session (`SET`, `LISTEN`, ...).
    pub effects: Option<std::sync::Arc<[Effect]>>,
    /// Executing it may leave `currval`/`lastval` state (`sequence_state.rs`).
    pub sets_sequences: bool,
    /// Executing it may seed the session's random numbers (`random_seed.rs`).
    pub seeds: bool,
    /// The query's shape, for the statistics of the statements that run it.
    pub shape: crate::scan::Shape,
}

impl PooledStatement {
    pub fn new(
        definition: &[u8],
        query: &[u8],
        access: DataAccess,
        opaque: Option<OpaqueCheck>,
    ) -> PooledStatement {
        let scanned = crate::scan::scan(query);
        PooledStatement {
            id: StatementId::of(definition),
            definition: Bytes::copy_from_slice(definition),
            access,
            effects: statement_effects(query, &scanned, opaque),
            sets_sequences: scanned.may_set_sequences,
            seeds: scanned.may_seed,
            shape: scanned.shape,
        }
    }
}

/// Session effects of a statement's text (None for the common statement without any);
/// `scanned` is its scan. `opaque`: how to tell code the proxy cannot see into, when
/// that matters (pins on).
pub fn statement_effects(
    query: &[u8],
    scanned: &crate::scan::StatementScan,
    opaque: Option<OpaqueCheck>,
) -> Option<std::sync::Arc<[Effect]>> {
    let opaque = scanned.may_call && opaque.is_some_and(|check| check.runs_opaque_code(query));
    if !scanned.may_have_effects {
        return opaque.then(|| [Effect::OpaqueCode].into());
    }
    let mut effects = effects_of(&crate::protocol::text::lossy(query));
    if opaque {
        effects.push(Effect::OpaqueCode);
    }
    (!effects.is_empty()).then(|| effects.into())
}

/// Cap on statements one client may keep; past it one of the names is forgotten.
const MAX_STATEMENTS_PER_CLIENT: usize = 10_000;

#[derive(Debug, Default)]
pub struct ClientStatements {
    /// The statements with their names, in no particular order.
    named: Vec<(Bytes, PooledStatement)>,
    /// Name → place in `named`.
    by_name: ProcessMap<Bytes, usize>,
    /// The place of the statement looked up last. A `Bind` asks for its statement
    /// five or six times (routing, statistics, the result cache, the server's prepared
    /// set), and a client runs the same statement again and again: comparing the name
    /// is cheaper than hashing it. An atomic only so that sessions stay `Sync`.
    last: AtomicUsize,
}

impl ClientStatements {
    pub fn define(
        &mut self,
        name: &[u8],
        definition: &[u8],
        query: &[u8],
        access: DataAccess,
        opaque: Option<OpaqueCheck>,
    ) -> StatementId {
        let statement = PooledStatement::new(definition, query, access, opaque);
        let id = statement.id;
        if let Some(&at) = self.by_name.get(name) {
            self.named[at].1 = statement;
            return id;
        }
        if self.named.len() >= MAX_STATEMENTS_PER_CLIENT {
            if let Some(victim) = self.named.first().map(|(victim, _)| victim.clone()) {
                self.remove(&victim);
            }
        }
        let name = Bytes::copy_from_slice(name);
        self.by_name.insert(name.clone(), self.named.len());
        self.named.push((name, statement));
        id
    }

    /// The definition behind a server id, if this client still uses it.
    pub fn definition_of(&self, id: StatementId) -> Option<Bytes> {
        self.named
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(_, s)| s.definition.clone())
    }

    pub fn get(&self, name: &[u8]) -> Option<&PooledStatement> {
        let last = self.last.load(Ordering::Relaxed);
        if let Some((known, statement)) = self.named.get(last) {
            if known[..] == *name {
                return Some(statement);
            }
        }
        let at = *self.by_name.get(name)?;
        self.last.store(at, Ordering::Relaxed);
        Some(&self.named[at].1)
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        let Some(at) = self.by_name.remove(name) else {
            return false;
        };
        self.named.swap_remove(at);
        // The last statement moved into the gap.
        if let Some((moved, _)) = self.named.get(at) {
            if let Some(place) = self.by_name.get_mut(&moved[..]) {
                *place = at;
            }
        }
        true
    }

    pub fn clear(&mut self) {
        self.named.clear();
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
        let ia = a.define(
            b"s1",
            b"select 1\0\0\0",
            b"select 1",
            DataAccess::Reads,
            None,
        );
        let ib = b.define(
            b"other",
            b"select 1\0\0\0",
            b"select 1",
            DataAccess::Reads,
            None,
        );
        assert_eq!(ia, ib);
        let ic = b.define(
            b"s2",
            b"select 1\0\0\x01\0\0\0\x17",
            b"select 1",
            DataAccess::Reads,
            None,
        );
        assert_ne!(ia, ic);
        StatementId::retire(b"select 1\0\0\0", ia);
        let id = a.define(
            b"s1",
            b"select 1\0\0\0",
            b"select 1",
            DataAccess::Reads,
            None,
        );
        assert_ne!(id, ia, "a retired definition gets a new server name");
        assert!(ia.server_name().starts_with(b"pgw_"));
        assert!(a.remove(b"s1"));
        assert!(a.get(b"s1").is_none());
    }

    /// Lookups find each name's own statement through redefinitions, removals (which
    /// move another statement into the gap) and the remembered last lookup.
    #[test]
    fn names_find_their_statements_through_removals() {
        let mut statements = ClientStatements::default();
        let define = |statements: &mut ClientStatements, name: &str, sql: &str| {
            let definition = format!("{sql}\0\0\0");
            statements.define(
                name.as_bytes(),
                definition.as_bytes(),
                sql.as_bytes(),
                DataAccess::Reads,
                None,
            )
        };
        let query_of = |statements: &ClientStatements, name: &str| {
            statements.get(name.as_bytes()).map(|s| {
                let text = &s.definition[..s.definition.len() - 3];
                String::from_utf8(text.to_vec()).unwrap()
            })
        };
        for i in 0..5 {
            define(&mut statements, &format!("s{i}"), &format!("select {i}"));
        }
        assert_eq!(query_of(&statements, "s1").as_deref(), Some("select 1"));
        // s1 is remembered; removing it puts s4 in its place.
        assert!(statements.remove(b"s1"));
        assert!(!statements.remove(b"s1"));
        assert_eq!(query_of(&statements, "s1"), None);
        assert_eq!(query_of(&statements, "s4").as_deref(), Some("select 4"));
        assert_eq!(query_of(&statements, "s0").as_deref(), Some("select 0"));
        // The last one removed: nothing moves.
        assert!(statements.remove(b"s3"));
        assert_eq!(query_of(&statements, "s3"), None);
        define(&mut statements, "s4", "select 44");
        assert_eq!(query_of(&statements, "s4").as_deref(), Some("select 44"));
        define(&mut statements, "s1", "select 11");
        for (name, sql) in [
            ("s0", "select 0"),
            ("s1", "select 11"),
            ("s2", "select 2"),
            ("s4", "select 44"),
        ] {
            assert_eq!(query_of(&statements, name).as_deref(), Some(sql), "{name}");
        }
        assert!(statements.get(b"s").is_none() && statements.get(b"s10").is_none());
        statements.clear();
        assert_eq!(query_of(&statements, "s0"), None);
    }
}
