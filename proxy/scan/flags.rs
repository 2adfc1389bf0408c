//! What the session needs to know of a text's effects, read byte by byte as the shape
//! walker passes: whether it may change the server session, leave sequence state,
//! seed the session's random numbers, or call anything. These verdicts look at the raw bytes, quotes and comments included,
//! so they err toward yes (a false alarm costs a closer look, a miss would leak state
//! between clients).

/// Byte classes, for the verdicts and for the shape walker.
pub(super) const ALPHANUMERIC: u8 = 1;
const LETTER: u8 = 2;
pub(super) const WHITESPACE: u8 = 4;
const COMMENT_START: u8 = 8;
/// `(`, `$` and `'`: a call needs a parenthesis, a `DO` body a quote.
const CALL_SYNTAX: u8 = 16;
/// `v`/`V`, the letter `nextval` and `setval` are found by.
const VEE: u8 = 32;
/// First letters of the [`LOOKED_FOR`] words.
const EFFECT_LETTER: u8 = 64;

/// The words [`word_may_have_effects`] and [`is_seed_word`] look for. The byte class
/// [`EFFECT_LETTER`] and the pairs of [`opens_like_an_effect_word`] are made from this
/// list, so a word added here is looked at.
const LOOKED_FOR: [&[u8]; 13] = [
    b"set",
    b"reset",
    b"unlisten",
    b"disc",
    b"deal",
    b"temp",
    b"listen",
    b"prepare",
    b"advisory",
    b"hold",
    b"close",
    b"setseed",
    b"seed",
];

/// The class of `byte`.
#[inline(always)]
pub(super) fn class_of(byte: u8) -> u8 {
    BYTE_CLASS[byte as usize]
}

static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = if b == b'v' || b == b'V' {
            ALPHANUMERIC | LETTER | VEE
        } else if b.is_ascii_alphabetic() && SECOND_LETTERS[(b & 0x1f) as usize] != 0 {
            ALPHANUMERIC | LETTER | EFFECT_LETTER
        } else if b.is_ascii_alphabetic() {
            ALPHANUMERIC | LETTER
        } else if b.is_ascii_digit() {
            ALPHANUMERIC
        } else if b.is_ascii_whitespace() {
            WHITESPACE
        } else if b == b'/' || b == b'-' {
            COMMENT_START
        } else if b == b'(' || b == b'$' || b == b'\'' {
            CALL_SYNTAX
        } else {
            0
        };
        byte += 1;
    }
    table
};

/// First words of statements that may call `nextval` unseen (column defaults,
/// triggers) or run other statements that do.
pub(super) const WRITING_WORDS: [&[u8]; 10] = [
    b"insert", b"update", b"delete", b"merge", b"copy", b"with", b"execute", b"explain", b"call",
    b"do",
];

/// The verdicts so far, and what the next byte's verdict depends on.
pub(super) struct Flags {
    /// Only whitespace since the text's start or the last `;`.
    statement_start: bool,
    previous_alphanumeric: bool,
    /// `SET`/`RESET` seen away from a statement start: they count if a comment turns up
    /// (then a statement may start anywhere).
    set_inside: bool,
    comment: bool,
    pub effects: bool,
    pub sequences: bool,
    /// The text has the word `setseed` or `seed` (any case).
    pub seed: bool,
    pub call_syntax: bool,
}

impl Flags {
    pub(super) fn new() -> Flags {
        Flags {
            statement_start: true,
            previous_alphanumeric: false,
            set_inside: false,
            comment: false,
            effects: false,
            sequences: false,
            seed: false,
            call_syntax: false,
        }
    }

    /// Whether the text may change the server session (settings, temp tables,
    /// listeners, prepared statements, advisory locks, cursors).
    pub(super) fn may_have_effects(&self) -> bool {
        self.effects || (self.set_inside && self.comment)
    }

    /// Reads every byte of `sql[from..to]`, in order.
    #[inline]
    pub(super) fn bytes(&mut self, sql: &[u8], from: usize, to: usize) {
        for at in from..to {
            self.byte(sql, at);
        }
    }

