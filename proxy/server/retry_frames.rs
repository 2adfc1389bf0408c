//! The frames of an autocommit request sent to a replica, kept until the replica's
//! first answer, so that the request can run again on another backend when the
//! replica fails or refuses it before answering.
//!
//! They are copied (a frame split off the client's read buffer would pin it for as
//! long as the replica takes) into one buffer the session keeps between requests: a
//! read on a replica then copies its three or four frames without an allocation each.
//! A buffer small enough for most requests stays; a larger one is given back.

use bytes::{Bytes, BytesMut};

use crate::protocol::frame::check_frame;

/// A request larger than this is not kept: it is not retried.
const MAX_RETRY_BYTES: usize = 256 * 1024;

/// Capacity kept between requests (a replica read is usually well under it).
const KEEP_CAPACITY: usize = 256;

#[derive(Debug, Default)]
pub struct RetryFrames {
    /// Whole frames (tag, length, body), back to back.
    bytes: BytesMut,
    /// The request outgrew [`MAX_RETRY_BYTES`]: nothing more is kept until
    /// [`RetryFrames::forget`].
    too_large: bool,
}

impl RetryFrames {
    /// Keeps one whole frame of the request.
    pub fn remember(&mut self, frame: &[u8]) {
        if self.too_large {
            return;
        }
        if self.bytes.len() + frame.len() <= MAX_RETRY_BYTES {
            self.bytes.extend_from_slice(frame);
        } else {
            self.too_large = true;
            self.bytes.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The request's first frame, if any is kept.
    pub fn first(&self) -> Option<&[u8]> {
        frames(&self.bytes).next()
    }

    /// The kept frames, handed over for a retry; none are kept afterwards.
    pub fn take(&mut self) -> Vec<Bytes> {
        let all = self.bytes.split().freeze();
        let mut taken = Vec::new();
        let mut at = 0;
        for frame in frames(&all) {
            taken.push(all.slice(at..at + frame.len()));
            at += frame.len();
        }
        taken
    }

    /// The answer has started, or the request is over: nothing is kept.
    pub fn forget(&mut self) {
        self.too_large = false;
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = BytesMut::new();
        } else {
            self.bytes.clear();
        }
    }
}

/// The whole frames at the start of `bytes`, each with its tag and length (they were
/// checked when the client sent them: no bound applies here).
fn frames(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let total = check_frame(bytes, usize::MAX).ok()??;
        let (frame, rest) = bytes.split_at(total);
        bytes = rest;
        Some(frame)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn hands_back_the_frames_as_they_came() {
        let mut retry = RetryFrames::default();
        assert!(retry.is_empty() && retry.first().is_none());
        let frames = [
            frame(b'B', b"\0P_0\0\0\0\0\x01\0\0\0\x015\0\0"),
            frame(b'E', b"\0\0\0\0\0"),
            frame(b'S', b""),
        ];
        for f in &frames {
            retry.remember(f);
        }
        assert_eq!(retry.first(), Some(&frames[0][..]));
        let taken = retry.take();
        assert_eq!(taken.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), frames);
        assert!(retry.is_empty() && retry.take().is_empty());
    }

    #[test]
    fn a_request_too_large_is_not_kept_until_forgotten() {
        let mut retry = RetryFrames::default();
        let big = frame(b'Q', &vec![b'x'; MAX_RETRY_BYTES]);
        retry.remember(&frame(b'P', b"\0select 1\0\0\0"));
        retry.remember(&big);
        assert!(retry.is_empty(), "dropped once too large");
        retry.remember(&frame(b'S', b""));
        assert!(retry.is_empty(), "and nothing more of the same request");
        assert!(retry.take().is_empty());
        retry.forget();
        retry.remember(&frame(b'S', b""));
        assert_eq!(retry.take().len(), 1);
    }

    #[test]
    fn keeps_only_a_small_buffer_between_requests() {
        let mut retry = RetryFrames::default();
        retry.remember(&frame(b'Q', b"select 1\0"));
        retry.forget();
        assert!(retry.is_empty());
        let kept = retry.bytes.capacity();
        assert!(kept > 0 && kept <= KEEP_CAPACITY, "{kept}");
        retry.remember(&frame(b'Q', &vec![b'x'; 4096]));
        retry.forget();
        assert_eq!(retry.bytes.capacity(), 0);
    }
}
