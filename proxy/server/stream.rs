//! The client's byte stream: plain TCP, TLS (rustls) after `SSLRequest`, or a
//! Unix-domain socket (`proxy.unix_socket_dir`; no TLS there, as with PostgreSQL).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