    /// Reads the byte at `at`; every byte of the text is read once, in order (by this
    /// or by the two below).
    #[inline(always)]
    pub(super) fn byte(&mut self, sql: &[u8], at: usize) {
        let class = class_of(sql[at]);
        if class & ALPHANUMERIC != 0 {
            if !self.previous_alphanumeric && self.word_may_matter(sql, at, class) {
                self.word_start(sql, at, class);
            }
            if class & VEE != 0 && !self.sequences {
                self.sequences = names_nextval_or_setval(sql, at);
            }
            self.previous_alphanumeric = true;
            self.statement_start = false;
        } else {
            self.not_alphanumeric(sql, at, class);
        }
    }

    /// Reads the plain run that starts at `start` (a letter, or a digit right after a
    /// word byte) and returns its end: letters and digits, and the separators that
    /// only end a word, where a word follows them at once: `_` before a letter or
    /// digit, and one space before a letter. Those separators are plain in the shape
    /// too (an inner `_` is punctuation that starts nothing, a single space between
    /// two words is the shape's own byte), so the walk takes
    /// `SELECT abalance FROM pgbench_accounts WHERE aid` as one run, while every word
    /// in it still gets its own [`Flags::word_start`] look.
    #[inline(always)]
    pub(super) fn alphanumeric_run(&mut self, sql: &[u8], start: usize) -> usize {
        let mut class = class_of(sql[start]);
        let mut at = start;
        loop {
            if !self.previous_alphanumeric && self.word_may_matter(sql, at, class) {
                self.word_start(sql, at, class);
            }
            loop {
                // Letters and digits but `v` need no look: the tight loop.
                while at < sql.len() && class_of(sql[at]) & (ALPHANUMERIC | VEE) == ALPHANUMERIC {
                    at += 1;
                }
                if at == sql.len() || class_of(sql[at]) & VEE == 0 {
                    break;
                }
                if !self.sequences {
                    self.sequences = names_nextval_or_setval(sql, at);
                }
                at += 1;
            }
            self.previous_alphanumeric = true;
            self.statement_start = false;
            // A separator that only ends this word, and the word after it.
            let (Some(&separator), Some(&next)) = (sql.get(at), sql.get(at + 1)) else {
                return at;
            };
            let next_class = class_of(next);
            let word_follows = match separator {
                b'_' => next_class & ALPHANUMERIC != 0,
                b' ' => next_class & LETTER != 0,
                _ => false,
            };
            if !word_follows {
                return at;
            }
            // What `not_alphanumeric` does with `_` or a space inside a statement.
            self.previous_alphanumeric = false;
            at += 1;
            class = next_class;
        }
    }

    /// Reads a byte that is not a letter or digit (`class` is its class).
    #[inline(always)]
    pub(super) fn not_alphanumeric(&mut self, sql: &[u8], at: usize, class: u8) {
        self.previous_alphanumeric = false;
        if class & WHITESPACE != 0 {
            return;
        }
        let byte = sql[at];
        if self.statement_start && byte != b';' {
            // A statement that starts with anything but a word: count it as writing.
            self.sequences = true;
        }
        self.statement_start = byte == b';';
        if class & COMMENT_START != 0
            && sql.get(at + 1) == Some(&(if byte == b'/' { b'*' } else { b'-' }))
        {
            self.comment = true;
        }
        self.call_syntax |= class & CALL_SYNTAX != 0;
    }

    /// Whether a word (or number) starting at `at` (a byte of `class`) can change a
    /// verdict: where a statement starts, or when its first two letters are those of
    /// one of the effect words (or a seed word, which opens like `set`).
    #[inline(always)]
    fn word_may_matter(&self, sql: &[u8], at: usize, class: u8) -> bool {
        self.statement_start
            || (!(self.effects && self.seed)
                && class & EFFECT_LETTER != 0
                && opens_like_an_effect_word(sql, at))
    }

    /// An alphanumeric byte after a byte that is not.
    #[inline(never)]
    fn word_start(&mut self, sql: &[u8], at: usize, class: u8) {
        if class & LETTER == 0 {
            // A digit: not a word, so a statement starting here counts as writing.
            self.sequences |= self.statement_start;
            return;
        }
        let text = &sql[at..];
        if !self.effects {
            match word_may_have_effects(text, self.statement_start) {
                Verdict::Yes => self.effects = true,
                Verdict::AtStatementStart => self.set_inside = true,
                Verdict::No => {}
            }
        }
        if self.statement_start && !self.sequences {
            self.sequences = first_word_may_write(text);
        }
        if !self.seed && text[0] | 0x20 == b's' {
            self.seed = is_seed_word(text);
        }
    }
}

