//! Session settings (`SET`, `RESET`) a client made, kept by the proxy so they follow
//! the client from one pooled server connection to the next, and never leak to others.
//!
//! A server connection remembers the fingerprint of the settings last applied to it;
//! when a client with other settings checks it out, the proxy runs `RESET ALL` and
//! replays that client's statements first.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::protocol::sql_quote::{quote_ident, quote_literal};

/// Server connections whose settings the proxy cannot vouch for carry this hash.
pub const UNKNOWN_SETTINGS: u64 = 1;

/// A change a simple-query statement makes to session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    Set { name: String, sql: String },
    Reset { name: String },
    ResetAll,
}

/// Recognizes a single `SET`/`RESET` statement as the session settings it changes.
/// `SET LOCAL` and `SET TRANSACTION` end with the transaction, so they are not session
/// settings; `SET SESSION CHARACTERISTICS AS TRANSACTION ...` becomes the
/// `default_transaction_*` settings it stands for.
pub fn classify_setting(sql: &str) -> Option<Vec<SettingChange>> {
    let text = sql.trim().trim_end_matches(';').trim();
    let mut words = text.split_whitespace();
    if words.next()?.eq_ignore_ascii_case("set") {
        let second = words.next()?;
        if second.eq_ignore_ascii_case("session")
            && words.next()?.eq_ignore_ascii_case("characteristics")
        {
            return session_characteristics(words);
        }
    }
    classify(text).map(|change| vec![change])
}

/// `AS TRANSACTION ISOLATION LEVEL x | READ ONLY | READ WRITE | [NOT] DEFERRABLE, ...`
fn session_characteristics<'a>(words: impl Iterator<Item = &'a str>) -> Option<Vec<SettingChange>> {
    let words: Vec<String> = words
        .flat_map(|w| w.split(','))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut rest = match words.as_slice() {
        ["as", "transaction", rest @ ..] => rest,
        _ => return None,
    };
    let mut changes = Vec::new();
    let mut set = |name: &str, value: &str| {
        changes.push(SettingChange::Set {
            name: name.into(),
            sql: format!("SET {name} = '{value}'"),
        })
    };
    while !rest.is_empty() {
        rest = match rest {
            ["isolation", "level", "read", level @ ("committed" | "uncommitted"), tail @ ..] => {
                set("default_transaction_isolation", &format!("read {level}"));
                tail
            }
            ["isolation", "level", level @ ("serializable" | "repeatable"), tail @ ..] => {
                if *level == "repeatable" {
                    set("default_transaction_isolation", "repeatable read");
                    tail.strip_prefix(&["read"][..])?
                } else {
                    set("default_transaction_isolation", "serializable");
                    tail
                }
            }
            ["read", mode @ ("only" | "write"), tail @ ..] => {
                set(
                    "default_transaction_read_only",
                    if *mode == "only" { "on" } else { "off" },
                );
                tail
            }
            ["not", "deferrable", tail @ ..] => {
                set("default_transaction_deferrable", "off");
                tail
            }
            ["deferrable", tail @ ..] => {
                set("default_transaction_deferrable", "on");
                tail
            }
            _ => return None,
        };
    }
    Some(changes)
}

