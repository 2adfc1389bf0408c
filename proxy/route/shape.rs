//! The shape of a statement: its text with literal values replaced by `?`, so that
//! statements differing only in constants (`WHERE aid = 17` / `WHERE aid = 42`) share
//! one cache entry. A single pass over the bytes, no parsing; comments are kept
//! (they may carry routing hints), runs of whitespace collapse to one space.

/// Where a shape is written: a `String`, or a hasher when only its hash is needed
/// (the statistics key texts by the hash of their shape; no string is built for that).
pub trait ShapeSink {
    fn put(&mut self, part: &str);
}

impl ShapeSink for String {
    fn put(&mut self, part: &str) {
        self.push_str(part);
    }
}

/// Returns the statement's shape.
pub fn shape(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    shape_into(sql, &mut out);
    out
}

/// Writes the statement's shape to `out`, in pieces; returns whether it replaced any
/// literal.
pub fn shape_into(sql: &str, out: &mut impl ShapeSink) -> bool {
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut last_space = false;
    let mut literals = false;
    let mut w = Writer {
        out,
        pending_space: false,
        written: false,
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => {
                // String literal, with '' escapes; E'..' escapes are covered by the prefix.
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                w.put("?");
                literals = true;
                i += 1;
                last_space = false;
                continue;
            }
            b'0'..=b'9' if !prev_is_word(bytes, i) => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit()
                        || bytes[i] == b'.'
                        || bytes[i] == b'e'
                        || bytes[i] == b'E')
                {
                    i += 1;
                }
                w.put("?");
                literals = true;
                last_space = false;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |p| i + p);
                w.put(&sql[i..end]);
                i = end;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
                w.put(&sql[i..end]);
                i = end;
                continue;
            }
            b'"' | b'$' => {
                // Quoted identifiers and dollar-quoted bodies are kept verbatim.
                let close = if b == b'"' {
                    sql[i + 1..].find('"').map(|p| i + 1 + p + 1)
                } else {
                    dollar_quote_end(sql, i)
                };
                let end = close.unwrap_or(i + 1).min(bytes.len());
                w.put(&sql[i..end]);
                i = end;
                last_space = false;
                continue;
            }
            b if b.is_ascii_whitespace() => {
                if !last_space && w.written {
                    w.pending_space = true;
                }
                last_space = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        // Copy the run of plain bytes up to the next one that starts something (all
        // ASCII, so the run ends on a character boundary).
        let mut end = i + 1;
        while end < bytes.len() && !starts_something(bytes, end) {
            end += 1;
        }
        w.put(&sql[i..end]);
        i = end;
        last_space = false;
    }
    literals
}

/// Writes pieces of a shape; a space only once something follows it, so none leads or
/// trails.
struct Writer<'a, S> {
    out: &'a mut S,
    pending_space: bool,
    written: bool,
}

impl<S: ShapeSink> Writer<'_, S> {
    fn put(&mut self, part: &str) {
        if std::mem::take(&mut self.pending_space) {
            self.out.put(" ");
        }
        self.out.put(part);
        self.written = true;
    }
}

/// Whether the byte at `i` starts a literal, comment, quoted text or whitespace.
fn starts_something(bytes: &[u8], i: usize) -> bool {
    match bytes[i] {
        b'\'' | b'"' | b'$' => true,
        b'0'..=b'9' => !prev_is_word(bytes, i),
        b'-' => bytes.get(i + 1) == Some(&b'-'),
        b'/' => bytes.get(i + 1) == Some(&b'*'),
        b => b.is_ascii_whitespace(),
    }
}

fn prev_is_word(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'$')
}

/// End (exclusive) of a `$tag$ ... $tag$` string starting at `start`, if it is one.
fn dollar_quote_end(sql: &str, start: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let tag_end = bytes[start + 1..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map(|p| start + 1 + p)?;
    if bytes[tag_end] != b'$' {
        return None; // a parameter like $1
    }
    let tag = &sql[start..=tag_end];
    sql[tag_end + 1..]
        .find(tag)
        .map(|p| tag_end + 1 + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;")
        );
        assert_eq!(
            shape("select * from t where a = 'x''y' and b = 1.5e3"),
            "select * from t where a = ? and b = ?"
        );
        assert_eq!(
            shape("select  t1.c2,\n\t$1 from t1"),
            "select t1.c2, $1 from t1"
        );
        assert_eq!(
            shape("/* pgwarden:primary */ select 1"),
            "/* pgwarden:primary */ select ?"
        );
        assert_eq!(
            shape("select \"Col 1\" from \"T\""),
            "select \"Col 1\" from \"T\""
        );
        assert_eq!(shape("select $f$ 1 $f$, 'ż'"), "select $f$ 1 $f$, ?");
        assert_ne!(shape("select a from t"), shape("select b from t"));
        assert_eq!(shape("  select   1  "), "select ?");
        assert_eq!(shape("select 1 -- note  \n"), "select ? -- note  ");
        // Unterminated input must not panic.
        for text in ["'", "\"", "$a$", "/*", "--", "1e", "é"] {
            let _ = shape(text);
        }
    }
}
