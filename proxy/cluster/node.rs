//! One PostgreSQL server of a local cluster: its data dir, port, and the commands that
//! start, stop and query it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{ClusterError, PgBinaries};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Replica,
}

#[derive(Debug)]
pub struct Node {
    pub port: u16,
    pub data_dir: PathBuf,
    pub role: NodeRole,
    pub(super) log_file: PathBuf,
    pub(super) binaries: PgBinaries,
    pub(super) running: bool,
    /// Password of the cluster's superuser, for psql over TCP.
    pub(super) password: String,
}

/// Asks the kernel for a free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The server refuses to run as root: run server-side tools as `postgres` then.
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL tool, as the `postgres` OS user when we are root.
pub(super) fn run_tool(
    binaries: &PgBinaries,
    tool: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<Output, ClusterError> {
    let path = binaries.path(tool);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(&path);
        c
    } else {
        let mut c = Command::new(&path);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    };
    command.args(args).current_dir("/tmp");
    let output = command.output().map_err(|e| ClusterError::Command {
        command: format!("{} {}", path.display(), args.join(" ")),
        detail: e.to_string(),
    })?;
    Ok(output)
}

pub(super) fn check(output: Output, what: &str) -> Result<Output, ClusterError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(ClusterError::Command {
            command: what.to_string(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            ),
        })
    }
}

/// Hands a path to the `postgres` OS user when we are root.
pub(super) fn give_to_postgres(path: &Path) -> Result<(), ClusterError> {
    if !running_as_root() {
        return Ok(());
    }
    let name = std::ffi::CString::new("postgres").expect("static name");
    // SAFETY: getpwnam reads a static buffer; we copy the ids out immediately.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(ClusterError::Command {
            command: "getpwnam(postgres)".into(),
            detail:
                "running as root needs a `postgres` OS user (installed with the postgresql package)"
                    .into(),
        });
    }
    // SAFETY: entry is non-null and points to a valid passwd struct.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

impl Node {
    pub(super) fn start(&mut self) -> Result<(), ClusterError> {
        for attempt in 0..5 {
            if attempt > 0 {
                // The port was taken by someone else meanwhile: pick another.
                self.port = free_port();
            }
            self.write_port()?;
            let output = run_tool(
                &self.binaries,
                "pg_ctl",
                &[
                    "-w".into(),
                    "-t".into(),
                    "60".into(),
                    "-D".into(),
                    self.data_dir.display().to_string(),
                    "-l".into(),
                    self.log_file.display().to_string(),
                    "start".into(),
                ],
                &[],
            )?;
            if output.status.success() {
                self.running = true;
                return Ok(());
            }
            let log = self.log_tail();
            if !log.contains("could not bind") && !log.contains("Address already in use") {
                return Err(ClusterError::Command {
                    command: format!("pg_ctl start ({:?} on port {})", self.role, self.port),
                    detail: format!(
                        "{}\n--- server log ---\n{log}",
                        String::from_utf8_lossy(&output.stderr)
                    ),
                });
            }
        }
        Err(ClusterError::Timeout(format!(
            "no free port for {:?} after 5 attempts",
            self.role
        )))
    }

    pub(super) fn stop(&mut self, mode: &str) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        let output = run_tool(
            &self.binaries,
            "pg_ctl",
            &[
                "-w".into(),
                "-D".into(),
                self.data_dir.display().to_string(),
                "-m".into(),
                mode.into(),
                "stop".into(),
            ],
            &[],
        )?;
        self.running = false;
        check(output, "pg_ctl stop").map(|_| ())
    }

    /// The postmaster's pid, from `postmaster.pid`; None when it is not running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Kills the postmaster and every process it started with SIGKILL, as a crash of
    /// the machine would end them, without any shutdown of their own.
    pub(super) fn kill_9(&mut self) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        // postmaster.pid names the socket directory (line 5): its lock file holds the pid too.
        let lock_text =
            std::fs::read_to_string(self.data_dir.join("postmaster.pid")).unwrap_or_default();
        let socket_dir = lock_text
            .lines()
            .nth(4)
            .unwrap_or_default()
            .trim()
            .to_string();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        // SAFETY: plain kill(2) calls on pids read from the server's own files.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                libc::kill(child, libc::SIGKILL);
            }
        }
        // Wait until the postmaster is gone, so that a restart finds its port free.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        {
            if std::time::Instant::now() > deadline {
                return Err(ClusterError::Timeout(format!(
                    "postmaster {pid} survived SIGKILL"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A killed postmaster may stay a zombie where nothing reaps orphans (PID 1 of a
        // container): its lock file would then stop the restart, as after a crash an
        // operator removes it.
        let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        if !socket_dir.is_empty() {
            let dir = Path::new(&socket_dir);
            let _ = std::fs::remove_file(dir.join(format!(".s.PGSQL.{}.lock", self.port)));
            let _ = std::fs::remove_file(dir.join(format!(".s.PGSQL.{}", self.port)));
        }
        self.running = false;
        Ok(())
    }

    fn write_port(&self) -> Result<(), ClusterError> {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        writeln!(conf, "port = {}", self.port)?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs SQL with psql over TCP; returns trimmed, unaligned, tuples-only output.
    pub fn psql(&self, user: &str, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_with_password(user, Some(&self.password), database, sql)
    }

    pub(super) fn psql_with_password(
        &self,
        user: &str,
        password: Option<&str>,
        database: &str,
        sql: &str,
    ) -> Result<String, ClusterError> {
        let mut command = Command::new(self.binaries.path("psql"));
        command
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(user)
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        let output = command.output()?;
        let output = check(output, &format!("psql -p {} -c {sql:?}", self.port))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Polls `sql` until it prints `expected`, or fails after `timeout`.
    pub(super) fn wait_for(
        &self,
        user: &str,
        database: &str,
        sql: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.psql(user, database, sql);
            if matches!(&got, Ok(v) if v == expected) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout(format!(
                    "{sql} on port {} never returned {expected:?} (last: {got:?})",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
