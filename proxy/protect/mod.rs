//! Protecting the database under spikes, as seen from one statement: quarantined
//! fingerprints (`quarantine`) and `[[limits]]` rules (`limits`). Fair sharing of a
//! saturated pool and load shedding live in the pool room (`pool::fair_gate`); this
//! room only decides whether a statement may go on and how long it waits.
//!
//! It must cost nothing when unused: with no quarantined fingerprint and no rule, a
//! session reads two flags, and never fingerprints a statement.

pub mod limits;
pub mod quarantine;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{parse_fingerprint_id, Config};
use crate::stats::fingerprint::FingerprintId;

pub use limits::{Admission, LimitKind, LimitRefusal, Limits, StatementContext};
pub use quarantine::Quarantine;

/// The process's protections; reloaded with the configuration.
#[derive(Default)]
pub struct Protection {
    pub quarantine: Quarantine,
    limits: ArcSwap<Limits>,
    /// Whether `limits` has a rule: read once per transaction, where a load of
    /// `limits` would cost an `ArcSwap` load.
    any_limits: AtomicBool,
}

impl Protection {
    pub fn new(config: &Config) -> Protection {
        let protection = Protection::default();
        protection.reload(config);
        protection
    }

    /// Applies a (re)loaded configuration. Rules whose definition did not change keep
    /// their state, so a reload does not let a burst through.
    pub fn reload(&self, config: &Config) {
        self.quarantine.configure(
            config
                .protection
                .blocked_fingerprints
                .iter()
                .filter_map(|id| parse_fingerprint_id(id)),
        );
        let current = self.limits.load();
        let same = current.rules.len() == config.limits.len()
            && current
                .rules
                .iter()
                .zip(&config.limits)
                .all(|(state, rule)| state.rule == *rule);
        if !same {
            self.limits.store(Arc::new(Limits::new(&config.limits)));
        }
        self.any_limits
            .store(!config.limits.is_empty(), Ordering::Relaxed);
    }

    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Whether statements must be fingerprinted before they run.
    pub fn needs_fingerprint(&self) -> bool {
        self.quarantine.is_active() || self.limits.load().needs_fingerprint
    }

    /// Whether any rule exists (statements must be admitted).
    pub fn has_limits(&self) -> bool {
        self.any_limits.load(Ordering::Relaxed)
    }
}

/// The fingerprint id of a statement text, as statistics compute it.
pub fn fingerprint_of(sql: &[u8]) -> FingerprintId {
    crate::stats::fingerprint::fingerprint(&String::from_utf8_lossy(sql)).0
}
