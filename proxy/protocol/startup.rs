//! The first packet of a connection: `SSLRequest`, `GSSENCRequest`, `CancelRequest`
//! or `StartupMessage`. These have no type byte; the length comes first.

use std::collections::BTreeMap;

use bytes::BytesMut;
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message};
use thiserror::Error;

/// PostgreSQL's limit for startup-phase packets (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {major}.{minor}: pgwarden speaks 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout")]
    Malformed,
}

/// `Ok(Some(len))` once a whole startup-phase packet of `len` bytes is buffered.
pub fn check_packet(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// Decodes one complete startup-phase packet.
pub fn decode_packet(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::Malformed);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST if packet.len() == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if packet.len() == 8 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if packet.len() == 16 => {
            let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::Malformed),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 || minor != 0 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            if packet.last() != Some(&0) {
                return Err(StartupError::Malformed);
            }
            let mut buf = BytesMut::from(packet);
            let startup = Startup::decode(&mut buf, &DecodeContext::default())
                .map_err(|_| StartupError::Malformed)?
                .ok_or(StartupError::Malformed)?;
            Ok(StartupPacket::Startup(startup.parameters))
        }
    }
}

/// Splits the `options` startup parameter (`-c name=value --name=value ...`) into pairs.
/// Backslash escapes a space, as libpq documents.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut pairs = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            word.strip_prefix("-c").map(String::from)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            pairs.push((name.replace('-', "_"), value.to_string()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i32(196608);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn decodes_startup_parameters() {
        let packet = startup(&[("user", "app"), ("database", "shop")]);
        assert_eq!(check_packet(&packet), Ok(Some(packet.len())));
        let StartupPacket::Startup(params) = decode_packet(&packet).unwrap() else {
            panic!("expected startup");
        };
        assert_eq!(params["user"], "app");
        assert_eq!(params["database"], "shop");
    }

    #[test]
    fn decodes_requests() {
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(decode_packet(&ssl), Ok(StartupPacket::SslRequest));
        let mut cancel = vec![0, 0, 0, 16, 4, 210, 22, 46];
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            decode_packet(&cancel),
            Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(check_packet(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(check_packet(&[0, 0, 0, 2]).is_err());
        assert!(decode_packet(&[0, 0, 0, 8, 0, 2, 0, 0]).is_err());
        assert!(decode_packet(b"\0\0\0\x0cGET / HT").is_err());
    }

    #[test]
    fn splits_options() {
        let pairs =
            parse_options("-c pgwarden.tenant_id=42 -cstatement_timeout=5s --search-path=a\\ b");
        assert_eq!(
            pairs,
            vec![
                ("pgwarden.tenant_id".to_string(), "42".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("search_path".to_string(), "a b".to_string()),
            ]
        );
    }
}
