//! What the statistics tell an observer about each finished statement, once its
//! recording shard has fingerprinted it: the N+1 detector of the `advise` room is fed
//! from here, on the session's thread, under the observer's lock, in the order
//! statements finish.

use std::sync::Arc;
use std::time::Duration;

use super::clock::Instant;
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
    /// The text as sent (for a sqlcommenter `traceparent`, and told apart by its
    /// hash when it has no bound parameters).
    pub sql: &'a [u8],
    /// Whether the text may carry a `traceparent`: the first text of its shape did
    /// (comments are part of the shape; a `traceparent=` inside a string literal of
    /// a later text of the shape is not looked for).
    pub may_trace: bool,
    pub duration: Duration,
    pub context: CallContext,
}

/// Receives every fingerprinted statement that has a [`CallContext`].
pub trait CallObserver: Send + 'static {
    fn observe(&mut self, call: &Call<'_>);
    /// Called about every 20 ms by the aggregator while statements flow: close idle
    /// state, publish.
    fn tick(&mut self, now: Instant);
    /// Publish now: someone waits for every statement recorded so far to show.
    fn flush(&mut self);
}
