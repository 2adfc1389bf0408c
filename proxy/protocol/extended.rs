//! Borrowed views over the extended-protocol messages the proxy rewrites (`Parse`,
//! `Bind`, `Describe`, `Close`), and writers for the rewritten forms.
//!
//! Named prepared statements are renamed to proxy-wide names so they survive
//! transaction pooling; everything else in these messages is copied as exact bytes.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// Splits a NUL-terminated string off the front of `buf`.
#[inline]
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some((&0, rest)) = buf.split_first() {
        // The unnamed statement or portal: most names the extended protocol sends.
        return Some((&[], rest));
    }
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// The portal an `Execute` (its body) runs: empty for the unnamed one, or when the
/// body has no name to read.
#[inline]
pub fn execute_portal(body: &[u8]) -> &[u8] {
    cstr(body).map_or(&b""[..], |(portal, _)| portal)
}

/// `Parse`: statement name, then the query and parameter types (`definition`).
#[derive(Debug, Clone, Copy)]
pub struct ParseView<'a> {
    pub statement: &'a [u8],
    /// Query string with its NUL, parameter count and type OIDs, exactly as sent.
    pub definition: &'a [u8],
    pub query: &'a [u8],
}

impl<'a> ParseView<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, Malformed> {
        let (statement, definition) = cstr(body).ok_or(Malformed("Parse"))?;
        let (query, types) = cstr(definition).ok_or(Malformed("Parse"))?;
        if types.len() < 2 {
            return Err(Malformed("Parse"));
        }
        let count = i16::from_be_bytes([types[0], types[1]]);
        if count < 0 || types.len() != 2 + 4 * count as usize {
            return Err(Malformed("Parse"));
        }
        Ok(ParseView {
            statement,
            definition,
            query,
        })
    }

    /// The same `Parse` (statement name, parameter types) with another query text.
    pub fn with_query(&self, query: &str) -> Bytes {
        // The parameter types stay: the client's Bind must still match them.
        let types = &self.definition[self.query.len() + 1..];
        let mut definition = Vec::with_capacity(query.len() + 1 + types.len());
        definition.extend_from_slice(query.as_bytes());
        definition.push(0);
        definition.extend_from_slice(types);
        let mut out = BytesMut::with_capacity(self.statement.len() + definition.len() + 6);
        write_parse(&mut out, self.statement, &definition);
        out.freeze()
    }
}

/// `Bind`: portal name, statement name, then parameters and formats (`rest`).
#[derive(Debug, Clone, Copy)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> BindView<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, Malformed> {
        let (portal, after) = cstr(body).ok_or(Malformed("Bind"))?;
        let (statement, rest) = cstr(after).ok_or(Malformed("Bind"))?;
        Ok(BindView {
            portal,
            statement,
            rest,
        })
    }
}

/// What a `Describe` or `Close` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

/// `Describe` and `Close`: a kind byte (`S` or `P`) and a name.
#[derive(Debug, Clone, Copy)]
pub struct TargetView<'a> {
    pub kind: TargetKind,
    pub name: &'a [u8],
}

impl<'a> TargetView<'a> {
    pub fn parse(body: &'a [u8], what: &'static str) -> Result<Self, Malformed> {
        let (&kind, rest) = body.split_first().ok_or(Malformed(what))?;
        let kind = match kind {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => return Err(Malformed(what)),
        };
        let (name, tail) = cstr(rest).ok_or(Malformed(what))?;
        if !tail.is_empty() {
            return Err(Malformed(what));
        }
        Ok(TargetView { kind, name })
    }
}

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes `Parse` with a new statement name and the original definition bytes.
pub fn write_parse(out: &mut BytesMut, statement: &[u8], definition: &[u8]) {
    let at = begin(out, b'P');
    out.put_slice(statement);
    out.put_u8(0);
    out.put_slice(definition);
    finish(out, at);
}

/// Writes `Bind` naming another statement, with the original parameter bytes.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let at = begin(out, b'B');
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(statement);
    out.put_u8(0);
    out.put_slice(rest);
    finish(out, at);
}

/// Writes `Describe` (`tag` `D`) or `Close` (`tag` `C`) for a statement name.
pub fn write_statement_target(out: &mut BytesMut, tag: u8, statement: &[u8]) {
    let at = begin(out, tag);
    out.put_u8(b'S');
    out.put_slice(statement);
    out.put_u8(0);
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_splits_at_the_first_nul_at_any_length() {
        for len in [0, 1, 15, 16, 17, 40, 300] {
            let text = vec![b'a'; len];
            let mut buf = text.clone();
            buf.extend_from_slice(b"\0rest\0");
            assert_eq!(cstr(&buf), Some((&text[..], &b"rest\0"[..])), "{len}");
            assert_eq!(cstr(&text), None, "{len} without a NUL");
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        &frame[5..]
    }

    #[test]
    fn parse_round_trip_keeps_definition_bytes() {
        let mut src = BytesMut::new();
        write_parse(&mut src, b"s1", b"select $1\0\0\x01\0\0\0\x17");
        let view = ParseView::parse(body(&src)).unwrap();
        assert_eq!(view.statement, b"s1");
        assert_eq!(view.query, b"select $1");
        let mut out = BytesMut::new();
        write_parse(&mut out, b"pgw_1", view.definition);
        let again = ParseView::parse(body(&out)).unwrap();
        assert_eq!(again.statement, b"pgw_1");
        assert_eq!(again.definition, view.definition);
    }

    #[test]
    fn another_query_keeps_the_name_and_parameter_types() {
        let mut src = BytesMut::new();
        write_parse(&mut src, b"s1", b"select $1\0\0\x01\0\0\0\x17");
        let view = ParseView::parse(body(&src)).unwrap();
        let other = view.with_query("SET x TO DEFAULT");
        let again = ParseView::parse(body(&other)).unwrap();
        assert_eq!(again.statement, b"s1");
        assert_eq!(again.query, b"SET x TO DEFAULT");
        assert_eq!(
            &again.definition[again.query.len() + 1..],
            b"\0\x01\0\0\0\x17"
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(ParseView::parse(b"s1").is_err());
        assert!(ParseView::parse(b"s1\0q\0\x00\x02\0\0\0\x17").is_err());
        assert!(ParseView::parse(b"s1\0q\0\xff\xff").is_err());
        assert!(BindView::parse(b"p\0").is_err());
        assert!(TargetView::parse(b"X\0", "Describe").is_err());
        assert!(TargetView::parse(b"", "Close").is_err());
        assert!(TargetView::parse(b"Sname\0junk", "Close").is_err());
    }

    #[test]
    fn bind_rewrite_keeps_parameters() {
        let mut out = BytesMut::new();
        write_bind(&mut out, b"", b"pgw_9", b"\0\0\0\x01\0\0\0\x011\0\0");
        let view = BindView::parse(body(&out)).unwrap();
        assert_eq!(view.statement, b"pgw_9");
        assert_eq!(view.rest, b"\0\0\0\x01\0\0\0\x011\0\0");
    }
}
