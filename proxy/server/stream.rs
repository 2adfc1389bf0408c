//! The client's byte stream: plain TCP, TLS (rustls) after `SSLRequest`, or a
//! Unix-domain socket (`proxy.unix_socket_dir`; no TLS there, as with PostgreSQL).

use std::io;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

/// Who connected, as PostgreSQL's logs write it: `ip:port`, or `[local]` for a
/// Unix-domain socket; empty when the socket no longer knows.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    Local,
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            Peer::Local => f.write_str("[local]"),
            Peer::Unknown => Ok(()),
        }
    }
}

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Local(UnixStream),
}

impl ClientStream {
    /// Who is connected (`getpeername` on TCP).
    pub fn peer(&self) -> Peer {
        let tcp = match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
            ClientStream::Local(_) => return Peer::Local,
        };
        tcp.peer_addr().map_or(Peer::Unknown, Peer::Tcp)
    }

    /// Waits (registering `cx`) until a read would make progress, without needing a
    /// buffer (idle clients hold none); for TLS, at once (rustls may hold decrypted
    /// bytes already, so the read itself waits).
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
