//! pgwarden's own server side of SCRAM-SHA-256, for roles found with `auth_query`.
//!
//! pgwire's SCRAM server checks the client's proof but keeps the `ClientKey` it
//! recovers to itself; pass-through needs it, so this exchange (the messages and math
//! of `protocol::scram`) returns it. With a mock verifier (`doomed`), every step runs
//! as for a real role and the proof is then refused, so an unknown role fails exactly
//! where a wrong password does.

use bytes::BytesMut;
use pgwire::messages::startup::Authentication;

use super::auth::{password_message, scram_client_first, send};
use super::stream::ClientStream;
use super::SessionError;
use crate::protocol::backend;
use crate::protocol::scram::{self, Key, ScramError, Verifier};

/// Runs the exchange against `verifier`; on success returns the client's `ClientKey`
/// (the `SASLFinal` has been sent; `AuthenticationOk` is the caller's).
pub(crate) async fn exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    verifier: &Verifier,
    doomed: bool,
    user: &str,
) -> Result<Key, SessionError> {
    let mut out = BytesMut::new();
    let data = scram_client_first(stream, buf).await?;
    let first = scram::parse_client_first(&data).map_err(protocol)?;
    let nonce = format!("{}{}", first.nonce, scram::new_nonce());
    let server_first = scram::server_first(&nonce, &verifier.salt, verifier.iterations);
    backend::authentication(
        &mut out,
        Authentication::SASLContinue(server_first.clone().into_bytes().into()),
    );
    send(stream, &mut out).await?;

    let response = password_message(stream, buf)
        .await?
        .into_sasl_response()
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let last = scram::parse_client_final(&response.data, &first, &nonce).map_err(protocol)?;
    let auth_message = scram::auth_message(&first.bare, &server_first, &last.without_proof);
    let client_key = verifier.recover_client_key(auth_message.as_bytes(), &last.proof);
    let client_key = match client_key {
        Some(key) if !doomed => key,
        _ => return Err(SessionError::AuthFailed(user.to_string())),
    };
    let signature = verifier.server_signature(auth_message.as_bytes());
    backend::authentication(
        &mut out,
        Authentication::SASLFinal(scram::server_final(&signature).into_bytes().into()),
    );
    send(stream, &mut out).await?;
    Ok(client_key)
}

fn protocol(e: ScramError) -> SessionError {
    SessionError::Protocol(e.to_string())
}
