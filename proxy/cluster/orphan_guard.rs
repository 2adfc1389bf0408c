//! Clean-up that outlives the process that started a cluster.
//!
//! `Drop` stops the servers and removes the temp dir, but a process killed by a signal
//! (a CI timeout, `kill -9`, the watchdog's own abort) runs no `Drop`, and its
//! PostgreSQL servers would keep running with their data dirs in `/tmp`. So each cluster
//! also starts a small shell process in its own process group (a signal to the test's
//! group does not reach it) that blocks reading a pipe only this process holds. When the
//! cluster is dropped normally it writes `done` and the guard exits without doing
//! anything; when the process dies first, the pipe reaches end-of-file and the guard
//! shuts every postmaster under the dir down (SIGQUIT, PostgreSQL's immediate shutdown)
//! and removes the dir.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// `$1` is the cluster's dir. A line read means "the owner cleaned up"; end-of-file
/// means the owner died.
const GUARD_SCRIPT: &str = r#"
read -r owner_done
[ -n "$owner_done" ] && exit 0
for pid_file in "$1"/*/postmaster.pid; do
  [ -f "$pid_file" ] && kill -QUIT "$(head -n 1 "$pid_file")" 2>/dev/null
done
sleep 2
rm -rf -- "$1"
"#;

/// The running guard; [`OrphanGuard::disarm`] once the cluster is cleaned up.
pub struct OrphanGuard {
    owner_alive: ChildStdin,
    guard: Child,
}

impl OrphanGuard {
    /// Starts guarding `dir`; `None` if no shell could be started (the cluster then
    /// has only its `Drop`, as before).
    pub fn start(dir: &Path) -> Option<OrphanGuard> {
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("pgwarden-cluster-guard")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        let owner_alive = guard.stdin.take()?;
        Some(OrphanGuard { owner_alive, guard })
    }

    /// Tells the guard that the owner cleaned up, and reaps it.
    pub fn disarm(mut self) {
        let _ = self.owner_alive.write_all(b"done\n");
        drop(self.owner_alive);
        let _ = self.guard.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_until(done: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn a_disarmed_guard_leaves_the_dir_alone() {
        let dir = tempfile::tempdir().unwrap();
        let guard = OrphanGuard::start(dir.path()).expect("sh starts");
        guard.disarm();
        assert!(dir.path().exists());
    }

    #[test]
    fn an_owner_that_dies_without_disarming_gets_its_dir_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("marker"), "x").unwrap();
        let OrphanGuard {
            owner_alive,
            mut guard,
        } = OrphanGuard::start(&path).expect("sh starts");
        // What the kernel does when the owner dies: its end of the pipe closes.
        drop(owner_alive);
        assert!(wait_until(|| !path.exists()), "the guard removed the dir");
        let _ = guard.wait();
    }
}
