//! The trace id of a sqlcommenter `traceparent` comment
//! (`/*traceparent='00-<32 hex trace id>-<16 hex span id>-01'*/`): statements of one
//! trace are one request, whatever pooled connection they arrive on.

/// The 32-hex-digit trace id, when the text carries a `traceparent`.
pub fn trace_id(sql: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"traceparent=";
    // Asked of every statement: a vectorized search, not a comparison per byte.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let at = FINDER.find(sql)?;
    let mut rest = &sql[at + KEY.len()..];
    if let Some(stripped) = rest.strip_prefix(b"'") {
        rest = stripped;
    }
    // Version "00" then '-' (sqlcommenter URL-encodes it as %2D on some drivers).
    let rest = rest.get(2..)?;
    let rest = rest
        .strip_prefix(b"-")
        .or_else(|| rest.strip_prefix(b"%2D"))
        .or_else(|| rest.strip_prefix(b"%2d"))?;
    let id = rest.get(..32)?;
    (id.iter().all(u8::is_ascii_hexdigit) && id.iter().any(|b| *b != b'0')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn finds_the_trace_id_of_a_sqlcommenter_comment() {
        let sql = b"SELECT 1 /*controller='x',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";
        assert_eq!(
            trace_id(sql),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        let encoded = b"SELECT 1 /*traceparent='00%2D4bf92f3577b34da6a3ce929d0e0e4736%2D00f067aa0ba902b7%2D01'*/";
        assert!(trace_id(encoded).is_some());
        assert_eq!(trace_id(b"SELECT 1"), None);
        assert_eq!(trace_id(b"/*traceparent='00-xyz'*/"), None);
        assert_eq!(
            trace_id(b"/*traceparent='00-00000000000000000000000000000000-00f067aa0ba902b7-01'*/"),
            None
        );
    }
}
