//! The one scan of a simple `Query`'s text (`crate::scan`), made at most once while
//! the message is handled and shared by everyone who reads that text: routing's and
//! the cache's classification, transaction pooling's session verdicts, and the
//! statistics' shape.

use crate::scan::{scan, scan_recent, StatementScan};

use super::session::Session;

/// The scan of the text the session is handling, remembered with the text's place
/// (address and length), so a scan is never handed out for another text.
#[derive(Default)]
pub struct ScanMemo(Option<(usize, usize, StatementScan)>);

impl ScanMemo {
    /// Forgets the scan: at each new message.
    pub fn forget(&mut self) {
        self.0 = None;
    }

    /// Scans `sql` and remembers it: once the tenant guard has had its say, so the
    /// text is the one that will be forwarded.
    pub fn remember(&mut self, sql: &[u8]) {
        self.0 = Some((sql.as_ptr() as usize, sql.len(), scan_recent(sql)));
    }
}

impl Session {
    /// The scan of `sql`, the text of the `Query` being handled: the remembered one,
    /// or (for any other text) a new one.
    pub(super) fn query_scan(&self, sql: &[u8]) -> StatementScan {
        match self.query_scan.0 {
            Some((at, len, scanned)) if (at, len) == (sql.as_ptr() as usize, sql.len()) => scanned,
            _ => scan(sql),
        }
    }
}
