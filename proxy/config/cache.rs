//! `[cache]`: the result cache (see `proxy/cache/`). Which statements are cached, how
//! long, how much memory it may take, and how invalidations travel.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Nothing is cached; writes are not tracked.
    Off,
    /// Statements carrying `/* pgwarden:cache */`, and fingerprints or tables listed in
    /// `cache.rules`.
    Hinted,
    /// Also hot read fingerprints (`auto_min_calls` calls in the last minute) whose
    /// hit ratio stays at or above `min_hit_ratio`.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub mode: CacheMode,
    /// Time to live of an entry (the backstop for writes that bypass pgwarden); a hint
    /// `/* pgwarden:cache ttl=30s */` overrides it per statement.
    pub ttl_ms: u64,
    /// Bytes all entries (keys and response frames) may take.
    pub max_bytes: u64,
    /// Results larger than this are not cached.
    pub max_entry_bytes: u64,
    /// Cached in `hinted` mode without a hint: fingerprint ids (decimal, as `SHOW CACHE`
    /// and `SHOW QUERIES` print them) or table names (`orders`, `shop.orders`).
    pub rules: Vec<String>,
    /// Tables whose reads are never cached (`name` or `schema.name`).
    pub never: Vec<String>,
    /// `auto`: calls of a fingerprint in the last minute before it is cached.
    pub auto_min_calls: u64,
    /// `auto`: a fingerprint whose hit ratio stays under this stops being cached.
    pub min_hit_ratio: f64,
    /// Share invalidations with other pgwarden instances (NOTIFY/LISTEN on the primary).
    /// While the LISTEN connection is down, nothing of that database is cached.
    pub notify: bool,
    /// With `wal_level = logical`, one instance reads a logical slot and broadcasts the
    /// tables changed by writes that bypass pgwarden.
    pub wal_invalidation: bool,
    /// How often the elected instance reads the slot.
    pub wal_poll_ms: u64,
    /// Concurrent misses of one key wait this long for the first one's result.
    pub flight_wait_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Hinted,
            ttl_ms: 60_000,
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            rules: Vec::new(),
            never: Vec::new(),
            auto_min_calls: 100,
            min_hit_ratio: 0.7,
            notify: true,
            wal_invalidation: false,
            wal_poll_ms: 100,
            flight_wait_ms: 5_000,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_ms == 0 {
            return Err(ConfigError::invalid("cache.ttl_ms", "must be at least 1"));
        }
        if self.max_entry_bytes > self.max_bytes {
            return Err(ConfigError::invalid(
                "cache.max_entry_bytes",
                "must not exceed cache.max_bytes",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_hit_ratio) {
            return Err(ConfigError::invalid(
                "cache.min_hit_ratio",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}
