//! Texts that repeat a recent text but for its numbers.
//!
//! An application that writes its values into the text (pgbench, psycopg2, most
//! hand-built SQL) sends the same statement over and over with other numbers in it, and
//! the walk (`walk.rs`) was the largest single cost of a simple `Query` on the plain
//! path: about 25 instructions per byte. Each thread remembers the last few texts
//! whose literals are all plain digit runs, with where those runs are. A text that
//! equals one of them byte for byte outside those runs, and has a non-empty run of
//! digits in each, has its scan: the walk's answer cannot tell two such texts apart.
//! It treats every digit alike (one byte class, one literal `?` in the shape), each
//! run still ends where the remembered one did (the byte after it is the same, and it
//! ends a number), and whatever the walk reads ahead of a word (at most a keyword's
//! length) stops at the space or sign before a number, which no keyword holds.
//! Debug builds check every answer against a fresh walk.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::walk::{Numbers, MAX_NUMBERS};
use super::{scan_numbered, Family, StatementScan};

/// The next family number, for all threads: a session may move between threads, and
/// a family it was told of must never be another text's on the next one.
static NEXT_FAMILY: AtomicU64 = AtomicU64::new(1);

/// Texts remembered per thread.
const REMEMBERED: usize = 16;
/// Longer texts are walked every time (and not kept).
const MAX_TEXT: usize = 512;

/// One remembered text, its numbers and its scan; `numbers == 0` when empty.
struct Remembered {
    /// [`head`] of the text, and the mask of its bytes before the first number: every
    /// text of the family has those, so most others are passed over on one compare.
    head: u128,
    head_mask: u128,
    text: Vec<u8>,
    spans: [(u32, u32); MAX_NUMBERS],
    numbers: usize,
    scan: StatementScan,
}

/// The first 16 bytes of `sql` (zeros past its end), as one number.
#[inline(always)]
fn head(sql: &[u8]) -> u128 {
    match sql.first_chunk::<16>() {
        Some(first) => u128::from_le_bytes(*first),
        None => {
            let mut bytes = [0u8; 16];
            bytes[..sql.len()].copy_from_slice(sql);
            u128::from_le_bytes(bytes)
        }
    }
}

impl Remembered {
    const EMPTY: Remembered = Remembered {
        head: 0,
        head_mask: 0,
        text: Vec::new(),
        spans: [(0, 0); MAX_NUMBERS],
        numbers: 0,
        scan: StatementScan {
            shape: super::Shape {
                hash: 0,
                has_literals: false,
            },
            may_have_effects: false,
            may_set_sequences: false,
            may_seed: false,
            may_call: false,
            family: None,
        },
    };

    /// Whether `sql` is this text but for the digits of its numbers.
    fn matches(&self, sql: &[u8]) -> bool {
        if self.numbers == 0 {
            return false;
        }
        let mut old_at = 0;
        let mut at = 0;
        for &(start, end) in &self.spans[..self.numbers] {
            let between = &self.text[old_at..start as usize];
            if sql.get(at..at + between.len()) != Some(between) {
                return false;
            }
            at += between.len();
            let digits = sql[at..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            at += digits;
            old_at = end as usize;
        }
        sql[at..] == self.text[old_at..]
    }
}

/// A thread's remembered texts; new ones take the places in turn.
struct Recent {
    texts: [Remembered; REMEMBERED],
    next: usize,
}

impl Recent {
    fn find(&self, sql: &[u8]) -> Option<StatementScan> {
        let head = head(sql);
        self.texts
            .iter()
            .find(|r| r.numbers != 0 && (head ^ r.head) & r.head_mask == 0 && r.matches(sql))
            .map(|r| r.scan)
    }

    /// Remembers `sql` as a new family; returns its scan with the family.
    fn remember(
        &mut self,
        sql: &[u8],
        numbers: &Numbers,
        mut scan: StatementScan,
    ) -> StatementScan {
        scan.family = Some(Family(NEXT_FAMILY.fetch_add(1, Ordering::Relaxed)));
        let slot = &mut self.texts[self.next];
        self.next = (self.next + 1) % REMEMBERED;
        slot.text.clear();
        slot.text.extend_from_slice(sql);
        slot.spans = numbers.spans;
        slot.numbers = numbers.count;
        slot.head = head(sql);
        let fixed = (numbers.spans[0].0 as usize).min(16);
        slot.head_mask = u128::MAX.checked_shr(8 * (16 - fixed) as u32).unwrap_or(0);
        slot.scan = scan;
        scan
    }
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent {
            texts: [Remembered::EMPTY; REMEMBERED],
            next: 0,
        })
    };
}

