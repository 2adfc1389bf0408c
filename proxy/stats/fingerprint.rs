//! Statement fingerprints: the statement with literals and parameters as `?`, `IN`
//! lists and `VALUES` rows collapsed, comments dropped, whitespace and keyword case
//! normalized. Statements of the same shape get the same id.

use std::hash::{DefaultHasher, Hash, Hasher};

/// A fingerprint id (stable within a build).
pub type FingerprintId = u64;

/// Normalized text and id of a statement.
pub fn fingerprint(sql: &str) -> (FingerprintId, String) {
    let text = normalize(sql);
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    (hasher.finish(), text)
}

fn normalize(sql: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // For each open parenthesis: where it is in `out`, and whether it opens an IN list.
    let mut open: Vec<(usize, bool)> = Vec::new();
    for token in tokens(sql) {
        match token.as_str() {
            "(" => {
                let in_list = matches!(out.last().map(String::as_str), Some("in"));
                open.push((out.len(), in_list));
                out.push(token);
            }
            ")" => {
                out.push(token);
                if let Some((start, _)) = open.pop() {
                    collapse_repeated_group(&mut out, start);
                }
            }
            "?" if open.last().is_some_and(|(_, in_list)| *in_list)
                && out.len() >= 2
                && out[out.len() - 1] == ","
                && out[out.len() - 2] == "?" =>
            {
                out.pop(); // IN (?, ?, ?) → IN (?)
            }
            _ => out.push(token),
        }
    }
    let mut text = String::with_capacity(sql.len());
    for (i, token) in out.iter().enumerate() {
        let previous = if i > 0 { out[i - 1].as_str() } else { "" };
        let call = token == "("
            && previous.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '"')
            && !KEYWORDS_BEFORE_PAREN.contains(&previous);
        let glue = i > 0
            && !call
            && !matches!(token.as_str(), "," | ")" | "." | ";" | "::" | "[" | "]")
            && !matches!(previous, "(" | "." | "::" | "[");
        if glue {
            text.push(' ');
        }
        text.push_str(token);
    }
    while text.ends_with(';') || text.ends_with(' ') {
        text.pop();
    }
    text
}

/// Words after which `(` opens a list or subquery, not a call: keep the space.
const KEYWORDS_BEFORE_PAREN: &[&str] = &[
    "in",
    "values",
    "as",
    "on",
    "from",
    "join",
    "where",
    "and",
    "or",
    "not",
    "select",
    "using",
    "over",
    "with",
    "exists",
    "any",
    "all",
    "by",
    "set",
    "then",
    "else",
    "when",
    "union",
    "intersect",
    "except",
    "lateral",
    "returning",
    "having",
];

/// `VALUES (?, ?), (?, ?)` → `VALUES (?, ?)`: a group identical to the one before it,
/// separated by a comma, is dropped.
fn collapse_repeated_group(out: &mut Vec<String>, start: usize) {
    let group_len = out.len() - start;
    if start < group_len + 1 || out[start - 1] != "," {
        return;
    }
    let previous = start - 1 - group_len;
    if out[previous..start - 1] == out[start..] {
        out.truncate(start - 1);
    }
}

