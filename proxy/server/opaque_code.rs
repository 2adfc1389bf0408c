//! Statements that run code the proxy cannot see into: `DO` blocks, `CALL`, and calls
//! of `VOLATILE` functions that are not PostgreSQL's own (outside `pg_catalog`).
//!
//! Such code may change the server session without a trace in the protocol:
//! `PERFORM set_config('search_path', ..., false)`, `SET work_mem` inside PL/pgSQL,
//! `CREATE TEMP TABLE`, `LISTEN`, a session advisory lock. None of it is reported, so
//! under transaction pooling it would stay on the server connection for the next
//! client. A connection that ran such a statement is reset before anyone uses it again
//! (`ServerConnection::needs_reset`, honoured in `server_lease.rs`).
//!
//! Names are told apart by one catalog question per database ([`SessionSafeFunctions`],
//! asked once on a server connection): a name is safe when every function of that name
//! is in `pg_catalog` or is `STABLE`/`IMMUTABLE`. PostgreSQL refuses `SET`, `CREATE`,
//! `LISTEN` and the like in a non-volatile function, so extension functions such as
//! PostGIS's `ST_*` or `pg_trgm`'s `similarity` cost nothing, while a user's default
//! (`VOLATILE`) PL/pgSQL function, `dblink_connect` or `hypopg_create_index` do. A name
//! created after the question counts as unsafe until the proxy restarts. The text
//! scan skips string literals, quoted bodies and comments, and does not take a table's
//! column list (`INSERT INTO t(a, b)`, `AS t(x)`, `WITH c(x) AS`) or a keyword
//! (`IN (`, `VALUES (`, `CAST (`) for a call. It errs on the side of a call: a false
//! alarm costs one reset round trip, a miss would leak a session.
//! Not seen: code run by triggers, rules or views behind an ordinary statement.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::protocol::word_bytes::{is_word_byte, is_word_start};

/// The question that loads [`SessionSafeFunctions`]: one text value, a JSON array of
/// names (a quoted name may contain any character).
pub const SESSION_SAFE_FUNCTIONS_SQL: &str = "SELECT coalesce(json_agg(proname), '[]')::text \
     FROM (SELECT proname::text FROM pg_catalog.pg_proc GROUP BY proname \
     HAVING bool_and(pronamespace = 'pg_catalog'::regnamespace OR provolatile <> 'v')) safe";

/// The names of the functions that cannot change the session unseen, in one database.
#[derive(Debug, Default)]
pub struct SessionSafeFunctions {
    names: HashSet<Box<[u8]>>,
}

impl SessionSafeFunctions {
    /// From the answer to [`SESSION_SAFE_FUNCTIONS_SQL`]; `None` if it is not a JSON
    /// array of names.
    pub fn from_answer(json: &str) -> Option<SessionSafeFunctions> {
        let names: Vec<String> = serde_json::from_str(json).ok()?;
        Some(SessionSafeFunctions {
            names: names
                .into_iter()
                .map(|name| name.into_bytes().into_boxed_slice())
                .collect(),
        })
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.names.contains(name)
    }
}

/// How statements are checked for code the proxy cannot see into: with the database's
/// [`SessionSafeFunctions`], or, while they are not loaded (`None`), counting every call.
#[derive(Clone, Copy)]
pub struct OpaqueCheck<'a>(pub Option<&'a SessionSafeFunctions>);

impl OpaqueCheck<'_> {
    pub fn runs_opaque_code(self, sql: &[u8]) -> bool {
        runs_opaque_code(sql, self.0)
    }
}

/// [`SessionSafeFunctions`] per database, loaded by the first session that needs them.
#[derive(Debug, Default)]
pub struct SessionSafeRegistry {
    by_database: Mutex<HashMap<String, Arc<SessionSafeFunctions>>>,
}

impl SessionSafeRegistry {
    pub fn get(&self, database: &str) -> Option<Arc<SessionSafeFunctions>> {
        self.by_database
            .lock()
            .expect("builtin registry")
            .get(database)
            .cloned()
    }

    pub fn insert(
        &self,
        database: &str,
        functions: SessionSafeFunctions,
    ) -> Arc<SessionSafeFunctions> {
        let functions = Arc::new(functions);
        self.by_database
            .lock()
            .expect("builtin registry")
            .insert(database.to_string(), functions.clone());
        functions
    }
}

