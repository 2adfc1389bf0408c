//! One cached result, what is known about a statement before it is cached, and which
//! response frames may be stored ([`replayable`]).
//!
//! `frames` is one owned, compact copy of exactly the response frames the client
//! received (`RowDescription`, `DataRow`s, `CommandComplete`, and `ParseComplete`/
//! `BindComplete` in an extended batch), without the final `ReadyForQuery`: never a
//! slice of a session's read buffer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::row_key::KeyPredicate;
use super::versions::EntryKey;
use crate::protocol::backend;
use crate::protocol::frame::check_frame;
use crate::protocol::tag::backend as btag;
use crate::route::Lsn;

#[derive(Debug)]
pub struct Entry {
    pub frames: Bytes,
    pub database: String,
    /// OIDs of every table the result depends on.
    pub tables: Box<[u32]>,
    /// The one key of its one table the result depends on, when it is keyed.
    pub key: Option<EntryKey>,
    /// Invalidation clock before the query ran (see `versions.rs`).
    pub at: u64,
    /// A WAL position the result is known to reflect (a lower bound).
    pub lsn: Lsn,
    pub fingerprint: u64,
    /// The statement's shape, which the statistics of its hits carry.
    pub shape: crate::scan::Shape,
    pub ttl: Duration,
    pub rows: u64,
    pub stored: Instant,
    /// A client is refreshing it (it neared its TTL while hot).
    pub refreshing: AtomicBool,
}

/// Share of its TTL after which a hit entry is refreshed.
const REFRESH_AFTER: f64 = 0.8;

impl Entry {
    /// True for the one hit that should refresh this entry: the first after it passed
    /// [`REFRESH_AFTER`] of its TTL.
    pub fn claim_refresh(&self) -> bool {
        self.stored.elapsed() >= self.ttl.mul_f64(REFRESH_AFTER)
            && !self.refreshing.swap(true, Ordering::Relaxed)
    }

    /// Bytes this entry costs with its key (frames, key, OIDs, bookkeeping).
    pub fn weight(&self, key: &Bytes) -> u32 {
        let bytes =
            self.frames.len() + key.len() + self.tables.len() * 4 + self.database.len() + 160;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The catalog's verdict on one statement text under one role and settings.
#[derive(Debug)]
pub struct Analysis {
    /// The tables it reads, or why it is not cached.
    pub verdict: Result<Box<[u32]>, String>,
    /// Its key predicate, when the catalog confirmed an integer column of a plain table.
    pub key: Option<KeyPredicate>,
    pub fingerprint: u64,
}

/// Per-entry time to live for moka.
pub struct EntryExpiry;

impl moka::Expiry<Bytes, std::sync::Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Bytes,
        value: &std::sync::Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    /// A refreshed entry replaces the old one with a whole new TTL.
    fn expire_after_update(
        &self,
        _key: &Bytes,
        value: &std::sync::Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Whether captured frames may be replayed as they are: only result frames (no
/// errors, notices, parameter changes, COPY). Returns the rows of the last command.
pub fn replayable(mut frames: &[u8]) -> Option<u64> {
    let mut rows = 0;
    while !frames.is_empty() {
        let len = check_frame(frames, usize::MAX).ok().flatten()?;
        match frames[0] {
            btag::PARSE_COMPLETE | btag::BIND_COMPLETE | btag::EMPTY_QUERY_RESPONSE => {}
            b'T' | b't' | b'n' | b'D' => {}
            btag::COMMAND_COMPLETE => {
                rows = crate::stats::rows_from_tag(backend::command_tag(&frames[5..len]));
            }
            _ => return None,
        }
        frames = &frames[len..];
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn only_result_frames_are_replayable() {
        let mut ok = BytesMut::new();
        ok.extend_from_slice(&[b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4]);
        backend::command_complete(&mut ok, "SELECT 3");
        assert_eq!(replayable(&ok), Some(3));
        let mut notice = ok.clone();
        notice.extend_from_slice(&[b'N', 0, 0, 0, 5, 0]);
        assert_eq!(replayable(&notice), None);
        assert_eq!(replayable(&[b'D', 0, 0]), None, "truncated");
    }
}
