//! Errors pgwarden decides on but lets the attached server raise, so that the server's
//! transaction fails exactly as PostgreSQL's own error would fail it.
//!
//! A refusal answered by the proxy alone leaves the server's transaction open: the
//! client would read `ReadyForQuery` with status `T` after an error, and an extended
//! batch's earlier statements would still commit at `Sync`. Inside a transaction (or
//! an extended batch that already executed a statement) pgwarden therefore sends a
//! statement raising its error in place of the refused message. The client then gets
//! PostgreSQL's own answers from there on: status `E`, 25P02 for what follows in the
//! transaction, and the batch rolled back.

use bytes::{BufMut, BytesMut};

use super::responses::Expect;
use super::session::Session;
use super::statements::StatementId;
use super::tenancy::query_frame;
use super::SessionError;
use crate::protocol::error::ErrorFields;
use crate::protocol::extended::write_parse;
use crate::protocol::sql_quote::quote_literal;
use crate::protocol::tag::{frontend as tag, TransactionStatus};

/// A `DO` block that raises `fields` as an error, with pgwarden's message prefix.
fn raising_statement(fields: &ErrorFields) -> String {
    let mut body = format!(
        "BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}",
        quote_literal(fields.code.0),
        quote_literal(&format!("pgwarden: {}", fields.message)),
    );
    if let Some(detail) = &fields.detail {
        body.push_str(", DETAIL = ");
        body.push_str(&quote_literal(detail));
    }
    if let Some(hint) = &fields.hint {
        body.push_str(", HINT = ");
        body.push_str(&quote_literal(hint));
    }
    body.push_str("; END");
    format!("DO {}", dollar_quoted(&body))
}

/// `body` between dollar quotes whose tag it does not contain. Messages carry text a
/// client chose (a refused setting's value): a fixed tag, even with its occurrences
/// removed from that text, could be closed from inside it (`$pgw$pgwarden$arden$`
/// loses its middle and becomes the tag), and what followed would run as SQL.
fn dollar_quoted(body: &str) -> String {
    let mut tag = String::from("$pgwarden$");
    let mut n = 0u32;
    while body.contains(tag.as_str()) {
        n += 1;
        tag = format!("$pgwarden{n}$");
    }
    format!("{tag}{body}{tag}")
}

impl Session {
    /// Whether an error now would fail a transaction open on the attached server: an
    /// explicit one, or the implicit transaction of an extended batch that already
    /// executed a statement. (`Sync` itself ends the batch, so it never raises.)
    pub(super) fn error_fails_server_transaction(&self, message_tag: u8) -> bool {
        self.server.is_some()
            && message_tag != tag::SYNC
            && (self.status == TransactionStatus::InTransaction || self.executed_in_batch)
    }

    /// Reports `error` through the attached server: a statement that raises it runs
    /// in place of the refused message (`message_tag`), and the rest of an extended
    /// batch is skipped up to its `Sync`, as PostgreSQL skips it after an error.
    pub(super) fn raise_on_server(&mut self, message_tag: u8, error: &SessionError) {
        let Some(fields) = error.to_error_fields() else {
            return;
        };
        let sql = raising_statement(&fields);
        match message_tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                self.to_server.extend_from_slice(&query_frame(&sql));
                self.responses.push(Expect::Query, &mut self.to_client);
            }
            _ => {
                let mut definition = Vec::with_capacity(sql.len() + 3);
                definition.extend_from_slice(sql.as_bytes());
                definition.extend_from_slice(&[0, 0, 0]);
                let mut out = BytesMut::new();
                write_parse(&mut out, b"", &definition);
                // Bind: unnamed portal and statement, no formats, no parameters.
                out.put_u8(tag::BIND);
                out.put_i32(4 + 1 + 1 + 2 + 2 + 2);
                out.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
                // Execute: unnamed portal, no row limit.
                out.put_u8(tag::EXECUTE);
                out.put_i32(4 + 1 + 4);
                out.put_slice(&[0, 0, 0, 0, 0]);
                self.to_server.extend_from_slice(&out);
                self.responses
                    .push(Expect::Swallow(StatementId(0)), &mut self.to_client);
                self.responses
                    .push(Expect::SwallowBind, &mut self.to_client);
                self.responses.push(Expect::Execute, &mut self.to_client);
                self.skip_until_sync = true;
                self.batch_open = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::SqlState;

    #[test]
    fn the_raising_statement_carries_code_message_detail_and_hint() {
        let fields = ErrorFields::error(SqlState::ACTIVE_SQL_TRANSACTION, "it's refused")
            .with_detail("why")
            .with_hint("COMMIT or ROLLBACK first");
        assert_eq!(
            raising_statement(&fields),
            "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = '25001', \
             MESSAGE = 'pgwarden: it''s refused', DETAIL = 'why', \
             HINT = 'COMMIT or ROLLBACK first'; END$pgwarden$"
        );
    }

    #[test]
    fn text_from_a_client_cannot_close_the_dollar_quote() {
        for value in [
            "a$pgwarden$b",
            "$pgw$pgwarden$arden$; DROP TABLE t; --",
            "$pgwarden$ $pgwarden1$ $pgwarden2$",
        ] {
            let fields = ErrorFields::error(SqlState::INVALID_PARAMETER_VALUE, value);
            let sql = raising_statement(&fields);
            let tag = &sql[3..sql.find("BEGIN").unwrap()];
            assert!(tag.starts_with("$pgwarden") && tag.ends_with('$'), "{sql}");
            assert_eq!(sql.matches(tag).count(), 2, "{sql}");
            assert!(sql.starts_with(&format!("DO {tag}BEGIN")), "{sql}");
            assert!(sql.ends_with(&format!("END{tag}")), "{sql}");
            // The message itself arrives whole.
            assert!(
                sql.contains(&quote_literal(&format!("pgwarden: {value}"))),
                "{sql}"
            );
        }
    }
}
