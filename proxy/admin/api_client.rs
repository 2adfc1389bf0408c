//! A small blocking HTTP/1.1 client for pgwarden's own API, for command-line tools
//! (`pgwarden advise`) talking to a running instance: GET, optional bearer token,
//! `Connection: close`, plain or chunked bodies. No TLS (the API listens on loopback
//! or a private address).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("expected http://HOST:PORT, got {0:?}")]
    BadUrl(String),
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{path}: HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
}

/// GETs `path` from `base` (`http://127.0.0.1:9930` or `127.0.0.1:9930`); the body.
pub fn get(base: &str, path: &str, token: Option<&str>) -> Result<String, ApiError> {
    let address = base
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if address.is_empty() || address.contains('/') || base.starts_with("https://") {
        return Err(ApiError::BadUrl(base.to_string()));
    }
    let io = |source| ApiError::Io {
        address: address.clone(),
        source,
    };
    let mut stream = TcpStream::connect(&address).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if status != 200 {
        return Err(ApiError::Status {
            path: path.to_string(),
            status,
            body,
        });
    }
    Ok(body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
