//! The Unix-domain socket clients on the same host may connect to
//! (`proxy.unix_socket_dir`): `<dir>/.s.PGSQL.<port>`, the name libpq looks for with
//! `host=<dir>` and the proxy's TCP port, as PgBouncer's `unix_socket_dir` offers.
//!
//! This room owns the socket file's life: binding it (a file left by a pgwarden that
//! died is replaced; one a live server still answers on is an error, not stolen),
//! opening it to every local user as PostgreSQL's default `unix_socket_permissions`
//! does (logins are checked as on TCP), and removing it when the proxy stops.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The socket's path for a proxy listening on TCP `port`.
pub fn socket_path(directory: &str, port: u16) -> PathBuf {
    Path::new(directory).join(format!(".s.PGSQL.{port}"))
}

/// A bound local socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct LocalSocket {
    pub path: PathBuf,
    listener: Option<UnixListener>,
}

impl LocalSocket {
    /// Binds `path`. A file there that nothing answers on (left by a process that
    /// died) is removed first; one that accepts connections is `AddrInUse`.
    pub fn bind(path: PathBuf) -> io::Result<LocalSocket> {
        let failed = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("binding proxy.unix_socket_dir {}: {e}", path.display()),
            )
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(failed(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another server listens on this socket",
                )));
            }
            std::fs::remove_file(&path).map_err(failed)?;
        }
        let listener = UnixListener::bind(&path).map_err(failed)?;
        // Every local user may connect; the login decides, as PostgreSQL's default
        // `unix_socket_permissions = 0777` does.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .map_err(failed)?;
        Ok(LocalSocket {
            path,
            listener: Some(listener),
        })
    }

    /// The listener, for the accept loop (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_servers_file_is_replaced_a_live_one_is_not_and_the_file_goes_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path().to_str().unwrap(), 6432);
        assert!(path.ends_with(".s.PGSQL.6432"));
        // A file left behind (a socket no one listens on any more).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let mut first = LocalSocket::bind(path.clone()).expect("stale file replaced");
        let _listener = first.take_listener().unwrap();
        // A second bind while the first listens: refused, and the file is left alone.
        let err = LocalSocket::bind(path.clone()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains(".s.PGSQL.6432"), "{err}");
        assert!(path.exists());
        drop(first);
        assert!(!path.exists(), "removed when the proxy stops");
    }
}
