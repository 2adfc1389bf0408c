//! A primary plus streaming replicas, made with `initdb` and `pg_basebackup -R`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::node::{check, free_port, give_to_postgres, run_tool};
use super::{ClusterError, Node, NodeRole, PgBinaries};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub replicas: usize,
    /// Superuser created by initdb.
    pub user: String,
    pub password: String,
    /// Database created on the primary (before the replicas are cloned).
    pub database: String,
    /// Extra `postgresql.conf` lines for every node.
    pub extra_conf: Vec<String>,
    /// Shut the servers down at once if the cluster is still in use this long after
    /// it started (see `watchdog.rs`); tests set it so that a hang fails them.
    pub deadline: Option<Duration>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            replicas: 0,
            user: "pgwarden".into(),
            password: "pgwarden-secret".into(),
            database: "app".into(),
            extra_conf: Vec::new(),
            deadline: None,
        }
    }
}

pub struct LocalCluster {
    spec: ClusterSpec,
    primary: Node,
    replicas: Vec<Node>,
    _watchdog: Option<super::watchdog::Watchdog>,
    /// Stops the servers and removes `dir` should this process die without `Drop`.
    orphan_guard: Option<super::orphan_guard::OrphanGuard>,
    // Declared last: removed after the nodes are stopped.
    dir: tempfile::TempDir,
}

const BASE_CONF: &str = "
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
hot_standby = on
hot_standby_feedback = on
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 64MB
wal_keep_size = 256MB
";

impl LocalCluster {
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster, ClusterError> {
        let binaries = PgBinaries::locate()?;
        let dir = tempfile::Builder::new().prefix("pgw-").tempdir_in("/tmp")?;
        let orphan_guard = super::orphan_guard::OrphanGuard::start(dir.path());
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let socket_dir = dir.path().join("s");
        std::fs::create_dir(&socket_dir)?;
        give_to_postgres(&socket_dir)?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &spec.password)?;
        give_to_postgres(&pwfile)?;

        let primary_dir = dir.path().join("primary");
        make_data_dir(&primary_dir)?;
        let output = run_tool(
            &binaries,
            "initdb",
            &[
                "-D".into(),
                primary_dir.display().to_string(),
                "-U".into(),
                spec.user.clone(),
                format!("--pwfile={}", pwfile.display()),
                "--auth-local=trust".into(),
                "--auth-host=scram-sha-256".into(),
                "-E".into(),
                "UTF8".into(),
                "--no-sync".into(),
                "--locale=C".into(),
            ],
            &[],
        )?;
        check(output, "initdb")?;
        append_conf(&primary_dir, &spec, &socket_dir)?;
        std::fs::write(
            primary_dir.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
        )?;
        give_to_postgres(&primary_dir.join("pg_hba.conf"))?;

        let mut primary = Node {
            port: free_port(),
            data_dir: primary_dir,
            role: NodeRole::Primary,
            log_file: dir.path().join("primary.log"),
            binaries: binaries.clone(),
            running: false,
            password: spec.password.clone(),
        };
        touch_log(&primary.log_file)?;
        primary.start()?;
        let watchdog = spec
            .deadline
            .map(|deadline| super::watchdog::Watchdog::start(dir.path().to_path_buf(), deadline));
        let mut cluster = LocalCluster {
            spec,
            primary,
            replicas: Vec::new(),
            _watchdog: watchdog,
            orphan_guard,
            dir,
        };
        cluster.primary.psql(
            &cluster.spec.user,
            "postgres",
            &format!(
                "CREATE DATABASE \"{}\" OWNER \"{}\"",
                cluster.spec.database, cluster.spec.user
            ),
        )?;
        for i in 0..cluster.spec.replicas {
            cluster.add_replica(i)?;
        }
        if !cluster.replicas.is_empty() {
            cluster.wait_for_replication(Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    fn add_replica(&mut self, i: usize) -> Result<(), ClusterError> {
        let data_dir = self.dir.path().join(format!("replica{}", i + 1));
        make_data_dir(&data_dir)?;
        let output = run_tool(
            &self.primary.binaries,
            "pg_basebackup",
            &[
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                self.primary.port.to_string(),
                "-U".into(),
                self.spec.user.clone(),
                "-D".into(),
                data_dir.display().to_string(),
                "-R".into(),
                "-X".into(),
                "stream".into(),
                "--checkpoint=fast".into(),
            ],
            &[("PGPASSWORD", &self.spec.password)],
        )?;
        check(output, "pg_basebackup")?;
        let mut replica = Node {
            port: free_port(),
            data_dir,
            role: NodeRole::Replica,
            log_file: self.dir.path().join(format!("replica{}.log", i + 1)),
            binaries: self.primary.binaries.clone(),
            running: false,
            password: self.spec.password.clone(),
        };
        touch_log(&replica.log_file)?;
        replica.start()?;
        self.replicas.push(replica);
        Ok(())
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    pub fn primary(&self) -> &Node {
        &self.primary
    }

    pub fn replicas(&self) -> &[Node] {
        &self.replicas
    }

    pub fn url_for(&self, node: &Node) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            self.spec.user, self.spec.password, node.port, self.spec.database
        )
    }

    /// The directory of every node's Unix-domain socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    /// The URL of `node` through its Unix-domain socket (the directory as the host,
    /// percent-encoded, as libpq writes it). Local connections log in with `trust`; the
    /// password is there for a proxy that checks its clients' logins with it.
    pub fn socket_url_for(&self, node: &Node) -> String {
        let directory = self.socket_dir().display().to_string();
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.spec.user,
            self.spec.password,
            directory.replace('%', "%25").replace('/', "%2F"),
            node.port,
            self.spec.database
        )
    }

