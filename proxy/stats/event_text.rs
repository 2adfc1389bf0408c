//! A statement's text as a statistics event carries it to the aggregator.
//!
//! Most statement texts are short, and a short one is copied into the event. A slice of
//! the session's read buffer would keep that buffer alive until the aggregator, on
//! another thread, dropped the event: the session could not reuse the buffer in place,
//! and the aggregator's thread would free it (callgrind: about 250 instructions per
//! statement for that drop alone, against about 20 for the copy). Longer texts are
//! shared, as before.

use bytes::Bytes;

/// The longest text copied into the event.
const INLINE: usize = 118;

/// The text of one statement event.
pub enum EventText {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Bytes),
}

impl EventText {
    /// `text`, copied when short, else shared.
    #[inline]
    pub fn new(text: &Bytes) -> EventText {
        Self::copied_or(text, || text.clone())
    }

    /// `text` copied when short; else what `shared` gives (the same text, shared).
    #[inline]
    pub fn copied_or(text: &[u8], shared: impl FnOnce() -> Bytes) -> EventText {
        if text.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..text.len()].copy_from_slice(text);
            EventText::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            EventText::Shared(shared())
        }
    }
}

impl From<Bytes> for EventText {
    fn from(text: Bytes) -> EventText {
        EventText::new(&text)
    }
}

impl From<String> for EventText {
    fn from(text: String) -> EventText {
        EventText::from(Bytes::from(text))
    }
}

impl From<&'static str> for EventText {
    fn from(text: &'static str) -> EventText {
        Self::copied_or(text.as_bytes(), || Bytes::from_static(text.as_bytes()))
    }
}

impl std::ops::Deref for EventText {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            EventText::Inline { len, bytes } => &bytes[..usize::from(*len)],
            EventText::Shared(text) => text,
        }
    }
}

impl std::fmt::Debug for EventText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::protocol::text::lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_copied_and_long_ones_shared() {
        let buffer = Bytes::from(vec![b'x'; 4 * INLINE]);
        let short = buffer.slice(0..INLINE);
        let long = buffer.slice(0..INLINE + 1);
        let copied = EventText::new(&short);
        assert!(matches!(copied, EventText::Inline { .. }));
        assert_eq!(&*copied, &short[..]);
        let shared = EventText::new(&long);
        assert!(matches!(shared, EventText::Shared(_)));
        assert_eq!(&*shared, &long[..]);
        // The copy holds no share of the buffer; the shared text does.
        drop(short);
        drop(long);
        drop(copied);
        assert!(!buffer.is_unique(), "the long text still shares the buffer");
        drop(shared);
        assert!(buffer.is_unique(), "no event text holds the buffer");
    }

    #[test]
    fn empty_and_static_texts_read_back() {
        assert_eq!(&*EventText::new(&Bytes::new()), b"");
        assert_eq!(&*EventText::from("<function call>"), b"<function call>");
        let long: &'static str = Box::leak("y".repeat(INLINE * 2).into_boxed_str());
        assert_eq!(&*EventText::from(long), long.as_bytes());
    }
}