/// Recognizes a single `SET`/`RESET` statement.
fn classify(sql: &str) -> Option<SettingChange> {
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
                if word == "characteristics" {
                    return None;
                }
                if word == "authorization" {
                    return Some(SettingChange::Set {
                        name: "session_authorization".into(),
                        sql: text.to_string(),
                    });
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
            let mut word = words.next()?.to_ascii_lowercase();
            if word == "session" && words.next()?.eq_ignore_ascii_case("authorization") {
                word = "session_authorization".into();
            }
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

/// Splits a simple-query string into statements at top-level semicolons, respecting
/// quotes, dollar quotes and comments.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(end) = tag_end.filter(|e| bytes[*e] == b'$') {
                    let tag = &sql[i..=end];
                    match sql[end + 1..].find(tag) {
                        Some(close) => i = end + 1 + close + tag.len() - 1,
                        None => i = bytes.len(),
                    }
                }
            }
            b';' => {
                statements.push(sql[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        statements.push(sql[start..].trim());
    }
    statements.retain(|s| !s.is_empty());
    statements
}

#[derive(Debug, Default, Clone)]
pub struct SessionSettings {
    /// The session's defaults: the startup packet's settings (and the proxy's own, such
    /// as the tenant for row-level security). `RESET` returns to these, as in
    /// PostgreSQL, where startup values are what `RESET` restores.
    defaults: BTreeMap<String, String>,
    /// Setting name → statement that sets it (`SET`), replayed in name order after
    /// the defaults.
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

    /// Adds a session default (a startup packet setting): `SET name = 'value'`.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let sql = format!("SET {} = {}", quote_ident(name), quote_literal(value));
        self.defaults.insert(name.to_ascii_lowercase(), sql);
        self.rehash();
    }

    /// Forgets a setting entirely, default included.
    pub fn forget(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.defaults.remove(&name);
        self.entries.remove(&name);
        self.rehash();
    }

    /// Whether the session set `name` (at startup or with `SET`).
    pub fn mentions(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.defaults.contains_key(&name) || self.entries.contains_key(&name)
    }

    /// Whether the session's transactions are serializable unless they say otherwise
    /// (`SET default_transaction_isolation`, `SET SESSION CHARACTERISTICS`, or a
    /// startup option): a hot standby refuses them, so its reads stay on the primary.
    /// `server_default`: whether they are without any of those (the role's or the
    /// database's default, as learned from a replica's refusal).
    pub fn serializable_by_default(&self, server_default: bool) -> bool {
        if self.hash == 0 {
            return server_default; // no settings at all: the common case
        }
        const NAME: &str = "default_transaction_isolation";
        let lowered = |sql: &String| sql.to_ascii_lowercase();
        match self.entries.get(NAME).map(lowered) {
            // `SET ... TO DEFAULT` returns to the startup value, as `RESET` does.
            Some(sql) if !sql.trim_end().ends_with("default") => sql.contains("serializable"),
            _ => self
                .defaults
                .get(NAME)
                .map_or(server_default, |sql| lowered(sql).contains("serializable")),
        }
    }

    /// 0 when the client has no settings of its own.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The statement that gives a server connection exactly these settings.
    pub fn replay_sql(&self) -> String {
        // RESET ALL leaves the role and the session authorization alone.
        let mut sql = String::from("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;RESET ALL;");
        for statement in self.defaults.values().chain(self.entries.values()) {
            sql.push_str(statement);
            sql.push(';');
        }
        sql
    }

    fn rehash(&mut self) {
        self.hash = if self.entries.is_empty() && self.defaults.is_empty() {
            0
        } else {
            let mut hasher = DefaultHasher::new();
            self.defaults.hash(&mut hasher);
            self.entries.hash(&mut hasher);
            match hasher.finish() {
                0 | UNKNOWN_SETTINGS => 2,
                h => h,
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializable_by_default_follows_set_reset_and_startup() {
        let mut settings = SessionSettings::default();
        assert!(!settings.serializable_by_default(false));
        settings.set_value("application_name", "app");
        assert!(!settings.serializable_by_default(false));
        let set = |sql: &str| classify_setting(sql).expect(sql);
        for change in set("SET default_transaction_isolation = 'serializable'") {
            settings.apply(&change);
        }
        assert!(settings.serializable_by_default(false));
        for change in set("SET default_transaction_isolation TO 'repeatable read'") {
            settings.apply(&change);
        }
        assert!(!settings.serializable_by_default(false));
        for change in set("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        {
            settings.apply(&change);
        }
        assert!(settings.serializable_by_default(false));
        for change in set("RESET default_transaction_isolation") {
            settings.apply(&change);
        }
        assert!(!settings.serializable_by_default(false));
        // A startup option is the session's default, which RESET and SET ... TO
        // DEFAULT return to.
        settings.set_value("default_transaction_isolation", "serializable");
        assert!(settings.serializable_by_default(false));
        for change in set("SET default_transaction_isolation TO DEFAULT") {
            settings.apply(&change);
        }
        assert!(settings.serializable_by_default(false));
    }

    /// A role serializable on the server (`ALTER ROLE`) stays so until the session
    /// sets its own isolation; `RESET` returns to the role's default.
    #[test]
    fn the_server_default_counts_until_the_session_sets_its_own() {
        let mut settings = SessionSettings::default();
        assert!(settings.serializable_by_default(true));
        settings.set_value("application_name", "app");
        assert!(settings.serializable_by_default(true));
        let set = |sql: &str| classify_setting(sql).expect(sql);
        for change in set("SET default_transaction_isolation = 'read committed'") {
            settings.apply(&change);
        }
        assert!(!settings.serializable_by_default(true));
        for change in set("RESET default_transaction_isolation") {
            settings.apply(&change);
        }
        assert!(settings.serializable_by_default(true));
        settings.set_value("default_transaction_isolation", "repeatable read");
        assert!(
            !settings.serializable_by_default(true),
            "a startup option wins"
        );
    }

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
        assert_eq!(
            classify("SET SESSION AUTHORIZATION visitor"),
            Some(SettingChange::Set {
                name: "session_authorization".into(),
                sql: "SET SESSION AUTHORIZATION visitor".into()
            })
        );
        assert_eq!(
            classify("RESET SESSION AUTHORIZATION"),
            Some(SettingChange::Reset {
                name: "session_authorization".into()
            })
        );
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("BEGIN; SET a = 'x;y'; -- c;\nCOMMIT;"),
            vec!["BEGIN", "SET a = 'x;y'", "-- c;\nCOMMIT"]
        );
        assert_eq!(
            split_statements("select $f$ a; b $f$; /* ; */ select 2"),
            vec!["select $f$ a; b $f$", "/* ; */ select 2"]
        );
        assert_eq!(
            split_statements("select $1; select 'unterminated"),
            vec!["select $1", "select 'unterminated"]
        );
        assert_eq!(
            classify_setting("set session characteristics as transaction isolation level repeatable read, read only"),
            Some(vec![
                SettingChange::Set {
                    name: "default_transaction_isolation".into(),
                    sql: "SET default_transaction_isolation = 'repeatable read'".into()
                },
                SettingChange::Set {
                    name: "default_transaction_read_only".into(),
                    sql: "SET default_transaction_read_only = 'on'".into()
                },
            ])
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
        b.apply(&SettingChange::ResetAll);
        assert_ne!(b.hash(), 0, "RESET ALL keeps the startup values");
        assert!(b
            .replay_sql()
            .contains("SET \"application_name\" = 'it''s';"));
    }
}
