//! Configuration as it may be shown to a person (`SHOW CONFIG`, `/api/`, `pgwarden
//! check-config`): every secret replaced by `***`. Secrets are found by what they are,
//! not by a list of keys: any key whose name says password, token or secret, and the
//! password inside any `scheme://user:password@host` URL (and its `password=` query
//! parameter), wherever it appears.

use serde_json::Value;

use super::Config;

/// What replaces a secret.
pub const MASK: &str = "***";

/// The configuration as a JSON tree, secrets masked (unset options stay `null`).
pub fn redacted(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    mask(&mut value, false);
    value
}

/// The configuration as TOML text, secrets masked.
pub fn redacted_toml(config: &Config) -> Result<String, toml::ser::Error> {
    let mut value = redacted(config);
    drop_nulls(&mut value);
    toml::to_string_pretty(&value)
}

/// `url` with its password (user info or `password=` parameter) replaced by `***`.
/// Text that does not parse as a URL is masked from `://` to the last `@`.
pub fn redact_url(text: &str) -> String {
    if let Ok(mut url) = url::Url::parse(text.trim()) {
        if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
            return redact_unparsed(text);
        }
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        if pairs.iter().any(|(k, _)| is_secret_key(k)) {
            let masked = pairs.into_iter().map(|(k, v)| {
                let v = if is_secret_key(&k) { MASK.into() } else { v };
                (k, v)
            });
            url.query_pairs_mut().clear().extend_pairs(masked);
        }
        return url.to_string();
    }
    redact_unparsed(text)
}

fn redact_unparsed(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(start), Some(end)) if start + 3 <= end => {
            format!("{}{MASK}{}", &text[..start + 3], &text[end..])
        }
        _ => text.to_string(),
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "token", "secret"]
        .iter()
        .any(|word| key.contains(word))
}

/// Masks in place; `secret`: the value sits under a secret key.
fn mask(value: &mut Value, secret: bool) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                mask(child, secret || is_secret_key(key));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask(item, secret)),
        Value::String(s) if secret => *s = MASK.into(),
        Value::String(s) if s.contains("://") => *s = redact_url(s),
        _ => {}
    }
}

/// TOML has no null: unset options are left out, as when the config is serialized.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(
            redact_url("postgres://db/shop?user=app&password=s3cret"),
            "postgres://db/shop?user=app&password=***"
        );
        assert_eq!(redact_url("postgres://db/shop"), "postgres://db/shop");
        assert_eq!(redact_url("not a url ://u:s3cret@h"), "not a url ://***@h");
    }

    #[test]
    fn masks_secret_keys_and_urls_anywhere() {
        let mut config = Config::default();
        config.auth.users.push(crate::config::UserConfig {
            name: "app".into(),
            password: Some("s3cret-1".into()),
            server_password: Some("s3cret-2".into()),
        });
        config.admin.http_token = Some("s3cret-3".into());
        config.databases.insert(
            "shop".into(),
            crate::config::DatabaseConfig {
                primary: "postgres://app:s3cret-4@db/shop".into(),
                replicas: vec!["postgres://app:s3cret-5@replica/shop".into()],
                ..Default::default()
            },
        );
        let text = redacted_toml(&config).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("name = \"app\""), "{text}");
        assert!(text.contains("postgres://app:***@replica/shop"), "{text}");
        let json = redacted(&config).to_string();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains("\"tls_cert\":null"), "{json}");
    }
}
