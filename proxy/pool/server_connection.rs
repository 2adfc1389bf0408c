//! One authenticated connection to a PostgreSQL server, as the pool holds it.

use bytes::BytesMut;

use super::coarse_clock::CoarseInstant;

/// `BackendKeyData` of a server connection: what a `CancelRequest` must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: i32,
}

/// The socket plus what the proxy must remember about the server session behind it.
#[derive(Debug)]
pub struct ServerConnection {
    pub stream: super::ServerStream,
    /// Bytes read from the server and not yet relayed.
    pub read_buf: BytesMut,
    /// `host:port`, for cancel requests and logs (shared: a checkout hands it to the
    /// client's cancel slot without copying).
    pub address: std::sync::Arc<str>,
    pub key: BackendKey,
    /// `ParameterStatus` values reported at login.
    pub parameters: Vec<(String, String)>,
    /// Proxy-wide names of statements prepared on this connection.
    pub prepared: super::prepared::PreparedStatements,
    /// Fingerprint of the client settings (`SET`) last applied; 0 = server defaults.
    pub settings_hash: u64,
    /// Set when the connection's state is unknown (error mid-message, client vanished
    /// mid-transaction): the pool discards it instead of reusing it.
    pub broken: bool,
    /// When it was last returned or checked (coarse: the pool needs milliseconds).
    pub last_used: CoarseInstant,
    /// When it logged in (for `pool.max_lifetime_ms` while it is parked warm).
    pub opened: CoarseInstant,
    /// The server session reads `'\'` as a quote escape: `standard_conforming_strings`
    /// is off, at login (a role, database or server default) or since (a
    /// `ParameterStatus`). The tenant guard lexes as PostgreSQL does with it on, so a
    /// guarded statement must not run here.
    pub nonstandard_strings: bool,
    /// It ran code the proxy cannot see into (a `DO` block, `CALL`, a user function):
    /// its session is reset before anyone uses it again.
    pub needs_reset: bool,
    /// The client (by its cancel key) whose statements may have left `currval` or
    /// `lastval` state in this session; 0 when none may have. Another client taking
    /// the connection has it discarded first (`server/sequence_state.rs`).
    pub sequences_of: u64,
    /// The client (by its cancel key) whose statements may have seeded this session's
    /// random numbers (`setseed`, `SET seed`), which `DISCARD ALL` keeps; 0 when none
    /// may have. Another client taking the connection has it reseeded first
    /// (`server/random_seed.rs`).
    pub seeded_by: u64,
}

impl ServerConnection {
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Notes a `ParameterStatus` the server sent (at login, or with a proxy-internal
    /// query; answers to clients go through [`nonstandard_strings_in`]).
    pub fn note_parameter(&mut self, name: &[u8], value: &[u8]) {
        if let Some(nonstandard) = string_syntax_of(name, value) {
            self.nonstandard_strings = nonstandard;
        }
    }
}

/// What a `ParameterStatus` says of `standard_conforming_strings`: Some(true) when it
/// is off. None for any other parameter.
pub fn string_syntax_of(name: &[u8], value: &[u8]) -> Option<bool> {
    (name == b"standard_conforming_strings").then(|| value != b"on")
}

/// [`string_syntax_of`] for a whole `ParameterStatus` frame (tag and length included).
pub fn nonstandard_strings_in(frame: &[u8]) -> Option<bool> {
    let mut fields = frame.get(5..).unwrap_or_default().split(|b| *b == 0);
    string_syntax_of(fields.next()?, fields.next()?)
}

impl ServerConnection {
    /// Runs a proxy-internal simple query (health check, `DISCARD ALL`, settings
    /// replay) and discards its answer. Any `ErrorResponse` fails it; the connection is
    /// then in an unknown state and should be marked broken by the caller.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), super::PoolError> {
        self.query_values(sql).await.map(|_| ())
    }

    /// Runs a proxy-internal query and returns the text values of its first row.
    pub async fn query_values(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Option<String>>, super::PoolError> {
        match self.run_collecting(sql).await? {
            Ok(answer) => Ok(answer.values),
            Err((_, message)) => Err(super::PoolError::Unhealthy(message)),
        }
    }

    /// Runs proxy-internal statements (a client's startup settings) and returns the
    /// `ParameterStatus` values the server reported meanwhile: its own spelling of them.
    pub async fn run_reporting(
        &mut self,
        sql: &str,
    ) -> Result<Vec<(String, String)>, super::PoolError> {
        match self.run_collecting(sql).await? {
            Ok(answer) => Ok(answer.parameters),
            Err((code, message)) => Err(super::PoolError::Refused { code, message }),
        }
    }

    /// The answer, or the server's error (SQLSTATE, message), or an I/O failure.
    async fn run_collecting(
        &mut self,
        sql: &str,
    ) -> Result<Result<InternalAnswer, (String, String)>, super::PoolError> {
        use crate::protocol::frame::check_frame;
        use crate::protocol::tag::backend as tag;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.stream.write_all(&out).await.map_err(|e| self.io(e))?;
        let mut values = None;
        let mut parameters = Vec::new();
        let mut failure = None;
        loop {
            while let Some(len) = check_frame(&self.read_buf, 1 << 30)
                .map_err(|e| self.io(std::io::Error::other(e)))?
            {
                let frame = self.read_buf.split_to(len);
                match frame[0] {
                    tag::DATA_ROW if values.is_none() => {
                        values = Some(decode_data_row(&frame[5..]))
                    }
                    tag::ERROR_RESPONSE => {
                        let field = |tag: u8| {
                            frame[5..]
                                .split(|b| *b == 0)
                                .find(|f| f.first() == Some(&tag))
                                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                                .unwrap_or_default()
                        };
                        failure = Some((field(b'C'), field(b'M')))
                    }
                    tag::PARAMETER_STATUS => {
                        let mut fields = frame[5..].split(|b| *b == 0);
                        if let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                            self.note_parameter(name, value);
                            parameters.push((
                                String::from_utf8_lossy(name).into_owned(),
                                String::from_utf8_lossy(value).into_owned(),
                            ));
                        }
                    }
                    tag::READY_FOR_QUERY => {
                        return Ok(match failure {
                            Some(failure) => Err(failure),
                            None => Ok(InternalAnswer {
                                values: values.unwrap_or_default(),
                                parameters,
                            }),
                        });
                    }
                    _ => {}
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(super::PoolError::Unhealthy(
                    "server closed the connection".into(),
                ));
            }
        }
    }

    /// True when the idle connection has nothing pending, buffered or on the socket: no
    /// unsolicited message (such as a FATAL sent by a server shutting down) and no EOF.
    /// What a pooled connection must pass to be handed out again.
    pub fn is_quiet_while_idle(&self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    fn io(&self, source: std::io::Error) -> super::PoolError {
        super::PoolError::Io {
            address: self.address.to_string(),
            source,
        }
    }
}

/// What a proxy-internal query returned.
struct InternalAnswer {
    values: Vec<Option<String>>,
    parameters: Vec<(String, String)>,
}

/// Text values of a `DataRow` body (proxy-internal queries only).
fn decode_data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut values = Vec::new();
    if body.len() < 2 {
        return values;
    }
    let count = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
    let mut at = 2;
    for _ in 0..count {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let Some(bytes) = body.get(at..at + len as usize) else {
            break;
        };
        values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        at += len as usize;
    }
    values
}
