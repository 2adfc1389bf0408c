//! The one walk over a statement's bytes. It writes the statement's shape (literal
//! values replaced by `?`, runs of whitespace collapsed to one space, comments,
//! quoted identifiers and dollar-quoted bodies kept verbatim) to a sink, and hands
//! every byte, in order, to the verdicts of `flags.rs`.

use super::flags::{class_of, Flags, ALPHANUMERIC, WHITESPACE};

/// Where a shape is written: bytes for the text, or a hasher when only its hash is
/// needed. Only the concatenation of the parts matters, never how they were cut.
pub trait ShapeSink {
    fn put(&mut self, part: &[u8]);
}

impl ShapeSink for Vec<u8> {
    fn put(&mut self, part: &[u8]) {
        self.extend_from_slice(part);
    }
}

/// What the walk found besides the shape.
pub(super) struct Walked {
    pub has_literals: bool,
    pub flags: Flags,
    pub numbers: Numbers,
}

/// The most numbers [`Numbers`] holds.
pub(super) const MAX_NUMBERS: usize = 8;

/// Where a text's literals are, when every one of them is a run of plain digits
/// (`42`, not `4.2`, `4e2` or `'x'`) and there are at most [`MAX_NUMBERS`]: what
/// `repeat.rs` needs to know that another text is this one but for its numbers.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Numbers {
    pub spans: [(u32, u32); MAX_NUMBERS],
    pub count: usize,
    /// A literal that is not a plain digit run, or too many numbers.
    pub other: bool,
}

impl Numbers {
    fn push(&mut self, sql: &[u8], start: usize, end: usize) {
        let digits = sql[start..end].iter().all(u8::is_ascii_digit);
        match (digits, u32::try_from(start), u32::try_from(end)) {
            (true, Ok(start), Ok(end)) if self.count < MAX_NUMBERS => {
                self.spans[self.count] = (start, end);
                self.count += 1;
            }
            _ => self.other = true,
        }
    }

    /// Whether the text's literals are all here (and there is one at least).
    pub fn all(&self) -> bool {
        self.count > 0 && !self.other
    }
}

/// Walks `sql`, writing its shape to `out`.
///
/// Plain bytes (runs of letters and digits, and punctuation that starts nothing) are
/// gathered into one part and written when something else comes: whitespace, a
/// literal, a comment or quoted text.
pub(super) fn walk(sql: &[u8], out: &mut impl ShapeSink) -> Walked {
    let n = sql.len();
    let mut flags = Flags::new();
    let mut w = Writer {
        out,
        sql,
        span: (0, 0),
        pending_space: false,
        written: false,
    };
    let mut literals = false;
    let mut numbers = Numbers::default();
    let mut last_space = false;
    // Where the plain part being gathered starts (`NONE`: no part).
    const NONE: usize = usize::MAX;
    let mut plain = NONE;
    let mut i = 0;
    while i < n {
        let b = sql[i];
        let class = class_of(b);
        if class & ALPHANUMERIC != 0 && (!b.is_ascii_digit() || prev_is_word(sql, i)) {
            // Letters and digits: plain (a digit right after a word byte too), with
            // the `_` and single spaces between words (`Flags::alphanumeric_run`).
            if plain == NONE {
                plain = i;
            }
            i = flags.alphanumeric_run(sql, i);
            last_space = false;
            continue;
        }
        let special = match b {
            b'\'' | b'"' | b'$' => true,
            b'0'..=b'9' => true,
            b'-' => sql.get(i + 1) == Some(&b'-'),
            b'/' => sql.get(i + 1) == Some(&b'*'),
            // One space between two parts is the shape's own byte: it stays in the
            // plain part (most of a statement's spaces). A leading or trailing space,
            // a run, or one after a dropped run goes the long way.
            b' ' => {
                last_space
                    || (plain == NONE && !w.written)
                    || sql
                        .get(i + 1)
                        .is_none_or(|next| class_of(*next) & WHITESPACE != 0)
            }
            _ => class & WHITESPACE != 0,
        };
        if !special {
            // Punctuation that starts nothing, or a single inner space: plain.
            if plain == NONE {
                plain = i;
            }
            flags.not_alphanumeric(sql, i, class);
            i += 1;
            last_space = b == b' ';
            continue;
        }
        if plain != NONE {
            w.source(plain, i);
            plain = NONE;
        }
        if class & WHITESPACE != 0 {
            flags.not_alphanumeric(sql, i, class);
            if !last_space && w.written {
                w.pending_space = true;
            }
            last_space = true;
            i += 1;
            continue;
        }
        let start = i;
        match b {
            b'\'' => {
                i = string_end(sql, i);
                w.literal();
                literals = true;
                numbers.other = true;
                last_space = false;
            }
            b'0'..=b'9' => {
                while i < n && matches!(sql[i], b'0'..=b'9' | b'.' | b'e' | b'E') {
                    i += 1;
                }
                numbers.push(sql, start, i);
                w.literal();
                literals = true;
                last_space = false;
            }
            b'-' => {
                i = memchr::memchr(b'\n', &sql[i..]).map_or(n, |p| i + p);
                w.source(start, i);
            }
            b'/' => {
                i = memchr::memmem::find(&sql[i + 2..], b"*/").map_or(n, |p| i + 2 + p + 2);
                w.source(start, i);
            }
            _ => {
                // `"` or `$`
                let close = if b == b'"' {
                    memchr::memchr(b'"', &sql[i + 1..]).map(|p| i + 1 + p + 1)
                } else {
                    dollar_quote_end(sql, i)
                };
                i = close.unwrap_or(i + 1).min(n);
                w.source(start, i);
                last_space = false;
            }
        }
        flags.bytes(sql, start, i);
    }
    if plain != NONE {
        w.source(plain, n);
    }
    w.flush();
    Walked {
        has_literals: literals,
        flags,
        numbers,
    }
}

