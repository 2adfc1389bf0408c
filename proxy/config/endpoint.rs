//! A PostgreSQL server address parsed from a `postgres://` URL.

use super::ConfigError;

/// Where a server lives and the credentials pgwarden uses to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl Endpoint {
    /// Parses `postgres://user:pass@host:port/db` (also `postgresql://`). `key` names the
    /// config key the URL came from, for the error message.
    pub fn parse(key: &str, text: &str) -> Result<Endpoint, ConfigError> {
        let url = url::Url::parse(text.trim()).map_err(|e| {
            let shown = super::redact_url(text);
            ConfigError::invalid(key, format!("not a URL ({e}): {shown:?}"))
        })?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ConfigError::invalid(
                key,
                format!("scheme must be postgres:// (got {}://)", url.scheme()),
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ConfigError::invalid(key, "URL has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(decode);
        let database = Some(decode(url.path().trim_start_matches('/'))).filter(|d| !d.is_empty());
        Ok(Endpoint {
            host,
            port: url.port().unwrap_or(5432),
            user,
            password,
            database,
        })
    }

    /// `host:port`, for connecting and for logs (never includes the password).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let e = Endpoint::parse("k", "postgres://app:p%40ss@db.local:5433/shop").unwrap();
        assert_eq!(e.host, "db.local");
        assert_eq!(e.port, 5433);
        assert_eq!(e.user.as_deref(), Some("app"));
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!(e.database.as_deref(), Some("shop"));
    }

    #[test]
    fn defaults_port_and_rejects_other_schemes() {
        let e = Endpoint::parse("k", "postgresql://h/db").unwrap();
        assert_eq!(e.port, 5432);
        assert!(e.user.is_none() && e.password.is_none());
        let err = Endpoint::parse("databases.app.primary", "mysql://h/db").unwrap_err();
        assert!(err.to_string().contains("databases.app.primary"));
    }
}
