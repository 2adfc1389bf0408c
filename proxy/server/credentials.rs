//! What pgwarden knows about each user's password, prepared once per configuration:
//! a SCRAM verifier (salt, iterations, StoredKey, ServerKey) and/or an md5 hash.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::{Digest, Md5};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret, SCRAM_ITERATIONS};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct ScramVerifier {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramVerifier {
    pub fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }

    fn from_plain(password: &str) -> ScramVerifier {
        let salt: [u8; 16] = rand::random();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        match ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, SCRAM_ITERATIONS) {
            ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            } => ScramVerifier {
                salt,
                iterations,
                stored_key,
                server_key,
            },
            ScramSecret::SaltedPassword { .. } => unreachable!("verifier_from_salted_password"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (pg_authid form).
    fn from_pg_authid(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            salt: STANDARD.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        })
    }
}

/// One user's ways to prove who they are.
#[derive(Debug, Clone, Default)]
pub struct UserSecret {
    pub scram: Option<ScramVerifier>,
    /// `md5` + hex(md5(password || user)), as PostgreSQL stores it.
    pub md5: Option<String>,
}

impl UserSecret {
    /// Checks an md5 `PasswordMessage` answer for `salt`.
    pub fn check_md5(&self, answer: &str, salt: &[u8; 4]) -> bool {
        let Some(stored) = &self.md5 else {
            return false;
        };
        let mut hasher = Md5::new();
        hasher.update(&stored.as_bytes()[3..]);
        hasher.update(salt);
        let expected = format!("md5{}", hex(&hasher.finalize()));
        constant_time_eq(expected.as_bytes(), answer.as_bytes())
    }
}

/// Secrets of every configured user.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    users: HashMap<String, UserSecret>,
}

impl Credentials {
    pub fn from_config(config: &Config) -> Credentials {
        let mut users = HashMap::new();
        for user in &config.auth.users {
            let Some(password) = &user.password else {
                continue;
            };
            let secret = if password.starts_with("SCRAM-SHA-256$") {
                UserSecret {
                    scram: ScramVerifier::from_pg_authid(password),
                    md5: None,
                }
            } else if password.len() == 35 && password.starts_with("md5") {
                UserSecret {
                    scram: None,
                    md5: Some(password.clone()),
                }
            } else {
                UserSecret {
                    scram: Some(ScramVerifier::from_plain(password)),
                    md5: Some(md5_of(password, &user.name)),
                }
            };
            users.insert(user.name.clone(), secret);
        }
        Credentials { users }
    }

    pub fn get(&self, user: &str) -> Option<&UserSecret> {
        self.users.get(user)
    }
}

fn md5_of(password: &str, user: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(password.as_bytes());
    hasher.update(user.as_bytes());
    format!("md5{}", hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_answer_matches_libpq() {
        // libpq: "md5" + md5(md5(password + user) + salt)
        let secret = UserSecret {
            scram: None,
            md5: Some(md5_of("secret", "app")),
        };
        let salt = [1, 2, 3, 4];
        let inner = md5_of("secret", "app");
        let mut h = Md5::new();
        h.update(&inner.as_bytes()[3..]);
        h.update(salt);
        let answer = format!("md5{}", hex(&h.finalize()));
        assert!(secret.check_md5(&answer, &salt));
        assert!(!secret.check_md5("md5deadbeef", &salt));
    }

    #[test]
    fn parses_pg_authid_scram() {
        let v = ScramVerifier::from_pg_authid("SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVk:c2VydmVy")
            .unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, b"saltsalt");
        assert_eq!(v.stored_key, b"stored");
    }
}
