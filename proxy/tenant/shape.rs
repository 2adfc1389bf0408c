//! Statement shapes for the shape cache: a simple-protocol text with its literals
//! replaced by `$1..$n`, and the rewrite template that puts new literals back.
//!
//! Finding the literals is on every statement's path, so it is a single pass over
//! the bytes ([`split`]) that only takes plain numbers and backslash-free strings,
//! in surroundings they cannot run into, and refuses anything unusual. The first
//! text of a shape is checked against sqlparser's own tokenizer — the lexer the
//! guard's parser uses — ([`spans_are_literal_tokens`]); later texts of the shape
//! are byte for byte the same outside those literals. Everything but the literals is
//! copied verbatim. All functions are pure; anything unexpected gives `None` or
//! `false` (the full path).

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::rewritten_sql::RewrittenSql;
use crate::protocol::word_bytes::is_word_byte;

/// A statement text split into its shape and its literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    /// The caller's prefix (its first `prefix` bytes, see [`split_after`]), then the
    /// text with the k-th literal replaced by ` $k ` (spaces keep the placeholder from
    /// running into a neighbouring token).
    pub shape: String,
    /// How many bytes of `shape` are the caller's prefix (0 from [`split`]).
    pub prefix: usize,
    /// Byte ranges of the literals in the text, in order.
    pub literals: Vec<Range<usize>>,
}

/// Maps the tokenizer's (line, column) locations to byte offsets, moving forward
/// only. Columns count characters, and a newline starts the next line, as in the
/// tokenizer.
struct Cursor<'a> {
    text: &'a str,
    byte: usize,
    line: u64,
    column: u64,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            text,
            byte: 0,
            line: 1,
            column: 1,
        }
    }

    fn offset(&mut self, at: Location) -> Option<usize> {
        while (self.line, self.column) < (at.line, at.column) {
            let c = self.text[self.byte..].chars().next()?;
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        ((self.line, self.column) == (at.line, at.column)).then_some(self.byte)
    }
}

/// Each token of `text` with its byte range; None when the tokenizer fails or the
/// tokens do not tile the text exactly.
fn tokens(text: &str) -> Option<Vec<(Token, Range<usize>)>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .ok()?;
    let mut cursor = Cursor::new(text);
    let mut at = 0;
    let mut out = Vec::with_capacity(tokens.len());
    for token in tokens {
        if cursor.offset(token.span.start)? != at {
            return None;
        }
        let end = cursor.offset(token.span.end)?;
        if end <= at {
            return None;
        }
        out.push((token.token, at..end));
        at = end;
    }
    (at == text.len()).then_some(out)
}

/// Bytes that may stand right before a literal: none that could run into it
/// (word characters, quotes, `.`, `$`, `&` of `U&'..'`, `:`).
fn fits_before_literal(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'(' | b',' | b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'[' | b'|'
        )
}

/// Bytes that may stand right after one: none that could continue it.
fn fits_after_literal(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b')' | b','
                | b';'
                | b']'
                | b':'
                | b'='
                | b'<'
                | b'>'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'|'
        )
}

/// Whether `text` holds `$` followed by a digit: it could be mistaken for a slot.
fn has_dollar_digit(text: &[u8]) -> bool {
    memchr::memchr_iter(b'$', text).any(|at| text.get(at + 1).is_some_and(u8::is_ascii_digit))
}

impl Shaped {
    /// The shape without the caller's prefix.
    pub fn shape_text(&self) -> &str {
        &self.shape[self.prefix..]
    }
}

/// The shape of `sql`: its literals replaced by ` $1 `, ` $2 `, ... None when it has
/// no literals, or anything the shape path does not handle: `$` starting a token
/// (parameters, dollar quotes), `$` and a digit anywhere outside literals, prefixed
/// strings (`E'..'`, `X'..'`, `U&'..'`), backslashes in strings, numbers other than
/// `123` and `1.5`, a literal touching a character that could continue it, and
/// anything unterminated.
///
/// Only plain numbers and backslash-free standard strings become slots: whatever
/// stands right before or after them, they lex as exactly themselves (for
/// PostgreSQL whatever `standard_conforming_strings` is, and for sqlparser). Other
/// literals stay in the shape verbatim. When a shape is first judged,
/// [`spans_are_literal_tokens`] checks these spans against sqlparser's own
/// tokenizer; a later text with the same shape differs only inside them.
pub fn split(sql: &str) -> Option<Shaped> {
    split_after("", sql)
}

/// What [`split_after`] does at a byte outside quotes and comments.
const PASS: u8 = 0;
/// A word starts here (letter, `_`, non-ASCII): skipped with the rest of the word.
const WORD: u8 = 1;
/// A byte that may start a comment, quote, literal or `$`: looked at closely.
const LOOK: u8 = 2;

