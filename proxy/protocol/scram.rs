//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, without I/O: the key
//! math, the verifier `pg_authid` stores, and the messages of both sides.
//!
//! The math pgwarden needs beyond a plain SCRAM server is the pass-through of
//! PgBouncer: a client's proof reveals its `ClientKey`
//! (`ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked by
//! `H(ClientKey) = StoredKey`), and with `ClientKey` pgwarden can answer the server's
//! own challenge for that role (`ClientProof' = ClientKey XOR HMAC(StoredKey,
//! AuthMessage')`) without ever knowing the password.
//!
//! Only the `n` and `y` channel-binding flags are accepted: pgwarden does not offer
//! `SCRAM-SHA-256-PLUS`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Length of every SCRAM-SHA-256 key, proof and signature.
pub const KEY_LEN: usize = 32;
pub type Key = [u8; KEY_LEN];

/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported (pgwarden does not offer SCRAM-SHA-256-PLUS)")]
    ChannelBinding,
    #[error("SCRAM authorization identities are not supported")]
    AuthorizationIdentity,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("the server rejected SCRAM authentication: {0}")]
    ServerError(String),
}

pub fn hmac(key: &[u8], message: &[u8]) -> Key {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

pub fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The proof a client sends: `ClientKey XOR HMAC(H(ClientKey), AuthMessage)`.
pub fn client_proof(client_key: &Key, auth_message: &[u8]) -> Key {
    xor(client_key, &hmac(&sha256(client_key), auth_message))
}

/// A fresh nonce: 18 random bytes in base64, as PostgreSQL makes them.
pub fn new_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    STANDARD.encode(bytes)
}

/// What the server stores for a role: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Key,
    pub server_key: Key,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses the `pg_authid.rolpassword` form; `None` if it is not a well-formed verifier.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let salt = STANDARD.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(Verifier {
            salt,
            iterations,
            stored_key: STANDARD.decode(stored).ok()?.try_into().ok()?,
            server_key: STANDARD.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// The verifier of `salted_password` (PBKDF2 of the password; used by tests).
    pub fn from_salted_password(salted_password: &Key, salt: &[u8], iterations: u32) -> Verifier {
        let client_key = hmac(salted_password, b"Client Key");
        Verifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(salted_password, b"Server Key"),
        }
    }

    /// The client's `ClientKey`, if `proof` proves it knows the password.
    pub fn recover_client_key(&self, auth_message: &[u8], proof: &Key) -> Option<Key> {
        let client_key = xor(proof, &hmac(&self.stored_key, auth_message));
        constant_time_eq(&sha256(&client_key), &self.stored_key).then_some(client_key)
    }

    /// `ServerSignature = HMAC(ServerKey, AuthMessage)`.
    pub fn server_signature(&self, auth_message: &[u8]) -> Key {
        hmac(&self.server_key, auth_message)
    }
}

/// `AuthMessage = client-first-bare "," server-first "," client-final-without-proof`.
pub fn auth_message(client_first_bare: &str, server_first: &str, without_proof: &str) -> String {
    format!("{client_first_bare},{server_first},{without_proof}")
}

/// The client's first message, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// `n,,` or `y,,`: echoed (base64) in the client's final message.
    pub gs2_header: String,
    /// Everything after the GS2 header (part of the AuthMessage).
    pub bare: String,
    pub nonce: String,
}

/// Parses `gs2-header client-first-message-bare`. The user name in it is ignored, as
/// PostgreSQL ignores it (the startup packet names the role).
pub fn parse_client_first(data: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (flag, rest) = text
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::AuthorizationIdentity);
    }
    let gs2_len = flag.len() + 1 + authzid.len() + 1;
    let mut fields = bare.split(',');
    if !fields.next().is_some_and(|f| f.starts_with("n=")) {
        return Err(ScramError::Malformed(
            "expected n=<user> (m= extensions are not supported)",
        ));
    }
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .filter(|n| valid_nonce(n))
        .ok_or(ScramError::Malformed("expected r=<nonce>"))?;
    Ok(ClientFirst {
        gs2_header: text[..gs2_len].to_string(),
        bare: bare.to_string(),
        nonce: nonce.to_string(),
    })
}

/// `r=<client nonce + server nonce>,s=<salt>,i=<iterations>`.
pub fn server_first(nonce: &str, salt: &[u8], iterations: u32) -> String {
    format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt))
}

/// The client's final message, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinal {
    /// `c=...,r=...` (part of the AuthMessage).
    pub without_proof: String,
    pub proof: Key,
}

/// Parses `c=<gs2 header>,r=<nonce>[,ext],p=<proof>` and checks it answers `first` with
/// the combined `nonce`.
pub fn parse_client_final(
    data: &[u8],
    first: &ClientFirst,
    nonce: &str,
) -> Result<ClientFinal, ScramError> {
    let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let mut fields = without_proof.split(',');
    let binding = fields
        .next()
        .and_then(|f| f.strip_prefix("c="))
        .and_then(|c| STANDARD.decode(c).ok())
        .ok_or(ScramError::Malformed("expected c=<channel binding>"))?;
    if binding != first.gs2_header.as_bytes() {
        return Err(ScramError::ChannelBinding);
    }
    let client_nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .ok_or(ScramError::Malformed("expected r=<nonce>"))?;
    if !constant_time_eq(client_nonce.as_bytes(), nonce.as_bytes()) {
        return Err(ScramError::Nonce);
    }
    let proof: Key = STANDARD
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
    Ok(ClientFinal {
        without_proof: without_proof.to_string(),
        proof,
    })
}

