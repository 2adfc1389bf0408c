//! A session's memory of the last few unnamed statement texts it parsed, and what was
//! worked out for each. Drivers parse statements unnamed, one after the other (pgbench
//! cycles through seven, an ORM through a handful): a text seen a moment ago is looked
//! up here instead of scanned and classified again.

use bytes::Bytes;

/// How many texts are remembered: pgbench's seven, an ORM's usual handful.
pub const RECENT_TEXTS: usize = 8;

/// Longer texts are not remembered: the memory stays small for every session, and a
/// long text is rarely parsed unnamed over and over.
pub const MAX_REMEMBERED_TEXT: usize = 2048;

/// Up to [`RECENT_TEXTS`] `Parse` definitions (query, NUL, parameter types) with a
/// value each, the newest last.
#[derive(Debug)]
pub struct RecentTexts<T> {
    entries: Vec<(Bytes, T)>,
}

impl<T> Default for RecentTexts<T> {
    fn default() -> Self {
        RecentTexts {
            entries: Vec::new(),
        }
    }
}

impl<T> RecentTexts<T> {
    /// What was remembered for this definition.
    pub fn get(&self, definition: &[u8]) -> Option<&T> {
        self.entries
            .iter()
            .rev()
            .find(|(known, _)| known.as_ref() == definition)
            .map(|(_, value)| value)
    }

    /// Remembers `value` for `definition`, forgetting the oldest text when full; a
    /// definition longer than [`MAX_REMEMBERED_TEXT`] is not remembered.
    pub fn remember(&mut self, definition: &[u8], value: T) {
        if definition.len() > MAX_REMEMBERED_TEXT {
            return;
        }
        if self.entries.len() >= RECENT_TEXTS {
            self.entries.remove(0);
        }
        self.entries
            .push((Bytes::copy_from_slice(definition), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_texts_are_remembered_and_long_ones_are_not() {
        let mut recent = RecentTexts::default();
        for i in 0..RECENT_TEXTS + 2 {
            recent.remember(format!("SELECT {i}\0\0\0").as_bytes(), i);
        }
        assert_eq!(recent.get(b"SELECT 0\0\0\0"), None);
        assert_eq!(recent.get(b"SELECT 1\0\0\0"), None);
        for i in 2..RECENT_TEXTS + 2 {
            assert_eq!(recent.get(format!("SELECT {i}\0\0\0").as_bytes()), Some(&i));
        }
        assert_eq!(
            recent.get(b"SELECT 2\0"),
            None,
            "the whole definition is compared"
        );
        let long = format!("SELECT '{}'\0\0\0", "x".repeat(MAX_REMEMBERED_TEXT));
        recent.remember(long.as_bytes(), 99);
        assert_eq!(recent.get(long.as_bytes()), None);
    }
}
