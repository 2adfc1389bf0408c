//! The real `pgwarden` binary as a child process in front of a test cluster, for what
//! only a process can show: signals (SIGTERM, SIGHUP), its exit status, its memory
//! (`/proc/PID/status`). Its configuration file and log live in a temporary directory;
//! the process is killed on drop if it is still running, even when the test panics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgwarden::cluster::LocalCluster;

use super::proxy::{DATABASE, PASSWORD, USER};

pub struct ProxyProcess {
    child: Child,
    pub port: u16,
    pub http: SocketAddr,
    pub config_path: PathBuf,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts pgwarden with `toml` as its configuration file (listen addresses and
    /// the primary come from the environment) and waits until it accepts clients.
    pub fn start(cluster: &LocalCluster, toml: &str, env: &[(&str, &str)]) -> ProxyProcess {
        Self::start_on(cluster, super::free_port(), toml, env)
    }

    /// `start` on a given client port (one another pgwarden may share with
    /// `proxy.reuse_port`).
    pub fn start_on(
        cluster: &LocalCluster,
        port: u16,
        toml: &str,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("pgwarden.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let log_path = dir.path().join("pgwarden.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let http: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .arg("--config")
            .arg(&config_path)
            .env("PGWARDEN_PRIMARY_URL", cluster.primary_url())
            .env("PGWARDEN_LISTEN", format!("127.0.0.1:{port}"))
            .env("PGWARDEN_HTTP_LISTEN", http.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgwarden");
        let mut process = ProxyProcess {
            child,
            port,
            http,
            config_path,
            log_path,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Both ports are bound before either is served; the HTTP one is this
        // process's own even when the client port is shared.
        while std::net::TcpStream::connect(process.http).is_err() {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("pgwarden exited with {status}:\n{}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgwarden not listening:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    pub fn console_url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/pgwarden",
            self.port
        )
    }

    /// Replaces the configuration file (for a reload).
    pub fn write_config(&self, toml: &str) {
        // Written aside and renamed: a reload never reads a half-written file.
        let fresh = self.dir.path().join("pgwarden.toml.new");
        std::fs::write(&fresh, toml).expect("write config");
        std::fs::rename(&fresh, &self.config_path).expect("replace config");
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) of this test's own child process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A line of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
