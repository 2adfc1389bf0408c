//! Logging in to PostgreSQL as a role whose password pgwarden does not know
//! (`auth_query` roles), by reusing what the role's own client proved, as PgBouncer
//! does:
//!
//! - SCRAM: the client's proof gave pgwarden the role's `ClientKey` (and the verifier
//!   its `ServerKey`). Answering the server's challenge needs nothing else:
//!   `ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage)`, and the server's
//!   signature is checked with `ServerKey`. The server's salt and iteration count must
//!   be the ones the client logged in against (the same `pg_authid` row).
//! - md5: PostgreSQL asks for `md5(md5hash + salt)`, and the md5 hash is what the
//!   lookup returned.
//!
//! The secrets live only in memory, one slot per (database, role), filled when a client
//! of the role logs in; they are never logged (`Debug` prints no key). Until a client
//! of a role has logged in, the role's pool cannot connect.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use crate::protocol::scram::{self, Key, ScramError};

/// What a pool may log in with for one role.
#[derive(Clone)]
pub enum PassthroughSecret {
    Scram(ScramKeys),
    /// `md5` + hex(md5(password || role)), as `pg_authid` stores it.
    Md5Hash(String),
}

/// The keys proven by a client's SCRAM login, and the parameters they belong to.
#[derive(Clone)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub client_key: Key,
    pub server_key: Key,
}

impl fmt::Debug for PassthroughSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassthroughSecret::Scram(keys) => write!(
                f,
                "Scram {{ iterations: {}, keys: <hidden> }}",
                keys.iterations
            ),
            PassthroughSecret::Md5Hash(_) => f.write_str("Md5Hash(<hidden>)"),
        }
    }
}

/// One role's pass-through secret, shared by that role's pools (primary and replicas).
#[derive(Default)]
pub struct PassthroughSlot {
    secret: ArcSwapOption<PassthroughSecret>,
}

impl fmt::Debug for PassthroughSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self.secret.load().is_some();
        write!(f, "PassthroughSlot {{ known: {known} }}")
    }
}

impl PassthroughSlot {
    pub fn set(&self, secret: PassthroughSecret) {
        self.secret.store(Some(Arc::new(secret)));
    }

    pub fn get(&self) -> Option<Arc<PassthroughSecret>> {
        self.secret.load_full()
    }
}

/// Slots by (database as clients name it, role). Filled only by successful logins, so
/// it holds at most one entry per real role.
#[derive(Default)]
pub struct PassthroughStore {
    slots: Mutex<HashMap<(String, String), Arc<PassthroughSlot>>>,
}

impl PassthroughStore {
    pub fn slot(&self, database: &str, role: &str) -> Arc<PassthroughSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((database.to_string(), role.to_string()))
            .or_default()
            .clone()
    }
}

/// Why a pass-through login failed.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error(
        "no client of this role has logged in since pgwarden started, so it has no keys to log in with"
    )]
    NoKeys,
    #[error("{0}")]
    Scram(#[from] ScramError),
    #[error(
        "the server's SCRAM salt or iteration count differs from the one the client logged in \
         against (password changed?); a new client login of the role refreshes the keys"
    )]
    StaleKeys,
    #[error("the server's SCRAM signature is wrong: it does not know this role's ServerKey")]
    ServerSignature,
    #[error("the server asks for {0}, which pass-through cannot answer for this role")]
    Unsupported(&'static str),
}

/// The client side of one SCRAM exchange with pass-through keys.
pub struct PassthroughClient {
    keys: ScramKeys,
    nonce: String,
    auth_message: Option<String>,
}

impl PassthroughClient {
    /// Starts an exchange; returns the client-first message to send.
    pub fn start(keys: ScramKeys) -> (PassthroughClient, Vec<u8>) {
        let nonce = scram::new_nonce();
        let first = format!("n,,{}", client_first_bare(&nonce));
        let client = PassthroughClient {
            keys,
            nonce,
            auth_message: None,
        };
        (client, first.into_bytes())
    }

    /// Answers the server-first message with the client-final message.
    pub fn on_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, PassthroughError> {
        let first = scram::parse_server_first(data, &self.nonce)?;
        if first.salt != self.keys.salt || first.iterations != self.keys.iterations {
            return Err(PassthroughError::StaleKeys);
        }
        let without_proof = format!("c=biws,r={}", first.nonce);
        let server_first = std::str::from_utf8(data)
            .map_err(|_| ScramError::Malformed("not UTF-8"))?
            .to_string();
        let auth_message = scram::auth_message(
            &client_first_bare(&self.nonce),
            &server_first,
            &without_proof,
        );
        let proof = scram::client_proof(&self.keys.client_key, auth_message.as_bytes());
        self.auth_message = Some(auth_message);
        use base64::Engine;
        let proof = base64::engine::general_purpose::STANDARD.encode(proof);
        Ok(format!("{without_proof},p={proof}").into_bytes())
    }

