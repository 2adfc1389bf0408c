//! Keys that protect the database under spikes: how a saturated pool is shared
//! (`pool.fairness`, `pool.fairness_weights`, `pool.max_waiting`), the `[protection]`
//! section (quarantined fingerprints, `/readyz` when overloaded), and `[[limits]]`
//! rules. Parsing and validation only; the rules run in `protect/`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What groups waiting clients take turns by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// `pgwarden.tenant_id`, else `pgwarden.session_key`; clients with neither share a group.
    #[default]
    Tenant,
    /// The login role (pools are per role already: one FIFO line per pool).
    Role,
    ApplicationName,
    /// One FIFO line.
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectionConfig {
    /// Fingerprint ids (16 hex digits, as `SHOW QUERIES` prints them) refused at once.
    pub blocked_fingerprints: Vec<String>,
    /// `/readyz` answers 503 "overloaded" while clients are being shed.
    pub readyz_overloaded: bool,
    /// A backend's circuit opens after this many failures (connect failures, failed or
    /// timed-out lag polls, servers lost mid-request) within `circuit_window_ms`;
    /// 0 disables circuit breaking.
    pub circuit_failures: u32,
    pub circuit_window_ms: u64,
    /// How long an open circuit stays open before a probe may close it.
    pub circuit_open_ms: u64,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        ProtectionConfig {
            blocked_fingerprints: Vec::new(),
            readyz_overloaded: false,
            circuit_failures: 3,
            circuit_window_ms: 10_000,
            circuit_open_ms: 5_000,
        }
    }
}

/// One `[[limits]]` rule. The match fields that are set must all match; the limits
/// are shared by every statement the rule matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitRule {
    /// Named in refusals and `SHOW LIMITS`.
    pub name: String,
    pub tenant: Option<String>,
    pub role: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// A fingerprint id (16 hex digits).
    pub fingerprint: Option<String>,
    /// Statements (transactions, under transaction pooling) running at once; 0 = no bound.
    pub max_concurrent: u32,
    /// Statements started per second (token bucket); 0 = no bound.
    pub rate_per_second: f64,
    /// Bucket size: statements that may start at once after a quiet spell (≥ 1).
    pub burst: u32,
    /// Longest a statement waits for the rule before it is refused; 0 = refuse at once.
    pub max_wait_ms: u64,
}

/// Parses a fingerprint id as printed by `SHOW QUERIES`.
pub fn parse_fingerprint_id(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    (!text.is_empty() && text.len() <= 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

pub(super) fn validate(
    protection: &ProtectionConfig,
    limits: &[LimitRule],
) -> Result<(), ConfigError> {
    for (n, id) in protection.blocked_fingerprints.iter().enumerate() {
        if parse_fingerprint_id(id).is_none() {
            return Err(ConfigError::invalid(
                format!("protection.blocked_fingerprints[{n}]"),
                format!("expected a fingerprint id (16 hex digits), got {id:?}"),
            ));
        }
    }
    for (n, rule) in limits.iter().enumerate() {
        let key = |field: &str| format!("limits[{n}].{field}");
        if rule.name.trim().is_empty() {
            return Err(ConfigError::invalid(key("name"), "is required"));
        }
        if limits[..n].iter().any(|r| r.name == rule.name) {
            return Err(ConfigError::invalid(key("name"), "is used by another rule"));
        }
        if let Some(id) = &rule.fingerprint {
            if parse_fingerprint_id(id).is_none() {
                return Err(ConfigError::invalid(
                    key("fingerprint"),
                    "expected a fingerprint id (16 hex digits)",
                ));
            }
        }
        if !(rule.rate_per_second >= 0.0 && rule.rate_per_second.is_finite()) {
            return Err(ConfigError::invalid(
                key("rate_per_second"),
                "must be a number ≥ 0",
            ));
        }
        if rule.max_concurrent == 0 && rule.rate_per_second == 0.0 {
            return Err(ConfigError::invalid(
                key("max_concurrent"),
                "set max_concurrent or rate_per_second (or both)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ids_parse_as_hex() {
        assert_eq!(parse_fingerprint_id("00000000000000ff"), Some(255));
        assert_eq!(parse_fingerprint_id("0xff"), Some(255));
        assert_eq!(parse_fingerprint_id("xyz"), None);
        assert_eq!(parse_fingerprint_id("11112222333344445"), None);
    }

    #[test]
    fn fairness_and_shedding_come_from_the_environment_too() {
        let vars = [
            (
                "PGWARDEN_PRIMARY_URL",
                "postgres://app:pw@127.0.0.1:5432/shop",
            ),
            ("PGWARDEN_POOL_FAIRNESS", "application_name"),
            ("PGWARDEN_POOL_MAX_WAITING", "100"),
            (
                "PGWARDEN_PROTECTION_BLOCKED_FINGERPRINTS",
                "00000000000000ff,0a",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let text = "[pool.fairness_weights]\n\"42\" = 3\n[[limits]]\nname = \"t\"\ntenant = \"42\"\nmax_concurrent = 2\n";
        let c = crate::config::load_from_str(text, "t", vars).unwrap();
        assert_eq!(c.pool.fairness, Fairness::ApplicationName);
        assert_eq!(c.pool.max_waiting, 100);
        assert_eq!(c.pool.fairness_weights.get("42"), Some(&3));
        assert_eq!(c.protection.blocked_fingerprints.len(), 2);
        assert_eq!(c.limits[0].max_concurrent, 2);
        let defaults = crate::config::Config::default();
        assert_eq!(defaults.pool.fairness, Fairness::Tenant);
    }

    #[test]
    fn rules_need_a_name_and_a_limit() {
        let rule = LimitRule {
            name: "a".into(),
            ..LimitRule::default()
        };
        let err = validate(&ProtectionConfig::default(), &[rule]).unwrap_err();
        assert!(
            err.to_string().contains("limits[0].max_concurrent"),
            "{err}"
        );
        let bad = ProtectionConfig {
            blocked_fingerprints: vec!["nope".into()],
            ..ProtectionConfig::default()
        };
        let err = validate(&bad, &[]).unwrap_err();
        assert!(err.to_string().contains("blocked_fingerprints[0]"), "{err}");
    }
}
