//! The scanner's verdicts against plain references, and its shapes.

use super::flags::WRITING_WORDS;
use super::{scan, shape};

/// A small xorshift stream, so generated texts are the same on every run.
fn texts<'a>(pieces: &'a [&'a str], seed: u64, count: usize) -> impl Iterator<Item = String> + 'a {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        let mut text = String::new();
        for _ in 0..(1 + next() % 9) {
            text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            if next() % 3 == 0 {
                text.push(' ');
            }
        }
        text
    })
}

/// A verdict of the scan against its plain `reference` on 50,000 texts made of
/// `pieces`, each answer (yes and no) given more than 1,000 times.
fn agrees_on_generated_texts(
    pieces: &[&str],
    seed: u64,
    reference: fn(&[u8]) -> bool,
    verdict: fn(&super::StatementScan) -> bool,
) {
    let mut both = [0usize; 2];
    for text in texts(pieces, seed, 50_000) {
        let expected = reference(text.as_bytes());
        assert_eq!(verdict(&scan(text.as_bytes())), expected, "{text:?}");
        both[expected as usize] += 1;
    }
    assert!(both[0] > 1_000 && both[1] > 1_000, "{both:?}");
}

/// Asserts that `verdict` of the scan of each of `texts` is `expected`.
fn verdict_is(verdict: fn(&super::StatementScan) -> bool, expected: bool, texts: &[&str]) {
    for text in texts {
        assert_eq!(verdict(&scan(text.as_bytes())), expected, "{text}");
    }
}

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
    assert_eq!(shape("select E'a\\'b', 2"), "select E?, ?");
    assert_ne!(shape("select a from t"), shape("select b from t"));
    assert_eq!(shape("  select   1  "), "select ?");
    assert_eq!(shape("select 1 -- note  \n"), "select ? -- note  ");
    assert_eq!(shape("select a-1, b/2, c1"), "select a-?, b/?, c1");
    // Unterminated input must not panic.
    for text in ["'", "\"", "$a$", "/*", "--", "1e", "é", "'\\", "$"] {
        let _ = shape(text);
        let _ = scan(text.as_bytes());
    }
}

#[test]
fn equal_shapes_hash_equal_and_different_ones_apart() {
    const PIECES: [&str; 22] = [
        "select",
        "a",
        "t",
        "1",
        "42",
        "1.5e3",
        "'x'",
        "'it''s'",
        "\"Q\"",
        "$1",
        "$f$ b $f$",
        "/* c */",
        "-- n\n",
        " ",
        "  ",
        "\n",
        ",",
        "=",
        "-",
        "/",
        "(",
        ")",
    ];
    let mut seen = std::collections::HashMap::new();
    for text in texts(&PIECES, 0x51a9_e5ee_d001_c0de, 20_000) {
        let scanned = scan(text.as_bytes());
        let shaped = shape(&text);
        if let Some(other) = seen.insert(scanned.shape.hash, shaped.clone()) {
            assert_eq!(other, shaped, "one hash, two shapes: {text:?}");
        }
    }
    assert!(seen.len() > 1_000, "{} shapes", seen.len());
    let hash = |text: &str| scan(text.as_bytes()).shape.hash;
    assert_eq!(hash("select 1"), hash("select  42 "));
    assert_ne!(hash("select 1"), hash("select a"));
    assert!(scan(b"select 1").shape.has_literals);
    assert!(!scan(b"select a from t").shape.has_literals);
}

