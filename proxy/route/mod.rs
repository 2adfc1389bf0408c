//! Routing: which backend a statement goes to.
//!
//! This room owns the read/write classifier (sqlparser, cached by statement text),
//! the topology of each database (primary, replicas, health, lag, circuit breakers),
//! the lag monitor,
//! and the read-your-writes positions shared across connections and instances. It
//! decides; the session carries out. It never touches client sockets.

pub mod circuit;
mod class_memo;
mod classify;
mod monitor;
pub mod replica_refusals;
pub mod ryw;
pub mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use class_memo::ClassMemo;
pub use classify::{hint, proxy_setting_of, Classifier, DataAccess, Hint, StatementClass};
pub use ryw::SharedPositions;
pub use topology::{format_lsn, parse_lsn, BackendState, LagLimits, Lsn, ReplicaChoice, Topology};

use crate::config::{Config, RywScope};

/// Bytes a cached classification costs beyond its key text.
const CLASS_ENTRY_BYTES: u32 = 96;

/// The classification cache: bounded by bytes (each entry weighs its texts plus a
/// fixed overhead), and by `entries` through the byte bound's average.
fn class_cache(entries: u64, bytes: u64) -> moka::sync::Cache<u64, StatementClass> {
    let bytes = bytes.min(entries.saturating_mul(u64::from(CLASS_ENTRY_BYTES) + 64));
    moka::sync::Cache::builder()
        .max_capacity(bytes.max(1))
        .weigher(|key: &u64, class: &StatementClass| {
            let value = match class {
                StatementClass::ProxySetting { name, value } => name.len() + value.len(),
                _ => 0,
            };
            u32::try_from(std::mem::size_of_val(key) + value)
                .unwrap_or(u32::MAX)
                .saturating_add(CLASS_ENTRY_BYTES)
        })
        .build()
}

/// Counts the [`Routing`]s built, so each has its own generation.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// Routing state of the process, rebuilt on reload.
pub struct Routing {
    classifier: Classifier,
    /// Classes by the hash of the statement's shape (`crate::scan`): a 64-bit hash
    /// with this process's random seed, so two shapes meet in one key only by a
    /// collision of that hash. One would send a write to a replica (which refuses it)
    /// or let the result cache miss that write's invalidation until the entry's TTL.
    classes: moka::sync::Cache<u64, StatementClass>,
    /// Tells this routing from the one a reload replaces ([`ClassMemo`]).
    generation: u64,
    topologies: HashMap<String, Arc<Topology>>,
    pub positions: Arc<SharedPositions>,
    pub limits: LagLimits,
}

impl Routing {
    /// Builds routing for `config` and starts its background tasks (lag monitors and,
    /// when enabled, the NOTIFY listener). Must run inside a tokio runtime.
    pub fn start(config: &Config, positions: Arc<SharedPositions>) -> Routing {
        let routing = &config.routing;
        let mut topologies = HashMap::new();
        for (name, db) in &config.databases {
            if db.replicas.is_empty() || !routing.enabled {
                continue;
            }
            let (Ok(primary), Ok(replicas)) =
                (db.primary_endpoint(name), db.replica_endpoints(name))
            else {
                continue; // validated at load
            };
            let mut addresses = vec![primary.address()];
            addresses.extend(replicas.iter().map(|r| r.address()));
            let protection = &config.protection;
            let policy = circuit::CircuitPolicy {
                failures: protection.circuit_failures,
                window: Duration::from_millis(protection.circuit_window_ms),
                open_for: Duration::from_millis(protection.circuit_open_ms),
            };
            let topology = Arc::new(Topology::with_circuits(name, addresses, policy));
            let mut urls = vec![db.primary.clone()];
            urls.extend(db.replicas.iter().cloned());
            monitor::spawn(
                topology.clone(),
                urls,
                Duration::from_millis(routing.lag_poll_ms.max(10)),
            );
            if config.ryw.scope != RywScope::Off && config.ryw.share_between_instances {
                ryw::spawn_listener(positions.clone(), db.primary.clone());
            }
            topologies.insert(name.clone(), topology);
        }
        Routing {
            classifier: Classifier::new(&routing.read_only_functions),
            classes: class_cache(
                routing.classifier_cache_entries,
                routing.classifier_cache_bytes,
            ),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
            topologies,
            positions,
            limits: LagLimits {
                max_lag_bytes: if routing.max_lag_bytes == 0 {
                    u64::MAX
                } else {
                    routing.max_lag_bytes
                },
                max_lag_ms: if routing.max_lag_ms == 0 {
                    u64::MAX
                } else {
                    routing.max_lag_ms
                },
            },
        }
    }

    /// Bytes the classification cache holds now, and its bound.
    pub fn classifier_cache_bytes(&self) -> (u64, u64) {
        (
            self.classes.weighted_size(),
            self.classes.policy().max_capacity().unwrap_or(0),
        )
    }

    /// The topology of `database`, when it has replicas to route to.
    pub fn topology(&self, database: &str) -> Option<Arc<Topology>> {
        self.topologies.get(database).cloned()
    }

    pub fn topologies(&self) -> impl Iterator<Item = &Arc<Topology>> {
        self.topologies.values()
    }

    /// Classifies statement text, from cache when a statement of the same shape
    /// (same text up to literal values) was seen before.
    pub fn classify(&self, sql: &str) -> StatementClass {
        self.classify_scanned(sql, crate::scan::scan(sql.as_bytes()).shape.hash)
    }

    /// [`Routing::classify`] for a text already scanned: `shape_hash` is its
    /// [`crate::scan::Shape::hash`].
    pub fn classify_scanned(&self, sql: &str, shape_hash: u64) -> StatementClass {
        if let Some(class) = self.classes.get(&shape_hash) {
            return class;
        }
        let class = self.classifier.classify(sql);
        // Proxy settings carry their value: never share them between shapes.
        if !matches!(class, StatementClass::ProxySetting { .. }) {
            self.classes.insert(shape_hash, class.clone());
        }
        class
    }
}