    /// Checks the server's signature.
    pub fn on_server_final(&self, data: &[u8]) -> Result<(), PassthroughError> {
        let signature = scram::parse_server_final(data)?;
        let auth_message = self
            .auth_message
            .as_deref()
            .ok_or(ScramError::Malformed("server-final before server-first"))?;
        let expected = scram::hmac(&self.keys.server_key, auth_message.as_bytes());
        if scram::constant_time_eq(&signature, &expected) {
            Ok(())
        } else {
            Err(PassthroughError::ServerSignature)
        }
    }
}

/// PostgreSQL ignores the SCRAM user name (the startup packet names the role); libpq
/// sends it empty too.
fn client_first_bare(nonce: &str) -> String {
    format!("n=,r={nonce}")
}

/// The answer to `AuthenticationMD5Password` from the stored md5 hash:
/// `"md5" + md5(hex-part-of-hash + salt)`.
pub fn md5_answer(md5_hash: &str, salt: [u8; 4]) -> Option<String> {
    use md5::{Digest, Md5};
    let hex_part = md5_hash.strip_prefix("md5")?;
    let mut hasher = Md5::new();
    hasher.update(hex_part.as_bytes());
    hasher.update(salt);
    let digest = hasher.finalize();
    Some(format!(
        "md5{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scram::Verifier;

    /// The server side (pgwarden's own SCRAM parser and a verifier) accepts what the
    /// pass-through client sends, and the client accepts the server's signature.
    #[test]
    fn passthrough_client_logs_in_against_the_verifier() {
        let salted = scram::sha256(b"some salted password");
        let verifier = Verifier::from_salted_password(&salted, b"salt-salt-salt!!", 4096);
        let client_key = scram::hmac(&salted, b"Client Key");
        let keys = ScramKeys {
            salt: verifier.salt.clone(),
            iterations: 4096,
            client_key,
            server_key: verifier.server_key,
        };
        let (mut client, first) = PassthroughClient::start(keys.clone());
        let parsed = scram::parse_client_first(&first).unwrap();
        let nonce = format!("{}{}", parsed.nonce, scram::new_nonce());
        let server_first = scram::server_first(&nonce, &verifier.salt, verifier.iterations);
        let last = client.on_server_first(server_first.as_bytes()).unwrap();
        let last = scram::parse_client_final(&last, &parsed, &nonce).unwrap();
        let auth = scram::auth_message(&parsed.bare, &server_first, &last.without_proof);
        assert_eq!(
            verifier.recover_client_key(auth.as_bytes(), &last.proof),
            Some(client_key)
        );
        let server_final = scram::server_final(&verifier.server_signature(auth.as_bytes()));
        client.on_server_final(server_final.as_bytes()).unwrap();
        assert!(matches!(
            client.on_server_final(b"v=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            Err(PassthroughError::ServerSignature)
        ));

        // A server with another salt (the password changed) is refused before a proof
        // is sent.
        let (mut client, first) = PassthroughClient::start(keys);
        let parsed = scram::parse_client_first(&first).unwrap();
        let other = scram::server_first(&format!("{}xyz", parsed.nonce), b"other", 4096);
        assert!(matches!(
            client.on_server_first(other.as_bytes()),
            Err(PassthroughError::StaleKeys)
        ));
    }

    #[test]
    fn md5_answer_matches_postgres_protocol() {
        let salt = [9, 8, 7, 6];
        let hash = {
            use md5::{Digest, Md5};
            let d = Md5::digest(b"secretrole");
            format!(
                "md5{}",
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        assert_eq!(
            md5_answer(&hash, salt).unwrap(),
            postgres_protocol::authentication::md5_hash(b"role", b"secret", salt)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let secret = PassthroughSecret::Md5Hash("md5abcdef".into());
        assert!(!format!("{secret:?}").contains("abcdef"));
        let slot = PassthroughSlot::default();
        slot.set(secret);
        assert_eq!(format!("{slot:?}"), "PassthroughSlot { known: true }");
    }
}
