//! Opening a server connection: TCP or a local socket, `StartupMessage`, authentication with
//! postgres-protocol (or, for `auth_query` roles, with the pass-through secret of
//! `scram_passthrough`), then `ParameterStatus`/`BackendKeyData` up to `ReadyForQuery`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::scram_passthrough::{
    md5_answer, PassthroughClient, PassthroughError, PassthroughSecret, PassthroughSlot,
};
use super::{BackendKey, CoarseInstant, PoolError, ServerConnection, ServerStream};

/// Where and as whom a pool logs in.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// `host:port`, or the path of a Unix-domain socket (`/run/postgresql/.s.PGSQL.5432`).
    pub address: String,
    /// `address` again, one allocation shared by every connection the pool opens: a
    /// session attaching a connection tells the cancel slot its address, which then
    /// compares by pointer (`server/cancel.rs`).
    pub shared_address: Arc<str>,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// For a role with no configured password (`auth_query`): the secret its clients'
    /// logins proved, used when `password` is `None`.
    pub passthrough: Option<Arc<PassthroughSlot>>,
    /// Dead-peer detection for the server socket (`proxy.tcp_keepalive_*`,
    /// `proxy.tcp_user_timeout_ms`).
    pub keepalive: crate::server::keepalive::DeadPeer,
}

impl ServerTarget {
    pub async fn connect(&self, timeout: Duration) -> Result<ServerConnection, PoolError> {
        tokio::time::timeout(timeout, self.connect_unbounded())
            .await
            .map_err(|_| PoolError::ConnectTimeout(self.address.clone()))?
    }

    async fn connect_unbounded(&self) -> Result<ServerConnection, PoolError> {
        let stream = ServerStream::connect(&self.address)
            .await
            .map_err(|source| PoolError::Connect {
                address: self.address.clone(),
                source,
            })?;
        if let Some(tcp) = stream.tcp() {
            let _ = tcp.set_nodelay(true);
            self.keepalive.apply(tcp);
        }
        let mut login = Login {
            target: self,
            stream,
            buf: BytesMut::with_capacity(8192),
        };
        let (key, parameters) = login.run().await?;
        let nonstandard_strings = parameters
            .iter()
            .rev()
            .find_map(|(name, value)| {
                super::server_connection::string_syntax_of(name.as_bytes(), value.as_bytes())
            })
            .unwrap_or(false);
        Ok(ServerConnection {
            stream: login.stream,
            read_buf: login.buf,
            address: self.shared_address.clone(),
            key,
            parameters,
            prepared: Default::default(),
            settings_hash: 0,
            broken: false,
            last_used: CoarseInstant::now(),
            opened: CoarseInstant::now(),
            nonstandard_strings,
            needs_reset: false,
            sequences_of: 0,
            seeded_by: 0,
        })
    }
}

struct Login<'a> {
    target: &'a ServerTarget,
    stream: ServerStream,
    buf: BytesMut,
}

