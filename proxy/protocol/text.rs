//! Statement text out of protocol bytes. Clients send UTF-8 (the proxy asks for it
//! at login), so the check that the bytes are valid is all most texts need; only
//! invalid ones are copied, with U+FFFD in place of each bad sequence.

use std::borrow::Cow;

/// `bytes` as text: borrowed when valid UTF-8 (the fast, word-at-a-time check),
/// otherwise a lossy copy, as `String::from_utf8_lossy` makes.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_is_borrowed_invalid_text_is_repaired() {
        assert!(matches!(
            lossy(b"SELECT 'caf\xc3\xa9'"),
            Cow::Borrowed("SELECT 'café'")
        ));
        let repaired = lossy(b"SELECT '\xff'");
        assert!(matches!(repaired, Cow::Owned(_)));
        assert_eq!(repaired, "SELECT '\u{fffd}'");
    }
}