/// Most bytes of a statement are words, spaces and punctuation that start nothing:
/// one table lookup each instead of the full match (about a tenth fewer instructions
/// per split on the bench's tenant statement).
static SPLIT_CLASS: [u8; 256] = {
    let mut table = [PASS; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            table[byte] = WORD;
        } else if b.is_ascii_digit() || matches!(b, b'-' | b'/' | b'"' | b'$' | b'\'') {
            table[byte] = LOOK;
        }
        byte += 1;
    }
    table
};

/// [`split`], with the shape written after `prefix` in the same string (a cache key
/// built without a second allocation).
pub fn split_after(prefix: &str, sql: &str) -> Option<Shaped> {
    let b = sql.as_bytes();
    let mut shape = String::with_capacity(prefix.len() + sql.len() + 16);
    shape.push_str(prefix);
    let mut literals: Vec<Range<usize>> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match SPLIT_CLASS[c as usize] {
            PASS => {
                i += 1;
                continue;
            }
            WORD => {
                i += 1;
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let literal_end = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p);
                None
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Comments nest in PostgreSQL.
                let mut depth = 0usize;
                loop {
                    match (b.get(i)?, b.get(i + 1)) {
                        (b'/', Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (b'*', Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
                None
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i)? {
                        b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                None
            }
            b'$' => return None,
            // Unterminated, or a backslash inside: not for the shape path.
            b'\'' => Some(literal_at(b, i)?),
            b'0'..=b'9' => literal_at(b, i),
            _ => {
                i += 1;
                None
            }
        };
        let Some(end) = literal_end else {
            continue;
        };
        let before_ok = i == 0 || fits_before_literal(b[i - 1]);
        let after_ok = b.get(end).is_none_or(|&x| fits_after_literal(x));
        if !before_ok || !after_ok || has_dollar_digit(&b[copied..i]) {
            return None;
        }
        shape.push_str(&sql[copied..i]);
        literals.push(i..end);
        push_placeholder(&mut shape, literals.len());
        copied = end;
        i = end;
    }
    if literals.is_empty() || has_dollar_digit(&b[copied..]) {
        return None;
    }
    shape.push_str(&sql[copied..]);
    Some(Shaped {
        shape,
        prefix: prefix.len(),
        literals,
    })
}

/// The end of the literal starting at `b[i]`, as [`split_after`] takes literals: a
/// backslash-free standard string (`'it''s'`), or a plain number (`17`, `1.5`).
/// None for anything else, and for a string that is unterminated or holds a
/// backslash.
pub(super) fn literal_at(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'\'' => {
            let mut j = i + 1;
            loop {
                match b.get(j)? {
                    b'\\' => return None,
                    b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
                    b'\'' => break,
                    _ => j += 1,
                }
            }
            Some(j + 1)
        }
        b'0'..=b'9' => {
            let digits = |mut j: usize| {
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                j
            };
            let mut j = digits(i);
            if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                j = digits(j + 1);
            }
            Some(j)
        }
        _ => None,
    }
}

/// Appends ` $k ` (what [`split`] puts in place of the k-th literal) without the
/// formatting machinery: this runs for every literal of every statement.
fn push_placeholder(shape: &mut String, k: usize) {
    shape.push_str(" $");
    shape.push_str(itoa::Buffer::new().format(k));
    shape.push(' ');
}

/// Whether sqlparser's tokenizer sees `literals` in `sql` exactly as literal tokens
/// (a number or a standard string each), and no `$n` parameter anywhere.
pub fn spans_are_literal_tokens(sql: &str, literals: &[Range<usize>]) -> bool {
    let Some(tokens) = tokens(sql) else {
        return false;
    };
    if tokens
        .iter()
        .any(|(token, _)| matches!(token, Token::Placeholder(_)))
    {
        return false;
    }
    let mut found = tokens.iter().filter_map(|(token, range)| {
        matches!(token, Token::Number(..) | Token::SingleQuotedString(_)).then_some(range)
    });
    literals
        .iter()
        .all(|literal| found.any(|range| range == literal))
}

/// A rewritten shape cut at its placeholders: `fragments[0] lit fragments[1] lit ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    fragments: Vec<String>,
    /// The literal (0-based) that goes after `fragments[i]`.
    slots: Vec<usize>,
}

/// What may stand right before a placeholder in a printed statement.
fn fits_before(c: Option<char>) -> bool {
    c.is_none_or(|c| c.is_ascii_whitespace() || matches!(c, '(' | '[' | ',' | '-' | '+'))
}