/// For each first letter (its low five bits), the second letters (a bit each, by their
/// low five bits) of the [`LOOKED_FOR`] words.
static SECOND_LETTERS: [u32; 32] = {
    let mut table = [0u32; 32];
    let mut i = 0;
    while i < LOOKED_FOR.len() {
        let word = LOOKED_FOR[i];
        assert!(word.len() >= 2 && word[0].is_ascii_lowercase() && word[1].is_ascii_lowercase());
        table[(word[0] & 0x1f) as usize] |= 1 << (word[1] & 0x1f);
        i += 1;
    }
    table
};

/// Whether the two bytes at `at` (the first a letter) are, in any case, the first two
/// letters of a [`LOOKED_FOR`] word: most words of a statement (`abalance`,
/// `accounts`, `pgbench`) are let past here without the closer look. Only the two
/// cases of a letter have `|0x20` in `a..=z`.
#[inline(always)]
fn opens_like_an_effect_word(sql: &[u8], at: usize) -> bool {
    let Some(&second) = sql.get(at + 1) else {
        return false; // every word looked for has two letters or more
    };
    (second | 0x20).is_ascii_lowercase()
        && SECOND_LETTERS[(sql[at] & 0x1f) as usize] & (1 << (second & 0x1f)) != 0
}

/// A word of up to 8 ASCII letters folded to lower case, as the first bytes of a
/// little-endian `u64`, with the mask of its length: compared with a text's
/// [`folded_prefix`] in one step instead of a byte-by-byte case-insensitive compare.
#[derive(Clone, Copy)]
struct Folded {
    bits: u64,
    mask: u64,
    len: usize,
}

const fn fold(word: &[u8]) -> Folded {
    assert!(!word.is_empty() && word.len() <= 8);
    let mut bits = 0u64;
    let mut i = 0;
    while i < word.len() {
        assert!(word[i].is_ascii_alphabetic());
        bits |= ((word[i] | 0x20) as u64) << (8 * i);
        i += 1;
    }
    let mask = if word.len() == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * word.len())) - 1
    };
    Folded {
        bits,
        mask,
        len: word.len(),
    }
}

impl Folded {
    /// Whether the text whose [`folded_prefix`] is `prefix` starts with this word, in
    /// any case.
    #[inline(always)]
    fn starts(self, prefix: u64) -> bool {
        prefix & self.mask == self.bits
    }

    /// Whether `text` (whose [`folded_prefix`] is `prefix`) starts with this word as a
    /// whole word: the byte after it, if any, is not one `in_word` counts as part of a
    /// word.
    #[inline(always)]
    fn starts_whole(self, text: &[u8], prefix: u64, in_word: impl Fn(u8) -> bool) -> bool {
        self.starts(prefix) && text.get(self.len).is_none_or(|b| !in_word(*b))
    }
}

/// The first 8 bytes of `text` (fewer at its end, padded with zeros) with bit 0x20 set
/// in each: that lowers ASCII letters and makes no other byte (padding included) equal
/// a lowercase letter, so comparing with a [`Folded`] word is `eq_ignore_ascii_case`
/// on its letters.
#[inline(always)]
fn folded_prefix(text: &[u8]) -> u64 {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let bytes = match text.first_chunk::<8>() {
        Some(first) => *first,
        None => {
            let mut bytes = [0u8; 8];
            bytes[..text.len()].copy_from_slice(text);
            bytes
        }
    };
    u64::from_le_bytes(bytes) | LOWER
}

