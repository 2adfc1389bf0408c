//! Everything before the client is logged in: `SSLRequest` (TLS via rustls),
//! `GSSENCRequest` (refused), `CancelRequest` (forwarded), and the `StartupMessage`,
//! checked as PostgreSQL checks it: bytes that are not a startup packet end the
//! connection without a reply, a well-formed but refused startup gets PostgreSQL's error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::stream::ClientStream;
use super::SessionError;
use crate::protocol::frame::check_frame;
use crate::protocol::startup::{
    check_packet, decode_packet, StartupError, StartupPacket, MAX_STARTUP_PACKET,
};
use crate::runtime::Runtime;

/// A client that finished the startup phase and waits for authentication.
pub struct Opened {
    pub stream: ClientStream,
    pub params: BTreeMap<String, String>,
}

/// How long a client may take to send its startup packet and credentials.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long closing a connection cleanly (TLS close_notify, FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the startup phase. `Ok(None)` means the connection was fully handled (a cancel
/// request). Errors are reported to the client before returning, where PostgreSQL
/// would report them. TLS is offered on TCP only: a local socket answers `N` to
/// `SSLRequest`, as PostgreSQL does.
pub async fn open(
    mut stream: ClientStream,
    runtime: &Runtime,
) -> Result<Option<Opened>, SessionError> {
    let mut buf = BytesMut::with_capacity(256);
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let packet = match timeout_at(deadline, read_startup_packet(&mut stream, &mut buf)).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(e)) => return Err(refuse(&mut stream, e).await),
            Err(_) => return Err(refuse(&mut stream, StartupError::Timeout.into()).await),
        };
        let decoded = match decode_packet(&packet, ssl_done, gss_done) {
            Ok(decoded) => decoded,
            Err(e) => return Err(refuse(&mut stream, e.into()).await),
        };
        match decoded {
            StartupPacket::SslRequest => {
                ssl_done = true;
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
                        let tls = match timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(tls) => tls.map_err(SessionError::ClientIo)?,
                            Err(_) => return Err(StartupError::Timeout.into()),
                        };
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
            StartupPacket::GssEncRequest => {
                gss_done = true;
                stream
                    .write_all(b"N")
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            StartupPacket::Cancel { pid, secret } => {
                // Answered only by closing, once the server has acted on the cancel (or
                // given up on it): a client may send its next query as soon as it sees
                // the close. Closed properly, so a TLS client reads close_notify.
                runtime.cancels.cancel(pid, secret).await;
                close(&mut stream).await;
                return Ok(None);
            }
            StartupPacket::Startup(startup) => {
                if let Some(negotiation) = startup.negotiation() {
                    stream
                        .write_all(&negotiation)
                        .await
                        .map_err(SessionError::ClientIo)?;
                }
                if startup.params.get("user").is_none_or(|u| u.is_empty()) {
                    return Err(refuse(&mut stream, StartupError::NoUser.into()).await);
                }
                if !buf.is_empty() {
                    let e = SessionError::Protocol("data after the startup packet".into());
                    return Err(refuse(&mut stream, e).await);
                }
                return Ok(Some(Opened {
                    stream,
                    params: startup.params,
                }));
            }
        }
    }
}

/// Tells the client why it is refused, if PostgreSQL would, and closes the connection.
async fn refuse(stream: &mut ClientStream, error: SessionError) -> SessionError {
    let (silent, old_reply) = match &error {
        SessionError::Startup(e) => (e.is_silent(), e.old_protocol_reply()),
        _ => (false, None),
    };
    if let Some(reply) = old_reply {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.write_all(&reply)).await;
        close(stream).await;
    } else if silent {
        close(stream).await;
    } else {
        super::report(stream, &error).await;
    }
    error
}

/// Closes the client's side properly: TLS close_notify, then FIN.
async fn close(stream: &mut ClientStream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

async fn read_startup_packet(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, SessionError> {
    loop {
        if let Some(len) = check_packet(buf)? {
            return Ok(buf.split_to(len));
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
