//! A large server message that is only relayed (`DataRow`, `CopyData`) is passed to
//! the client as its bytes arrive, instead of being buffered whole first.
//!
//! Store-and-forward of a 16 MiB value made the client wait for the last byte to reach
//! the proxy before the first one left it, and held the value twice (read buffer and
//! client buffer). Streaming keeps memory at the pump's high-water marks whatever the
//! message size. This file owns only the bookkeeping of the message boundary: how many
//! body bytes of the message being streamed are still to come from the server. What the
//! session does around it (no client messages handled while a message is cut in two,
//! no error appended after half a message) is in `session.rs` and `server_messages.rs`.

use crate::protocol::frame::HEADER_LEN;
use crate::protocol::tag::backend as tag;

/// Messages at least this large are streamed; smaller ones are relayed whole (in runs
/// of complete messages), which costs nothing extra.
pub const STREAM_FROM: usize = 64 * 1024;

/// The message being streamed from the server, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamedFrame {
    /// Bytes of the message not yet received from the server.
    rest: usize,
}

impl StreamedFrame {
    /// Whether a message is cut in two: part of it is relayed, the rest is to come.
    pub fn is_open(&self) -> bool {
        self.rest > 0
    }

    /// `available` bytes arrived from the server; returns how many of them belong to
    /// the message being streamed (they are relayed as they are).
    pub fn take(&mut self, available: usize) -> usize {
        let n = self.rest.min(available);
        self.rest -= n;
        n
    }

    /// Starts streaming the incomplete message at the front of `buf` (whose whole
    /// length, `total`, is known from its header) when it is one that is only relayed
    /// and large. Returns whether it did; the caller relays all of `buf` then.
    pub fn start(&mut self, buf: &[u8], total: usize) -> bool {
        debug_assert!(!self.is_open());
        let relayed_only = matches!(buf.first(), Some(&tag::DATA_ROW | &tag::COPY_DATA));
        if !relayed_only || total < STREAM_FROM || buf.len() < HEADER_LEN || buf.len() >= total {
            return false;
        }
        self.rest = total - buf.len();
        true
    }

    /// The server connection is gone: forget the message.
    pub fn reset(&mut self) {
        self.rest = 0;
    }
}

/// The whole length of the message whose header starts `buf` (type byte included), if
/// the header is there. The length was checked by `check_frame` already.
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let length = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    usize::try_from(length).ok().map(|l| l + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u8, total: usize) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((total - 1) as i32).to_be_bytes());
        v
    }

    #[test]
    fn large_data_rows_stream_until_their_last_byte() {
        let total = 1 << 20;
        let mut buf = header(b'D', total);
        buf.extend_from_slice(&[0; 1000]);
        assert_eq!(announced_len(&buf), Some(total));
        let mut s = StreamedFrame::default();
        assert!(s.start(&buf, total));
        assert!(s.is_open());
        let mut got = buf.len();
        // The rest arrives in pieces; the last read also carries the next message.
        while s.is_open() {
            let n = s.take(100_000);
            got += n;
            if n < 100_000 {
                assert_eq!(got, total);
            }
        }
        assert_eq!(got, total);
        assert_eq!(s.take(10), 0);
    }

    #[test]
    fn small_or_inspected_messages_are_not_streamed() {
        let mut s = StreamedFrame::default();
        let small = header(b'D', 1000);
        assert!(!s.start(&small, 1000));
        let error = header(b'E', 1 << 20);
        assert!(!s.start(&error, 1 << 20));
        let mut copy = header(b'd', 1 << 20);
        copy.push(b'x');
        assert!(s.start(&copy, 1 << 20));
        s.reset();
        assert!(!s.is_open());
        assert_eq!(announced_len(&[b'D', 0, 0]), None);
    }
}