/// [`super::scan`], answered without a walk when `sql` repeats a recent text of this
/// thread but for its numbers.
pub fn scan_recent(sql: &[u8]) -> StatementScan {
    if sql.len() > MAX_TEXT {
        return super::scan(sql);
    }
    if let Some(known) = RECENT.with_borrow(|recent| recent.find(sql)) {
        debug_assert_eq!(
            StatementScan {
                family: None,
                ..known
            },
            super::scan(sql),
            "{}",
            String::from_utf8_lossy(sql)
        );
        return known;
    }
    let (scanned, numbers) = scan_numbered(sql);
    if !numbers.all() {
        return scanned;
    }
    RECENT.with_borrow_mut(|recent| recent.remember(sql, &numbers, scanned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scan_recent` on `texts` in order (on a fresh thread, so nothing is remembered
    /// before): each answer is the walk's, and how many were not walked.
    fn repeats(texts: &[&str]) -> usize {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        std::thread::spawn(move || {
            let mut known = 0;
            for text in &texts {
                let found = RECENT.with_borrow(|r| r.find(text.as_bytes()));
                known += usize::from(found.is_some());
                let recent = scan_recent(text.as_bytes());
                let walked = super::super::scan(text.as_bytes());
                assert_eq!(
                    StatementScan {
                        family: None,
                        ..recent
                    },
                    walked,
                    "{text}"
                );
                // A text answered from a family is of that family; a new one is
                // remembered as one when its literals are all numbers.
                match found {
                    Some(found) => assert_eq!(recent.family, found.family, "{text}"),
                    None => assert!(recent.family.is_none() || walked.shape.has_literals),
                }
            }
            known
        })
        .join()
        .expect("scan thread")
    }

    #[test]
    fn a_text_with_other_numbers_has_the_remembered_scan() {
        let known = repeats(&[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 9999999999999;",
            "UPDATE t SET a = a + 5 WHERE id = 1",
            "UPDATE t SET a = a + 12 WHERE id = 300",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        ]);
        assert_eq!(known, 4);
    }

    #[test]
    fn families_are_told_apart_on_every_thread() {
        let families = || {
            std::thread::spawn(|| {
                let a = scan_recent(b"SELECT 1 FROM t WHERE id = 5").family;
                let b = scan_recent(b"SELECT 1 FROM u WHERE id = 5").family;
                let again = scan_recent(b"SELECT 22 FROM t WHERE id = 7").family;
                assert!(a.is_some() && b.is_some());
                assert_ne!(a, b);
                assert_eq!(a, again);
                assert_eq!(scan_recent(b"SELECT 'x' FROM t").family, None);
                assert_eq!(scan_recent(b"SELECT x FROM t").family, None);
                a
            })
            .join()
            .expect("scan thread")
        };
        // The same texts on another thread are another family.
        assert_ne!(families(), families());
    }

    #[test]
    fn anything_else_is_walked_again() {
        let known = repeats(&[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            // Not a number where the number was, or a different number kind.
            "SELECT abalance FROM pgbench_accounts WHERE aid = x;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1e5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = -5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5 ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5; SET x = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5;x",
            // Another byte before or between.
            "SELECT abalance FROM pgbench_accounts WHERE aid =5;",
            "select abalance FROM pgbench_accounts WHERE aid = 5;",
            // Strings are never remembered.
            "SELECT 'a' FROM t WHERE id = 1",
            "SELECT 'a' FROM t WHERE id = 2",
            "SELECT 'b' FROM t WHERE id = 1",
        ]);
        assert_eq!(known, 0);
    }

    #[test]
    fn verdicts_around_numbers_follow_the_text() {
        // Every verdict that a number's neighbours decide comes out as the walk's.
        let known = repeats(&[
            "SET statement_timeout = 5",
            "SET statement_timeout = 50",
            "SELECT 1",
            "SELECT 2",
            "1; SELECT 2",
            "2; SELECT 3",
            "SELECT setseed(1)",
            "SELECT setseed(2)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_advisory_lock(22)",
            "SELECT nextval('s') + 1",
            "SELECT nextval('s') + 2",
            "SELECT $1 + 3",
            "SELECT $1 + 4",
            "SELECT x1 + 3 FROM t1",
            "SELECT x1 + 4 FROM t1",
            "SELECT 3 /* 4 */ -- 5\n",
            "SELECT 4 /* 4 */ -- 5\n",
            "SELECT \"c1\" FROM t WHERE a IN (1, 2, 3, 4, 5, 6, 7, 8)",
            "SELECT \"c1\" FROM t WHERE a IN (9, 2, 3, 4, 5, 6, 7, 8)",
            "SELECT \"c1\" FROM t WHERE a IN (1, 2, 3, 4, 5, 6, 7, 8, 9)",
            "SELECT \"c1\" FROM t WHERE a IN (1, 2, 3, 4, 5, 6, 7, 8, 10)",
        ]);
        // Not remembered: texts with a string (`nextval('s')`), and those with nine
        // numbers (more than MAX_NUMBERS).
        assert_eq!(known, 9);
    }

    #[test]
    fn generated_texts_agree_with_the_walk() {
        // Pieces around numbers, joined at random: every answer is checked against the
        // walk by `repeats`, and some are answered without it.
        let pieces = [
            "SELECT ", "set ", "reset ", "listen ", "v", "al", "(", ")", "'x'", " ", "--c\n", "/*",
            "*/", "$1", "$$", "_", ";", "+", "-", ".", "e", "E", "a", "temp", "hold ", "seed",
            "nextval", "discard", "\"q\"", "1", "23", "456", "7", "0",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut texts = Vec::new();
        for _ in 0..4_000 {
            let mut text = String::new();
            for _ in 0..(1 + next() % 12) {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            // The same text with its digits changed, right after it.
            let changed: String = text
                .chars()
                .map(|c| match c {
                    '0'..='8' => char::from(c as u8 + 1),
                    '9' => '0',
                    c => c,
                })
                .collect();
            texts.push(text);
            texts.push(changed);
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let known = repeats(&texts);
        assert!(known > 200, "{known}");
    }
}