/// Writes the parts of a shape; a space only once something follows it, so none
/// leads or trails. Parts that follow each other in the text too (with nothing or one
/// plain space between them) are gathered into one span of the text and written
/// with one call: most of a statement's shape is its text.
struct Writer<'a, S> {
    out: &'a mut S,
    sql: &'a [u8],
    /// The text `span.0..span.1` is the shape's next bytes, not written yet.
    span: (usize, usize),
    pending_space: bool,
    written: bool,
}

impl<S: ShapeSink> Writer<'_, S> {
    /// The next part is the text `start..end`.
    #[inline(always)]
    fn source(&mut self, start: usize, end: usize) {
        let (from, to) = self.span;
        let space = std::mem::take(&mut self.pending_space);
        let continues = from < to
            && if space {
                to + 1 == start && self.sql[to] == b' '
            } else {
                to == start
            };
        if continues {
            self.span.1 = end;
        } else {
            self.flush();
            if space {
                self.out.put(b" ");
            }
            self.span = (start, end);
        }
        self.written = true;
    }

    /// The next part is a literal's `?`.
    #[inline(always)]
    fn literal(&mut self) {
        self.flush();
        if std::mem::take(&mut self.pending_space) {
            self.out.put(b" ");
        }
        self.out.put(b"?");
        self.written = true;
    }

    /// Writes the gathered span.
    #[inline(always)]
    fn flush(&mut self) {
        let (from, to) = std::mem::take(&mut self.span);
        if from < to {
            self.out.put(&self.sql[from..to]);
        }
    }
}

fn prev_is_word(sql: &[u8], i: usize) -> bool {
    i > 0 && (sql[i - 1].is_ascii_alphanumeric() || sql[i - 1] == b'_' || sql[i - 1] == b'$')
}

/// The end (exclusive) of the string literal opened at `start`: `''` is an escaped
/// quote, and a backslash takes the next byte (which covers `E'..'`).
fn string_end(sql: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < sql.len() {
        match sql[i] {
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => break,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    (i + 1).min(sql.len())
}

/// End (exclusive) of a `$tag$ ... $tag$` string starting at `start`, if it is one.
fn dollar_quote_end(sql: &[u8], start: usize) -> Option<usize> {
    let tag_end = sql[start + 1..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map(|p| start + 1 + p)?;
    if sql[tag_end] != b'$' {
        return None; // a parameter like $1
    }
    let tag = &sql[start..=tag_end];
    memchr::memmem::find(&sql[tag_end + 1..], tag).map(|p| tag_end + 1 + p + tag.len())
}
