//! What a statement does to the server session beyond its own result: settings the
//! proxy can replay elsewhere, state that ties the client to its server connection
//! (a pin), and statements that wipe server-side state. One classifier serves the
//! simple and the extended protocol, so a `SET` sent as `Parse`/`Bind`/`Execute` is
//! tracked exactly like one sent as `Query`.

use super::settings::{classify_setting, split_statements, SettingChange};

/// Session state that cannot follow a client to another server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Pins(u8);

impl Pins {
    pub const TEMP_TABLE: Pins = Pins(1);
    pub const LISTEN: Pins = Pins(2);
    pub const SQL_PREPARE: Pins = Pins(4);
    pub const ADVISORY_LOCK: Pins = Pins(8);
    pub const HOLD_CURSOR: Pins = Pins(16);
    pub const UNREPLAYABLE_SETTING: Pins = Pins(32);
    pub const ALL: Pins = Pins(63);

    const NAMES: [(Pins, &'static str); 6] = [
        (Pins::TEMP_TABLE, "temp table"),
        (Pins::LISTEN, "listen"),
        (Pins::SQL_PREPARE, "prepare"),
        (Pins::ADVISORY_LOCK, "advisory lock"),
        (Pins::HOLD_CURSOR, "with hold cursor"),
        (Pins::UNREPLAYABLE_SETTING, "set_config"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Pins {
        Pins(bits & Pins::ALL.0)
    }

    pub fn insert(&mut self, other: Pins) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: Pins) {
        self.0 &= !other.0;
    }

    /// "temp table, listen": why a client is pinned, for `SHOW CLIENTS`.
    pub fn describe(self) -> String {
        Pins::NAMES
            .iter()
            .filter(|(pin, _)| self.0 & pin.0 != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One effect of one statement on the server session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A setting the proxy keeps and replays (once the statement commits).
    Setting(SettingChange),
    /// State that pins the client to its server connection (from the moment it is sent).
    Pin(Pins),
    /// State that is gone once the statement commits.
    Unpin(Pins),
    /// `DISCARD ALL`: settings, statements, temp tables, listeners, locks, cursors.
    DiscardAll,
    /// `DEALLOCATE ALL`: every prepared statement of the server session.
    DeallocateAll,
    /// `DEALLOCATE name`.
    Deallocate(String),
    /// `DISCARD PLANS` and other statements that change the server session in ways the
    /// proxy does not track: the server's settings fingerprint becomes unknown.
    Unknown,
    /// A `DO` block, `CALL` or user function: code that may change the session unseen
    /// (`opaque_code.rs`). The server connection is reset before its next use.
    OpaqueCode,
}

/// Effects of every statement in a (possibly multi-statement) SQL string.
pub fn effects_of(sql: &str) -> Vec<Effect> {
    let mut effects = Vec::new();
    for statement in split_statements(sql) {
        statement_effects(statement, &mut effects);
    }
    effects
}

fn statement_effects(statement: &str, out: &mut Vec<Effect>) {
    let text = strip_leading_comments(statement);
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .take(6)
        .collect();
    let first = words.first().copied().unwrap_or("");
    match first {
        "set" | "reset" => {
            if let Some(changes) = classify_setting(text) {
                out.extend(changes.into_iter().map(Effect::Setting));
            } else if !matches!(words.get(1), Some(&"local") | Some(&"transaction")) {
                out.push(Effect::Unknown);
            }
        }
        "discard" => match words.get(1).copied() {
            Some("all") => out.push(Effect::DiscardAll),
            Some("temp") | Some("temporary") => out.push(Effect::Unpin(Pins::TEMP_TABLE)),
            _ => out.push(Effect::Unknown),
        },
        "deallocate" => {
            let name = match words.get(1).copied() {
                Some("prepare") => words.get(2).copied(),
                other => other,
            };
            match name {
                Some("all") => out.push(Effect::DeallocateAll),
                Some(name) => out.push(Effect::Deallocate(name.trim_matches('"').to_string())),
                None => {}
            }
        }
        "create" if creates_temp(&words, &lower) => out.push(Effect::Pin(Pins::TEMP_TABLE)),
        "select" if selects_into_temp(&lower) => out.push(Effect::Pin(Pins::TEMP_TABLE)),
        "listen" => out.push(Effect::Pin(Pins::LISTEN)),
        "unlisten" if words.get(1) == Some(&"*") => out.push(Effect::Unpin(Pins::LISTEN)),
        "prepare" if words.get(1) != Some(&"transaction") => {
            out.push(Effect::Pin(Pins::SQL_PREPARE))
        }
        "declare" if lower.contains(" with hold") => out.push(Effect::Pin(Pins::HOLD_CURSOR)),
        "close" if words.get(1) == Some(&"all") => out.push(Effect::Unpin(Pins::HOLD_CURSOR)),
        _ => {}
    }
    if takes_session_advisory_lock(&lower) {
        out.push(Effect::Pin(Pins::ADVISORY_LOCK));
    } else if lower.contains("pg_advisory_unlock_all") {
        out.push(Effect::Unpin(Pins::ADVISORY_LOCK));
    }
    if sets_config_for_session(&lower) {
        out.push(Effect::Pin(Pins::UNREPLAYABLE_SETTING));
    }
}

fn strip_leading_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix("--") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

/// `CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY ...`, or anything created in `pg_temp`.
fn creates_temp(words: &[&str], lower: &str) -> bool {
    let mut rest = words.iter().skip(1).copied();
    let mut word = rest.next();
    if matches!(word, Some("global") | Some("local") | Some("or")) {
        word = rest.next();
        if word == Some("replace") {
            word = rest.next();
        }
    }
    matches!(word, Some("temp") | Some("temporary")) || lower.contains("pg_temp.")
}

/// `SELECT ... INTO TEMP[ORARY] [TABLE] name`.
fn selects_into_temp(lower: &str) -> bool {
    lower.contains(" into temp") || lower.contains(" into temporary")
}

/// `pg_advisory_lock(...)`, `pg_try_advisory_lock_shared(...)`, ... but not the
/// transaction-scoped `_xact_` variants, which end with the transaction.
fn takes_session_advisory_lock(lower: &str) -> bool {
    lower
        .match_indices("advisory_lock")
        .any(|(at, _)| !lower[..at].ends_with("xact_") && !lower[..at].ends_with("un"))
}

/// `set_config(name, value, false)` (or with a parameter as the third argument).
fn sets_config_for_session(lower: &str) -> bool {
    lower.match_indices("set_config(").any(|(at, call)| {
        let args = &lower[at + call.len()..];
        let mut depth = 0usize;
        let mut last_arg_start = 0;
        for (i, c) in args.char_indices() {
            match c {
                '(' => depth += 1,
                ',' if depth == 0 => last_arg_start = i + 1,
                ')' if depth == 0 => return args[last_arg_start..i].trim() != "true",
                ')' => depth -= 1,
                _ => {}
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(sql: &str) -> Pins {
        let mut pins = Pins::default();
        for effect in effects_of(sql) {
            if let Effect::Pin(p) = effect {
                pins.insert(p);
            }
        }
        pins
    }

    #[test]
    fn recognizes_pinning_state() {
        assert_eq!(pins("CREATE TEMP TABLE t(x int)"), Pins::TEMP_TABLE);
        assert_eq!(
            pins("create local temporary table t as select 1"),
            Pins::TEMP_TABLE
        );
        assert_eq!(pins("create table pg_temp.t(x int)"), Pins::TEMP_TABLE);
        assert_eq!(pins("select 1 into temp t"), Pins::TEMP_TABLE);
        assert_eq!(pins("LISTEN ch"), Pins::LISTEN);
        assert_eq!(pins("prepare p as select 1"), Pins::SQL_PREPARE);
        assert_eq!(pins("prepare transaction 'x'"), Pins::default());
        assert_eq!(pins("select pg_advisory_lock(1)"), Pins::ADVISORY_LOCK);
        assert_eq!(
            pins("select pg_try_advisory_lock_shared(1)"),
            Pins::ADVISORY_LOCK
        );
        assert_eq!(pins("select pg_advisory_xact_lock(1)"), Pins::default());
        assert_eq!(pins("select pg_advisory_unlock(1)"), Pins::default());
        assert_eq!(
            pins("declare c cursor with hold for select 1"),
            Pins::HOLD_CURSOR
        );
        assert_eq!(pins("declare c cursor for select 1"), Pins::default());
        assert_eq!(
            pins("select set_config('a.b', 'x', false)"),
            Pins::UNREPLAYABLE_SETTING
        );
        assert_eq!(
            pins("select set_config('a.b', $1, $2)"),
            Pins::UNREPLAYABLE_SETTING
        );
        assert_eq!(
            pins("select set_config('a.b', lower('X'), true)"),
            Pins::default()
        );
        assert_eq!(
            pins("/* c */ -- x\n create temp table t()"),
            Pins::TEMP_TABLE
        );
        assert_eq!(pins("select 1"), Pins::default());
    }

    #[test]
    fn recognizes_wipes_and_settings() {
        assert_eq!(effects_of("DISCARD ALL"), vec![Effect::DiscardAll]);
        assert_eq!(effects_of("deallocate all"), vec![Effect::DeallocateAll]);
        assert_eq!(
            effects_of("DEALLOCATE PREPARE s1"),
            vec![Effect::Deallocate("s1".into())]
        );
        assert_eq!(
            effects_of("unlisten *; close all; select pg_advisory_unlock_all()"),
            vec![
                Effect::Unpin(Pins::LISTEN),
                Effect::Unpin(Pins::HOLD_CURSOR),
                Effect::Unpin(Pins::ADVISORY_LOCK)
            ]
        );
        assert!(matches!(
            effects_of("set statement_timeout = '200ms'")[..],
            [Effect::Setting(SettingChange::Set { .. })]
        ));
        assert_eq!(effects_of("SET LOCAL work_mem = '1MB'"), vec![]);
        assert_eq!(
            effects_of("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .len(),
            1
        );
        assert_eq!(effects_of("/* app */ SET a = 1").len(), 1);
        assert_eq!(Pins::from_bits(3).describe(), "temp table, listen");
    }
}
