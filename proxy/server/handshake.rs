//! Everything before the client is logged in: `SSLRequest` (TLS via rustls),
//! `GSSENCRequest` (refused), `CancelRequest` (forwarded), and the `StartupMessage`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::ClientStream;
use super::SessionError;
use crate::protocol::frame::check_frame;
use crate::protocol::startup::{check_packet, decode_packet, StartupPacket, MAX_STARTUP_PACKET};
use crate::runtime::Runtime;

/// A client that finished the startup phase and waits for authentication.
pub struct Opened {
    pub stream: ClientStream,
    pub params: BTreeMap<String, String>,
}

/// How long a client may take to send its startup packet and credentials.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the startup phase. `Ok(None)` means the connection was fully handled (a cancel
/// request). Errors are reported to the client before returning, where possible.
pub async fn open(tcp: TcpStream, runtime: &Runtime) -> Result<Option<Opened>, SessionError> {
    let mut stream = ClientStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let packet = match read_startup_packet(&mut stream, &mut buf).await {
            Ok(packet) => packet,
            Err(e) => {
                super::report(&mut stream, &e).await;
                return Err(e);
            }
        };
        let decoded = decode_packet(&packet).map_err(|e| SessionError::Protocol(e.to_string()));
        match decoded {
            Ok(StartupPacket::SslRequest) => {
                let acceptor = runtime.tls();
                match (acceptor, stream) {
                    (Some(acceptor), ClientStream::Plain(tcp)) => {
                        if !buf.is_empty() {
                            // Bytes sent before the TLS handshake could be injected by a
                            // man in the middle (CVE-2021-23222): refuse.
                            return Err(SessionError::Protocol(
                                "unencrypted data after SSLRequest".into(),
                            ));
                        }
                        let mut tcp = tcp;
                        tcp.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::ClientIo)?;
                        stream = ClientStream::Tls(Box::new(tls));
                    }
                    (_, mut other) => {
                        other
                            .write_all(b"N")
                            .await
                            .map_err(SessionError::ClientIo)?;
                        stream = other;
                    }
                }
            }
            Ok(StartupPacket::GssEncRequest) => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                runtime.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup(params)) => {
                if !buf.is_empty() {
                    let e = SessionError::Protocol("data after the startup packet".into());
                    super::report(&mut stream, &e).await;
                    return Err(e);
                }
                return Ok(Some(Opened { stream, params }));
            }
            Err(e) => {
                super::report(&mut stream, &e).await;
                return Err(e);
            }
        }
    }
}

async fn read_startup_packet(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        match check_packet(buf) {
            Ok(Some(len)) => return Ok(buf.split_to(len)),
            Ok(None) => {}
            Err(e) => return Err(SessionError::Protocol(e.to_string())),
        }
        if buf.len() >= MAX_STARTUP_PACKET {
            return Err(SessionError::Protocol("startup packet too long".into()));
        }
        read_more(stream, buf).await?;
    }
}

/// Reads one typed message during authentication (at most `MAX_STARTUP_PACKET` bytes).
pub async fn read_auth_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        if let Some(len) = check_frame(buf, MAX_STARTUP_PACKET)? {
            return Ok(buf.split_to(len));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<(), SessionError> {
    buf.reserve(512);
    let n = stream.read_buf(buf).await.map_err(SessionError::ClientIo)?;
    if n == 0 {
        return Err(SessionError::ClientClosed);
    }
    Ok(())
}