/// The effects verdict written plainly (a closure per byte, every word compared).
fn may_have_effects_reference(sql: &[u8]) -> bool {
    const ANYWHERE: [&[u8]; 10] = [
        b"set_config",
        b"unlisten",
        b"disc",
        b"deal",
        b"temp",
        b"listen",
        b"prepare",
        b"advisory",
        b"hold",
        b"close",
    ];
    const STATEMENT_START: [&[u8]; 2] = [b"set", b"reset"];
    let comments = sql.windows(2).any(|w| w == b"/*" || w == b"--");
    let mut statement_start = true;
    (0..sql.len()).any(|at| {
        let byte = sql[at];
        if byte == b';' {
            statement_start = true;
            return false;
        }
        if byte.is_ascii_whitespace() {
            return false;
        }
        let at_start = std::mem::replace(&mut statement_start, false) || comments;
        if at > 0 && sql[at - 1].is_ascii_alphanumeric() {
            return false;
        }
        let first = byte | 0x20;
        let starts_with = |word: &[u8]| {
            word[0] == first
                && sql
                    .get(at..at + word.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(word))
        };
        (at_start && STATEMENT_START.iter().any(|w| starts_with(w)))
            || (matches!(
                first,
                b's' | b'u' | b'd' | b't' | b'l' | b'p' | b'a' | b'h' | b'c'
            ) && ANYWHERE.iter().any(|w| starts_with(w)))
    })
}

#[test]
fn the_effects_verdict_agrees_with_its_reference() {
    // The bytes next to letters in ASCII (`@`, `[`, `` ` ``, `{`, DEL) keep the
    // case-folded word compares honest.
    const PIECES: [&str; 42] = [
        "@",
        "[",
        "`",
        "{",
        "\x7f",
        "SET",
        "set",
        "ReSeT",
        "set_config",
        "SET_CONFIG(",
        "unlisten",
        "listen",
        "disc",
        "DISCARD",
        "deal",
        "temp",
        "TEMPORARY",
        "prepare",
        "advisory",
        "hold",
        "close",
        "select",
        "UPDATE",
        "x",
        "1",
        "2a",
        "_",
        ".",
        "'",
        "\"",
        ";",
        " ",
        "\n",
        "\t",
        "/*",
        "*/",
        "--",
        "-",
        "/",
        "é",
        "$$",
        "$1",
    ];
    agrees_on_generated_texts(
        &PIECES,
        0x9e37_79b9_7f4a_7c15,
        may_have_effects_reference,
        |s| s.may_have_effects,
    );
    for (text, expected) in [
        ("LISTEN x", true),
        ("  set x = 1", true),
        ("begin; Reset x", true),
        ("select set_config('a', 'b', false)", true),
        ("select 1 from t", false),
        ("UPDATE t SET a = 1 WHERE b = 2", false),
        ("select pg_advisory_unlock_all()", true),
        ("create table pg_temp.t(x int)", true),
        ("select 1; close all", true),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5 -- done",
            false,
        ),
        ("/* app */ SET a = 1", true),
    ] {
        assert_eq!(scan(text.as_bytes()).may_have_effects, expected, "{text}");
    }
}

/// The sequence verdict written plainly: split at `;`, first words, then a lowercase
/// search.
fn sequences_reference(sql: &[u8]) -> bool {
    let writes = sql.split(|&b| b == b';').any(|statement| {
        let text = String::from_utf8_lossy(statement).to_ascii_lowercase();
        let text = text.trim_start();
        let word: String = text
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        !text.is_empty() && (word.is_empty() || WRITING_WORDS.contains(&word.as_bytes()))
    });
    let lower = String::from_utf8_lossy(sql).to_ascii_lowercase();
    writes || lower.contains("nextval") || lower.contains("setval")
}

