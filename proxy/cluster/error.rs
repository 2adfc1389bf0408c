//! What can go wrong starting or driving a local cluster.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries not found ({0}). Install them, e.g. `apt-get install -y postgresql`, or set PGWARDEN_PG_BINDIR to the directory holding initdb"
    )]
    BinariesMissing(String),
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}
