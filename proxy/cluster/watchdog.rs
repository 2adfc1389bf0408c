//! A deadline for whoever uses a cluster (a test): past it, every PostgreSQL server of
//! the cluster is shut down at once, so a client call still waiting on one fails
//! instead of waiting forever; if the process is still stuck a minute later, it aborts.
//! Either way a hang ends as a failure, not as a stalled CI run.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long the process may stay stuck after the servers were shut down.
const GRACE: Duration = Duration::from_secs(60);

/// Watches until dropped (with the cluster).
pub struct Watchdog {
    _disarm: Sender<()>,
}

impl Watchdog {
    /// Watches the servers whose data directories are directly under `dir`.
    pub fn start(dir: PathBuf, deadline: Duration) -> Watchdog {
        let (disarm, disarmed) = channel::<()>();
        let watch = move || {
            if disarmed.recv_timeout(deadline) != Err(RecvTimeoutError::Timeout) {
                return; // the cluster was dropped in time
            }
            eprintln!(
                "cluster {}: still in use after {deadline:?}; shutting its PostgreSQL down so that \
                 calls waiting on it fail",
                dir.display()
            );
            quit_servers(&dir);
            if disarmed.recv_timeout(GRACE) == Err(RecvTimeoutError::Timeout) {
                eprintln!(
                    "cluster {}: still in use {GRACE:?} after its servers were shut down; aborting",
                    dir.display()
                );
                std::process::abort();
            }
        };
        let _ = std::thread::Builder::new()
            .name("cluster-watchdog".into())
            .spawn(watch);
        Watchdog { _disarm: disarm }
    }
}

/// SIGQUIT to every postmaster under `dir`: PostgreSQL's immediate shutdown.
fn quit_servers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let lock = entry.path().join("postmaster.pid");
        let pid = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|pid| *pid > 1) {
            // SAFETY: kill(2) on a pid read from the server's own lock file.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
            }
        }
    }
}
