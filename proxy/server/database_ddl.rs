//! `DROP DATABASE x` and `ALTER DATABASE x RENAME TO y` sent through the proxy.
//! PostgreSQL refuses both while other sessions are connected to `x`, and the pool's
//! idle server connections to `x` are such sessions: the proxy closes them first and
//! keeps new checkouts away from `x` until the statement has finished.

use super::session::Session;

/// How long a `DROP`/`ALTER DATABASE` waits for the cache's LISTEN connection to close.
const LISTEN_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `sql` (or any text that starts as it does) may be a `DROP` or `ALTER`
/// statement: the cheap look [`database_ddl_target`] starts with, on its own for a
/// `Parse`, whose text need not be found first.
pub fn may_be_database_ddl(sql: &[u8]) -> bool {
    ddl_start(sql).is_some()
}

fn ddl_start(sql: &[u8]) -> Option<usize> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = sql.get(start..start + 5)?;
    (head.eq_ignore_ascii_case(b"drop ") || head.eq_ignore_ascii_case(b"alter")).then_some(start)
}

/// The database a `DROP DATABASE` or `ALTER DATABASE ... RENAME` statement names.
pub fn database_ddl_target(sql: &[u8]) -> Option<String> {
    let start = ddl_start(sql)?;
    let text = crate::protocol::text::lossy(&sql[start..]);
    let mut words = text.split_whitespace();
    let verb = words.next()?.to_ascii_lowercase();
    if !words.next()?.eq_ignore_ascii_case("database") {
        return None;
    }
    let mut name = words.next()?;
    if verb == "drop" && name.eq_ignore_ascii_case("if") {
        words.next()?; // EXISTS
        name = words.next()?;
    }
    let name = name.trim_end_matches(';');
    if verb == "alter" && !words.next()?.eq_ignore_ascii_case("rename") {
        return None;
    }
    Some(
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => name.to_ascii_lowercase(),
        },
    )
}

impl Session {
    /// Before forwarding a statement that drops or renames `database` (its
    /// [`database_ddl_target`]): close the pool's idle connections to it and hold new
    /// checkouts until it has finished.
    pub(super) async fn before_database_ddl(&mut self, database: String) {
        tracing::info!(database = %database, "closing idle server connections before DROP/ALTER DATABASE");
        self.runtime.cache.pause_database(&database);
        // Boxed: closing idle connections is a large future, and rare.
        Box::pin(self.runtime.pools.start_draining(&database)).await;
        // The cache's LISTEN connection to it closes on its own task: give it a moment,
        // or PostgreSQL would count it as another session using the database.
        let deadline = std::time::Instant::now() + LISTEN_CLOSE_WAIT;
        while self.runtime.cache.is_listening(&database) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(previous) = self.draining_database.replace(database) {
            self.runtime.pools.stop_draining(&previous);
            self.runtime.cache.resume_database(&previous);
        }
    }

    /// The statement finished (or the client left): checkouts may resume.
    pub(super) fn database_ddl_done(&mut self) {
        if let Some(database) = self.draining_database.take() {
            self.runtime.pools.stop_draining(&database);
            self.runtime.cache.resume_database(&database);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_database() {
        assert_eq!(
            database_ddl_target(b"DROP DATABASE shop"),
            Some("shop".into())
        );
        assert_eq!(
            database_ddl_target(b" drop database if exists \"Shop\";"),
            Some("Shop".into())
        );
        assert_eq!(
            database_ddl_target(b"ALTER DATABASE Shop RENAME TO store"),
            Some("shop".into())
        );
        assert_eq!(database_ddl_target(b"ALTER DATABASE shop SET x = 1"), None);
        assert_eq!(database_ddl_target(b"DROP TABLE shop"), None);
        assert_eq!(database_ddl_target(b"select 1"), None);
    }

    #[test]
    fn a_parse_text_is_looked_at_only_when_it_may_drop_or_alter() {
        // A Parse's definition: the text, its NUL, then the parameter types.
        assert!(may_be_database_ddl(b"  DROP DATABASE shop\0\0\0"));
        assert!(may_be_database_ddl(
            b"alter database shop rename to s\0\0\0"
        ));
        assert!(!may_be_database_ddl(b"SELECT 1\0\0\0"));
        assert!(!may_be_database_ddl(b"DROP\0\0\0"));
        assert!(!may_be_database_ddl(b"\0\0\0"));
    }
}
