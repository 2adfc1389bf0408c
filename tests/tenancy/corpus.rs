//! Parsing of the tenant guard's corpora: `adversarial.txt` (statements with the
//! outcome the guard must give them) and `legit.txt` (application queries with the
//! same query written with tenant predicates by hand). Both are lists of entries
//! separated by lines holding only `----`; entries made only of comments are skipped.

/// What the guard must do with an adversarial statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It runs (limited to the session's tenant).
    Ok,
    /// It is refused with SQLSTATE 42501 and nothing of it runs.
    Reject,
    /// Either way; only the no-leak checks apply.
    Either,
}

/// How an adversarial statement is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Prepared,
    CopyOut,
    CopyIn,
}

/// A parameter value of a prepared entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Int(i64),
    Text(String),
    Null,
}

#[derive(Debug, Clone)]
pub struct Adversarial {
    /// 1-based line of the entry's first line in the file.
    pub line: usize,
    pub expect: Expect,
    pub protocol: Protocol,
    pub params: Vec<Param>,
    pub sql: String,
    /// Rows sent by a `copy_in` entry (after its `-- data:` line).
    pub copy_data: String,
}

#[derive(Debug, Clone)]
pub struct Legit {
    pub line: usize,
    /// The query as the application writes it.
    pub app: String,
    /// The same query with `tenant_id = 1` written in by hand.
    pub scoped: String,
}

impl Legit {
    /// The hand-written query for `tenant` instead of tenant 1.
    pub fn scoped_for(&self, tenant: i64) -> String {
        replace_tenant_literal(&self.scoped, tenant)
    }
}

pub fn adversarial(text: &str) -> Vec<Adversarial> {
    entries(text)
        .map(|(line, body)| parse_adversarial(line, body))
        .collect()
}

pub fn legit(text: &str) -> Vec<Legit> {
    entries(text)
        .map(|(line, body)| {
            let (app, scoped) = body
                .split_once("\n-- same as:\n")
                .unwrap_or_else(|| panic!("legit entry at line {line} has no `-- same as:` line"));
            Legit {
                line,
                app: app.trim().to_string(),
                scoped: scoped.trim().to_string(),
            }
        })
        .collect()
}

/// The entries of a corpus with their first line, comment-only chunks left out.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut line = 1;
    text.split("\n----\n").filter_map(move |chunk| {
        let start = line;
        line += chunk.lines().count() + 1;
        let only_comments = chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"));
        (!only_comments).then_some((start, chunk))
    })
}

fn parse_adversarial(line: usize, body: &str) -> Adversarial {
    let mut lines = body.lines().peekable();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("-- expect:"))
        .unwrap_or_else(|| panic!("entry at line {line} does not start with `-- expect:`"));
    let (expect, protocol) = parse_header(line, header);
    let params = match lines.peek().and_then(|l| l.strip_prefix("-- params:")) {
        Some(list) => {
            let params = parse_params(line, list);
            lines.next();
            params
        }
        None => Vec::new(),
    };
    let rest: Vec<&str> = lines.collect();
    let rest = rest.join("\n");
    let (sql, copy_data) = match rest.split_once("\n-- data:\n") {
        Some((sql, data)) => (sql, format!("{}\n", data.trim_end())),
        None => (rest.as_str(), String::new()),
    };
    let has_data = !copy_data.is_empty();
    assert_eq!(
        protocol == Protocol::CopyIn,
        has_data,
        "entry at line {line}: copy_in entries, and only they, carry `-- data:`"
    );
    Adversarial {
        line,
        expect,
        protocol,
        params,
        sql: sql.trim().to_string(),
        copy_data,
    }
}

fn parse_header(line: usize, header: &str) -> (Expect, Protocol) {
    let mut words = header.split_whitespace();
    let expect = match words.next() {
        Some("ok") => Expect::Ok,
        Some("reject") => Expect::Reject,
        Some("either") => Expect::Either,
        other => panic!("entry at line {line}: unknown expectation {other:?}"),
    };
    let protocol = match words.next() {
        None => Protocol::Simple,
        Some("prepared") => Protocol::Prepared,
        Some("copy_out") => Protocol::CopyOut,
        Some("copy_in") => Protocol::CopyIn,
        Some(other) => panic!("entry at line {line}: unknown protocol {other:?}"),
    };
    (expect, protocol)
}

/// `2, 'it''s', null` → [Int(2), Text("it's"), Null].
fn parse_params(line: usize, list: &str) -> Vec<Param> {
    split_params(list)
        .iter()
        .map(|raw| {
            let raw = raw.trim();
            if raw.eq_ignore_ascii_case("null") {
                Param::Null
            } else if let Some(quoted) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
                Param::Text(quoted.replace("''", "'"))
            } else {
                Param::Int(
                    raw.parse()
                        .unwrap_or_else(|_| panic!("entry at line {line}: bad parameter {raw:?}")),
                )
            }
        })
        .collect()
}

/// Splits at commas outside single quotes.
fn split_params(list: &str) -> Vec<String> {
    let mut params = vec![String::new()];
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '\'' => quoted = !quoted,
            ',' if !quoted => {
                params.push(String::new());
                continue;
            }
            _ => {}
        }
        params.last_mut().unwrap().push(c);
    }
    params
}

/// Replaces the literal in every `tenant_id = 1` (not `= 10`) with `tenant`.
fn replace_tenant_literal(sql: &str, tenant: i64) -> String {
    const NEEDLE: &str = "tenant_id = 1";
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find(NEEDLE) {
        let after = &rest[at + NEEDLE.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(NEEDLE);
        } else {
            out.push_str(&format!("tenant_id = {tenant}"));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_params_and_copy_data() {
        let text = "-- preamble\n----\n-- expect: reject prepared\n-- params: 2, 'a,''b', null\nINSERT x\n----\n-- expect: ok copy_in\nCOPY t FROM STDIN\n-- data:\n1,2\n";
        let entries = adversarial(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, 3);
        assert_eq!(entries[0].expect, Expect::Reject);
        assert_eq!(
            entries[0].params,
            vec![Param::Int(2), Param::Text("a,'b".into()), Param::Null]
        );
        assert_eq!(entries[0].sql, "INSERT x");
        assert_eq!(entries[1].protocol, Protocol::CopyIn);
        assert_eq!(entries[1].copy_data, "1,2\n");
    }

    #[test]
    fn tenant_literal_replacement_leaves_other_numbers() {
        let legit = Legit {
            line: 1,
            app: String::new(),
            scoped: "WHERE o.tenant_id = 1 AND x.tenant_id = 10 AND id = 1".into(),
        };
        assert_eq!(
            legit.scoped_for(2),
            "WHERE o.tenant_id = 2 AND x.tenant_id = 10 AND id = 1"
        );
    }
}
