//! What can go wrong in an advisor round. Nothing here reaches a client: a failed
//! round is logged and the next one tries again.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AdviseError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: tokio_postgres::Error,
    },
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("unexpected plan: {0}")]
    Plan(String),
    /// The plan's text is larger than the advisor reads (`plan::MAX_PLAN_BYTES`): the
    /// planner folded a large constant into it (`SELECT repeat('x', 16 * 1024 * 1024)`
    /// plans as the 16 MiB value itself). The statement is skipped, not the round.
    #[error("plan of {0} bytes is larger than the advisor reads")]
    PlanTooLarge(usize),
}

impl AdviseError {
    pub fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> AdviseError {
        move |source| AdviseError::Query { what, source }
    }
}