/// What may stand right after one (`::` casts included).
fn fits_after(c: Option<char>) -> bool {
    c.is_none_or(|c| c.is_ascii_whitespace() || matches!(c, ')' | ']' | ',' | ';' | ':'))
}

impl Template {
    /// The template of `rewritten`, the guard's output for a shape with `count`
    /// literals. None unless every placeholder `$1..$count` appears exactly once,
    /// there are no others, and each stands between tokens a literal cannot run into.
    pub fn new(rewritten: &str, count: usize) -> Option<Template> {
        let mut fragments = Vec::with_capacity(count + 1);
        let mut slots = Vec::with_capacity(count);
        let mut seen = vec![false; count];
        let mut from = 0;
        for (token, range) in tokens(rewritten)? {
            let Token::Placeholder(name) = &token else {
                continue;
            };
            let k: usize = name.strip_prefix('$')?.parse().ok()?;
            let slot = k.checked_sub(1)?;
            if slot >= count || std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            if !fits_before(rewritten[..range.start].chars().next_back())
                || !fits_after(rewritten[range.end..].chars().next())
            {
                return None;
            }
            fragments.push(rewritten[from..range.start].to_string());
            slots.push(slot);
            from = range.end;
        }
        if !seen.iter().all(|s| *s) {
            return None;
        }
        fragments.push(rewritten[from..].to_string());
        Some(Template { fragments, slots })
    }

    /// The template with the literals of `sql` (at `literals`) put back, written as
    /// the `Query` message that runs it.
    pub fn apply(&self, sql: &str, literals: &[Range<usize>]) -> Option<RewrittenSql> {
        if literals.len() != self.slots.len() {
            return None;
        }
        let size = self.fragments.iter().map(String::len).sum::<usize>()
            + literals.iter().map(|r| r.len()).sum::<usize>();
        RewrittenSql::build(size, |out| {
            for (fragment, slot) in self.fragments.iter().zip(&self.slots) {
                out.push(fragment);
                out.push(sql.get(literals.get(*slot)?.clone())?);
            }
            out.push(self.fragments.last()?);
            Some(())
        })
    }

