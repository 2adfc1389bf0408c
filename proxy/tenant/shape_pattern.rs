//! A judged shape as a pattern a later text is matched against, without building
//! its shape again: the text between the shape's literals (kept verbatim), and a
//! literal of the kind [`shape::split`] takes at every slot.
//!
//! A text matches exactly when `split` would give it the same shape: the verbatim
//! parts are the ones `split` walked for the first text, byte for byte, so it walks
//! them the same way again (they decide where the literals may start, and what stands
//! before and after each); and every literal is lexed by the same function
//! ([`shape::literal_at`]). The unit tests check the two against each other.

use std::ops::Range;

use super::shape::{self, Shaped};
use crate::route::{hint, Hint};

/// The verbatim parts of one shape, and its routing hint.
#[derive(Debug)]
pub(super) struct ShapePattern {
    /// The parts between the literals, one after another.
    verbatim: Box<str>,
    /// Where each part ends in `verbatim`: one more than there are literals.
    ends: Box<[usize]>,
    /// The routing hint the shape's text carries: a text of the shape is taken only
    /// when its own hint (which may come from inside its literals) is the same.
    hint: Option<Hint>,
}

impl ShapePattern {
    /// The pattern of `shaped`, the shape of `sql`.
    pub(super) fn of(sql: &str, shaped: &Shaped) -> ShapePattern {
        let mut verbatim = String::with_capacity(sql.len());
        let mut ends = Vec::with_capacity(shaped.literals.len() + 1);
        let mut from = 0;
        for literal in &shaped.literals {
            verbatim.push_str(&sql[from..literal.start]);
            ends.push(verbatim.len());
            from = literal.end;
        }
        verbatim.push_str(&sql[from..]);
        ends.push(verbatim.len());
        ShapePattern {
            verbatim: verbatim.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            hint: hint(shaped.shape_text()),
        }
    }

    /// Whether `sql` has this shape (and its routing hint); its literals' byte ranges
    /// are then in `literals` (cleared first).
    pub(super) fn matches(&self, sql: &str, literals: &mut Vec<Range<usize>>) -> bool {
        literals.clear();
        let text = sql.as_bytes();
        let verbatim = self.verbatim.as_bytes();
        let (last, slots) = self.ends.split_last().expect("one part at least");
        let mut at = 0;
        let mut part_start = 0;
        for &part_end in slots {
            let part = &verbatim[part_start..part_end];
            if !text[at..].starts_with(part) {
                return false;
            }
            at += part.len();
            let Some(end) = shape::literal_at(text, at) else {
                return false;
            };
            literals.push(at..end);
            at = end;
            part_start = part_end;
        }
        text[at..] == verbatim[part_start..*last] && hint(sql) == self.hint
    }

    /// Bytes the pattern holds.
    pub(super) fn bytes(&self) -> usize {
        self.verbatim.len() + std::mem::size_of_val(self.ends.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(sql: &str) -> ShapePattern {
        ShapePattern::of(sql, &shape::split(sql).expect("a shape"))
    }

    /// Whether `pattern` takes `sql`, and whether `split` agrees (same shape, same
    /// literals) — asserted for every text tried.
    fn takes(pattern_of: &str, sql: &str) -> bool {
        let mut literals = Vec::new();
        let matched = pattern(pattern_of).matches(sql, &mut literals);
        let first = shape::split(pattern_of).unwrap();
        let by_split = shape::split(sql).filter(|shaped| shaped.shape == first.shape);
        let by_split = by_split.filter(|_| hint(sql) == hint(first.shape_text()));
        match by_split {
            Some(shaped) => {
                assert!(matched, "split gives {sql:?} the shape of {pattern_of:?}");
                assert_eq!(literals, shaped.literals, "{sql:?}");
            }
            None => assert!(!matched, "split does not give {sql:?} that shape"),
        }
        matched
    }

    #[test]
    fn texts_of_the_shape_match_with_their_literals() {
        let first = "SELECT a FROM t WHERE id = 17 AND name = 'x''y'";
        assert!(takes(first, first));
        assert!(takes(
            first,
            "SELECT a FROM t WHERE id = 4.25 AND name = ''"
        ));
        assert!(takes(first, "SELECT a FROM t WHERE id = 'q' AND name = 9"));
        assert!(takes("SELECT 1", "SELECT 123456789"));
        assert!(takes("'a' = x", "'b' = x"));
        let mut literals = Vec::new();
        let sql = "SELECT a FROM t WHERE id = 123 AND name = 'it''s'";
        assert!(pattern(first).matches(sql, &mut literals));
        let texts: Vec<&str> = literals.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(texts, ["123", "'it''s'"]);
    }

    #[test]
    fn other_texts_do_not_match() {
        let first = "SELECT a FROM t WHERE id = 17 AND name = 'x'";
        for sql in [
            "SELECT a FROM t WHERE id = 17 AND name = 'x' ",
            "SELECT a FROM t WHERE id = 17 AND name = 'x",
            "SELECT a FROM t WHERE id = 17 AND name = 'x\\'",
            "SELECT a FROM t WHERE id = 17 AND name = E'x'",
            "SELECT a FROM t WHERE id = 17 AND name = $1",
            "SELECT a FROM t WHERE id = 1.5.2 AND name = 'x'",
            "SELECT a FROM t WHERE id = 1e3 AND name = 'x'",
            "SELECT a FROM t WHERE id = -17 AND name = 'x'",
            "SELECT a FROM t WHERE id = x AND name = 'x'",
            "SELECT a FROM t WHERE id = 17 AND name = 'x' -- ",
            "SELECT b FROM t WHERE id = 17 AND name = 'x'",
            "SELECT a FROM t WHERE id = 17 AND name = '/* pgwarden:primary */'",
            "",
        ] {
            assert!(!takes(first, sql), "{sql}");
        }
    }

    #[test]
    fn a_routing_hint_must_be_the_shapes() {
        let first = "/* pgwarden:replica */ SELECT a FROM t WHERE id = 1";
        assert!(takes(
            first,
            "/* pgwarden:replica */ SELECT a FROM t WHERE id = 2"
        ));
        let plain = "SELECT a FROM t WHERE note = 'a'";
        assert!(!takes(
            plain,
            "SELECT a FROM t WHERE note = 'pgwarden:primary'"
        ));
    }

    #[test]
    fn literals_at_the_start_and_the_end_of_the_text() {
        assert!(takes("1", "22"));
        assert!(takes("'a'", "'it''s'"));
        assert!(!takes("1", "2 "));
        assert!(!takes("1", ""));
        assert!(takes("SELECT 1, 2", "SELECT 3, 4"));
        assert!(!takes("SELECT 1, 2", "SELECT 3,4"));
    }
}
