//! Client authentication: SCRAM-SHA-256 (pgwire's server-side SCRAM), md5, or trust,
//! for users listed in the configuration; and for roles found with `auth_query`,
//! pgwarden's own SCRAM server (`scram_server`, which yields the keys pass-through
//! needs) or md5 against the looked-up hash.

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{DecodeContext, Message};
use tokio::io::AsyncWriteExt;

use super::auth_query::{mock_verifier, AuthQuery, RoleSecret};
use super::credentials::UserSecret;
use super::handshake::read_auth_message;
use super::stream::ClientStream;
use super::SessionError;
use crate::config::AuthMethod;
use crate::pool::scram_passthrough::{PassthroughSecret, ScramKeys};
use crate::protocol::backend;
use crate::protocol::tag::frontend as tag;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Authenticates `user`; on success `AuthenticationOk` has been written to `out`.
pub(crate) async fn authenticate(
    stream: &mut ClientStream,
    method: AuthMethod,
    user: &str,
    secret: Option<&UserSecret>,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let failed = || SessionError::AuthFailed(user.to_string());
    let mut buf = BytesMut::new();
    if method != AuthMethod::Trust {
        let secret = secret.ok_or_else(failed)?;
        // As PostgreSQL does: a SCRAM verifier always means SCRAM; an md5 hash only
        // allows md5.
        let use_scram =
            secret.scram.is_some() && (method == AuthMethod::ScramSha256 || secret.md5.is_none());
        if use_scram {
            scram(stream, &mut buf, secret, user).await?;
        } else {
            md5(stream, &mut buf, secret, user).await?;
        }
    }
    backend::authentication(out, Authentication::Ok);
    Ok(())
}

/// Authenticates `user`, a role not listed in the configuration, against the secret
/// `auth_query` finds for it on `database`. On success `AuthenticationOk` has been
/// written to `out` and the secret pass-through logs in upstream with is returned.
///
/// An unknown role, one without a usable password, and (with method
/// `scram-sha-256`, as in PostgreSQL) one whose password is stored as md5 all go
/// through a SCRAM exchange against a mock verifier and fail at its last step with the
/// message of a wrong password.
pub(crate) async fn authenticate_looked_up(
    stream: &mut ClientStream,
    lookups: &AuthQuery,
    method: AuthMethod,
    database: &str,
    user: &str,
    out: &mut BytesMut,
) -> Result<PassthroughSecret, SessionError> {
    let secret = lookups.lookup(database, user).await.map_err(|e| {
        tracing::warn!(%database, %user, error = %e, "auth_query lookup failed");
        SessionError::AuthLookup(user.to_string())
    })?;
    let mut buf = BytesMut::new();
    let passthrough = match &*secret {
        RoleSecret::Scram(verifier) => {
            let client_key =
                super::scram_server::exchange(stream, &mut buf, verifier, false, user).await?;
            PassthroughSecret::Scram(ScramKeys {
                salt: verifier.salt.clone(),
                iterations: verifier.iterations,
                client_key,
                server_key: verifier.server_key,
            })
        }
        RoleSecret::Md5(hash) if method == AuthMethod::Md5 => {
            let secret = UserSecret {
                scram: None,
                md5: Some(hash.clone()),
            };
            md5(stream, &mut buf, &secret, user).await?;
            PassthroughSecret::Md5Hash(hash.clone())
        }
        other => {
            if matches!(other, RoleSecret::Md5(_)) {
                tracing::warn!(%user, "the role's password is stored as md5 but auth.method is scram-sha-256: refused, as PostgreSQL does");
            }
            let mock = mock_verifier(user);
            super::scram_server::exchange(stream, &mut buf, &mock, true, user).await?;
            return Err(SessionError::AuthFailed(user.to_string()));
        }
    };
    backend::authentication(out, Authentication::Ok);
    Ok(passthrough)
}

async fn scram(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    secret: &UserSecret,
    user: &str,
) -> Result<(), SessionError> {
    let failed = || SessionError::AuthFailed(user.to_string());
    let verifier = secret.scram.as_ref().ok_or_else(failed)?;
    let mut out = BytesMut::new();
    let data = scram_client_first(stream, buf).await?;
    let server = ScramServerAuth::new();
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(&data, verifier.secret())
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    backend::authentication(
        &mut out,
        Authentication::SASLContinue(server_first.into_bytes().into()),
    );
    send(stream, &mut out).await?;

    let final_message = password_message(stream, buf)
        .await?
        .into_sasl_response()
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let server_final = waiting
        .on_client_final_message(&final_message.data)
        .map_err(|_| failed())?;
    backend::authentication(
        &mut out,
        Authentication::SASLFinal(server_final.into_bytes().into()),
    );
    send(stream, &mut out).await
}

async fn md5(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    secret: &UserSecret,
    user: &str,
) -> Result<(), SessionError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    backend::authentication(&mut out, Authentication::MD5Password(salt.to_vec()));
    send(stream, &mut out).await?;
    let answer = password_message(stream, buf)
        .await?
        .into_password()
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    if secret.check_md5(&answer.password, &salt) {
        Ok(())
    } else {
        Err(SessionError::AuthFailed(user.to_string()))
    }
}

/// Offers SCRAM-SHA-256 and returns the client's `client-first-message`.
pub(super) async fn scram_client_first(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, SessionError> {
    let mut out = BytesMut::new();
    backend::authentication(
        &mut out,
        Authentication::SASL(vec![SCRAM_SHA_256.to_string()]),
    );
    send(stream, &mut out).await?;
    let initial = password_message(stream, buf)
        .await?
        .into_sasl_initial_response()
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    if initial.auth_method != SCRAM_SHA_256 {
        return Err(SessionError::Protocol(format!(
            "unsupported SASL mechanism {:?}",
            initial.auth_method
        )));
    }
    initial
        .data
        .map(|data| data.to_vec())
        .ok_or_else(|| SessionError::Protocol("empty SCRAM client-first message".into()))
}

pub(super) async fn password_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<PasswordMessageFamily, SessionError> {
    let mut frame = read_auth_message(stream, buf).await?;
    if frame[0] != tag::PASSWORD {
        return Err(SessionError::Protocol(format!(
            "expected a password message, got message type {:?}",
            frame[0] as char
        )));
    }
    PasswordMessageFamily::decode(&mut frame, &DecodeContext::default())
        .map_err(|e| SessionError::Protocol(e.to_string()))?
        .ok_or_else(|| SessionError::Protocol("truncated password message".into()))
}

pub(super) async fn send(
    stream: &mut ClientStream,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    stream
        .write_all(out)
        .await
        .map_err(SessionError::ClientIo)?;
    out.clear();
    Ok(())
}
