//! Statement shapes for the shape cache: a simple-protocol text with its literals
//! replaced by `$1..$n`, and the rewrite template that puts new literals back.
//!
//! The literals are found by sqlparser's own tokenizer — the lexer the guard's parser
//! uses — so the shape cannot disagree with what the full path would parse about
//! where a literal ends. Everything else is copied from the text byte for byte.
//! Both functions are pure; anything unexpected gives `None` (the full path).

use std::fmt::Write as _;
use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// A statement text split into its shape and its literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    /// The text with the k-th literal replaced by ` $k ` (spaces keep the
    /// placeholder from running into a neighbouring token).
    pub shape: String,
    /// Byte ranges of the literals in the text, in order.
    pub literals: Vec<Range<usize>>,
}

/// What the shape path does with one token.
enum Kind {
    Literal,
    Other,
    /// A token the shape path does not handle: `$n` parameters (the text is already
    /// parameterized), and string syntaxes PostgreSQL does not have.
    Refuse,
}

fn kind(token: &Token) -> Kind {
    match token {
        Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::EscapedStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::DollarQuotedString(_) => Kind::Literal,
        Token::Placeholder(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EOF => Kind::Refuse,
        _ => Kind::Other,
    }
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

/// The shape of `sql`: None when it has no literals, has `$n` parameters, or cannot
/// be tokenized.
pub fn split(sql: &str) -> Option<Shaped> {
    let mut shape = String::with_capacity(sql.len() + 16);
    let mut literals = Vec::new();
    for (token, range) in tokens(sql)? {
        match kind(&token) {
            Kind::Literal => {
                literals.push(range);
                let _ = write!(shape, " ${} ", literals.len());
            }
            Kind::Other => shape.push_str(&sql[range]),
            Kind::Refuse => return None,
        }
    }
    if literals.is_empty() {
        return None;
    }
    Some(Shaped { shape, literals })
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

    /// The template with the literals of `sql` (at `literals`) put back.
    pub fn apply(&self, sql: &str, literals: &[Range<usize>]) -> Option<String> {
        if literals.len() != self.slots.len() {
            return None;
        }
        let size = self.bytes() + literals.iter().map(|r| r.len()).sum::<usize>();
        let mut out = String::with_capacity(size);
        for (fragment, slot) in self.fragments.iter().zip(&self.slots) {
            out.push_str(fragment);
            out.push_str(sql.get(literals.get(*slot)?.clone())?);
        }
        out.push_str(self.fragments.last()?);
        Some(out)
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
    fn literals_become_numbered_placeholders() {
        let a = split("SELECT * FROM t WHERE a = 17 AND b = 'x''y'").unwrap();
        let b = split("SELECT * FROM t WHERE a = 4.5e3 AND b = E'\\n'").unwrap();
        assert_eq!(a.shape, "SELECT * FROM t WHERE a =  $1  AND b =  $2 ");
        assert_eq!(a.shape, b.shape);
        assert_eq!(
            literal_texts("SELECT 17, 'x''y', E'a\\'b', $q$ 'not' $q$, X'ff', B'101', N'n', .5"),
            [
                "17",
                "'x''y'",
                "E'a\\'b'",
                "$q$ 'not' $q$",
                "X'ff'",
                "B'101'",
                "N'n'",
                ".5"
            ]
        );
    }

    #[test]
    fn everything_but_literals_is_kept_verbatim() {
        let sql = "/* pgwarden:primary */ select \"Col \"\"1\"\"\"  -- 'c'\n from \"T\" where x='ż' and y = 2";
        let shaped = split(sql).unwrap();
        assert_eq!(
            shaped.shape,
            "/* pgwarden:primary */ select \"Col \"\"1\"\"\"  -- 'c'\n from \"T\" where x= $1  and y =  $2 "
        );
        assert_eq!(literal_texts(sql), ["'ż'", "2"]);
        // Identifiers and comments that look like literals or parameters stay.
        let shaped = split("select \"$1\", 1 /* $2 '3' */").unwrap();
        assert_eq!(shaped.shape, "select \"$1\",  $1  /* $2 '3' */");
    }

    #[test]
    fn texts_the_shape_path_leaves_alone() {
        assert_eq!(split("SELECT a FROM t"), None, "no literals");
        assert_eq!(split("SELECT a FROM t WHERE b = $1 AND c = 2"), None);
        assert_eq!(split("SELECT 'unterminated"), None);
        for text in ["", "'", "\"", "$a$", "/*", "--", "1e", "é", "\r\n1"] {
            let _ = split(text);
        }
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
        let other = "SELECT * FROM t WHERE a = 123 AND b IN ($$y$$, -7)";
        let again = split(other).unwrap();
        assert_eq!(again.shape, shaped.shape);
        assert_eq!(
            template.apply(other, &again.literals).unwrap(),
            "SELECT * FROM (SELECT * FROM t WHERE \"tenant_id\" = 1) AS t WHERE a = 123 AND b IN ($$y$$, -7)"
        );
        // The wrong number of literals.
        assert_eq!(template.apply(sql, &shaped.literals[..2]), None);
        // Order of use may differ from order in the text.
        let swapped = Template::new("SELECT $2, $1", 2).unwrap();
        assert_eq!(
            swapped.apply("SELECT 1, 'a'", &split("SELECT 1, 'a'").unwrap().literals),
            Some("SELECT 'a', 1".to_string())
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
            Some("SELECT \"$1\", '$1', 9 /* $1 */".to_string())
        );
    }
}