/// Words followed by `(` that are syntax or type names, not function calls.
const NOT_CALLS: &[&[u8]] = &[
    b"all",
    b"and",
    b"any",
    b"array",
    b"as",
    b"between",
    b"bigint",
    b"bit",
    b"boolean",
    b"by",
    b"case",
    b"cast",
    b"char",
    b"character",
    b"check",
    b"coalesce",
    b"conflict",
    b"cube",
    b"dec",
    b"decimal",
    b"default",
    b"distinct",
    b"double",
    b"else",
    b"except",
    b"exclude",
    b"exists",
    b"extract",
    b"fetch",
    b"filter",
    b"float",
    b"for",
    b"from",
    b"greatest",
    b"group",
    b"grouping",
    b"groups",
    b"having",
    b"if",
    b"ilike",
    b"in",
    b"include",
    b"int",
    b"integer",
    b"intersect",
    b"interval",
    b"is",
    b"join",
    b"key",
    b"lateral",
    b"least",
    b"like",
    b"limit",
    b"national",
    b"nchar",
    b"not",
    b"nullif",
    b"numeric",
    b"of",
    b"offset",
    b"on",
    b"only",
    b"or",
    b"order",
    b"over",
    b"overlay",
    b"partition",
    b"position",
    b"precision",
    b"primary",
    b"range",
    b"real",
    b"returning",
    b"rollup",
    b"row",
    b"rows",
    b"select",
    b"set",
    b"sets",
    b"similar",
    b"smallint",
    b"some",
    b"substring",
    b"table",
    b"tablesample",
    b"then",
    b"time",
    b"timestamp",
    b"to",
    b"trim",
    b"union",
    b"unique",
    b"using",
    b"values",
    b"varchar",
    b"varying",
    b"when",
    b"where",
    b"window",
    b"with",
    b"within",
    b"xmlattributes",
    b"xmlelement",
    b"xmlforest",
    b"xmlparse",
    b"xmlpi",
    b"xmlroot",
    b"xmlserialize",
    b"zone",
];

/// Words after which `name (` is a relation or alias with a column list.
const BEFORE_COLUMN_LIST: &[&[u8]] = &[
    b"as",
    b"constraint",
    b"copy",
    b"index",
    b"into",
    b"recursive",
    b"references",
    b"table",
    b"type",
    b"update",
    b"view",
    b"with",
];

/// Schemas whose functions are PostgreSQL's own.
const BUILTIN_SCHEMAS: &[&[u8]] = &[b"information_schema", b"pg_catalog"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    /// A word at `start..end`; `quoted` for `"Name"` (compared as written).
    Word {
        start: usize,
        end: usize,
        quoted: bool,
    },
    Dot,
    Other,
}

/// Whether `sql` (one or more statements) runs code the proxy cannot see into.
/// `safe_functions`: `None` when the catalog is unknown, so that every call counts.
fn runs_opaque_code(sql: &[u8], safe_functions: Option<&SessionSafeFunctions>) -> bool {
    // A call needs `(`; a `DO` block needs a quoted body. Most statements have neither
    // a parenthesis nor a quote outside bound parameters: one quick look.
    if memchr::memchr3(b'(', b'$', b'\'', sql).is_none() {
        return false;
    }
    let mut scan = Scan {
        sql,
        safe_functions,
        recent: [Token::None; 3],
        statement_start: true,
    };
    scan.run()
}

struct Scan<'a> {
    sql: &'a [u8],
    safe_functions: Option<&'a SessionSafeFunctions>,
    /// The last three tokens, newest last.
    recent: [Token; 3],
    statement_start: bool,
}

