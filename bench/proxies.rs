//! The proxies a run compares: PgBouncer (from apt, transaction mode) and pgwarden
//! builds, started as child processes that are killed on drop, and where to reach them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::cluster::{free_port, LocalCluster};

use super::{DATABASE, PASSWORD, USER};

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // pgbouncer runs as a child of runuser when we are root: stop it too.
        let pid = self.0.id();
        let worker = server_pid(pid);
        if worker != pid {
            unsafe {
                libc::kill(worker as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (proxy port, HTTP port) of every pgwarden started, for `/api/cache`.
pub static HTTP_PORTS: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());

/// (certificate, key) every pgwarden serves TLS with, when the bulk phase uses TLS.
pub static TLS_FILES: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

pub fn http_port_of(port: u16) -> Option<u16> {
    HTTP_PORTS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, h)| *h)
}

pub fn start_pgbouncer(dir: &Path, pg_port: u16, port: u16, pool_size: u64, auth: &str) -> Guard {
    std::fs::create_dir_all(dir).unwrap();
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    std::fs::write(&users, format!("\"{USER}\" \"{PASSWORD}\"\n")).unwrap();
    // SOCKETS=1: PostgreSQL over its socket, and a socket of PgBouncer's own.
    let (server_host, socket_dir) = match super::sockets::get() {
        Some(sockets) => (
            sockets.server_dir.display().to_string(),
            sockets.proxy_dir.display().to_string(),
        ),
        None => ("127.0.0.1".to_string(), String::new()),
    };
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{DATABASE} = host={server_host} port={pg_port} dbname={DATABASE}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {socket_dir}\nauth_type = {auth}\nauth_file = {}\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\n\
             max_client_conn = 20000\nmax_db_connections = 0\nlogfile = {}\n\
             server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n",
            users.display(),
            dir.join("pgbouncer.log").display()
        ),
    )
    .unwrap();
    for path in [dir.to_path_buf(), ini.clone(), users.clone()] {
        let _ = Command::new("chown").arg("postgres").arg(&path).status();
    }
    let bin = PathBuf::from("/usr/sbin/pgbouncer");
    let root = unsafe { libc::geteuid() } == 0;
    // runuser's login session resets the open-files limit to 1024: raise it again.
    let launch = format!(
        "ulimit -n $(ulimit -Hn); exec {} {}",
        bin.display(),
        ini.display()
    );
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &launch]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &launch]);
        c
    };
    in_own_session(&mut command);
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer (apt-get install -y pgbouncer)");
    Guard(child)
}

/// How to run one pgwarden: its port, pool size, login method, statistics, and
/// `tenancy` (which may carry ":nocache": the same proxy with the result cache off).
#[derive(Clone, Copy)]
pub struct Pgwarden<'a> {
    pub port: u16,
    pub pool_size: u64,
    pub auth: &'a str,
    pub stats: bool,
    pub tenancy: &'a str,
}

impl Pgwarden<'_> {
    /// SCRAM logins, statistics on, no tenant guard: the default target.
    pub fn scram(port: u16, pool_size: u64) -> Pgwarden<'static> {
        Pgwarden {
            port,
            pool_size,
            auth: "scram-sha-256",
            stats: true,
            tenancy: "off",
        }
    }
}

/// The pgwarden binary built next to this harness.
fn built_pgwarden() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("pgwarden")
}

/// Starts the pgwarden built next to this harness.
pub fn start_pgwarden(cluster: &LocalCluster, spec: &Pgwarden) -> Guard {
    start_pgwarden_binary(pgwarden_command(built_pgwarden()), cluster, spec)
}

/// The `pgwarden_per_core` target: one single-threaded pgwarden per core
/// (`proxy.worker_threads = 1`) on one client port (`proxy.reuse_port`), the kernel
/// spreading connections over them, with `spec`'s pool split between them.
pub fn start_pgwarden_per_core(cluster: &LocalCluster, spec: &Pgwarden) -> Vec<Guard> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = Pgwarden {
        pool_size: spec.pool_size.div_ceil(cores as u64),
        ..*spec
    };
    (0..cores)
        .map(|_| {
            let mut command = pgwarden_command(built_pgwarden());
            command
                .env("PGWARDEN_PROXY_WORKER_THREADS", "1")
                .env("PGWARDEN_PROXY_REUSE_PORT", "true");
            start_pgwarden_binary(command, cluster, &share)
        })
        .collect()
}

