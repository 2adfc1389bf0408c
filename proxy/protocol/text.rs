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

/// Whether a statement text opens with one of `words` (its first run of letters, any
/// case) or with a comment, which may hide any first word. A cheap test that lets
/// most statements past a closer look without decoding them. `words` are lowercase
/// ASCII letters.
pub fn opens_with_word_or_comment(sql: &[u8], words: &[&[u8]]) -> bool {
    let text = sql.trim_ascii_start();
    if text.starts_with(b"/*") || text.starts_with(b"--") {
        return true;
    }
    words.iter().any(|word| opens_with_word(text, word))
}

/// Whether `text` opens with the lowercase `word` in any case, as a whole word. Byte
/// by byte, stopping at the first that differs (`SELECT` against `set` stops at its
/// third letter, against `reset` at its first): every statement pays this twice, and
/// the slice comparison it replaced cost about 50 instructions a word
/// (`docs/profile.md`, "2026-12-05, midday").
#[inline]
fn opens_with_word(text: &[u8], word: &[u8]) -> bool {
    debug_assert!(word.iter().all(u8::is_ascii_lowercase));
    // `b | 0x20` is `w` only for `w` itself and its capital, since `w` is a lowercase
    // letter.
    text.len() >= word.len()
        && text.iter().zip(word).all(|(b, w)| b | 0x20 == *w)
        && !text.get(word.len()).is_some_and(u8::is_ascii_alphabetic)
}

/// Whether `haystack` contains `needle`, ASCII letters compared without case.
/// `needle` must start with a letter; only the places where its first letter occurs
/// are compared further, found with memchr.
pub fn contains_ignoring_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    memchr::memchr2_iter(lower, upper, haystack).any(|at| {
        haystack
            .get(at..at + needle.len())
            .is_some_and(|candidate| candidate.eq_ignore_ascii_case(needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_with_word_or_comment_takes_whole_first_words_only() {
        let words: &[&[u8]] = &[b"set", b"reset"];
        for yes in [
            &b"SET x = 1"[..],
            b"set",
            b"  \n\tReSeT all",
            b"set(",
            b"reset;",
            b"/* a */ select 1",
            b"-- a\nselect 1",
        ] {
            assert!(opens_with_word_or_comment(yes, words), "{yes:?}");
        }
        for no in [
            &b"SELECT 1"[..],
            b"settings",
            b"resets",
            b"se",
            b"",
            b"   ",
            b"- 1",
            b"/ 2",
            b"show x",
            b"SE\x14",
            b"re\x13et",
        ] {
            assert!(!opens_with_word_or_comment(no, words), "{no:?}");
        }
    }

    #[test]
    fn contains_ignoring_case_finds_any_case_anywhere() {
        let needle = b"pgwarden.";
        assert!(contains_ignoring_case(
            b"SET pgwarden.route = primary",
            needle
        ));
        assert!(contains_ignoring_case(
            b"set PGWarden.ROUTE to replica",
            needle
        ));
        assert!(contains_ignoring_case(b"pgwarden.", needle));
        assert!(contains_ignoring_case(b"ppgwarden.x", needle));
        assert!(!contains_ignoring_case(b"SELECT 1", needle));
        assert!(!contains_ignoring_case(b"SET pgwarden", needle));
        assert!(!contains_ignoring_case(b"SET pgwardenx", needle));
        assert!(!contains_ignoring_case(b"", needle));
    }

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
