//! Encoding of the backend messages the proxy writes itself: the login sequence a
//! pooled client sees, and the completions it answers for statements it already has.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus as PgTransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

use super::tag::{backend as tag, TransactionStatus};

pub fn authentication(out: &mut BytesMut, auth: Authentication) {
    // Authentication messages we build are tiny; encoding cannot exceed limits.
    let _ = auth.encode(out);
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let _ = ParameterStatus::new(name.to_string(), value.to_string()).encode(out);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let _ = BackendKeyData::new(pid, SecretKey::I32(secret)).encode(out);
}

pub fn ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    let status = match status {
        TransactionStatus::Idle => PgTransactionStatus::Idle,
        TransactionStatus::InTransaction => PgTransactionStatus::Transaction,
        TransactionStatus::Failed => PgTransactionStatus::Error,
    };
    let _ = ReadyForQuery::new(status).encode(out);
}

/// A message with an empty body (`ParseComplete`, `CloseComplete`, ...).
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

pub fn parse_complete(out: &mut BytesMut) {
    empty(out, tag::PARSE_COMPLETE);
}

pub fn close_complete(out: &mut BytesMut) {
    empty(out, tag::CLOSE_COMPLETE);
}

/// `CommandComplete` with `tag` (e.g. `DEALLOCATE`).
pub fn command_complete(out: &mut BytesMut, command: &str) {
    out.put_u8(tag::COMMAND_COMPLETE);
    out.put_i32(4 + command.len() as i32 + 1);
    out.put_slice(command.as_bytes());
    out.put_u8(0);
}

/// The SQLSTATE (`C` field) of an `ErrorResponse` body.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// The field of an `ErrorResponse` (or `NoticeResponse`) body with type `kind`
/// (`C` SQLSTATE, `M` message, `S` severity, ...).
pub fn error_field(body: &[u8], kind: u8) -> Option<&[u8]> {
    body.split(|b| *b == 0)
        .find(|field| field.first() == Some(&kind))
        .map(|field| &field[1..])
}

/// The tag of a `CommandComplete` body, without the trailing NUL.
#[inline]
pub fn command_tag(body: &[u8]) -> &[u8] {
    match body.split_last() {
        // The body PostgreSQL sends: the tag and its NUL (a tag has no NUL of its own).
        Some((0, tag)) => tag,
        _ => body,
    }
}
