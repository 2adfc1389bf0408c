//! `AsyncRead` and `AsyncWrite` for an enum of byte streams (TCP, TLS, Unix-domain
//! sockets), each call handed to the variant's own stream: the client's
//! (`server::stream`) and the server's (`pool::ServerStream`).

/// Implements `AsyncRead` and `AsyncWrite` for `$enum`: each arm names a variant and
/// how to reach its stream as `&mut` (`s`, or `s.as_mut()` for a boxed one).
macro_rules! delegate_async_io {
    ($enum:ident { $($variant:ident($s:ident) => $stream:expr),+ $(,)? }) => {
        impl tokio::io::AsyncRead for $enum {
            #[inline]
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($enum::$variant($s) => std::pin::Pin::new($stream).poll_read(cx, buf),)+
                }
            }
        }

        impl tokio::io::AsyncWrite for $enum {
            #[inline]
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($enum::$variant($s) => std::pin::Pin::new($stream).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($enum::$variant($s) => std::pin::Pin::new($stream).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($enum::$variant($s) => std::pin::Pin::new($stream).poll_shutdown(cx),)+
                }
            }
        }
    };
}

pub(crate) use delegate_async_io;