impl Scan<'_> {
    fn run(&mut self) -> bool {
        let sql = self.sql;
        let mut at = 0;
        while at < sql.len() {
            let byte = sql[at];
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => at += 1,
                b'-' if sql.get(at + 1) == Some(&b'-') => {
                    at = memchr_from(sql, at, b'\n').map_or(sql.len(), |end| end + 1);
                }
                b'/' if sql.get(at + 1) == Some(&b'*') => at = skip_block_comment(sql, at),
                b'\'' => {
                    let escapes = self.escape_string_prefix();
                    at = skip_string(sql, at, escapes);
                    self.push(Token::Other);
                }
                b'$' if at > 0 && is_word_byte(sql[at - 1]) => at += 1, // `a$b`: inside a word
                b'$' => match dollar_tag_end(sql, at) {
                    Some(tag_end) => {
                        at = skip_dollar_quote(sql, at, tag_end);
                        self.push(Token::Other);
                    }
                    None => {
                        at += 1; // a parameter `$1`
                        while at < sql.len() && sql[at].is_ascii_digit() {
                            at += 1;
                        }
                        self.push(Token::Other);
                    }
                },
                b'"' => {
                    let end = skip_quoted_identifier(sql, at);
                    if self.word(at + 1, end.saturating_sub(1).max(at + 1), true) {
                        return true;
                    }
                    at = end;
                }
                b'.' => {
                    self.push(Token::Dot);
                    at += 1;
                }
                b'(' => {
                    if self.is_opaque_call() {
                        return true;
                    }
                    self.push(Token::Other);
                    at += 1;
                }
                b';' => {
                    self.statement_start = true;
                    self.push(Token::None);
                    at += 1;
                }
                _ if is_word_start(byte) => {
                    let start = at;
                    while at < sql.len() && is_word_byte(sql[at]) {
                        at += 1;
                    }
                    if self.word(start, at, false) {
                        return true;
                    }
                }
                _ => {
                    self.push(Token::Other);
                    at += 1;
                }
            }
        }
        false
    }

    fn push(&mut self, token: Token) {
        self.recent = [self.recent[1], self.recent[2], token];
    }

    /// A word; true when it starts a `DO` or `CALL` statement.
    fn word(&mut self, start: usize, end: usize, quoted: bool) -> bool {
        let first = std::mem::replace(&mut self.statement_start, false);
        self.push(Token::Word { start, end, quoted });
        if first && !quoted {
            let word = &self.sql[start..end];
            return word.eq_ignore_ascii_case(b"do") || word.eq_ignore_ascii_case(b"call");
        }
        false
    }

    /// The string starting now is an `E'...'` string (backslash escapes).
    fn escape_string_prefix(&self) -> bool {
        match self.recent[2] {
            Token::Word {
                start,
                end,
                quoted: false,
            } => end == start + 1 && self.sql[start].eq_ignore_ascii_case(&b'e'),
            _ => false,
        }
    }

    /// At `(`: whether the word before it names a function that is not PostgreSQL's.
    fn is_opaque_call(&self) -> bool {
        let Token::Word { start, end, quoted } = self.recent[2] else {
            return false;
        };
        let name = &self.sql[start..end];
        if self.recent[1] == Token::Dot {
            // `schema.name(`: PostgreSQL's schemas are known; any other is user code.
            return match self.recent[0] {
                Token::Word { start, end, quoted } => {
                    !is_one_of(&self.sql[start..end], quoted, BUILTIN_SCHEMAS)
                }
                _ => true,
            };
        }
        if !quoted && is_one_of(name, false, NOT_CALLS) {
            return false;
        }
        if let Token::Word {
            start,
            end,
            quoted: false,
        } = self.recent[1]
        {
            if is_one_of(&self.sql[start..end], false, BEFORE_COLUMN_LIST) {
                return false;
            }
        }
        let Some(safe_functions) = self.safe_functions else {
            return true;
        };
        if quoted {
            return !safe_functions.contains(name);
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            !safe_functions.contains(&name.to_ascii_lowercase())
        } else {
            !safe_functions.contains(name)
        }
    }
}

/// Whether `word` is in `list` (sorted, lower case): as written when `quoted`, else in
/// any case. A binary search: the scan asks at every `(`, and `NOT_CALLS` is long.
fn is_one_of(word: &[u8], quoted: bool, list: &[&[u8]]) -> bool {
    if quoted {
        return list.binary_search(&word).is_ok();
    }
    let mut lowered = [0u8; LONGEST_LISTED_WORD];
    let Some(lowered) = lowered.get_mut(..word.len()) else {
        return false; // longer than every listed word
    };
    for (to, from) in lowered.iter_mut().zip(word) {
        *to = from.to_ascii_lowercase();
    }
    list.binary_search(&&*lowered).is_ok()
}

/// The length of the longest word in the lists above.
const LONGEST_LISTED_WORD: usize = 18;

fn memchr_from(sql: &[u8], from: usize, byte: u8) -> Option<usize> {
    memchr::memchr(byte, &sql[from..]).map(|i| from + i)
}

/// Past a (nested) `/* ... */` comment starting at `at`.
fn skip_block_comment(sql: &[u8], mut at: usize) -> usize {
    let mut depth = 0usize;
    while at < sql.len() {
        if sql[at..].starts_with(b"/*") {
            depth += 1;
            at += 2;
        } else if sql[at..].starts_with(b"*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else {
            at += 1;
        }
    }
    sql.len()
}

/// Past a `'...'` string starting at `at` (`''` inside; `\'` too in `E'...'`).
fn skip_string(sql: &[u8], mut at: usize, escapes: bool) -> usize {
    at += 1;
    while at < sql.len() {
        match sql[at] {
            b'\\' if escapes => at += 2,
            b'\'' if sql.get(at + 1) == Some(&b'\'') => at += 2,
            b'\'' => return at + 1,
            _ => at += 1,
        }
    }
    sql.len()
}

