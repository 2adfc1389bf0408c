//! The PostgreSQL v3 wire protocol as bytes and messages, with no I/O.
//!
//! This room knows message boundaries (`frame`), the tags of the messages pgwarden
//! acts on (`tag`), borrowed views over the extended-protocol messages it rewrites
//! (`extended`), the first packet of a connection (`startup`), how to encode the
//! few messages the proxy itself sends (`backend`, `error`), and SCRAM-SHA-256's
//! messages and key math for both sides (`scram`), and the quoting of the SQL the
//! proxy writes itself (`sql_quote`). It never touches a socket, a pool
//! or configuration.

pub mod backend;
pub mod error;
pub mod extended;
pub mod frame;
pub mod scram;
pub mod sql_quote;
pub mod startup;
pub mod tag;
pub mod text;
pub mod word_bytes;

pub use error::{ErrorFields, SqlState};
pub use frame::{check_frame, FrameError};
