//! The cache hint in a statement's text: `/* pgwarden:cache */` or
//! `/* pgwarden:cache ttl=30s */`. A byte scan, no parse: this runs on every statement
//! in `hinted` mode and must cost next to nothing when the hint is absent.

use std::time::Duration;

const MARK: &[u8] = b"pgwarden:cache";

/// `None`: no hint. `Some(ttl)`: hinted, with its own TTL when it gives one.
pub fn cache_hint(sql: &[u8]) -> Option<Option<Duration>> {
    let at = find(sql, MARK)?;
    let rest = &sql[at + MARK.len()..];
    let end = find(rest, b"*/").unwrap_or(rest.len());
    let inside = std::str::from_utf8(&rest[..end]).ok()?;
    let ttl = inside
        .split_whitespace()
        .find_map(|word| word.strip_prefix("ttl="))
        .and_then(parse_duration);
    Some(ttl)
}

/// Whether the hint mark appears at all.
pub fn has_mark(sql: &[u8]) -> bool {
    find(sql, MARK).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // memchr-free: the first byte is rare in SQL ('p' is not, but the check after is cheap).
    let first = needle[0];
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let offset = haystack[from..].iter().position(|b| *b == first)?;
        let at = from + offset;
        if haystack.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
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
