//! The byte stream to a PostgreSQL server: TCP, or a Unix-domain socket when the
//! server's host is a directory, as libpq reads `host=/var/run/postgresql`.
//!
//! A proxy next to its PostgreSQL usually talks to it over the local socket (PgBouncer's
//! common set-up): no TCP stack on either side of each message, about a tenth less
//! CPU per transaction for the proxy (`docs/profile.md`, "2026-12-05, afternoon").
//! An address is a socket's path when it starts with `/` (see
//! [`crate::config::Endpoint::address`]); anything else is `host:port`.

use std::io;

use tokio::net::{TcpStream, UnixStream};

#[derive(Debug)]
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Whether `address` names a Unix-domain socket (a path) rather than `host:port`.
pub fn is_socket_path(address: &str) -> bool {
    address.starts_with('/')
}

impl ServerStream {
    /// Connects to `address`: a socket path, or `host:port`.
    pub async fn connect(address: &str) -> io::Result<ServerStream> {
        if is_socket_path(address) {
            UnixStream::connect(address).await.map(ServerStream::Unix)
        } else {
            TcpStream::connect(address).await.map(ServerStream::Tcp)
        }
    }

    /// The TCP socket, for its options (`TCP_NODELAY`, keepalive); `None` for a local
    /// socket, which has none of them.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ServerStream::Tcp(tcp) => Some(tcp),
            ServerStream::Unix(_) => None,
        }
    }

    /// Reads without waiting: `WouldBlock` when nothing is there.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(tcp) => tcp.try_read(buf),
            ServerStream::Unix(unix) => unix.try_read(buf),
        }
    }
}

crate::stream_enum::delegate_async_io!(ServerStream {
    Tcp(s) => s,
    Unix(s) => s,
});
