//! The cache hint in a statement's text: `/* pgwarden:cache */` or
//! `/* pgwarden:cache ttl=30s */`. A byte scan, no parse: this runs on every statement
//! in `hinted` mode and must cost next to nothing when the hint is absent.

use std::time::Duration;

const MARK: &[u8] = b"pgwarden:cache";

/// The mark's searcher, built once (a vectorized search: statements are full of the
/// mark's first letter, `p`).
static MARK_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARK));

/// `None`: no hint. `Some(ttl)`: hinted, with its own TTL when it gives one.
pub fn cache_hint(sql: &[u8]) -> Option<Option<Duration>> {
    let at = MARK_FINDER.find(sql)?;
    let rest = &sql[at + MARK.len()..];
    let end = memchr::memmem::find(rest, b"*/").unwrap_or(rest.len());
    let inside = std::str::from_utf8(&rest[..end]).ok()?;
    let ttl = inside
        .split_whitespace()
        .find_map(|word| word.strip_prefix("ttl="))
        .and_then(parse_duration);
    Some(ttl)
}

/// Whether the hint mark appears at all.
pub fn has_mark(sql: &[u8]) -> bool {
    MARK_FINDER.find(sql).is_some()
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hint_and_its_ttl() {
        assert_eq!(cache_hint(b"SELECT 1"), None);
        assert_eq!(cache_hint(b"/* pgwarden:cache */ SELECT 1"), Some(None));
        assert_eq!(
            cache_hint(b"SELECT 1 /* pgwarden:cache ttl=30s */"),
            Some(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            cache_hint(b"/*pgwarden:cache ttl=250ms*/SELECT 1"),
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(cache_hint(b"/* pgwarden:cache ttl=soon */"), Some(None));
        assert_eq!(cache_hint(b"/* pgwarden:primary */ SELECT 1"), None);
        assert!(has_mark(b"pppgwarden:cache"));
    }
}