const SET: Folded = fold(LOOKED_FOR[0]);
const RESET: Folded = fold(LOOKED_FOR[1]);
const UNLISTEN: Folded = fold(LOOKED_FOR[2]);
const DISC: Folded = fold(LOOKED_FOR[3]);
const DEAL: Folded = fold(LOOKED_FOR[4]);
const TEMP: Folded = fold(LOOKED_FOR[5]);
const LISTEN: Folded = fold(LOOKED_FOR[6]);
const PREPARE: Folded = fold(LOOKED_FOR[7]);
const ADVISORY: Folded = fold(LOOKED_FOR[8]);
const HOLD: Folded = fold(LOOKED_FOR[9]);
const CLOSE: Folded = fold(LOOKED_FOR[10]);
const SETSEED: Folded = fold(LOOKED_FOR[11]);
const SEED: Folded = fold(LOOKED_FOR[12]);

/// Whether the letters that start `text` are the whole word `setseed` or `seed`.
fn is_seed_word(text: &[u8]) -> bool {
    let prefix = folded_prefix(text);
    let whole = |word: Folded| word.starts_whole(text, prefix, |b| class_of(b) & ALPHANUMERIC != 0);
    whole(SETSEED) || whole(SEED)
}

enum Verdict {
    No,
    Yes,
    /// `SET`/`RESET`, which change the session only where a statement starts.
    AtStatementStart,
}

/// Whether the word at the start of `text` is one that may change the session.
fn word_may_have_effects(text: &[u8], at_statement_start: bool) -> Verdict {
    let prefix = folded_prefix(text);
    let starting = |word: Folded| match (word.starts(prefix), at_statement_start) {
        (false, _) => Verdict::No,
        (true, true) => Verdict::Yes,
        (true, false) => Verdict::AtStatementStart,
    };
    let yes = |found: bool| if found { Verdict::Yes } else { Verdict::No };
    match text[0] | 0x20 {
        b's' if SET.starts(prefix)
            && text
                .get(3..10)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(b"_config")) =>
        {
            Verdict::Yes
        }
        b's' => starting(SET),
        b'r' => starting(RESET),
        b'u' => yes(UNLISTEN.starts(prefix)),
        b'd' => yes(DISC.starts(prefix) || DEAL.starts(prefix)),
        b't' => yes(TEMP.starts(prefix)),
        b'l' => yes(LISTEN.starts(prefix)),
        b'p' => yes(PREPARE.starts(prefix)),
        b'a' => yes(ADVISORY.starts(prefix)),
        b'h' => yes(HOLD.starts(prefix)),
        b'c' => yes(CLOSE.starts(prefix)),
        _ => Verdict::No,
    }
}

const INSERT: Folded = fold(WRITING_WORDS[0]);
const UPDATE: Folded = fold(WRITING_WORDS[1]);
const DELETE: Folded = fold(WRITING_WORDS[2]);
const MERGE: Folded = fold(WRITING_WORDS[3]);
const COPY: Folded = fold(WRITING_WORDS[4]);
const WITH: Folded = fold(WRITING_WORDS[5]);
const EXECUTE: Folded = fold(WRITING_WORDS[6]);
const EXPLAIN: Folded = fold(WRITING_WORDS[7]);
const CALL: Folded = fold(WRITING_WORDS[8]);
const DO: Folded = fold(WRITING_WORDS[9]);

/// Whether the letters that start `text` (a statement's first word) are one of
/// [`WRITING_WORDS`].
fn first_word_may_write(text: &[u8]) -> bool {
    let prefix = folded_prefix(text);
    let whole = |word: Folded| word.starts_whole(text, prefix, |b| b.is_ascii_alphabetic());
    match text[0] | 0x20 {
        b'i' => whole(INSERT),
        b'u' => whole(UPDATE),
        b'd' => whole(DELETE) || whole(DO),
        b'm' => whole(MERGE),
        b'c' => whole(COPY) || whole(CALL),
        b'w' => whole(WITH),
        b'e' => whole(EXECUTE) || whole(EXPLAIN),
        _ => false,
    }
}

/// Whether the `v` at `at` is the one of `nextval` or `setval` (any case).
fn names_nextval_or_setval(sql: &[u8], at: usize) -> bool {
    let tail = sql.get(at + 1..at + 3);
    tail.is_some_and(|t| t.eq_ignore_ascii_case(b"al"))
        && ((at >= 4 && sql[at - 4..at].eq_ignore_ascii_case(b"next"))
            || (at >= 3 && sql[at - 3..at].eq_ignore_ascii_case(b"set")))
}
