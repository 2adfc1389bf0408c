//! The first packet of a connection: `SSLRequest`, `GSSENCRequest`, `CancelRequest`
//! or `StartupMessage`. These have no type byte; the length comes first.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// PostgreSQL's limit for startup-phase packets (`MAX_STARTUP_PACKET_LENGTH`), not
/// counting the length word.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(Startup),
}

/// A `StartupMessage` of protocol 3.x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// The minor protocol version the client asked for (pgwarden speaks 3.0).
    pub minor: u16,
    /// `user`, `database`, `options` and settings; the last of a repeated name wins.
    pub params: BTreeMap<String, String>,
    /// `_pq_.*` protocol options the client asked for (none is supported).
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// The `NegotiateProtocolVersion` message PostgreSQL sends before authentication
    /// when the client asked for a newer minor version or for protocol options.
    pub fn negotiation(&self) -> Option<BytesMut> {
        if self.minor == 0 && self.protocol_options.is_empty() {
            return None;
        }
        let mut body = BytesMut::new();
        body.put_i32(3 << 16); // the newest protocol pgwarden speaks: 3.0
        body.put_i32(self.protocol_options.len() as i32);
        for option in &self.protocol_options {
            body.put_slice(option.as_bytes());
            body.put_u8(0);
        }
        let mut out = BytesMut::with_capacity(body.len() + 5);
        out.put_u8(b'v');
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        Some(out)
    }
}

/// A connection's first bytes that PostgreSQL would refuse. The messages are
/// PostgreSQL's own; [`StartupError::is_silent`] says which ones it answers at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartupError {
    /// Not a startup packet at all (garbage, HTTP, a typed message sent first).
    #[error("invalid length of startup packet ({0})")]
    BadLength(i32),
    #[error("timeout waiting for the startup packet")]
    Timeout,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

impl StartupError {
    /// PostgreSQL closes such connections without a word (it only logs them): there is
    /// no sign the peer speaks the protocol at all.
    pub fn is_silent(&self) -> bool {
        matches!(self, StartupError::BadLength(_) | StartupError::Timeout)
    }

    /// A client of protocol 2 or older gets its refusal in the old format (`E`, text,
    /// NUL), as PostgreSQL sends it; `None` for everything else.
    pub fn old_protocol_reply(&self) -> Option<Vec<u8>> {
        match self {
            StartupError::UnsupportedProtocol { major, .. } if *major < 3 => {
                Some(format!("EFATAL:  pgwarden: {self}\n\0").into_bytes())
            }
            _ => None,
        }
    }
}

/// `Ok(Some(len))` once a whole startup-phase packet of `len` bytes is buffered.
pub fn check_packet(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize - 4 > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// Decodes one complete startup-phase packet, making PostgreSQL's checks in its order
/// (`ProcessStartupPacket`). `ssl_done`/`gss_done`: that request was answered already,
/// so its code now reads as a protocol version, as in PostgreSQL.
pub fn decode_packet(
    packet: &[u8],
    ssl_done: bool,
    gss_done: bool,
) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::BadLength(packet.len() as i32));
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let fixed = |len: usize| {
        if packet.len() == len {
            Ok(())
        } else {
            Err(StartupError::BadLength(packet.len() as i32))
        }
    };
    match code {
        CANCEL_REQUEST => {
            fixed(16)?;
            let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST if !ssl_done => fixed(8).map(|()| StartupPacket::SslRequest),
        GSSENC_REQUEST if !gss_done => fixed(8).map(|()| StartupPacket::GssEncRequest),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let (params, protocol_options) = parse_params(&packet[8..])?;
            Ok(StartupPacket::Startup(Startup {
                minor,
                params,
                protocol_options,
            }))
        }
    }
}

type Params = (BTreeMap<String, String>, Vec<String>);

/// `name\0value\0...\0`, read as PostgreSQL reads it: the terminator must be the last
/// byte; a name without a value ends the list (and so fails that check).
fn parse_params(body: &[u8]) -> Result<Params, StartupError> {
    let cstr = |at: usize| {
        let rest = body.get(at..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    };
    let mut params = BTreeMap::new();
    let mut protocol_options = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let name = cstr(offset);
        if name.is_empty() {
            break; // the terminator
        }
        let value_at = offset + name.len() + 1;
        if value_at >= body.len() {
            break; // a name without a value
        }
        let value = cstr(value_at);
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("_pq_.") {
            protocol_options.push(name);
        } else {
            params.insert(name, String::from_utf8_lossy(value).into_owned());
        }
        offset = value_at + value.len() + 1;
    }
    if offset + 1 != body.len() {
        return Err(StartupError::Malformed);
    }
    Ok((params, protocol_options))
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

    fn decode(packet: &[u8]) -> Result<StartupPacket, StartupError> {
        decode_packet(packet, false, false)
    }

    #[test]
    fn decodes_startup_parameters() {
        let packet = startup(&[("user", "app"), ("database", "shop")]);
        assert_eq!(check_packet(&packet), Ok(Some(packet.len())));
        let StartupPacket::Startup(startup) = decode(&packet).unwrap() else {
            panic!("expected startup");
        };
        assert_eq!(startup.params["user"], "app");
        assert_eq!(startup.params["database"], "shop");
        assert_eq!(startup.negotiation(), None);
    }

    #[test]
    fn decodes_requests() {
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(decode(&ssl), Ok(StartupPacket::SslRequest));
        let mut cancel = vec![0, 0, 0, 16, 4, 210, 22, 46];
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            decode(&cancel),
            Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
        // A second SSLRequest reads as protocol 1234.5679, as in PostgreSQL.
        assert_eq!(
            decode_packet(&ssl, true, false),
            Err(StartupError::UnsupportedProtocol {
                major: 1234,
                minor: 5679
            })
        );
    }

    #[test]
    fn rejects_garbage_silently_and_bad_startups_aloud() {
        for garbage in [&[0xff, 0xff, 0xff, 0xff][..], &[0, 0, 0, 2], b"X\0\0\0\x04"] {
            let err = check_packet(garbage).unwrap_err();
            assert!(err.is_silent(), "{err}");
        }
        assert_eq!(check_packet(&[0, 0, 0x27, 0x14]), Ok(None)); // 10004: the limit
        assert!(check_packet(&[0, 0, 0x27, 0x15]).is_err());
        let old = decode(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap_err();
        assert!(!old.is_silent());
        assert_eq!(
            old.old_protocol_reply().unwrap(),
            b"EFATAL:  pgwarden: unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\0"
        );
        let mut no_terminator = startup(&[("user", "app")]);
        no_terminator.pop();
        no_terminator[3] -= 1;
        assert_eq!(decode(&no_terminator), Err(StartupError::Malformed));
        let mut name_only = startup(&[]);
        name_only.splice(8..8, b"user\0".iter().copied());
        name_only[3] += 5;
        assert_eq!(decode(&name_only), Err(StartupError::Malformed));
    }

    #[test]
    fn negotiates_minor_versions_and_protocol_options() {
        let mut packet = startup(&[("user", "app"), ("_pq_.opt", "1")]);
        packet[7] = 2; // protocol 3.2
        let StartupPacket::Startup(startup) = decode(&packet).unwrap() else {
            panic!("expected startup");
        };
        assert_eq!(startup.minor, 2);
        assert!(!startup.params.contains_key("_pq_.opt"));
        assert_eq!(
            &startup.negotiation().unwrap()[..],
            b"v\0\0\0\x15\0\x03\0\0\0\0\0\x01_pq_.opt\0"
        );
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