    pub fn primary_url(&self) -> String {
        self.url_for(&self.primary)
    }

    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| self.url_for(r)).collect()
    }

    /// Waits until every running replica streams from the primary and has replayed
    /// the primary's current WAL position.
    pub fn wait_for_replication(&self, timeout: Duration) -> Result<(), ClusterError> {
        let user = &self.spec.user;
        let lsn = self
            .primary
            .psql(user, "postgres", "SELECT pg_current_wal_insert_lsn()")?;
        for replica in self.replicas.iter().filter(|r| r.running) {
            replica.wait_for(
                user,
                "postgres",
                &format!(
                    "SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn AND pg_is_in_recovery()"
                ),
                "t",
                timeout,
            )?;
        }
        Ok(())
    }

    pub fn stop_replica(&mut self, i: usize) -> Result<(), ClusterError> {
        self.replicas[i].stop("fast")
    }

    /// Kills replica `i` with SIGKILL (postmaster and backends), as a crash would.
    pub fn kill_replica(&mut self, i: usize) -> Result<(), ClusterError> {
        self.replicas[i].kill_9()
    }

    /// Stops the primary in `mode` (`fast` or `immediate`) and starts it again on the
    /// same port.
    pub fn restart_primary(&mut self, mode: &str) -> Result<(), ClusterError> {
        let port = self.primary.port;
        self.primary.stop(mode)?;
        self.primary.start()?;
        if self.primary.port != port {
            return Err(ClusterError::Command {
                command: "restart primary".into(),
                detail: format!("port {port} was taken while the primary was down"),
            });
        }
        Ok(())
    }

    pub fn start_replica(&mut self, i: usize) -> Result<(), ClusterError> {
        let port = self.replicas[i].port;
        let replica = &mut self.replicas[i];
        replica.start()?;
        if replica.port != port {
            return Err(ClusterError::Command {
                command: "restart replica".into(),
                detail: format!("port {port} was taken while the replica was down"),
            });
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let _ = replica.stop("immediate");
        }
        let _ = self.primary.stop("immediate");
        if let Some(guard) = self.orphan_guard.take() {
            guard.disarm();
        }
    }
}

/// An empty data dir owned by the server's OS user, mode 0700 as initdb requires.
fn make_data_dir(path: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    give_to_postgres(path)
}

fn touch_log(path: &Path) -> Result<(), ClusterError> {
    std::fs::write(path, "")?;
    give_to_postgres(path)
}

fn append_conf(data_dir: &Path, spec: &ClusterSpec, socket_dir: &Path) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.conf"))?;
    conf.write_all(BASE_CONF.as_bytes())?;
    writeln!(conf, "unix_socket_directories = '{}'", socket_dir.display())?;
    for line in &spec.extra_conf {
        writeln!(conf, "{line}")?;
    }
    Ok(())
}
