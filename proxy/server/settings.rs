//! Session settings (`SET`, `RESET`) a client made, kept by the proxy so they follow
//! the client from one pooled server connection to the next, and never leak to others.
//!
//! A server connection remembers the fingerprint of the settings last applied to it;
//! when a client with other settings checks it out, the proxy runs `RESET ALL` and
//! replays that client's statements first.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Server connections whose settings the proxy cannot vouch for carry this hash.
pub const UNKNOWN_SETTINGS: u64 = 1;

/// A change a simple-query statement makes to session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    Set { name: String, sql: String },
    Reset { name: String },
    ResetAll,
}

/// Recognizes a single `SET`/`RESET` statement. `SET LOCAL` and `SET TRANSACTION`
/// end with the transaction, so they are not session settings.
pub fn classify(sql: &str) -> Option<SettingChange> {
    let text = sql.trim().trim_end_matches(';').trim();
    if text.contains(';') || text.starts_with("--") || text.starts_with("/*") {
        return None;
    }
    let mut words = text.split_whitespace();
    let first = words.next()?.to_ascii_lowercase();
    match first.as_str() {
        "set" => {
            let mut word = words.next()?.to_ascii_lowercase();
            if word == "session" {
                word = words.next()?.to_ascii_lowercase();
                if word == "characteristics" || word == "authorization" {
                    return None;
                }
            }
            if word == "local" || word == "transaction" || word == "constraints" {
                return None;
            }
            let name = if word == "time" {
                "timezone".to_string()
            } else {
                word.split('=').next()?.trim_matches('"').to_string()
            };
            if name.is_empty() {
                return None;
            }
            Some(SettingChange::Set {
                name,
                sql: text.to_string(),
            })
        }
        "reset" => {
            let word = words.next()?.to_ascii_lowercase();
            if word == "all" {
                Some(SettingChange::ResetAll)
            } else {
                Some(SettingChange::Reset {
                    name: word.trim_matches('"').to_string(),
                })
            }
        }
        _ => None,
    }
}

/// Statements that wipe server session state wholesale.
pub fn discards_server_state(sql: &str) -> bool {
    let text = sql.trim_start().to_ascii_lowercase();
    text.starts_with("discard") || text.starts_with("deallocate")
}

#[derive(Debug, Default, Clone)]
pub struct SessionSettings {
    /// Setting name → statement that sets it, replayed in name order.
    entries: BTreeMap<String, String>,
    hash: u64,
}

impl SessionSettings {
    pub fn apply(&mut self, change: &SettingChange) {
        match change {
            SettingChange::Set { name, sql } => {
                self.entries.insert(name.clone(), sql.clone());
            }
            SettingChange::Reset { name } => {
                self.entries.remove(name);
            }
            SettingChange::ResetAll => self.entries.clear(),
        }
        self.rehash();
    }

    /// Adds a setting from the client's startup packet (`SET name = 'value'`).
    pub fn set_value(&mut self, name: &str, value: &str) {
        let sql = format!("SET {} = {}", quote_ident(name), quote_literal(value));
        self.entries.insert(name.to_ascii_lowercase(), sql);
        self.rehash();
    }

    /// 0 when the client has no settings of its own.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The statement that gives a server connection exactly these settings.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET ALL;");
        for statement in self.entries.values() {
            sql.push_str(statement);
            sql.push(';');
        }
        sql
    }

    fn rehash(&mut self) {
        self.hash = if self.entries.is_empty() {
            0
        } else {
            let mut hasher = DefaultHasher::new();
            self.entries.hash(&mut hasher);
            match hasher.finish() {
                0 | UNKNOWN_SETTINGS => 2,
                h => h,
            }
        };
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_session_settings() {
        assert_eq!(
            classify("SET search_path TO a, b;"),
            Some(SettingChange::Set {
                name: "search_path".into(),
                sql: "SET search_path TO a, b".into()
            })
        );
        assert!(
            matches!(classify("set session statement_timeout = 5"), Some(SettingChange::Set { name, .. }) if name == "statement_timeout")
        );
        assert!(
            matches!(classify("SET TIME ZONE 'UTC'"), Some(SettingChange::Set { name, .. }) if name == "timezone")
        );
        assert!(
            matches!(classify("set x.y=1"), Some(SettingChange::Set { name, .. }) if name == "x.y")
        );
        assert_eq!(classify("SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(classify("SET TRANSACTION READ ONLY"), None);
        assert_eq!(classify("SET a = 1; SELECT 1"), None);
        assert_eq!(classify("select 1"), None);
        assert_eq!(classify("RESET ALL"), Some(SettingChange::ResetAll));
        assert_eq!(
            classify("reset work_mem"),
            Some(SettingChange::Reset {
                name: "work_mem".into()
            })
        );
    }

    #[test]
    fn hash_follows_content() {
        let mut a = SessionSettings::default();
        assert_eq!(a.hash(), 0);
        a.apply(&classify("SET work_mem = '8MB'").unwrap());
        let h = a.hash();
        assert_ne!(h, 0);
        let mut b = SessionSettings::default();
        b.apply(&classify("SET work_mem = '8MB'").unwrap());
        assert_eq!(b.hash(), h);
        a.apply(&SettingChange::ResetAll);
        assert_eq!(a.hash(), 0);
        b.set_value("application_name", "it's");
        assert!(b
            .replay_sql()
            .contains("SET \"application_name\" = 'it''s';"));
    }
}
