//! Environment overrides: `PGWARDEN_<SECTION>_<KEY>` for every key, plus the sidecar
//! shortcuts `PGWARDEN_LISTEN`, `PGWARDEN_HTTP_LISTEN`, `PGWARDEN_PRIMARY_URL` and
//! `PGWARDEN_REPLICA_URLS`. Overrides are applied to the TOML value tree before it is
//! turned into typed configuration, so every key gets the same parsing and validation.

use toml::Value;

use super::{ConfigError, Endpoint};

/// Variables that are not configuration keys (read elsewhere, or by the test harness).
const NOT_KEYS: &[&str] = &["PGWARDEN_CONFIG", "PGWARDEN_PG_BINDIR", "PGWARDEN_LOG"];

pub fn apply(
    tree: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("PGWARDEN_") && !NOT_KEYS.contains(&k.as_str()))
        .collect();
    // The primary URL decides which database the replica URLs belong to.
    vars.sort_by_key(|(k, _)| k != "PGWARDEN_PRIMARY_URL");
    for (var, value) in vars {
        match var.as_str() {
            "PGWARDEN_LISTEN" => set(tree, &["proxy", "listen"], Value::String(value)),
            "PGWARDEN_HTTP_LISTEN" => set(tree, &["proxy", "http_listen"], Value::String(value)),
            "PGWARDEN_PRIMARY_URL" => apply_primary_url(tree, &var, &value)?,
            "PGWARDEN_REPLICA_URLS" => apply_replica_urls(tree, &var, &value)?,
            _ => apply_key(tree, &var, &value)?,
        }
    }
    Ok(())
}

fn apply_key(tree: &mut Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let rest = &var["PGWARDEN_".len()..];
    let Some((section, key)) = rest.split_once('_') else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    let Some(table) = tree.get_mut(&section).and_then(Value::as_table_mut) else {
        return Ok(()); // not a section of ours: leave other tools' variables alone
    };
    if section == "databases" {
        return Ok(());
    }
    // A key of a sub-table: PGWARDEN_ADVISE_N_PLUS_ONE_MIN_REPEATS is
    // advise.n_plus_one.min_repeats.
    let (table, key) = match nested(table, &key) {
        Some((sub, rest)) => (
            table
                .get_mut(&sub)
                .and_then(Value::as_table_mut)
                .expect("found by nested"),
            rest,
        ),
        None => (table, key),
    };
    let typed = match table.get(&key) {
        Some(Value::Integer(_)) => value
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| env_err(var, "expected an integer"))?,
        Some(Value::Float(_)) => value
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| env_err(var, "expected a number"))?,
        Some(Value::Boolean(_)) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Value::Boolean(true),
            "0" | "false" | "no" | "off" => Value::Boolean(false),
            _ => return Err(env_err(var, "expected true or false")),
        },
        Some(Value::Array(_)) => Value::Array(split_list(value).map(Value::String).collect()),
        Some(Value::Table(_)) => {
            return Err(env_err(var, "names a table; set its keys instead"));
        }
        Some(_) | None if is_known_optional(&section, &key) || table.contains_key(&key) => {
            Value::String(value.to_string())
        }
        _ => return Err(env_err(var, &format!("`{section}` has no key `{key}`"))),
    };
    table.insert(key, typed);
    Ok(())
}

/// `(sub-table, key)` when `key` is `<sub-table>_<key of it>` and no plain key.
fn nested(table: &toml::map::Map<String, Value>, key: &str) -> Option<(String, String)> {
    if table.contains_key(key) {
        return None;
    }
    table.iter().find_map(|(name, value)| {
        let rest = key.strip_prefix(name.as_str())?.strip_prefix('_')?;
        value.as_table()?;
        Some((name.clone(), rest.to_string()))
    })
}

/// Keys whose default is "unset", so they are absent from the serialized defaults.
fn is_known_optional(section: &str, key: &str) -> bool {
    matches!(
        (section, key),
        ("proxy", "tls_cert")
            | ("proxy", "tls_key")
            | ("proxy", "unix_socket_dir")
            | ("auth", "auth_user")
            | ("admin", "http_token")
            | ("tenancy", "set_config")
    )
}

fn apply_primary_url(tree: &mut Value, var: &str, url: &str) -> Result<(), ConfigError> {
    let endpoint = Endpoint::parse(var, url)?;
    let database = endpoint
        .database
        .clone()
        .unwrap_or_else(|| "postgres".into());
    set(
        tree,
        &["databases", &database, "primary"],
        Value::String(url.to_string()),
    );
    if let Some(user) = &endpoint.user {
        let users = entry_array(tree, &["auth", "users"]);
        if !users
            .iter()
            .any(|u| u.get("name").and_then(Value::as_str) == Some(user.as_str()))
        {
            let mut entry = toml::map::Map::new();
            entry.insert("name".into(), Value::String(user.clone()));
            if let Some(password) = &endpoint.password {
                entry.insert("password".into(), Value::String(password.clone()));
            }
            users.push(Value::Table(entry));
        }
        if endpoint.password.is_none() {
            // No password to check clients against: trust (PGWARDEN_AUTH_METHOD, applied
            // after this, can still say otherwise).
            set(tree, &["auth", "method"], Value::String("trust".into()));
        }
    }
    Ok(())
}

fn apply_replica_urls(tree: &mut Value, var: &str, urls: &str) -> Result<(), ConfigError> {
    let databases: Vec<String> = tree
        .get("databases")
        .and_then(Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let [database] = databases.as_slice() else {
        return Err(env_err(
            var,
            "needs exactly one database (set PGWARDEN_PRIMARY_URL, or use [databases.NAME] replicas in the file)",
        ));
    };
    let mut list = Vec::new();
    for url in split_list(urls) {
        Endpoint::parse(var, &url)?;
        list.push(Value::String(url));
    }
    set(
        tree,
        &["databases", database, "replicas"],
        Value::Array(list),
    );
    Ok(())
}

fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn env_err(var: &str, message: &str) -> ConfigError {
    ConfigError::Env {
        var: var.to_string(),
        message: message.to_string(),
    }
}

fn set(tree: &mut Value, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut node = tree;
    for part in parents {
        node = table_entry(node, part);
    }
    if let Some(table) = node.as_table_mut() {
        table.insert((*last).to_string(), value);
    }
}

fn table_entry<'a>(node: &'a mut Value, key: &str) -> &'a mut Value {
    if !node.is_table() {
        *node = Value::Table(Default::default());
    }
    let table = node.as_table_mut().expect("just made a table");
    let child = table
        .entry(key.to_string())
        .or_insert_with(|| Value::Table(Default::default()));
    if !child.is_table() {
        *child = Value::Table(Default::default());
    }
    child
}

fn entry_array<'a>(tree: &'a mut Value, path: &[&str]) -> &'a mut Vec<Value> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut node = tree;
    for part in parents {
        node = table_entry(node, part);
    }
    let table = node.as_table_mut().expect("table");
    let slot = table
        .entry((*last).to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("array")
}
