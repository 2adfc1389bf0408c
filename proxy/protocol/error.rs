//! `ErrorResponse` as the proxy sends it: severity, SQLSTATE, message, hint.
//!
//! Each room has its own error enum; they all end up here, as fields a PostgreSQL
//! client library understands.

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// SQLSTATE codes the proxy itself reports (PostgreSQL Appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH: SqlState = SqlState("08001");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CRASH_SHUTDOWN: SqlState = SqlState("57P02");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const INVALID_PREPARED_STATEMENT: SqlState = SqlState("26000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25001");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
}

/// Severity of an error the proxy reports: `ERROR` keeps the connection, `FATAL` ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// What a client reads when the proxy refuses something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Appends the `ErrorResponse` message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut info = ErrorInfo::new(
            severity.to_string(),
            self.code.0.to_string(),
            format!("pgwarden: {}", self.message),
        );
        info.severity_nonlocalized = Some(severity.to_string());
        info.detail = self.detail.clone();
        info.hint = self.hint.clone();
        // Encoding a bounded, proxy-made message cannot fail; a failure would only
        // mean an over-long message, which we then shorten.
        if ErrorResponse::from(info).encode(out).is_err() {
            let short = ErrorInfo::new(
                severity.to_string(),
                self.code.0.to_string(),
                "pgwarden: error message too long".to_string(),
            );
            let _ = ErrorResponse::from(short).encode(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_code_and_message() {
        let mut out = BytesMut::new();
        ErrorFields::error(SqlState::INVALID_PASSWORD, "bad password")
            .with_hint("check it")
            .encode(&mut out);
        assert_eq!(out[0], b'E');
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("C28P01\0"));
        assert!(text.contains("pgwarden: bad password"));
        assert!(text.contains("Hcheck it\0"));
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
    }
}
