//! A PostgreSQL server address parsed from a `postgres://` URL: a TCP host and port,
//! or, as libpq reads them, a directory holding the server's Unix-domain socket (a
//! host that starts with `/`, written percent-encoded in the URL's host,
//! `postgres://app@%2Frun%2Fpostgresql/shop`, or as `?host=/run/postgresql`).

use super::ConfigError;

/// Where a server lives and the credentials pgwarden uses to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A host name or address, or the directory of a Unix-domain socket.
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl Endpoint {
    /// Parses `postgres://user:pass@host:port/db` (also `postgresql://`; `host` and
    /// `port` query parameters override the URL's own, and the URL's host may then be
    /// empty, as libpq allows: `postgres://app@/shop?host=/run/postgresql`). `key` names
    /// the config key the URL came from, for the error message.
    pub fn parse(key: &str, text: &str) -> Result<Endpoint, ConfigError> {
        let text = text.trim();
        let invalid = |e: url::ParseError| {
            let shown = super::redact_url(text);
            ConfigError::invalid(key, format!("not a URL ({e}): {shown:?}"))
        };
        let url = match url::Url::parse(text) {
            // `user@/db?host=...`: the url crate wants a host after credentials; the
            // query's `host` replaces this stand-in below (and one is required then).
            Err(url::ParseError::EmptyHost) if text.contains("host=") => {
                url::Url::parse(&text.replacen("@/", "@query-host/", 1)).map_err(invalid)?
            }
            parsed => parsed.map_err(invalid)?,
        };
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ConfigError::invalid(
                key,
                format!("scheme must be postgres:// (got {}://)", url.scheme()),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let query = |name: &str| {
            url.query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let host = query("host")
            .or_else(|| url.host_str().filter(|h| *h != "query-host").map(decode))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ConfigError::invalid(key, "URL has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = match query("port") {
            Some(port) => port
                .parse()
                .map_err(|_| ConfigError::invalid(key, format!("port {port:?} is not a number")))?,
            None => url.port().unwrap_or(5432),
        };
        let user = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(decode);
        let database = Some(decode(url.path().trim_start_matches('/'))).filter(|d| !d.is_empty());
        Ok(Endpoint {
            host,
            port,
            user,
            password,
            database,
        })
    }

    /// `host:port`, or for a socket directory the socket's path
    /// (`/run/postgresql/.s.PGSQL.5432`, see `pool::ServerStream`): for connecting and
    /// for logs (never includes the password).
    pub fn address(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else if self.host.contains(':') {
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

    #[test]
    fn a_host_that_is_a_directory_names_the_servers_local_socket() {
        let encoded =
            Endpoint::parse("k", "postgres://app:pw@%2Frun%2Fpostgresql:5433/shop").unwrap();
        assert_eq!(encoded.host, "/run/postgresql");
        assert_eq!(encoded.address(), "/run/postgresql/.s.PGSQL.5433");
        assert_eq!(encoded.user.as_deref(), Some("app"));
        assert_eq!(encoded.database.as_deref(), Some("shop"));
        let queried =
            Endpoint::parse("k", "postgres://app@localhost/shop?host=/tmp/pg/&port=6000").unwrap();
        assert_eq!(queried.address(), "/tmp/pg/.s.PGSQL.6000");
        let no_host = Endpoint::parse("k", "postgres://app:pw@/shop?host=/tmp/pg").unwrap();
        assert_eq!(no_host.address(), "/tmp/pg/.s.PGSQL.5432");
        assert_eq!(no_host.user.as_deref(), Some("app"));
        let default_port = Endpoint::parse("k", "postgresql://app@%2Ftmp/shop").unwrap();
        assert_eq!(default_port.address(), "/tmp/.s.PGSQL.5432");
        // TCP hosts are as before.
        assert_eq!(
            Endpoint::parse("k", "postgres://h:7/d").unwrap().address(),
            "h:7"
        );
        assert_eq!(
            Endpoint::parse("k", "postgres://[::1]:7/d")
                .unwrap()
                .address(),
            "[::1]:7"
        );
        // The background connections read the same URLs with tokio-postgres: the socket
        // there too, and only it.
        for url in [
            "postgres://app:pw@%2Ftmp%2Fpg:6000/shop",
            "postgres://app:pw@/shop?host=/tmp/pg&port=6000",
        ] {
            let config: tokio_postgres::Config = url.parse().unwrap();
            assert_eq!(
                config.get_hosts(),
                [tokio_postgres::config::Host::Unix("/tmp/pg".into())],
                "{url}"
            );
            assert_eq!(
                Endpoint::parse("k", url).unwrap().address(),
                "/tmp/pg/.s.PGSQL.6000"
            );
        }
        let bad = Endpoint::parse("k", "postgres://h/d?port=x").unwrap_err();
        assert!(bad.to_string().contains("port"), "{bad}");
    }
}
