//! Loading: defaults, then the TOML file, then the environment, then validation.

use std::path::Path;

use serde::Deserialize;
use toml::Value;

use super::{env, Config, ConfigError};

/// Loads configuration from an optional file plus the process environment.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?,
        None => String::new(),
    };
    let origin = path.map_or("<defaults>".to_string(), |p| p.display().to_string());
    load_from_str(&text, &origin, std::env::vars())
}

/// Loads configuration from TOML text and an explicit set of environment variables.
pub fn load_from_str(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut tree = Value::try_from(Config::default()).map_err(|e| ConfigError::Syntax {
        origin: "<defaults>".into(),
        message: e.to_string(),
    })?;
    let file: Value = toml::from_str::<toml::Table>(text)
        .map(Value::Table)
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    merge(&mut tree, file);
    env::apply(&mut tree, vars)?;
    let config = Config::deserialize(tree).map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

/// Deep-merges `over` into `base`: tables merge key by key, everything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(base), Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMethod, PoolMode};

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn primary_url_alone_is_enough() {
        let c = load_from_str(
            "",
            "t",
            vars(&[(
                "PGWARDEN_PRIMARY_URL",
                "postgres://app:pw@127.0.0.1:5432/shop",
            )]),
        )
        .unwrap();
        assert!(c.databases.contains_key("shop"));
        assert_eq!(c.user("app").unwrap().password.as_deref(), Some("pw"));
        assert_eq!(c.auth.method, AuthMethod::ScramSha256);
        assert_eq!(c.proxy.listen, "127.0.0.1:6432");
    }

    #[test]
    fn no_password_in_url_means_trust() {
        let c = load_from_str(
            "",
            "t",
            vars(&[("PGWARDEN_PRIMARY_URL", "postgres://app@127.0.0.1:5432/shop")]),
        )
        .unwrap();
        assert_eq!(c.auth.method, AuthMethod::Trust);
    }

    #[test]
    fn section_key_overrides_are_typed() {
        let c = load_from_str(
            "[pool]\nsize = 3\n",
            "t",
            vars(&[
                ("PGWARDEN_POOL_SIZE", "7"),
                ("PGWARDEN_POOL_MODE", "session"),
                ("PGWARDEN_LISTEN", "127.0.0.1:7000"),
                ("PGWARDEN_TENANCY_MODE", "rewrite"),
                ("PGWARDEN_TENANCY_BYPASS_ROLES", "migrator, admin"),
                ("PGWARDEN_TENANCY_SET_CONFIG", "app.tenant_id"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tenancy.mode, crate::config::TenancyMode::Rewrite);
        assert_eq!(c.tenancy.bypass_roles, vec!["migrator", "admin"]);
        assert_eq!(c.tenancy.set_config.as_deref(), Some("app.tenant_id"));
        assert_eq!(c.pool.size, 7);
        assert_eq!(c.pool.mode, PoolMode::Session);
        assert_eq!(c.proxy.listen, "127.0.0.1:7000");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_from_str("", "t", vars(&[("PGWARDEN_POOL_SIZE", "many")])).unwrap_err();
        assert!(e.to_string().contains("PGWARDEN_POOL_SIZE"), "{e}");
        let e = load_from_str(
            "[tenancy]\nvalue_type = \"integer\"\n[tenancy.roles]\nacme = \"x\"\n",
            "t",
            vars(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tenancy.roles.acme"), "{e}");
        let e = load_from_str("[pool]\nsize = 0\n", "t", vars(&[])).unwrap_err();
        assert!(e.to_string().contains("pool.size"), "{e}");
        let e = load_from_str("[pool]\nsise = 2\n", "t", vars(&[])).unwrap_err();
        assert!(e.to_string().contains("sise"), "{e}");
        let e = load_from_str("", "t", vars(&[("PGWARDEN_POOL_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e =
            load_from_str("[databases.app]\nprimary = \"http://x\"\n", "t", vars(&[])).unwrap_err();
        assert!(e.to_string().contains("databases.app.primary"), "{e}");
    }

    #[test]
    fn advise_keys_from_the_environment() {
        let c = load_from_str(
            "",
            "t",
            vars(&[
                ("PGWARDEN_ADVISE_INTERVAL_MS", "250"),
                ("PGWARDEN_ADVISE_N_PLUS_ONE_MIN_REPEATS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.advise.interval_ms, 250);
        assert_eq!(c.advise.n_plus_one.min_repeats, 7);
        let e =
            load_from_str("", "t", vars(&[("PGWARDEN_ADVISE_N_PLUS_ONE_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = load_from_str("[advise]\nmin_cost_savings = 1.5\n", "t", vars(&[])).unwrap_err();
        assert!(e.to_string().contains("advise.min_cost_savings"), "{e}");
    }

    #[test]
    fn documented_example_file_is_valid_and_matches_defaults() {
        let text = include_str!("../../config/pgwarden.toml");
        let c = load_from_str(text, "config/pgwarden.toml", vars(&[])).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&c).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "config/pgwarden.toml must document the defaults"
        );
        let c = load_from_str("[auth]\nmethod = \"md5\"\n", "t", vars(&[])).unwrap();
        assert_eq!(c.auth.method, AuthMethod::Md5);
    }

    #[test]
    fn replica_urls_attach_to_the_primary_database() {
        let c = load_from_str(
            "",
            "t",
            vars(&[
                (
                    "PGWARDEN_REPLICA_URLS",
                    "postgres://a@r1:5432/shop, postgres://a@r2/shop",
                ),
                ("PGWARDEN_PRIMARY_URL", "postgres://a:b@p:5432/shop"),
            ]),
        )
        .unwrap();
        assert_eq!(c.databases["shop"].replicas.len(), 2);
    }
}
