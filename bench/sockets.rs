//! `SOCKETS=1`: the layout of a proxy next to its PostgreSQL, every leg over a
//! Unix-domain socket. PgBouncer (`host=<dir>`, `unix_socket_dir`) and pgwarden (a
//! socket URL, `proxy.unix_socket_dir`) reach PostgreSQL over its socket and listen on
//! one of their own, and pgbench connects to that (`-h <dir>`); `direct` is
//! PostgreSQL's own socket. The per-core target (`SO_REUSEPORT`, one socket file cannot
//! be shared) and `pgwarden_nofair` keep TCP for clients.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the sockets are, when the run uses them.
pub struct LocalSockets {
    /// PostgreSQL's socket directory.
    pub server_dir: PathBuf,
    /// Where the proxies put theirs.
    pub proxy_dir: PathBuf,
}

static LOCAL_SOCKETS: OnceLock<Option<LocalSockets>> = OnceLock::new();

/// Reads `SOCKETS` once: with `1`, makes `<work>/sockets` (open to PgBouncer's user).
pub fn init(server_dir: PathBuf, work: &Path) -> Option<&'static LocalSockets> {
    LOCAL_SOCKETS
        .get_or_init(|| {
            (std::env::var("SOCKETS").as_deref() == Ok("1")).then(|| {
                let proxy_dir = work.join("sockets");
                std::fs::create_dir_all(&proxy_dir).expect("make the socket directory");
                std::fs::set_permissions(
                    &proxy_dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o777),
                )
                .expect("open the socket directory");
                LocalSockets {
                    server_dir,
                    proxy_dir,
                }
            })
        })
        .as_ref()
}

/// The run's sockets, if `SOCKETS=1` (after [`init`]).
pub fn get() -> Option<&'static LocalSockets> {
    LOCAL_SOCKETS.get().and_then(Option::as_ref)
}

/// The `-h` pgbench uses for `target`.
pub fn host_for(target: &str) -> String {
    match get() {
        Some(sockets) if target == "direct" => sockets.server_dir.display().to_string(),
        Some(sockets) if !matches!(target, "pgwarden_per_core" | "pgwarden_nofair") => {
            sockets.proxy_dir.display().to_string()
        }
        _ => "127.0.0.1".to_string(),
    }
}
