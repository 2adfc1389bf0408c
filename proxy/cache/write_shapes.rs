//! What a simple-protocol write may change, by the statement's shape.
//!
//! Writes sent with their values inline (`UPDATE acc SET v = v + 7 WHERE id = 42`) are a
//! new text each time, and working out their names parses the text: several times the
//! cost of relaying the statement, for every write of a database the cache serves. Their
//! shape (the literals taken out, `tenant/shape.rs`) repeats, so the names are worked out
//! once per shape, with the literals as parameters (`WHERE id = $2`), and each text's
//! own literals are bound into them as a `Bind`'s values would be.
//!
//! A shape is trusted only when, on the first text that has it, its literal spans are
//! sqlparser's own literal tokens and the names bound from them are exactly the names
//! of the text itself; otherwise its texts go the exact way. Later texts of the shape
//! differ only inside the literals, which give key values and nothing else.

use std::sync::Arc;

use super::analysis::{write_names, WriteNames};
use super::row_key::BindParameters;
use crate::stats::ProcessHashState;
use crate::tenant::shape::{spans_are_literal_tokens, split, Shaped};

/// Bytes the shape memo may hold.
pub(super) const WRITE_SHAPES_BYTES: u64 = 2 << 20;

/// The names of each shape of write with its literals as parameters; `None`: a shape
/// whose texts are worked out one by one.
pub(super) struct WriteShapes {
    shapes: moka::sync::Cache<String, Option<Arc<WriteNames>>, ProcessHashState>,
}

impl WriteShapes {
    pub(super) fn new() -> WriteShapes {
        WriteShapes {
            shapes: moka::sync::Cache::builder()
                .max_capacity(WRITE_SHAPES_BYTES)
                .weigher(|shape: &String, names: &Option<Arc<WriteNames>>| {
                    let names = names
                        .as_ref()
                        .map_or(0, |w| w.names_weight() + w.keyed.len() * 96);
                    u32::try_from(shape.len() + names + 96).unwrap_or(u32::MAX)
                })
                .build_with_hasher(crate::stats::process_hasher()),
        }
    }

    /// The names `sql` may write, bound from its literals, when its shape is trusted;
    /// `None` when the text has to be worked out by itself (no literals, a shape that
    /// failed its first judgement). Judges a shape seen for the first time.
    pub(super) fn names_of(&self, sql: &str) -> Option<WriteNames> {
        let shaped = split(sql)?;
        if let Some(known) = self.shapes.get(&shaped.shape) {
            return known.map(|names| bind_literals(&names, sql, &shaped));
        }
        let names = Arc::new(write_names(&shaped.shape));
        let bound = bind_literals(&names, sql, &shaped);
        let trusted = spans_are_literal_tokens(sql, &shaped.literals)
            && bound == write_names(sql).bound(None);
        self.shapes.insert(shaped.shape, trusted.then_some(names));
        trusted.then_some(bound)
    }

    pub(super) fn clear(&self) {
        self.shapes.invalidate_all();
    }

    pub(super) fn weighted_size(&self) -> u64 {
        self.shapes.weighted_size()
    }
}

/// `names` (of the shape, `$k` for the k-th literal) with the text's literals bound as
/// text parameters: a number as written, a string without its quotes. (A string with a
/// doubled quote inside is no integer either way, so it is not unescaped.)
fn bind_literals(names: &WriteNames, sql: &str, shaped: &Shaped) -> WriteNames {
    if names.keyed.is_empty() {
        return names.bound(None);
    }
    let values: Vec<&[u8]> = shaped
        .literals
        .iter()
        .map(|span| {
            let literal = &sql.as_bytes()[span.clone()];
            match literal {
                [b'\'', inner @ .., b'\''] => inner,
                number => number,
            }
        })
        .collect();
    let params = BindParameters::text(values);
    // Declared types unknown (0): a text value is a key when it is a canonical integer.
    names.bound(Some((&params, &[])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::row_key::RowKey;

    #[test]
    fn texts_of_one_shape_get_their_own_keys() {
        let shapes = WriteShapes::new();
        for (sql, id) in [
            ("UPDATE acc SET v = v + 5 WHERE id = 42", "42"),
            ("UPDATE acc SET v = v + -3 WHERE id = 7", "7"),
            ("UPDATE acc SET v = v + 1 WHERE id = '9'", "9"),
        ] {
            let names = shapes.names_of(sql).expect("a trusted shape");
            assert_eq!(names, write_names(sql).bound(None), "{sql}");
            assert_eq!(names.keys, [RowKey::new("acc", "id", id)].into(), "{sql}");
        }
        // Not a canonical integer: the table as a whole, as the text's own names say.
        let sql = "UPDATE acc SET v = v + 1 WHERE id = 007";
        let names = shapes.names_of(sql).expect("same shape");
        assert_eq!(names, write_names(sql).bound(None));
        assert!(names.keys.is_empty() && names.relations.contains("acc"));
    }

    #[test]
    fn the_names_match_the_texts_own_on_varied_writes() {
        let shapes = WriteShapes::new();
        for sql in [
            "INSERT INTO history (tid, bid, aid, delta) VALUES (1, 2, 3, 4)",
            "INSERT INTO history (tid, bid, aid, delta) VALUES (5, 6, 7, 8)",
            "DELETE FROM acc WHERE id = 3 AND grp = 1",
            "DELETE FROM acc WHERE id = 4 AND grp = 'x'",
            "UPDATE acc a SET v = 1 WHERE a.id = 10",
            "UPDATE acc SET v = f(2) WHERE id = 11",
            "UPDATE acc SET v = 2 WHERE id IN (1, 2)",
            "WITH w AS (DELETE FROM acc WHERE id = 5 RETURNING id) SELECT 1 FROM w",
            "SELECT 1",
        ] {
            for _ in 0..2 {
                let exact = write_names(sql).bound(None);
                if let Some(names) = shapes.names_of(sql) {
                    assert_eq!(names, exact, "{sql}");
                }
            }
        }
    }

    #[test]
    fn a_shape_whose_first_text_disagrees_is_not_trusted() {
        let shapes = WriteShapes::new();
        // `COPY acc FROM $1` does not parse: the shape's names (everything) differ from
        // the text's (the table).
        let sql = "COPY acc FROM '/tmp/rows'";
        assert!(write_names(&split(sql).unwrap().shape).everything);
        assert!(!write_names(sql).everything);
        assert!(shapes.names_of(sql).is_none());
        assert!(shapes.names_of(sql).is_none(), "remembered as untrusted");
        // No literals: nothing to take out.
        assert!(shapes.names_of("UPDATE acc SET v = v").is_none());
    }
}