#[test]
fn the_sequence_verdict_agrees_with_its_reference() {
    const PIECES: [&str; 32] = [
        "@",
        "`",
        "{",
        "CALL",
        "select",
        "SELECT",
        " ",
        "\n",
        ";",
        "insert",
        "Insert",
        "into",
        "t",
        "nextval",
        "NextVal",
        "set",
        "val",
        "v",
        "('s')",
        "(",
        "/*",
        "*/",
        "with",
        "do",
        "explained",
        "execute",
        "value",
        "1",
        "'",
        "\"",
        "$$",
        "é",
    ];
    agrees_on_generated_texts(&PIECES, 0x2545_f491_4f6c_dd1d, sequences_reference, |s| {
        s.may_set_sequences
    });
    verdict_is(
        |s| s.may_set_sequences,
        true,
        &[
            "SELECT nextval('s')",
            "select pg_catalog.NEXTVAL('s')",
            "INSERT INTO items(v) VALUES ('x')",
            "BEGIN; UPDATE t SET x = 1; COMMIT",
            "/* app */ SELECT 1",
            "(SELECT 1)",
            "select 1;\n  Explain analyze insert into t values (1)",
        ],
    );
    verdict_is(
        |s| s.may_set_sequences,
        false,
        &[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT currval('s')",
            "BEGIN; SELECT 1; COMMIT;",
            "SET search_path = app",
            "selected_nonsense_word",
            "",
            ";",
        ],
    );
}

#[test]
fn call_syntax_is_any_parenthesis_dollar_or_quote() {
    for (text, expected) in [
        ("select f(1)", true),
        ("select $1", true),
        ("select 'a'", true),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            false,
        ),
        ("select a from t", false),
    ] {
        assert_eq!(scan(text.as_bytes()).may_call, expected, "{text}");
    }
}

/// The shape hash and literal flag of `text`.
fn shape_of(text: &str) -> (u64, bool) {
    let shape = scan(text.as_bytes()).shape;
    (shape.hash, shape.has_literals)
}

/// Shapes longer than the hash buffer (256 bytes) hash by their bytes alone.
#[test]
fn texts_of_one_shape_hash_alike_however_long() {
    let long_tail = " AND b IN (1, 2, 3) ".repeat(20);
    let pairs = [
        (
            "SELECT * FROM t WHERE a = 1",
            "SELECT *  FROM t WHERE a = 42",
        ),
        (
            "SELECT 'x' || name FROM t",
            "SELECT 'a much longer literal' || name FROM t",
        ),
        (
            &*format!("SELECT * FROM t WHERE a = 1{long_tail}"),
            &*format!("SELECT * FROM t WHERE a = 98765{long_tail}"),
        ),
    ];
    for (one, other) in pairs {
        let (a, literals) = shape_of(one);
        assert!(literals, "{one}");
        assert_eq!(a, shape_of(other).0, "{one} / {other}");
    }
    let (plain, literals) = shape_of("SELECT * FROM t");
    assert!(!literals);
    assert_ne!(plain, shape_of("SELECT * FROM u").0);
    assert_ne!(
        shape_of(&format!("SELECT * FROM t WHERE a = 1{long_tail}")).0,
        shape_of(&format!("SELECT * FROM t WHERE a = 1{long_tail}x")).0,
    );
}

/// The seed verdict written plainly: the text's runs of ASCII letters and digits, one
/// of them `seed` or `setseed`.
fn seed_reference(sql: &[u8]) -> bool {
    sql.split(|b| !b.is_ascii_alphanumeric())
        .any(|word| word.eq_ignore_ascii_case(b"seed") || word.eq_ignore_ascii_case(b"setseed"))
}

#[test]
fn the_seed_verdict_finds_the_seed_words() {
    const PIECES: [&str; 16] = [
        "select ", "setseed", "Seed", "SEED", "s", "eed", "(0.5)", " ", "x", "_", "1", "'", "/*",
        "*/", ";", "set ",
    ];
    agrees_on_generated_texts(&PIECES, 0x5eed_5eed_1234_abcd, seed_reference, |s| {
        s.may_seed
    });
    verdict_is(
        |s| s.may_seed,
        true,
        &[
            "SELECT setseed(0.5)",
            "select pg_catalog.SETSEED(0.5)",
            "SET seed = 0.5",
            "set seed to 0.1; select random()",
            "SET x = 1; SELECT setseed(0)",
        ],
    );
    verdict_is(
        |s| s.may_seed,
        false,
        &[
            "SELECT random()",
            "SELECT seeds FROM garden",
            "SELECT setseeds()",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        ],
    );
}