/// The command that runs the pgwarden binary `bin`.
pub fn pgwarden_command(bin: PathBuf) -> Command {
    assert!(
        bin.exists(),
        "build pgwarden first: cargo build --release ({})",
        bin.display()
    );
    Command::new(bin)
}

pub fn start_pgwarden_binary(
    mut command: Command,
    cluster: &LocalCluster,
    spec: &Pgwarden,
) -> Guard {
    let Pgwarden {
        port,
        pool_size,
        auth,
        stats,
        tenancy,
    } = *spec;
    let (tenancy, cache_mode) = match tenancy.split_once(':') {
        Some((t, "nocache")) => (t, "off"),
        _ => (tenancy, "hinted"),
    };
    let http_port = free_port();
    HTTP_PORTS.lock().unwrap().push((port, http_port));
    // SOCKETS=1: PostgreSQL over its socket; a socket of its own unless it shares its
    // port with another process.
    let (primary, replicas) = match super::sockets::get() {
        Some(sockets) => {
            let shares_port = command
                .get_envs()
                .any(|(key, _)| key == "PGWARDEN_PROXY_REUSE_PORT");
            if !shares_port {
                command.env("PGWARDEN_PROXY_UNIX_SOCKET_DIR", &sockets.proxy_dir);
            }
            let replicas: Vec<String> = cluster
                .replicas()
                .iter()
                .map(|r| cluster.socket_url_for(r))
                .collect();
            (cluster.socket_url_for(cluster.primary()), replicas)
        }
        None => (cluster.primary_url(), cluster.replica_urls()),
    };
    in_own_session(&mut command);
    let child = command
        .env("PGWARDEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGWARDEN_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("PGWARDEN_CACHE_MODE", cache_mode)
        .env("PGWARDEN_PRIMARY_URL", primary)
        .env("PGWARDEN_REPLICA_URLS", replicas.join(","))
        .env("PGWARDEN_POOL_SIZE", pool_size.to_string())
        .env("PGWARDEN_AUTH_METHOD", auth)
        .env("PGWARDEN_STATS_ENABLED", stats.to_string())
        .env("PGWARDEN_TENANCY_MODE", tenancy)
        .env("PGWARDEN_PROXY_MAX_CLIENT_CONNECTIONS", "20000")
        .envs(TLS_FILES.lock().unwrap().iter().flat_map(|(cert, key)| {
            [
                ("PGWARDEN_PROXY_TLS_CERT", cert.clone()),
                ("PGWARDEN_PROXY_TLS_KEY", key.clone()),
            ]
        }))
        .env(
            "RUST_LOG",
            std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(proxy_log(port))
        .spawn()
        .expect("start pgwarden");
    Guard(child)
}

/// With `PROXY_SESSION=own`, starts the proxy in a session of its own (`setsid`), as
/// a daemon runs; by default it stays in the harness's session, with pgbench. The
/// kernel shares the CPU between sessions first
/// (`/proc/sys/kernel/sched_autogroup_enabled`), and every PostgreSQL backend has a
/// session of its own: neither placement is a deployment's (where a service's cgroup
/// holds all its processes), and they move the ratios differently
/// (`bench/runs/2026-12-05-evening-own-sessions-full.md`).
fn in_own_session(command: &mut Command) {
    if std::env::var("PROXY_SESSION").as_deref() != Ok("own") {
        return;
    }
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe and touches nothing of this process's
    // memory: the child only becomes the leader of a new session.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// With `PROXY_LOG` set (a `RUST_LOG` filter), each pgwarden logs to
/// `bench/results/pgwarden-<port>.log`.
pub fn proxy_log(port: u16) -> Stdio {
    if std::env::var_os("PROXY_LOG").is_none() {
        return Stdio::null();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::File::create(dir.join(format!("pgwarden-{port}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// The process doing the work: pgbouncer runs under `runuser` when we are root.
pub fn server_pid(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(pid)
}

pub fn wait_ready(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