/// Characters of operator tokens (`?` also stands for a literal, and is left out).
const OPERATOR_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`";

/// Words an expression may follow, so that a minus after them is a sign.
const KEYWORDS_BEFORE_EXPRESSION: &[&str] = &[
    "and", "between", "case", "else", "having", "in", "like", "limit", "not", "offset", "or",
    "return", "select", "then", "values", "when", "where",
];

/// Before a number's `?` is pushed: a minus sign just before it is the number's own
/// sign when it cannot be a binary operator (at the start, after `(`, `,`, `[`, another
/// operator, or a word an expression follows), and is dropped, as PostgreSQL folds it
/// into the constant: `b + -5` and `b + 5` are one statement, as `pg_stat_statements`
/// counts them. The sign may be the end of an operator run written without a space
/// (`=-5`, `+-5`), which PostgreSQL's lexer cuts before a trailing `-` unless the run
/// holds one of `~!@#%^&|\``.
fn absorb_sign(tokens: &mut Vec<String>) {
    let Some(last) = tokens.last_mut() else {
        return;
    };
    if last == "-" {
        let before = tokens.len().checked_sub(2).map(|i| tokens[i].as_str());
        if sign_may_follow(before) {
            tokens.pop();
        }
    } else if last.len() > 1 && last.ends_with('-') && last.bytes().all(|b| b"+-*/<>=".contains(&b))
    {
        // `=-5`: the operator `=`, then the sign.
        last.pop();
    }
}

/// Whether a `-` after `before` (a token, `None` at the start) is a sign.
fn sign_may_follow(before: Option<&str>) -> bool {
    match before {
        None | Some("(" | "," | "[") => true,
        Some(token) => {
            token.bytes().all(|b| OPERATOR_CHARS.contains(&b))
                || KEYWORDS_BEFORE_EXPRESSION.contains(&token)
        }
    }
}

fn tokens(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |p| i + 2 + p + 2);
        } else if b == b'\'' {
            i += 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            // E'..', B'..', X'..' prefixes were read as a word: replace them too.
            if matches!(
                tokens.last().map(String::as_str),
                Some("e" | "b" | "x" | "n")
            ) {
                tokens.pop();
            }
            tokens.push("?".into());
        } else if b == b'$' && bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            tokens.push("?".into());
        } else if b == b'$' {
            // $tag$ ... $tag$ literal
            let tag_end = bytes[i + 1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map(|p| i + 1 + p);
            match tag_end.filter(|e| bytes[*e] == b'$') {
                Some(end) => {
                    let tag = &sql[i..=end];
                    i = sql[end + 1..]
                        .find(tag)
                        .map_or(bytes.len(), |p| end + 1 + p + tag.len());
                    tokens.push("?".into());
                }
                None => {
                    tokens.push("$".into());
                    i += 1;
                }
            }
        } else if b.is_ascii_digit()
            || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            absorb_sign(&mut tokens);
            tokens.push("?".into());
        } else if b == b'"' {
            let end = sql[i + 1..]
                .find('"')
                .map_or(bytes.len(), |p| i + 1 + p + 1);
            tokens.push(sql[i..end].to_string());
            i = end;
        } else if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || bytes[i] == b'$'
                    || bytes[i] >= 0x80)
            {
                i += 1;
            }
            tokens.push(sql[start..i].to_lowercase());
        } else if b == b':' && bytes.get(i + 1) == Some(&b':') {
            tokens.push("::".into());
            i += 2;
        } else {
            // Operators: group runs of operator characters.
            let start = i;
            if b"+-*/<>=~!@#%^&|`?".contains(&b) {
                while i < bytes.len() && b"+-*/<>=~!@#%^&|`?".contains(&bytes[i]) {
                    if bytes[i] == b'-' && bytes.get(i + 1) == Some(&b'-') && i > start {
                        break;
                    }
                    i += 1;
                }
            } else {
                i += 1;
            }
            tokens.push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    fn same(a: &str, b: &str) -> bool {
        fingerprint(a).0 == fingerprint(b).0
    }

    const SAME: &[(&str, &str)] = &[
        ("SELECT 1", "select 2"),
        (
            "SELECT * FROM t WHERE id = 1",
            "select * from t where id = 42",
        ),
        (
            "SELECT * FROM t WHERE id = $1",
            "SELECT * FROM t WHERE id = 7",
        ),
        (
            "SELECT * FROM t WHERE name = 'a'",
            "SELECT * FROM t WHERE name = 'b''c'",
        ),
        (
            "SELECT * FROM t WHERE id IN (1, 2, 3)",
            "SELECT * FROM t WHERE id IN (4)",
        ),
        (
            "SELECT * FROM t WHERE id IN ($1, $2)",
            "SELECT * FROM t WHERE id IN (1,2,3,4,5,6)",
        ),
        (
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO t VALUES (2, 'b')",
        ),
        (
            "INSERT INTO t (a) VALUES (1), (2), (3)",
            "INSERT INTO t (a) VALUES (9)",
        ),
        ("SELECT  *\n FROM\tt", "SELECT * FROM t"),
        ("SELECT * FROM t -- comment", "SELECT * FROM t"),
        ("/* app:web */ SELECT * FROM t", "SELECT * FROM t"),
        ("SELECT * FROM t;", "SELECT * FROM t"),
        (
            "select a from t where b > 1.5",
            "SELECT a FROM t WHERE b > 2.75",
        ),
        (
            "select a from t where b > -1",
            "select a from t where b > 10",
        ),
        (
            "select a from t limit 10 offset 20",
            "select a from t limit 5 offset 0",
        ),
        ("select $$x$$", "select 'y'"),
        ("select E'a\\nb'", "select 'c'"),
        (
            "SELECT now() - interval '1 day'",
            "SELECT now() - interval '2 days'",
        ),
        (
            "UPDATE t SET a = 1 WHERE id = 2",
            "update t set a = 3 where id = 4",
        ),
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 99"),
        ("SELECT a::int FROM t", "select a :: int from t"),
        ("SELECT count(*) FROM t", "SELECT COUNT(*) FROM T"),
        (
            "SELECT x FROM t WHERE a = 1 AND b = 'z'",
            "SELECT x FROM t WHERE a = 2 AND b = 'y'",
        ),
        (
            "SELECT * FROM t WHERE id = ANY($1)",
            "SELECT * FROM t WHERE id = ANY($2)",
        ),
        ("select 1e10", "select 3"),
        ("select .5", "select 7"),
        // A negative number is a number (pgbench's TPC-B sends both signs).
        (
            "UPDATE pgbench_branches SET bbalance = bbalance + -2741 WHERE bid = 3",
            "UPDATE pgbench_branches SET bbalance = bbalance + 4410 WHERE bid = 7",
        ),
        (
            "select a from t where b >= -1",
            "select a from t where b >= 1",
        ),
        ("select a from t where b=-1", "select a from t where b = 1"),
        (
            "select a from t where b <>-1",
            "select a from t where b <> 1",
        ),
        ("select a * -2 from t", "select a * 2 from t"),
        ("select a - -2 from t", "select a - 2 from t"),
        ("select -5", "select 5"),
        ("select f(-1, -2)", "select f(1, 2)"),
        ("select a[-1] from t", "select a[1] from t"),
        (
            "select case when a then -1 else -2 end from t",
            "select case when a then 1 else 2 end from t",
        ),
        (
            "select a from t where b between -1 and -2",
            "select a from t where b between 1 and 2",
        ),
    ];

    const DIFFERENT: &[(&str, &str)] = &[
        ("SELECT a FROM t", "SELECT b FROM t"),
        ("SELECT * FROM t", "SELECT * FROM u"),
        (
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id > 1",
        ),
        ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE b = 1"),
        ("SELECT * FROM \"T\"", "SELECT * FROM t"),
        ("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1, 2)"),
        (
            "SELECT * FROM t WHERE id IN (1)",
            "SELECT * FROM t WHERE id = 1",
        ),
        ("SELECT * FROM t ORDER BY a", "SELECT * FROM t ORDER BY b"),
        ("SELECT * FROM t LIMIT 1", "SELECT * FROM t"),
        ("UPDATE t SET a = 1", "UPDATE t SET b = 1"),
        ("SELECT count(*) FROM t", "SELECT sum(a) FROM t"),
        (
            "SELECT a FROM t JOIN u ON u.id = t.id",
            "SELECT a FROM t LEFT JOIN u ON u.id = t.id",
        ),
        (
            "SELECT a FROM t WHERE a = 1 AND b = 2",
            "SELECT a FROM t WHERE a = 1 OR b = 2",
        ),
        ("SELECT a, b FROM t", "SELECT a FROM t"),
        ("select a from t1", "select a from t2"),
        ("DELETE FROM t", "TRUNCATE t"),
        (
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "SELECT * FROM t WHERE id = 1",
        ),
        ("SELECT a - 1 FROM t", "SELECT a + 1 FROM t"),
        // A minus after an operand is an operator, spaced or not.
        ("SELECT a - 1 FROM t", "SELECT a 1 FROM t"),
        ("SELECT a -1 FROM t", "SELECT a + 1 FROM t"),
        ("SELECT f(x) -1 FROM t", "SELECT f(x) FROM t"),
        ("SELECT 2 - 1", "SELECT 2"),
        ("SELECT $1 -1", "SELECT $1"),
        ("SELECT 'a' || b FROM t", "SELECT b FROM t"),
        ("SELECT * FROM s.t", "SELECT * FROM t"),
    ];

    #[test]
    fn equivalence_classes() {
        // 37 same + 25 different pairs, each checked both ways, plus pairwise across
        // the groups below (well over 100 comparisons).
        for (a, b) in SAME {
            assert!(
                same(a, b),
                "{a:?} ~ {b:?}: {:?} vs {:?}",
                fingerprint(a).1,
                fingerprint(b).1
            );
            assert!(same(b, a));
        }
        for (a, b) in DIFFERENT {
            assert!(!same(a, b), "{a:?} !~ {b:?}: both {:?}", fingerprint(a).1);
        }
        // Every statement of one SAME pair differs from every other pair's shape.
        let shapes: Vec<&str> = SAME.iter().map(|(a, _)| *a).collect();
        let mut distinct = std::collections::HashSet::new();
        for s in &shapes {
            distinct.insert(fingerprint(s).0);
        }
        // Several pairs share a shape on purpose (e.g. three spellings of `select * from t`).
        assert_eq!(distinct.len(), 26, "distinct shapes among the SAME pairs");
    }

    /// Twenty distinct shapes, each written with `{}` where a literal goes.
    const SHAPES: &[&str] = &[
        "SELECT * FROM users WHERE id = {}",
        "SELECT * FROM users WHERE email = {}",
        "SELECT id FROM users WHERE id = {}",
        "SELECT * FROM orders WHERE user_id = {} ORDER BY created_at DESC LIMIT {}",
        "SELECT count(*) FROM orders WHERE total > {}",
        "SELECT sum(total) FROM orders WHERE user_id = {}",
        "UPDATE users SET name = {} WHERE id = {}",
        "UPDATE users SET email = {} WHERE id = {}",
        "DELETE FROM sessions WHERE expires_at < {}",
        "INSERT INTO events (kind, payload) VALUES ({}, {})",
        "INSERT INTO events (kind) VALUES ({})",
        "SELECT * FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = {}",
        "SELECT * FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE o.id = {}",
        "SELECT * FROM products WHERE id IN ({}, {}, {})",
        "SELECT * FROM products WHERE sku = ANY({})",
        "SELECT * FROM products WHERE price BETWEEN {} AND {}",
        "SELECT name FROM products WHERE name LIKE {}",
        "SELECT * FROM products WHERE id = {} FOR UPDATE",
        "WITH recent AS (SELECT * FROM orders WHERE total > {}) SELECT count(*) FROM recent",
        "SELECT * FROM audit WHERE at > now() - interval {}",
    ];

    fn fill(shape: &str, values: &[&str]) -> String {
        let mut out = shape.to_string();
        let mut i = 0;
        while let Some(at) = out.find("{}") {
            out.replace_range(at..at + 2, values[i % values.len()]);
            i += 1;
        }
        out
    }

    #[test]
    fn twenty_shapes_pairwise() {
        // 20 shapes x 3 literal spellings: 60 "same" pairs; 190 "different" pairs.
        let spellings: [&[&str]; 3] = [&["1", "'a'"], &["$1", "$2"], &["42", "'it''s'", "7.5"]];
        let ids: Vec<_> = SHAPES
            .iter()
            .map(|s| fingerprint(&fill(s, spellings[0])).0)
            .collect();
        for (shape, id) in SHAPES.iter().zip(&ids) {
            for values in &spellings[1..] {
                assert_eq!(
                    fingerprint(&fill(shape, values)).0,
                    *id,
                    "{shape} with {values:?}"
                );
            }
            assert_eq!(
                fingerprint(&fill(shape, spellings[0]).to_lowercase()).0,
                *id
            );
        }
        for i in 0..ids.len() {
            for j in i + 1..ids.len() {
                assert_ne!(ids[i], ids[j], "{} vs {}", SHAPES[i], SHAPES[j]);
            }
        }
    }

    #[test]
    fn normalized_text_reads_well() {
        assert_eq!(
            fingerprint("SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'x'").1,
            "select * from t where id in (?) and name = ?"
        );
        assert_eq!(
            fingerprint("INSERT INTO t(a,b) VALUES (1,'x'),(2,'y')").1,
            "insert into t(a, b) values (?, ?)"
        );
        assert_eq!(
            fingerprint("UPDATE t SET b = b + -5, c = c*-1 WHERE id = -7 AND d >= -2").1,
            "update t set b = b + ?, c = c * ? where id = ? and d >= ?"
        );
        for garbage in ["'", "$a$", "/*", "\"", "-", "é'", "$", "1."] {
            let _ = fingerprint(garbage);
        }
    }
}
