//! The admin console: `psql -p <proxy port> -U <admin> pgwarden`, simple query
//! protocol, `SHOW POOLS|SERVERS|CLIENTS|DATABASES|BACKENDS|QUERIES|ADVISORIES|TENANCY|CONFIG|MEMORY|CACHE|VERSION`,
//! `SHOW TENANCY TABLES`, `SHOW LIMITS`, `BLOCK QUERY <id>`, `UNBLOCK QUERY <id>`,
//! `CLEAR CACHE`, `RELOAD`, `PAUSE`, `RESUME`.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use super::tables::{self, Table};
use crate::protocol::frame::check_frame;
use crate::protocol::tag::{frontend as tag, TransactionStatus};
use crate::protocol::{backend, ErrorFields, SqlState};
use crate::runtime::Runtime;
use crate::server::auth::authenticate;
use crate::server::handshake::Opened;
use crate::server::SessionError;

pub const DATABASE: &str = "pgwarden";

/// Serves one admin client after its startup packet.
pub async fn serve_console(runtime: Arc<Runtime>, opened: Opened) -> Result<(), SessionError> {
    let Opened { mut stream, params } = opened;
    let user = params.get("user").cloned().unwrap_or_default();
    let config = runtime.config();
    let credentials = runtime.credentials();
    let mut out = BytesMut::new();
    let login = async {
        authenticate(
            &mut stream,
            config.auth.method,
            &user,
            credentials.get(&user),
            &mut out,
        )
        .await?;
        if !config.is_admin(&user) {
            return Err(SessionError::NotAdmin(user.clone()));
        }
        Ok(())
    };
    if let Err(e) = login.await {
        crate::server::report(&mut stream, &e).await;
        return Err(e);
    }
    for (name, value) in [
        ("server_version", "15.0 (pgwarden admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, 0, 0);
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream
        .write_all(&out)
        .await
        .map_err(SessionError::ClientIo)?;
    tracing::info!(%user, "admin console login");

    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let frame = loop {
            if let Some(len) = check_frame(&buf, 1 << 20)? {
                break buf.split_to(len);
            }
            let read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf);
            let draining = crate::server::shutdown::reached(
                runtime.shutdown.subscribe(),
                crate::server::shutdown::Phase::Draining,
            );
            let n = tokio::select! {
                n = read => n.map_err(SessionError::ClientIo)?,
                _ = draining => {
                    crate::server::report(&mut stream, &SessionError::Shutdown).await;
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
        };
        let mut out = BytesMut::new();
        match frame[0] {
            tag::TERMINATE => return Ok(()),
            tag::QUERY => {
                let sql =
                    String::from_utf8_lossy(&frame[5..frame.len().saturating_sub(1)]).into_owned();
                match run_command(&runtime, &sql).await {
                    Ok(Reply::Rows(table)) => encode_table(&mut out, &table),
                    Ok(Reply::Done(tag)) => command_complete(&mut out, &tag),
                    Err(fields) => fields.encode(&mut out),
                }
            }
            _ => ErrorFields::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "the admin console speaks the simple query protocol only",
            )
            .encode(&mut out),
        }
        backend::ready_for_query(&mut out, TransactionStatus::Idle);
        stream
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)?;
    }
}

enum Reply {
    Rows(Table),
    Done(String),
}

async fn run_command(runtime: &Runtime, sql: &str) -> Result<Reply, ErrorFields> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "POOLS"] => Ok(Reply::Rows(tables::pools(runtime))),
        ["SHOW", "SERVERS"] => Ok(Reply::Rows(tables::servers(runtime))),
        ["SHOW", "CLIENTS"] => Ok(Reply::Rows(tables::clients(runtime))),
        ["SHOW", "DATABASES"] => Ok(Reply::Rows(tables::databases(runtime))),
        ["SHOW", "BACKENDS"] => Ok(Reply::Rows(tables::backends(runtime))),
        ["SHOW", "QUERIES"] => {
            runtime.stats.flush().await;
            Ok(Reply::Rows(tables::queries(runtime, 50)))
        }
        ["SHOW", "ADVISORIES"] => Ok(Reply::Rows(super::advisories::table(runtime))),
        ["SHOW", "CONFIG"] => Ok(Reply::Rows(tables::config(runtime))),
        ["SHOW", "TENANCY"] => Ok(Reply::Rows(super::tenancy::violations(runtime))),
        ["SHOW", "TENANCY", "TABLES"] => Ok(Reply::Rows(super::tenancy::scoped_tables(runtime))),
        ["SHOW", "VERSION"] => Ok(Reply::Rows(tables::version())),
        ["SHOW", "MEMORY"] => Ok(Reply::Rows(super::memory::table(runtime))),
        ["SHOW", "LIMITS"] => Ok(Reply::Rows(super::protection::limits(runtime))),
        ["BLOCK", "QUERY", id] => super::protection::block(runtime, id, true).map(Reply::Done),
        ["UNBLOCK", "QUERY", id] => super::protection::block(runtime, id, false).map(Reply::Done),
        ["SHOW", "CACHE"] => Ok(Reply::Rows(super::cache::table(runtime))),
        ["CLEAR", "CACHE"] => {
            runtime.cache.clear();
            Ok(Reply::Done("CLEAR CACHE".into()))
        }
        ["RELOAD"] => runtime
            .reload()
            .map(|()| Reply::Done("RELOAD".into()))
            .map_err(|e| ErrorFields::error(SqlState::INVALID_PARAMETER_VALUE, e.to_string())),
        ["PAUSE"] => {
            runtime.set_paused(true);
            Ok(Reply::Done("PAUSE".into()))
        }
        ["RESUME"] => {
            runtime.set_paused(false);
            Ok(Reply::Done("RESUME".into()))
        }
        _ => Err(ErrorFields::error(
            SqlState::SYNTAX_ERROR,
            format!("unknown admin command: {}", sql.trim()),
        )
        .with_hint("try SHOW POOLS, SHOW SERVERS, SHOW CLIENTS, SHOW DATABASES, SHOW BACKENDS, SHOW QUERIES, SHOW ADVISORIES, SHOW TENANCY, SHOW TENANCY TABLES, SHOW CONFIG, SHOW MEMORY, SHOW CACHE, SHOW LIMITS, SHOW VERSION, BLOCK QUERY <id>, UNBLOCK QUERY <id>, CLEAR CACHE, RELOAD, PAUSE, RESUME")),
    }
}

fn encode_table(out: &mut BytesMut, table: &Table) {
    // RowDescription: every column is text (OID 25).
    let at = out.len();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(table.columns.len() as i16);
    for column in &table.columns {
        out.put_slice(column.as_bytes());
        out.put_u8(0);
        out.put_i32(0);
        out.put_i16(0);
        out.put_i32(25);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i16(0);
    }
    let len = (out.len() - at - 1) as i32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
    for row in &table.rows {
        let at = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(row.len() as i16);
        for value in row {
            out.put_i32(value.len() as i32);
            out.put_slice(value.as_bytes());
        }
        let len = (out.len() - at - 1) as i32;
        out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
    }
    command_complete(out, &format!("SHOW {}", table.rows.len()));
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    out.put_u8(b'C');
    out.put_i32((tag.len() + 5) as i32);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}
