//! Configuration: the typed tree pgwarden runs on.
//!
//! This room owns reading the TOML file, applying `PGWARDEN_*` environment overrides,
//! validating the result with errors that name the key, and showing it with its secrets
//! masked; nothing else. The rest of
//! the code receives typed pieces of [`Config`]; nothing downstream reads strings or
//! environment variables on its own.

mod advise;
mod auth;
mod cache;
mod endpoint;
mod env;
mod error;
mod load;
mod protection;
mod redact;
mod schema;
mod tenancy;
mod threads;

pub use advise::{AdviseConfig, NPlusOneConfig};
pub use auth::{is_md5_hash, AuthConfig, AuthMethod, UserConfig, DEFAULT_AUTH_QUERY};
pub use cache::{CacheConfig, CacheMode};
pub use endpoint::Endpoint;
pub use error::ConfigError;
pub use load::{load, load_from_str};
pub use protection::{parse_fingerprint_id, Fairness, LimitRule, ProtectionConfig};
pub use redact::{redact_url, redacted, redacted_toml};
pub use schema::{
    AdminConfig, Config, DatabaseConfig, Fallback, PoolConfig, PoolMode, ProxyConfig,
    RoutingConfig, RywConfig, RywScope, StatsConfig,
};
pub use tenancy::{TenancyConfig, TenancyMode, TenantValueType};
pub use threads::{SessionThreads, ONE_THREAD_UP_TO_CORES};
