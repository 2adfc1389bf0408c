//! The client's byte stream: plain TCP, TLS (rustls) after `SSLRequest`, or a
//! Unix-domain socket (`proxy.unix_socket_dir`; no TLS there, as with PostgreSQL).

use std::io;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Local(UnixStream),
}

impl ClientStream {
    /// Waits until a read would make progress, without needing a buffer. Idle plain-TCP
    /// clients thus hold no read buffer at all.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientStream::Plain(tcp) => tcp.readable().await,
            ClientStream::Local(unix) => unix.readable().await,
            // rustls may hold decrypted bytes already; let the read itself wait.
            ClientStream::Tls(_) => Ok(()),
        }
    }

    /// The client's address (`ip:port`), or `[local]` for a Unix-domain socket, as
    /// PostgreSQL's logs write it; empty when the socket no longer knows.
    pub fn peer(&self) -> String {
        let tcp = match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
            ClientStream::Local(_) => return "[local]".to_string(),
        };
        tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
    }

    /// Waits (registering `cx`) until the socket is readable; for TLS, at once (rustls
    /// may hold decrypted bytes already).
    #[inline]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Plain(tcp) => tcp.poll_read_ready(cx),
            ClientStream::Local(unix) => unix.poll_read_ready(cx),
            ClientStream::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

crate::stream_enum::delegate_async_io!(ClientStream {
    Plain(s) => s,
    Tls(s) => s.as_mut(),
    Local(s) => s,
});
