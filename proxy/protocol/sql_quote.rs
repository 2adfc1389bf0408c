//! Quoting for the SQL the proxy writes itself (settings replays, catalog questions,
//! `NOTIFY` payloads, guard errors), correct whatever the server session's
//! `standard_conforming_strings` is.

/// `"name"`, with embedded double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'`, with embedded quotes doubled. A value with a backslash becomes an
/// escape string (`E'a\\b'`), as PostgreSQL's own `quote_literal` writes it: a plain
/// `'a\'` would end no string where `standard_conforming_strings` is off, and the rest
/// of the value would be read as SQL.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_the_same_under_either_string_syntax() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_literal(r"x\'; DROP TABLE t; --"),
            r"E'x\\''; DROP TABLE t; --'"
        );
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
