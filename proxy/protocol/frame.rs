//! Message boundaries: every message after startup is a type byte, a big-endian i32
//! length that counts itself, and a body. `check_frame` tells whether a whole message
//! is buffered without copying or parsing it; the caller then splits it off.

use thiserror::Error;

/// Type byte plus length field.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("invalid message length {length} in message of type {tag:?}")]
    BadLength { tag: char, length: i32 },
    #[error("message of type {tag:?} is {length} bytes, over the limit of {max} bytes")]
    TooLarge {
        tag: char,
        length: usize,
        max: usize,
    },
}

/// Returns `Ok(Some(total))` when a whole frame of `total` bytes (type byte included)
/// starts `buf`, `Ok(None)` when more bytes are needed, and an error when the header
/// is impossible or larger than `max_len`.
#[inline]
pub fn check_frame(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if length < 4 {
        return Err(FrameError::BadLength {
            tag: buf[0] as char,
            length,
        });
    }
    let total = length as usize + 1;
    if total > max_len {
        return Err(FrameError::TooLarge {
            tag: buf[0] as char,
            length: total,
            max: max_len,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// The body of a complete frame (after type byte and length).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN.min(frame.len())..]
}

/// The statement text of a complete `Query` frame: its body without the closing NUL.
#[inline]
pub fn query_text(frame: &[u8]) -> &[u8] {
    let sql = body(frame);
    &sql[..sql.len().saturating_sub(1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_frames_only() {
        let frame = [b'Q', 0, 0, 0, 6, b';', 0, b'X'];
        assert_eq!(check_frame(&frame[..3], 1024), Ok(None));
        assert_eq!(check_frame(&frame[..6], 1024), Ok(None));
        assert_eq!(check_frame(&frame, 1024), Ok(Some(7)));
        assert_eq!(body(&frame[..7]), b";\0");
    }

    #[test]
    fn rejects_bad_and_huge_lengths() {
        assert!(matches!(
            check_frame(&[b'Q', 0, 0, 0, 3], 1024),
            Err(FrameError::BadLength { length: 3, .. })
        ));
        assert!(matches!(
            check_frame(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1024),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            check_frame(&[b'Q', 0x7f, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
