//! A per-thread stash of client read buffers.
//!
//! An idle client keeps no read buffer (RSS per idle client), and in transaction
//! pooling it gives its buffer back with the server connection, so nearly every
//! transaction needs one again. Taken from the allocator, that is a `malloc`, the
//! shared header the first `split_to` of a fresh buffer allocates, and two `free`s per
//! transaction (about 300 instructions); taken from here, it is a pop. Sessions run on
//! one worker thread each (`runtime.rs`), so the stash needs no lock.
//!
//! A stashed buffer is empty: its bytes beyond its length are never readable, and the
//! next read overwrites them. A buffer whose allocation is still shared with a frame
//! kept elsewhere (a prepared statement's `Parse`) works as well: its next `reserve`
//! then allocates afresh, as a new buffer would.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers one thread keeps at most: more than the clients a worker serves at once in
/// most pools, and at most [`MAX_KEPT_CAPACITY`] each.
const MAX_STASHED: usize = 32;
/// A buffer with more room than this goes back to the allocator.
const MAX_KEPT_CAPACITY: usize = 8 * 1024;

thread_local! {
    static STASH: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer given back earlier on this thread, if any.
pub fn take() -> Option<BytesMut> {
    STASH.with(|stash| stash.borrow_mut().pop())
}

/// Gives `buf` back for the next read on this thread; leaves `buf` unallocated.
/// Only an empty buffer of modest capacity is kept.
pub fn give_back(buf: &mut BytesMut) {
    let buf = std::mem::take(buf);
    if !buf.is_empty() || buf.capacity() == 0 || buf.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        if stash.len() < MAX_STASHED {
            stash.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_comes_back_with_its_allocation() {
        while take().is_some() {}
        let mut buf = BytesMut::with_capacity(1000);
        buf.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        let frame = buf.split_to(buf.len()).freeze();
        drop(frame);
        let capacity = buf.capacity();
        give_back(&mut buf);
        assert_eq!(
            buf.capacity(),
            0,
            "the session's buffer is unallocated after"
        );
        let again = take().expect("stashed");
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
        assert!(take().is_none());
    }

    #[test]
    fn only_empty_modest_buffers_are_kept() {
        while take().is_some() {}
        let mut unread = BytesMut::from(&b"half a message"[..]);
        give_back(&mut unread);
        let mut large = BytesMut::with_capacity(MAX_KEPT_CAPACITY + 1);
        give_back(&mut large);
        let mut unallocated = BytesMut::new();
        give_back(&mut unallocated);
        assert!(take().is_none());
        for _ in 0..MAX_STASHED + 5 {
            give_back(&mut BytesMut::with_capacity(100));
        }
        let mut kept = 0;
        while take().is_some() {
            kept += 1;
        }
        assert_eq!(kept, MAX_STASHED);
    }
}
