//! A session's memory of the last few unnamed statement texts it parsed, and what was
//! worked out for each. Drivers parse statements unnamed, one after the other (pgbench
//! cycles through seven, an ORM through a handful): a text seen a moment ago is looked
//! up here instead of scanned and classified again.

use bytes::Bytes;

/// How many texts are remembered: pgbench's seven, an ORM's usual handful.
pub const RECENT_TEXTS: usize = 8;

/// The bytes of text one session remembers at most, the size of the buffers an idle
/// client is allowed: older texts are forgotten to make room, and a longer text is not
/// remembered (it is worked out at each `Parse`, as without this memory).
pub const REMEMBERED_BYTES: usize = 4096;

/// Up to [`RECENT_TEXTS`] `Parse` definitions (query, NUL, parameter types) with a
/// value each, the newest last, of [`REMEMBERED_BYTES`] at most together.
#[derive(Debug)]
pub struct RecentTexts<T> {
    entries: Vec<(Bytes, T)>,
    bytes: usize,
}

impl<T> Default for RecentTexts<T> {
    fn default() -> Self {
        RecentTexts {
            entries: Vec::new(),
            bytes: 0,
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

    /// Remembers `value` for `definition`, forgetting the oldest texts to make room; a
    /// definition longer than [`REMEMBERED_BYTES`] is not remembered.
    pub fn remember(&mut self, definition: &[u8], value: T) {
        if definition.len() > REMEMBERED_BYTES {
            return;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= RECENT_TEXTS
                || self.bytes + definition.len() > REMEMBERED_BYTES)
        {
            let (oldest, _) = self.entries.remove(0);
            self.bytes -= oldest.len();
        }
        self.bytes += definition.len();
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
        let long = format!("SELECT '{}'\0\0\0", "x".repeat(REMEMBERED_BYTES));
        recent.remember(long.as_bytes(), 99);
        assert_eq!(recent.get(long.as_bytes()), None);
        assert_eq!(
            recent.get(b"SELECT 9\0\0\0"),
            Some(&9),
            "kept: the long text took no room"
        );
    }

    #[test]
    fn older_texts_make_room_for_a_new_one() {
        let mut recent = RecentTexts::default();
        let text = |i: usize| format!("{i:0>1500}");
        for i in 0..3 {
            recent.remember(text(i).as_bytes(), i);
        }
        // 3 × 1,500 bytes is past the budget: the oldest went.
        assert_eq!(recent.get(text(0).as_bytes()), None);
        assert_eq!(recent.get(text(1).as_bytes()), Some(&1));
        assert_eq!(recent.get(text(2).as_bytes()), Some(&2));
        assert_eq!(recent.bytes, 3000);
    }
}