impl Login<'_> {
    async fn run(&mut self) -> Result<(BackendKey, Vec<(String, String)>), PoolError> {
        let mut out = BytesMut::new();
        // No application_name: these connections serve clients, who must see their own
        // (or PostgreSQL's empty default), not the proxy's.
        let params = [
            ("user", self.target.user.as_str()),
            ("database", self.target.database.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut out).map_err(|e| self.io(e))?;
        self.send(&mut out).await?;
        self.authenticate().await?;

        let mut key = BackendKey { pid: 0, secret: 0 };
        let mut parameters = Vec::new();
        loop {
            match self.next().await? {
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(|e| self.io(e))?.to_string();
                    let value = body.value().map_err(|e| self.io(e))?.to_string();
                    parameters.push((name, value));
                }
                Message::BackendKeyData(body) => {
                    key = BackendKey {
                        pid: body.process_id(),
                        secret: body.secret_key(),
                    };
                }
                Message::ReadyForQuery(_) => return Ok((key, parameters)),
                Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => return Err(self.rejected(body.fields())),
                _ => return Err(self.protocol("unexpected message during login")),
            }
        }
    }

    async fn authenticate(&mut self) -> Result<(), PoolError> {
        let mut out = BytesMut::new();
        loop {
            match self.next().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    if self.passthrough()?.is_some() {
                        return Err(self.passthrough_error(PassthroughError::Unsupported(
                            "a cleartext password",
                        )));
                    }
                    let password = self.password()?;
                    frontend::password_message(password.as_bytes(), &mut out)
                        .map_err(|e| self.io(e))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = match self.passthrough()? {
                        Some(secret) => match &*secret {
                            PassthroughSecret::Md5Hash(hash) => md5_answer(hash, body.salt())
                                .ok_or_else(|| {
                                    self.passthrough_error(PassthroughError::Unsupported("md5"))
                                })?,
                            PassthroughSecret::Scram(_) => {
                                return Err(self.passthrough_error(PassthroughError::Unsupported(
                                    "md5 (the role's clients logged in with SCRAM)",
                                )))
                            }
                        },
                        None => md5_hash(
                            self.target.user.as_bytes(),
                            self.password()?.as_bytes(),
                            body.salt(),
                        ),
                    };
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| self.io(e))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(PoolError::UnsupportedAuth {
                            address: self.target.address.clone(),
                            method: "SASL without SCRAM-SHA-256".into(),
                        });
                    }
                    match self.passthrough()? {
                        Some(secret) => match &*secret {
                            PassthroughSecret::Scram(keys) => {
                                self.scram_passthrough(keys.clone()).await?
                            }
                            PassthroughSecret::Md5Hash(_) => {
                                return Err(self.passthrough_error(PassthroughError::Unsupported(
                                    "SCRAM (the role's password is stored as md5)",
                                )))
                            }
                        },
                        None => {
                            let password = self.password()?.to_string();
                            self.scram(password.as_bytes()).await?;
                        }
                    }
                    continue;
                }
                Message::ErrorResponse(body) => return Err(self.rejected(body.fields())),
                _ => {
                    return Err(PoolError::UnsupportedAuth {
                        address: self.target.address.clone(),
                        method: "GSS/SSPI/Kerberos".into(),
                    })
                }
            }
            self.send(&mut out).await?;
        }
    }

    async fn scram(&mut self, password: &[u8]) -> Result<(), PoolError> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)
            .map_err(|e| self.io(e))?;
        self.send(&mut out).await?;
        match self.next().await? {
            Message::AuthenticationSaslContinue(body) => {
                scram.update(body.data()).map_err(|e| self.io(e))?
            }
            Message::ErrorResponse(body) => return Err(self.rejected(body.fields())),
            _ => return Err(self.protocol("expected SASL continue")),
        }
        frontend::sasl_response(scram.message(), &mut out).map_err(|e| self.io(e))?;
        self.send(&mut out).await?;
        match self.next().await? {
            Message::AuthenticationSaslFinal(body) => {
                scram.finish(body.data()).map_err(|e| self.io(e))
            }
            Message::ErrorResponse(body) => Err(self.rejected(body.fields())),
            _ => Err(self.protocol("expected SASL final")),
        }
    }

    /// Logs in with the `ClientKey` a client of this role proved (no password).
    async fn scram_passthrough(
        &mut self,
        keys: super::scram_passthrough::ScramKeys,
    ) -> Result<(), PoolError> {
        let (mut scram, first) = PassthroughClient::start(keys);
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, &first, &mut out).map_err(|e| self.io(e))?;
        self.send(&mut out).await?;
        let last = match self.next().await? {
            Message::AuthenticationSaslContinue(body) => scram
                .on_server_first(body.data())
                .map_err(|e| self.passthrough_error(e))?,
            Message::ErrorResponse(body) => return Err(self.rejected(body.fields())),
            _ => return Err(self.protocol("expected SASL continue")),
        };
        frontend::sasl_response(&last, &mut out).map_err(|e| self.io(e))?;
        self.send(&mut out).await?;
        match self.next().await? {
            Message::AuthenticationSaslFinal(body) => scram
                .on_server_final(body.data())
                .map_err(|e| self.passthrough_error(e)),
            Message::ErrorResponse(body) => Err(self.rejected(body.fields())),
            _ => Err(self.protocol("expected SASL final")),
        }
    }

    /// The pass-through secret, for a role without a configured password; an error if
    /// the role has a slot but no client of it has logged in yet.
    fn passthrough(&self) -> Result<Option<Arc<PassthroughSecret>>, PoolError> {
        if self.target.password.is_some() {
            return Ok(None);
        }
        match &self.target.passthrough {
            None => Ok(None),
            Some(slot) => slot
                .get()
                .map(Some)
                .ok_or_else(|| self.passthrough_error(PassthroughError::NoKeys)),
        }
    }

    fn passthrough_error(&self, error: PassthroughError) -> PoolError {
        PoolError::Passthrough {
            address: self.target.address.clone(),
            user: self.target.user.clone(),
            message: error.to_string(),
        }
    }

    fn password(&self) -> Result<&str, PoolError> {
        self.target
            .password
            .as_deref()
            .ok_or_else(|| PoolError::NoPassword {
                address: self.target.address.clone(),
                user: self.target.user.clone(),
            })
    }

    async fn send(&mut self, out: &mut BytesMut) -> Result<(), PoolError> {
        self.stream
            .write_all(out)
            .await
            .map_err(|source| PoolError::Io {
                address: self.target.address.clone(),
                source,
            })?;
        out.clear();
        Ok(())
    }

    async fn next(&mut self) -> Result<Message, PoolError> {
        loop {
            if let Some(message) = Message::parse(&mut self.buf).map_err(|e| self.io(e))? {
                return Ok(message);
            }
            if self.buf.len() > 1 << 20 {
                return Err(self.protocol("login message over 1 MiB"));
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.protocol("server closed the connection during login"));
            }
        }
    }

    fn io(&self, source: std::io::Error) -> PoolError {
        PoolError::Io {
            address: self.target.address.clone(),
            source,
        }
    }

    fn protocol(&self, message: &str) -> PoolError {
        PoolError::Protocol {
            address: self.target.address.clone(),
            message: message.to_string(),
        }
    }

    fn rejected(&self, mut fields: ErrorFields<'_>) -> PoolError {
        let (mut code, mut message) = (String::new(), String::new());
        while let Ok(Some(field)) = fields.next() {
            match field.type_() {
                b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                _ => {}
            }
        }
        PoolError::Rejected {
            address: self.target.address.clone(),
            code,
            message,
        }
    }
}
