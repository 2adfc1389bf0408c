//! What the aggregator tells an observer about each finished statement, after it has
//! fingerprinted it: the N+1 detector of the `advise` room is fed from here, off the
//! data path, on the aggregator task (so it needs no lock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fingerprint::FingerprintId;

/// Where a statement came from, taken on the data path (a few integers).
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// The client connection (unique for the process).
    pub client: u64,
    /// A hash of the session's `pgwarden.session_key`; 0 when unset.
    pub session_key: u64,
    /// A hash of the bound parameter values (extended protocol); 0 for a simple query,
    /// whose text carries its values.
    pub params: u64,
    /// When the answer was complete.
    pub ended: Instant,
}

/// One fingerprinted statement.
pub struct Call<'a> {
    pub fingerprint: FingerprintId,
    /// The normalized text (shared with the statistics entry).
    pub query: &'a Arc<str>,
    /// The text as sent (for a sqlcommenter `traceparent`).
    pub sql: &'a [u8],
    /// A hash of the exact text.
    pub text_hash: u64,
    pub duration: Duration,
    pub context: CallContext,
}

/// Receives every fingerprinted statement that has a [`CallContext`].
pub trait CallObserver: Send + 'static {
    fn observe(&mut self, call: &Call<'_>);
    /// Called about every 20 ms while the aggregator runs: close idle state, publish.
    fn tick(&mut self, now: Instant);
    /// Publish now: someone waits for every statement recorded so far to show.
    fn flush(&mut self);
}