/// `v=<server signature>`.
pub fn server_final(signature: &Key) -> String {
    format!("v={}", STANDARD.encode(signature))
}

/// The server's first message, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

/// Parses `r=<nonce>,s=<salt>,i=<iterations>` and checks the nonce extends ours.
pub fn parse_server_first(data: &[u8], client_nonce: &str) -> Result<ServerFirst, ScramError> {
    let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut fields = text.split(',');
    let mut field = |prefix: &str, what: &'static str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(prefix).map(str::to_string))
            .ok_or(ScramError::Malformed(what))
    };
    let nonce = field("r=", "expected r=<nonce>")?;
    let salt = field("s=", "expected s=<salt>")?;
    let iterations = field("i=", "expected i=<iterations>")?;
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) || !valid_nonce(&nonce)
    {
        return Err(ScramError::Nonce);
    }
    Ok(ServerFirst {
        nonce,
        salt: STANDARD
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?,
        iterations: iterations
            .parse()
            .map_err(|_| ScramError::Malformed("iterations is not a number"))?,
    })
}

/// Parses the server's final message: its signature, or the error it reports.
pub fn parse_server_final(data: &[u8]) -> Result<Key, ScramError> {
    let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    if let Some(error) = text.strip_prefix("e=") {
        return Err(ScramError::ServerError(error.to_string()));
    }
    text.strip_prefix("v=")
        .and_then(|v| STANDARD.decode(v.split(',').next().unwrap_or(v)).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or(ScramError::Malformed("expected v=<server signature>"))
}

/// Printable ASCII except `,` (RFC 5802 `printable`).
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Verifier {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut salted);
        Verifier::from_salted_password(&salted, &salt, 4096)
    }

    #[test]
    fn rfc7677_vector_server_side_recovers_the_client_key() {
        let verifier = rfc_verifier();
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(first.gs2_header, "n,,");
        assert_eq!(first.nonce, "rOprNGfwEbeRWgbNEkqO");
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        assert_eq!(
            server_first(nonce, &verifier.salt, verifier.iterations),
            SERVER_FIRST
        );
        let last = parse_client_final(CLIENT_FINAL.as_bytes(), &first, nonce).unwrap();
        let auth = auth_message(&first.bare, SERVER_FIRST, &last.without_proof);
        let client_key = verifier
            .recover_client_key(auth.as_bytes(), &last.proof)
            .expect("the RFC's proof is valid");
        assert_eq!(sha256(&client_key), verifier.stored_key);
        assert_eq!(
            server_final(&verifier.server_signature(auth.as_bytes())),
            SERVER_FINAL
        );

        // The pass-through side: the recovered ClientKey answers the same challenge
        // with the RFC's proof, and the server's signature checks out with ServerKey.
        assert_eq!(client_proof(&client_key, auth.as_bytes()), last.proof);
        let signature = parse_server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert_eq!(signature, hmac(&verifier.server_key, auth.as_bytes()));

        // A different password's proof is refused.
        let mut wrong = last.proof;
        wrong[0] ^= 1;
        assert!(verifier
            .recover_client_key(auth.as_bytes(), &wrong)
            .is_none());
    }

    #[test]
    fn client_side_parses_the_rfc_server_first() {
        let first = parse_server_first(SERVER_FIRST.as_bytes(), "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.iterations, 4096);
        assert_eq!(first.salt, rfc_verifier().salt);
        assert_eq!(
            parse_server_first(SERVER_FIRST.as_bytes(), "other"),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            parse_server_final(b"e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn verifier_round_trips_pg_authid_text() {
        let v = rfc_verifier();
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            STANDARD.encode(&v.salt),
            STANDARD.encode(v.stored_key),
            STANDARD.encode(v.server_key)
        );
        assert_eq!(Verifier::parse(&text), Some(v));
        assert!(Verifier::parse("SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=").is_none());
        assert!(Verifier::parse("md5abc").is_none());
        assert!(!format!("{:?}", rfc_verifier()).contains("stored"));
    }

    #[test]
    fn malformed_client_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"x,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a b",
            b"\xff\xfe",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        let first = parse_client_first(b"y,,n=,r=abc").unwrap();
        assert_eq!(first.gs2_header, "y,,");
        for bad in [
            &b""[..],
            b"c=biws,r=abcdef,p=AAAA",
            b"c=eSws,r=abcdeX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"c=biws,r=abcdef,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"r=abcdef,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        ] {
            assert!(
                parse_client_final(bad, &first, "abcdef").is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_client_final(
            b"c=eSws,r=abcdef,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &first,
            "abcdef"
        )
        .is_ok());
    }
}