/// Past a `"..."` identifier starting at `at`.
fn skip_quoted_identifier(sql: &[u8], mut at: usize) -> usize {
    at += 1;
    while at < sql.len() {
        match sql[at] {
            b'"' if sql.get(at + 1) == Some(&b'"') => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    sql.len()
}

/// At `$`: the end of a dollar-quote opening tag (`$$`, `$body$`), if it is one.
fn dollar_tag_end(sql: &[u8], at: usize) -> Option<usize> {
    let mut end = at + 1;
    while end < sql.len() && (sql[end].is_ascii_alphanumeric() || sql[end] == b'_') {
        if end == at + 1 && sql[end].is_ascii_digit() {
            return None; // `$1`
        }
        end += 1;
    }
    (sql.get(end) == Some(&b'$')).then_some(end + 1)
}

/// Past a dollar-quoted string whose opening tag is `sql[at..tag_end]`.
fn skip_dollar_quote(sql: &[u8], at: usize, tag_end: usize) -> usize {
    let tag = &sql[at..tag_end];
    sql[tag_end..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(sql.len(), |i| tag_end + i + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safe_functions() -> SessionSafeFunctions {
        SessionSafeFunctions::from_answer(
            r#"["count", "now", "lower", "set_config", "coalesce", "generate_series", "pg_sleep",
                "nextval", "sum", "varchar"]"#,
        )
        .unwrap()
    }

    fn opaque(sql: &str) -> bool {
        runs_opaque_code(sql.as_bytes(), Some(&safe_functions()))
    }

    /// `is_one_of` searches the lists by halves: they must stay sorted, lower case,
    /// and no longer than its buffer.
    #[test]
    fn word_lists_are_sorted_lower_case_and_fit_the_buffer() {
        for list in [NOT_CALLS, BEFORE_COLUMN_LIST, BUILTIN_SCHEMAS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "unsorted: {list:?}");
            for word in list {
                assert_eq!(word.to_ascii_lowercase(), *word);
                assert!(word.len() <= LONGEST_LISTED_WORD);
                assert!(is_one_of(word, false, list) && is_one_of(word, true, list));
                assert!(is_one_of(&word.to_ascii_uppercase(), false, list));
            }
        }
        assert!(!is_one_of(b"xmlserializex", false, NOT_CALLS));
        assert!(
            !is_one_of(b"VALUES", true, NOT_CALLS),
            "quoted names keep their case"
        );
        assert!(!is_one_of(
            b"information_schema_and_more",
            false,
            BUILTIN_SCHEMAS
        ));
    }

    #[test]
    fn user_functions_procedures_and_do_blocks_are_opaque() {
        for sql in [
            "SELECT f_leak()",
            "select 1; select my_fn(1, 2)",
            "SELECT * FROM app.report(3)",
            "SELECT \"MixedCase\"(1)",
            "CALL refresh_all()",
            "  call p()",
            "DO $$ BEGIN SET work_mem = '1GB'; END $$",
            "/* c */ DO 'BEGIN NULL; END'",
            "SELECT 1; do $x$ begin end $x$",
            "SELECT count(*) FROM t WHERE x = lower(y) AND z = audit(x)",
            "SELECT public.lower('A')",
            "SELECT E'it\\'s', touch(1)",
            "SELECT a FROM t JOIN u ON check_access(u.id)",
        ] {
            assert!(opaque(sql), "{sql}");
        }
    }

    #[test]
    fn plain_statements_and_builtin_calls_are_not() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5",
            "SELECT count(*), now(), LOWER(name) FROM t WHERE id IN (1, 2) AND x = ANY($1)",
            "SELECT pg_catalog.set_config('a.b', 'c', true)",
            "INSERT INTO t(a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b",
            "WITH c(x) AS (SELECT 1) SELECT * FROM c AS d(y)",
            "SELECT 'not_a_call(1)', \"col\" FROM t -- user_fn(1)\n",
            "SELECT /* user_fn(1) */ 1",
            "SELECT $$ user_fn(1) $$, $1, a$b FROM t",
            "SELECT CAST(x AS varchar(10)), coalesce(a, b) FROM generate_series(1, 3)",
            "UPDATE t SET (a, b) = (1, 2) WHERE exists (SELECT 1)",
            "CREATE TABLE t(a int, b numeric(10, 2), c character varying(20))",
            "SELECT x FROM t WHERE y = 'do' ORDER BY (z)",
            "SELECT sum(x) OVER (PARTITION BY y) FROM t",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
        ] {
            assert!(!opaque(sql), "{sql}");
        }
    }

    #[test]
    fn without_the_catalog_every_call_counts() {
        assert!(runs_opaque_code(b"SELECT count(*) FROM t", None));
        assert!(!runs_opaque_code(b"SELECT a FROM t WHERE b IN (1)", None));
    }
}
