//! `[advise]`: the background advisors (index advice from plans, N+1 bursts).

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdviseConfig {
    /// Run the index advisor (planning the costliest fingerprints).
    pub enabled: bool,
    /// Time between two index-advisor rounds; the first round starts one interval
    /// after start-up.
    pub interval_ms: u64,
    /// EXPLAINs (hypothetical-index ones included) one round may run, per database.
    pub explain_budget: u32,
    /// Tables with fewer rows (`pg_class.reltuples`) get no index advice.
    pub min_table_rows: u64,
    /// A candidate index is kept when the plan cost drops by at least this share.
    pub min_cost_savings: f64,
    pub n_plus_one: NPlusOneConfig,
}

impl Default for AdviseConfig {
    fn default() -> Self {
        AdviseConfig {
            enabled: true,
            interval_ms: 60_000,
            explain_budget: 20,
            min_table_rows: 10_000,
            min_cost_savings: 0.5,
            n_plus_one: NPlusOneConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NPlusOneConfig {
    /// Detect N+1 bursts.
    pub enabled: bool,
    /// Executions of one fingerprint, with different parameters, after a different
    /// parent fingerprint, that make a burst.
    pub min_repeats: u32,
    /// Bursts of the same (parent, child) pair seen before it is reported.
    pub min_requests: u32,
    /// Fingerprint ids (hex, as in SHOW QUERIES) or normalized texts never reported.
    pub allow: Vec<String>,
    /// Do not report loops of uniqueness checks (`SELECT 1 ... LIMIT 1`).
    pub allow_uniqueness_checks: bool,
    /// Bytes the detector's per-session state and patterns may take.
    pub max_bytes: u64,
}

impl Default for NPlusOneConfig {
    fn default() -> Self {
        NPlusOneConfig {
            enabled: true,
            min_repeats: 5,
            min_requests: 3,
            allow: Vec::new(),
            allow_uniqueness_checks: false,
            max_bytes: 4 << 20,
        }
    }
}

impl AdviseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 10 {
            return Err(ConfigError::invalid(
                "advise.interval_ms",
                "must be at least 10",
            ));
        }
        if !(0.0..1.0).contains(&self.min_cost_savings) {
            return Err(ConfigError::invalid(
                "advise.min_cost_savings",
                "must be at least 0 and below 1 (0.5 = 50%)",
            ));
        }
        if self.n_plus_one.min_repeats < 2 {
            return Err(ConfigError::invalid(
                "advise.n_plus_one.min_repeats",
                "must be at least 2",
            ));
        }
        if self.n_plus_one.min_requests == 0 {
            return Err(ConfigError::invalid(
                "advise.n_plus_one.min_requests",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
