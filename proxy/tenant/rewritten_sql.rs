//! The text the guard runs in place of a statement, kept inside the simple-protocol
//! `Query` message that carries it: a session forwards that message as it is (no
//! second copy of the text into a new frame), and a `Parse` reads the text from it.

use std::fmt;
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::tag::frontend::QUERY;

/// Appends pieces of text to a message being built.
pub struct TextWriter<'a>(&'a mut BytesMut);

impl TextWriter<'_> {
    pub fn push(&mut self, piece: &str) {
        self.0.put_slice(piece.as_bytes());
    }
}

/// A rewritten statement text, as a whole `Query` message.
#[derive(Clone, PartialEq, Eq)]
pub struct RewrittenSql {
    /// `Q`, the length, the text, and its closing NUL.
    frame: Bytes,
}

/// Bytes of a `Query` message around its text: the tag, the length, the NUL.
const AROUND_TEXT: usize = 6;

impl RewrittenSql {
    /// Writes a `Query` message of `text_len` bytes of text, which `fill` pushes piece
    /// by piece (whole `str`s, so the text stays UTF-8). None when `fill` gives up or
    /// pushed another length.
    pub fn build(
        text_len: usize,
        fill: impl FnOnce(&mut TextWriter<'_>) -> Option<()>,
    ) -> Option<RewrittenSql> {
        let mut frame = BytesMut::with_capacity(text_len + AROUND_TEXT);
        frame.put_u8(QUERY);
        frame.put_i32(i32::try_from(text_len + AROUND_TEXT - 1).ok()?);
        fill(&mut TextWriter(&mut frame))?;
        if frame.len() != text_len + AROUND_TEXT - 1 {
            return None;
        }
        frame.put_u8(0);
        Some(RewrittenSql {
            frame: frame.freeze(),
        })
    }

    /// The `Query` message that runs the text.
    pub fn query_frame(&self) -> Bytes {
        self.frame.clone()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.frame[5..self.frame.len() - 1]).expect("built from text")
    }
}

impl From<&str> for RewrittenSql {
    fn from(text: &str) -> RewrittenSql {
        RewrittenSql::build(text.len(), |out| {
            out.push(text);
            Some(())
        })
        .expect("a whole text fits")
    }
}

impl From<String> for RewrittenSql {
    fn from(text: String) -> RewrittenSql {
        RewrittenSql::from(text.as_str())
    }
}

impl Deref for RewrittenSql {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for RewrittenSql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RewrittenSql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for RewrittenSql {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RewrittenSql {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_a_whole_query_message() {
        let sql = RewrittenSql::from("SELECT 1");
        assert_eq!(sql.as_str(), "SELECT 1");
        assert_eq!(&*sql.query_frame(), b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(sql, "SELECT 1");
        assert_eq!(format!("{sql:?}"), "\"SELECT 1\"");
        // A filler that writes another length than announced, or gives up: none.
        assert!(RewrittenSql::build(3, |out| {
            out.push("ab");
            Some(())
        })
        .is_none());
        assert!(RewrittenSql::build(3, |_| None).is_none());
    }
}
