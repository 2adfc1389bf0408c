//! The shape of a statement: its text with literal values replaced by `?`, so that
//! statements differing only in constants (`WHERE aid = 17` / `WHERE aid = 42`) share
//! one cache entry. A single pass over the bytes, no parsing; comments are kept
//! (they may carry routing hints), runs of whitespace collapse to one space.

/// Returns the statement's shape.
pub fn shape(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut last_space = false;
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
                out.push('?');
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
                out.push('?');
                last_space = false;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |p| i + p);
                out.push_str(&sql[i..end]);
                i = end;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
                out.push_str(&sql[i..end]);
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
                out.push_str(&sql[i..end]);
                i = end;
                last_space = false;
                continue;
            }
            b if b.is_ascii_whitespace() => {
                if !last_space && !out.is_empty() {
                    out.push(' ');
                }
                last_space = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        // Copy one UTF-8 character.
        let width = utf8_width(b);
        let end = (i + width).min(bytes.len());
        out.push_str(&sql[i..end]);
        i = end;
        last_space = false;
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
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

fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
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
        // Unterminated input must not panic.
        for text in ["'", "\"", "$a$", "/*", "--", "1e", "é"] {
            let _ = shape(text);
        }
    }
}