    /// Bytes of text the template holds.
    pub fn bytes(&self) -> usize {
        self.fragments.iter().map(String::len).sum::<usize>()
            + self.slots.len() * std::mem::size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal_texts(sql: &str) -> Vec<&str> {
        split(sql)
            .expect("has literals")
            .literals
            .into_iter()
            .map(|r| &sql[r])
            .collect()
    }

    #[test]
    fn the_split_table_sends_every_byte_that_can_start_something_to_the_full_match() {
        for byte in 0..=255u8 {
            let expected = if crate::protocol::word_bytes::is_word_start(byte) {
                WORD
            } else if byte.is_ascii_digit() || b"-/\"$'".contains(&byte) {
                LOOK
            } else {
                PASS
            };
            assert_eq!(SPLIT_CLASS[byte as usize], expected, "byte {byte}");
        }
    }

    #[test]
    fn literals_become_numbered_placeholders() {
        let a = split("SELECT * FROM t WHERE a = 17 AND b = 'x''y'").unwrap();
        let b = split("SELECT * FROM t WHERE a = 4.5 AND b = ''").unwrap();
        assert_eq!(a.shape, "SELECT * FROM t WHERE a =  $1  AND b =  $2 ");
        assert_eq!(a.shape, b.shape);
        assert_eq!(
            literal_texts("SELECT 17, 'x''y', (0.5), -3, 'ż', ARRAY[1,2], x::text='a'||'b'"),
            ["17", "'x''y'", "0.5", "3", "'ż'", "1", "2", "'a'", "'b'"]
        );
        let sql = "SELECT 1;\nSELECT 'a\n'  -- 1\n";
        assert_eq!(literal_texts(sql), ["1", "'a\n'"]);
        assert!(spans_are_literal_tokens(sql, &split(sql).unwrap().literals));
        // Placeholders past nine, and past ninety-nine.
        let many: Vec<String> = (0..120).map(|n| n.to_string()).collect();
        let shaped = split(&format!("SELECT {}", many.join(", "))).unwrap();
        let expected: Vec<String> = (1..=120).map(|k| format!(" ${k} ")).collect();
        assert_eq!(shaped.shape, format!("SELECT {}", expected.join(", ")));
    }

    #[test]
    fn everything_but_literals_is_kept_verbatim() {
        let sql = "/* pgwarden:primary /* 'n' */ 2 */ select \"Col \"\"1\"\"\", t1.c2  -- 'c'\n from \"T\" where x='ż' and y = 2";
        let shaped = split(sql).unwrap();
        assert_eq!(
            shaped.shape,
            "/* pgwarden:primary /* 'n' */ 2 */ select \"Col \"\"1\"\"\", t1.c2  -- 'c'\n from \"T\" where x= $1  and y =  $2 "
        );
        assert_eq!(literal_texts(sql), ["'ż'", "2"]);
        assert!(spans_are_literal_tokens(sql, &shaped.literals));
    }

    #[test]
    fn texts_the_shape_path_leaves_alone() {
        for sql in [
            "SELECT a FROM t",
            "SELECT a FROM t WHERE b = $1 AND c = 2",
            "SELECT 'unterminated",
            "SELECT 1 /* unterminated",
            "SELECT \"x FROM t WHERE a = 1",
            "SELECT E'a\\'b'",
            "SELECT 'a\\' , 1",
            "SELECT $q$ x $q$, 1",
            "SELECT X'ff', 1",
            "SELECT U&'a', 1",
            "SELECT 1e3",
            "SELECT 1.",
            "SELECT .5",
            "SELECT 1_000",
            "SELECT 0x1F",
            "SELECT t.1, 2",
            "SELECT \"$1\", 1",
            "SELECT 1 /* $2 */",
            "SELECT a$1 FROM t WHERE b = 1",
        ] {
            assert_eq!(split(sql), None, "{sql}");
        }
        for text in ["", "'", "\"", "$a$", "/*", "--", "1e", "é", "\r\n1", "/*/"] {
            let _ = split(text);
        }
    }

    #[test]
    fn literal_spans_are_checked_against_the_tokenizer() {
        let sql = "SELECT 1, 'a'";
        assert!(spans_are_literal_tokens(sql, &[7..8, 10..13]));
        assert!(!spans_are_literal_tokens(sql, &[7..8, 10..12]));
        assert!(!spans_are_literal_tokens(
            sql,
            std::slice::from_ref(&(8..9))
        ));
        assert!(!spans_are_literal_tokens(
            "SELECT 1, $1",
            std::slice::from_ref(&(7..8))
        ));
        assert!(!spans_are_literal_tokens("SELECT 'unterminated", &[]));
    }

    #[test]
    fn templates_put_literals_back() {
        let sql = "SELECT * FROM t WHERE a = 5 AND b IN ('x', -2.5)";
        let shaped = split(sql).unwrap();
        let rewritten = "SELECT * FROM (SELECT * FROM t WHERE \"tenant_id\" = 1) AS t WHERE a = $1 AND b IN ($2, -$3)";
        let template = Template::new(rewritten, 3).unwrap();
        assert_eq!(
            template.apply(sql, &shaped.literals).unwrap(),
            "SELECT * FROM (SELECT * FROM t WHERE \"tenant_id\" = 1) AS t WHERE a = 5 AND b IN ('x', -2.5)"
        );
        // Another text of the same shape.
        let other = "SELECT * FROM t WHERE a = 123 AND b IN ('it''s', -7)";
        let again = split(other).unwrap();
        assert_eq!(again.shape, shaped.shape);
        assert_eq!(
            template.apply(other, &again.literals).unwrap(),
            "SELECT * FROM (SELECT * FROM t WHERE \"tenant_id\" = 1) AS t WHERE a = 123 AND b IN ('it''s', -7)"
        );
        // The wrong number of literals.
        assert_eq!(template.apply(sql, &shaped.literals[..2]), None);
        // Order of use may differ from order in the text.
        let swapped = Template::new("SELECT $2, $1", 2).unwrap();
        assert_eq!(
            swapped.apply("SELECT 1, 'a'", &split("SELECT 1, 'a'").unwrap().literals),
            Some("SELECT 'a', 1".into())
        );
    }

    #[test]
    fn templates_refuse_what_they_cannot_apply_exactly() {
        assert_eq!(Template::new("SELECT $1, $1", 1), None, "used twice");
        assert_eq!(Template::new("SELECT $1", 2), None, "one unused");
        assert_eq!(Template::new("SELECT $1, $3", 2), None, "unknown slot");
        assert_eq!(Template::new("SELECT $0", 1), None);
        assert_eq!(Template::new("SELECT x$1", 1), None, "runs into a word");
        assert_eq!(Template::new("SELECT $1.x", 1), None);
        // Placeholders inside quoted identifiers, strings and comments are not slots.
        let template = Template::new("SELECT \"$1\", '$1', $1 /* $1 */", 1).unwrap();
        assert_eq!(
            template.apply("SELECT 9", &split("SELECT 9").unwrap().literals),
            Some("SELECT \"$1\", '$1', 9 /* $1 */".into())
        );
    }
}
