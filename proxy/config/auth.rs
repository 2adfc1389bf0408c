//! The `[auth]` section: how clients prove who they are, the users listed in the file,
//! and `auth_query` (PgBouncer's way to log in roles that are not listed: their secret
//! is looked up in PostgreSQL through `auth_user`).

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub method: AuthMethod,
    /// A configured user through which `auth_query` runs; unset turns `auth_query` off.
    pub auth_user: Option<String>,
    /// Returns (name, secret) of the role `$1`: a SCRAM verifier or an md5 hash.
    pub auth_query: String,
    /// How long a looked-up secret (or "no such role") is reused; 0 = look up every time.
    pub auth_query_cache_ms: u64,
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: AuthMethod::ScramSha256,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_query_cache_ms: 1_000,
            users: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether roles not listed in `users` are looked up with `auth_query`.
    pub fn auth_query_enabled(&self) -> bool {
        self.auth_user.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, `SCRAM-SHA-256$...` (as in `pg_authid`) or `md5...`.
    pub password: Option<String>,
    /// Password pgwarden uses to log in to PostgreSQL as this user, when `password`
    /// is a hash. Defaults to `password` when that is plain text.
    pub server_password: Option<String>,
}

/// Whether a configured password is an md5 hash (`md5` + 32 characters), as
/// PostgreSQL stores them.
pub fn is_md5_hash(password: &str) -> bool {
    password.len() == 35 && password.starts_with("md5")
}

impl Config {
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.auth.users.iter().find(|u| u.name == name)
    }

    /// The password pgwarden logs in to `database`'s primary with as `user`.
    pub fn server_password_for(&self, database: &str, user: &str) -> Option<String> {
        let endpoint = self
            .databases
            .get(database)?
            .primary_endpoint(database)
            .ok();
        self.server_password(user, endpoint.as_ref())
    }

    /// The password pgwarden logs in to a server (`endpoint`) with as `user`: the
    /// user's `server_password`, else its plain `password`, else the endpoint URL's
    /// password when that URL names this user.
    pub fn server_password(
        &self,
        user: &str,
        endpoint: Option<&super::Endpoint>,
    ) -> Option<String> {
        let user_config = self.user(user);
        user_config
            .and_then(|u| u.server_password.clone())
            .or_else(|| {
                user_config
                    .and_then(|u| u.password.clone())
                    .filter(|p| !p.starts_with("SCRAM-SHA-256$") && !is_md5_hash(p))
            })
            .or_else(|| {
                let endpoint = endpoint?;
                (endpoint.user.as_deref() == Some(user))
                    .then(|| endpoint.password.clone())
                    .flatten()
            })
    }

    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        for (i, user) in self.auth.users.iter().enumerate() {
            if user.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.users[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        let Some(auth_user) = &self.auth.auth_user else {
            return Ok(());
        };
        if auth_user.is_empty() {
            return Err(ConfigError::invalid(
                "auth.auth_user",
                "must not be empty (leave it unset to turn auth_query off)",
            ));
        }
        if self.auth.method == AuthMethod::Trust {
            return Err(ConfigError::invalid(
                "auth.auth_user",
                "auth_query needs auth.method = \"scram-sha-256\" or \"md5\" (with \"trust\" no password is checked)",
            ));
        }
        if let Some((database, _)) = self
            .databases
            .keys()
            .map(|d| (d, self.server_password_for(d, auth_user)))
            .find(|(_, password)| password.is_none())
        {
            return Err(ConfigError::invalid(
                "auth.auth_user",
                format!(
                    "pgwarden knows no server password for {auth_user:?} (database {database:?}): \
                     list it under [[auth.users]] with a plain password or server_password, \
                     or use the user of the primary URL"
                ),
            ));
        }
        let query = self.auth.auth_query.trim();
        if query.is_empty() {
            return Err(ConfigError::invalid("auth.auth_query", "must not be empty"));
        }
        if !query.contains("$1") {
            return Err(ConfigError::invalid(
                "auth.auth_query",
                "must take the role name as $1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_from_str;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const URL: (&str, &str) = (
        "PGWARDEN_PRIMARY_URL",
        "postgres://app:pw@127.0.0.1:5432/shop",
    );

    #[test]
    fn auth_query_from_the_environment() {
        let c = load_from_str(
            "",
            "t",
            vars(&[
                URL,
                ("PGWARDEN_AUTH_AUTH_USER", "app"),
                ("PGWARDEN_AUTH_AUTH_QUERY", "SELECT * FROM lookup($1)"),
                ("PGWARDEN_AUTH_AUTH_QUERY_CACHE_MS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.auth_user.as_deref(), Some("app"));
        assert_eq!(c.auth.auth_query, "SELECT * FROM lookup($1)");
        assert_eq!(c.auth.auth_query_cache_ms, 250);
        assert_eq!(c.server_password_for("shop", "app").as_deref(), Some("pw"));
        assert!(c.auth.auth_query_enabled());
    }

    #[test]
    fn auth_query_errors_name_the_key() {
        let err = |text: &str, extra: &[(&str, &str)]| {
            let mut list = vec![URL];
            list.extend_from_slice(extra);
            load_from_str(text, "t", vars(&list))
                .unwrap_err()
                .to_string()
        };
        let e = err("[auth]\nauth_user = \"nobody\"\n", &[]);
        assert!(e.contains("auth.auth_user") && e.contains("nobody"), "{e}");
        let e = err("[auth]\nauth_user = \"\"\n", &[]);
        assert!(e.contains("auth.auth_user"), "{e}");
        let e = err(
            "[auth]\nauth_user = \"app\"\nauth_query = \"select 1\"\n",
            &[],
        );
        assert!(e.contains("auth.auth_query"), "{e}");
        let e = err(
            "[auth]\nauth_user = \"app\"\n",
            &[("PGWARDEN_AUTH_METHOD", "trust")],
        );
        assert!(e.contains("auth.auth_user") && e.contains("trust"), "{e}");
        let e = err("", &[("PGWARDEN_AUTH_AUTH_QUERY_CACHE_MS", "soon")]);
        assert!(e.contains("PGWARDEN_AUTH_AUTH_QUERY_CACHE_MS"), "{e}");
    }

    #[test]
    fn md5_hash_shape() {
        assert!(super::is_md5_hash("md50123456789abcdef0123456789abcdef"));
        assert!(!super::is_md5_hash("plain-password"));
        assert!(!super::is_md5_hash("md5"));
    }
}
